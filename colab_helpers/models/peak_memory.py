"""Measure a memory case for real: build a random-weight model in a fresh Python process and read its peak.

The harness that calibrates and checks :func:`~.memory_estimate.estimate_memory` (tests/test_models_memory_estimate.py,
benchmarks/memory_estimates.py, docs/memory-estimates.md); users call ``estimate_memory``. A fresh process
because a process's peak resident memory only grows: one measurement per process is the only honest one.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from ..checks import check_integer, check_positive_number
from .memory_estimate import ATTN_IMPLEMENTATIONS, normalized_choice, normalize_dtype
from .registry import CatalogEntry, get_entry
from .shapes import lora_target_modules

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

_CHILD = r"""
import json, resource, sys
spec = json.loads(sys.stdin.read())
import torch
from transformers import AutoConfig, AutoModelForCausalLM
if spec["mode"] in ("lora", "qlora"):
    from peft import LoraConfig, get_peft_model
def _hwm():
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return None
# ru_maxrss is inherited through fork + exec: a child of a large process would report the parent's size. On Linux,
# reset this process's own peak (clear_refs 5) and read VmHWM instead.
try:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    _own = _hwm() is not None
except OSError:
    _own = False
def peak():
    return _hwm() if _own else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
result = {"after_imports": peak()}
torch.manual_seed(0)
config = dict(spec["config"])
config = AutoConfig.for_model(config.pop("model_type"), **config)
dtype = getattr(torch, spec["dtype"])
cuda = spec["device"] == "cuda"
if cuda:
    torch.zeros(1, device="cuda")
    free, total = torch.cuda.mem_get_info()
    context = total - free - torch.cuda.memory_reserved()
model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=spec["attn_implementation"])
model.to(spec["device"])
result["after_build"] = peak()
ids = torch.randint(0, config.vocab_size, (spec["batch_size"], spec["seq_len"]), device=spec["device"])
if cuda:
    torch.cuda.reset_peak_memory_stats()
if spec["mode"] == "inference":
    model.eval()
    with torch.no_grad():
        for _ in range(spec["steps"]):
            model(ids)
else:
    if spec["mode"] == "lora":
        lora = LoraConfig(r=spec["lora_r"], lora_alpha=2 * spec["lora_r"], lora_dropout=spec["lora_dropout"],
                          target_modules=spec["targets"], fan_in_fan_out=config.model_type == "gpt2",
                          task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    if spec["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for _ in range(spec["steps"]):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del loss
if cuda:
    torch.cuda.synchronize()
    result["cuda_peak"] = torch.cuda.max_memory_allocated() + context
    result["cuda_context"] = context
result["peak"] = peak()
print("RESULT " + json.dumps(result))
"""


def measure_peak_memory(
    config: PretrainedConfig | str,
    mode: str = "inference",
    *,
    batch_size: int = 1,
    seq_len: int = 512,
    dtype: str = "float32",
    device: str = "cpu",
    lora_r: int = 16,
    lora_dropout: float = 0.0,
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
    steps: int = 2,
    timeout: float = 600.0,
) -> dict[str, int]:
    """Run one case for real in a fresh Python process and return its measured memory in bytes.

    The child builds a random-weight model from ``config`` (a transformers config or a catalog name: no
    download), then runs ``steps`` forward passes under ``no_grad`` (inference) or training steps with
    AdamW (``full``; ``lora`` with peft adapters on ``LORA_TARGET_MODULES``). Returned keys: ``peak``
    (the child's peak resident memory, ``ru_maxrss``), ``after_imports`` and ``after_build``; on CUDA also
    ``cuda_peak`` (``max_memory_allocated`` + the context) and ``cuda_context``. QLoRA is not measured
    here (it needs a quantized checkpoint). ``full`` in a 16-bit dtype trains the 16-bit parameters
    directly (no float32 master copy), so compare it with ``estimate_memory`` in float32 only.
    """
    mode = normalized_choice("mode", mode, ("inference", "lora", "full"))
    device = normalized_choice("device", device, ("cpu", "cuda"))
    dtype = normalize_dtype(dtype)
    if dtype == "auto":
        raise ValueError("measure_peak_memory needs an explicit dtype: 'float32', 'float16' or 'bfloat16'")
    if isinstance(config, (str, CatalogEntry)):
        config = get_entry(config).to_config()
    family = str(config.model_type)
    attn_implementation = normalized_choice("attn_implementation", attn_implementation, ATTN_IMPLEMENTATIONS)
    if family == "bloom":  # transformers refuses sdpa for BLOOM (ALiBi): it always runs eager attention
        attn_implementation = "eager"
    spec = {
        "config": config.to_dict(),
        "mode": mode,
        "batch_size": check_integer(batch_size, "batch_size"),
        "seq_len": check_integer(seq_len, "seq_len"),
        "dtype": dtype,
        "device": device,
        "lora_r": check_integer(lora_r, "lora_r"),
        "lora_dropout": float(lora_dropout),
        "targets": lora_target_modules(family) if mode == "lora" else None,
        "attn_implementation": attn_implementation,
        "gradient_checkpointing": bool(gradient_checkpointing),
        "steps": check_integer(steps, "steps"),
    }
    logger.debug("measuring %s %s %dx%d (%s, %s) in a fresh process", family, mode, batch_size, seq_len, dtype, device)
    return _run_child(spec, timeout)


def _run_child(spec: dict[str, Any], timeout: float) -> dict[str, int]:
    """Run the measuring child on ``spec`` (offline) and return the figures it printed; RuntimeError if it failed."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith("RESULT "):
            return {key: int(value) for key, value in json.loads(line[len("RESULT ") :]).items()}
    tail = (completed.stderr or completed.stdout)[-2000:]
    raise RuntimeError(f"memory measurement failed (exit code {completed.returncode}): {tail}")


def relative_error(measured: float, estimated: float) -> float:
    """Return ``measured / estimated - 1``: positive when the estimate was too low."""
    check_positive_number(estimated, "estimated")
    return measured / estimated - 1
