"""Generation latency per token and forward latency, measured so that two models can be compared.

One timed call on a shared machine drifts from the next (other processes, frequency scaling, the allocator), so
every model is warmed up, run with the same threads, timed once per round in turn over several rounds, and
reported as medians; process CPU time, less disturbed by other processes than wall time, sits beside it and is
what ``speedup`` compares on a CPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..checks import check_positive_integer
from ..runtime.modules import model_device


@dataclass(frozen=True)
class LatencyReport:
    """Median milliseconds per generated token over ``rounds`` interleaved runs, wall and process CPU time."""

    ms_per_token: float  # median wall time
    cpu_ms_per_token: float  # median process CPU time (all threads of this process)
    wall_spread: tuple[float, float]  # min and max wall ms per token over the rounds
    rounds: int
    new_tokens: int
    threads: int
    device: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def generation_latency(
    models: Mapping[str, Any],
    tokenizer: Any,
    prompt: str,
    *,
    new_tokens: int = 16,
    rounds: int = 5,
) -> dict[str, LatencyReport]:
    """Return a :class:`LatencyReport` per named model: greedy decoding of exactly ``new_tokens`` tokens.

    Every model is warmed up first, then timed once per round in turn (interleaved, so a slow moment of the
    machine hits all of them), ``rounds`` rounds; the reports hold medians. All models must share ``tokenizer``.
    """
    import torch

    if not models:
        raise ValueError("models must name at least one model, e.g. {'baseline': model}")
    check_positive_integer(new_tokens, "new_tokens", fix="e.g. new_tokens=16")
    check_positive_integer(rounds, "rounds", fix="e.g. rounds=5")
    runners = {name: _runner(model, tokenizer, prompt, new_tokens) for name, model in models.items()}
    for run in runners.values():
        run(2)  # warm-up: first calls allocate and pick kernels
    wall: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            seconds, cpu_seconds = run(new_tokens)
            wall[name].append(1000 * seconds / new_tokens)
            cpu[name].append(1000 * cpu_seconds / new_tokens)
    threads = torch.get_num_threads()
    return {
        name: LatencyReport(
            ms_per_token=statistics.median(wall[name]),
            cpu_ms_per_token=statistics.median(cpu[name]),
            wall_spread=(min(wall[name]), max(wall[name])),
            rounds=rounds,
            new_tokens=new_tokens,
            threads=threads,
            device=str(model_device(models[name])),
        )
        for name in runners
    }


def speedup(baseline: LatencyReport, other: LatencyReport) -> float:
    """Return how many times faster ``other`` generates than ``baseline`` (CPU time on a CPU, wall time on a GPU)."""
    if baseline.device.startswith("cpu") and other.device.startswith("cpu"):
        return baseline.cpu_ms_per_token / other.cpu_ms_per_token
    return baseline.ms_per_token / other.ms_per_token


def _runner(model: Any, tokenizer: Any, prompt: str, new_tokens: int) -> Any:
    """Return ``run(n) -> (wall seconds, CPU seconds)`` generating exactly ``n`` tokens greedily."""
    import torch

    device = model_device(model)
    inputs = tokenizer(prompt, return_tensors="pt").to(device)

    def run(count: int) -> tuple[float, float]:
        settings = dict(do_sample=False, max_new_tokens=count, min_new_tokens=count, pad_token_id=tokenizer.pad_token_id)
        with torch.no_grad():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            wall, cpu = time.perf_counter(), time.process_time()
            model.generate(**inputs, **settings)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - wall, time.process_time() - cpu

    return run


@dataclass(frozen=True)
class SpeedReport:
    """Forward latency of one model at a fixed batch, in seconds (median of repeats)."""

    seconds: float
    batch_size: int
    seq_len: int

    @property
    def tokens_per_second(self) -> float:
        return self.batch_size * self.seq_len / self.seconds


def forward_latency(model: Any, *, batch_size: int = 4, seq_len: int = 128, repeats: int = 5, seed: int = 0) -> SpeedReport:
    """Return the median latency of a no-grad forward pass over random token ids (one warm-up pass first)."""
    import statistics

    import torch

    device = model_device(model)
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=torch.Generator().manual_seed(seed)).to(device)
    times = []
    with torch.no_grad():
        for attempt in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            model(input_ids=ids)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if attempt:  # the first pass warms caches up
                times.append(time.perf_counter() - started)
    return SpeedReport(statistics.median(times), batch_size, seq_len)
