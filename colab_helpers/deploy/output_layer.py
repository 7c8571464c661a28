"""A faster output layer for decoding a few rows at a time on CPU.

The output layer (``lm_head``: vocabulary x hidden, 49152 x 576 for SmolLM2) is the largest matrix a decoding step
multiplies. For a handful of rows, MKL's ``linear`` (``x @ W.T``) reads it far below memory speed, while the same
product computed the other way round (``(W @ x.T).T``) does not; the gap depends on the CPU, its BLAS and the thread
count, so :func:`tune_output_layer` times both on the model's own layer, for each row count the server decodes, and
keeps the other order only for the row counts where it is clearly faster. Logits are the same product (float
round-off aside); nothing is copied, the weight stays tied to the embedding.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..checks import check_positive_integer

logger = logging.getLogger(__name__)

CLEARLY_FASTER = 0.9  # the other order is kept where it takes at most this share of linear's time


@dataclass(frozen=True)
class OutputLayerTiming:
    """Median seconds of the output layer for ``rows`` rows, computed as ``linear`` and the other way round."""

    rows: int
    linear_s: float
    transposed_s: float

    @property
    def transposed_wins(self) -> bool:
        return self.transposed_s <= CLEARLY_FASTER * self.linear_s


def _swap_class(layer: Any, rows: frozenset[int]) -> None:
    """Give ``layer`` (an ``nn.Linear``) a forward that takes the other order for ``rows`` rows."""
    import torch

    base = type(layer)

    class RowTunedLinear(base):  # type: ignore[misc, valid-type]
        # a subclass, not a wrapper: state dict, tied weight and hooks stay exactly as they were
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape(-1, x.shape[-1])
            if flat.shape[0] not in self._tuned_rows:
                return super().forward(x)
            out = (self.weight @ flat.T).T
            if self.bias is not None:
                out = out + self.bias
            return out.reshape(*x.shape[:-1], out.shape[-1])

    RowTunedLinear.__name__ = RowTunedLinear.__qualname__ = f"RowTuned{base.__name__}"
    layer.__class__ = RowTunedLinear
    layer._tuned_rows = rows


def _median_seconds(run: Callable[[], Any], repeats: int) -> float:
    run()  # warm-up: first-call allocations and thread start-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_output_layer(layer: Any, rows: Iterable[int], *, repeats: int = 3) -> list[OutputLayerTiming]:
    """Median time of ``layer`` for each row count in ``rows``, as ``linear`` and transposed."""
    import torch
    import torch.nn.functional as F

    timings = []
    weight = layer.weight
    with torch.inference_mode():
        for count in rows:
            x = torch.randn(count, weight.shape[1], dtype=weight.dtype, device=weight.device)
            linear = _median_seconds(lambda: F.linear(x, weight), repeats)
            transposed = _median_seconds(lambda: (weight @ x.T).T, repeats)
            timings.append(OutputLayerTiming(count, linear, transposed))
    return timings


def tune_output_layer(model: Any, max_rows: int, *, repeats: int = 3) -> list[OutputLayerTiming]:
    """Time ``model``'s output layer for 1 .. ``max_rows`` rows and, on CPU, switch it (in place) to the faster
    order for the row counts where the other order clearly wins; return the timings. Does nothing on a GPU, or
    when the output layer is not a plain ``nn.Linear``."""
    import torch

    check_positive_integer(max_rows, "max_rows", fix="the largest batch the server decodes, e.g. 16")
    layer = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(layer) is not torch.nn.Linear or layer.weight.device.type != "cpu":
        return []
    timings = time_output_layer(layer, range(1, max_rows + 1), repeats=repeats)
    rows = frozenset(t.rows for t in timings if t.transposed_wins)
    if rows:
        _swap_class(layer, rows)
        logger.info("output layer: the transposed product is faster for %s rows on this CPU", sorted(rows))
    return timings
