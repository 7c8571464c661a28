"""One forward per engine step: the running rows' next tokens and every new prompt packed into one sequence.

Why: prefilling a new request in a forward of its own stalls every running request for about one decoding step
(the weights are read twice); packed, a step reads them once, as transformers' continuous batching does. Its paged
cache cannot hold per-layer head counts (see ``engine``), so the running rows keep the batch's left-padded
DynamicCache and each new prompt gets causal attention over itself: an attention function registered with
transformers (``AttentionInterface``) does both. Its name has no mask function, so the model builds no mask.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

NAME = "colab_helpers_packed"
# architectures whose attention goes through transformers' AttentionInterface with one ``cache.update`` per layer
# and no sliding window or logit soft-capping (what ``_attend`` assumes)
GROW = 64  # columns added to the running rows' cache when it is full
ARCHITECTURES = frozenset({"llama", "qwen2", "qwen3"})

_current = threading.local()  # the step of the forward running in this thread
_registered = False


def supports(model: Any) -> bool:
    """True when ``model`` can decode packed steps (else the engine prefills new prompts in forwards of their own)."""
    config = model.config
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    return (
        getattr(config, "model_type", None) in ARCHITECTURES
        and getattr(config, "_attn_implementation", None) in ("sdpa", "eager")
        and all(kind == "full_attention" for kind in layer_types)
        and getattr(config, "attn_logit_softcapping", None) is None
    )


class Step:
    """Stands in for the model's cache during one packed forward.

    The packed sequence holds ``rows`` tokens, one per running row (in the batch's row order), then the new prompts,
    ``prompt_lengths`` tokens each. ``update`` writes each running row's key and value into column ``columns`` of
    ``layers`` (the batch's cache, left-padded, ``[rows, heads, room, head_dim]``; its first ``columns`` hold the
    past) and keeps the prompts' own; ``mask`` (bool, ``[rows, columns + 1]``) says which columns the running rows
    attend to. The cache grows by ``GROW`` columns when full: written in place, not concatenated every step (a fresh
    allocation of the whole cache per layer per step cost about 7% of a decoding step, measured).
    """

    def __init__(self, layers: Sequence[Any], mask: torch.Tensor | None, rows: int,
                 prompt_lengths: Sequence[int]) -> None:  # fmt: skip
        self.layers, self.mask, self.rows, self.prompt_lengths = layers, mask, rows, tuple(prompt_lengths)
        self.columns = 0 if mask is None else mask.shape[1] - 1
        self.prompts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> the prompts' keys and values

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        import torch

        if self.rows:
            layer = self.layers[layer_idx]
            if layer.keys.shape[2] <= self.columns:
                layer.keys, layer.values = _grown(layer.keys, self.columns), _grown(layer.values, self.columns)
            layer.keys[:, :, self.columns] = key[0, :, : self.rows].transpose(0, 1)
            layer.values[:, :, self.columns] = value[0, :, : self.rows].transpose(0, 1)
        self.prompts[layer_idx] = key[:, :, self.rows :], value[:, :, self.rows :]
        return key, value

    def prompt_cache(self, index: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Prompt ``index``'s keys and values per layer (``[1, heads, length, head_dim]``)."""
        start = sum(self.prompt_lengths[:index])
        end = start + self.prompt_lengths[index]
        return [(k[:, :, start:end], v[:, :, start:end]) for _, (k, v) in sorted(self.prompts.items())]


def _grown(cache: torch.Tensor, columns: int) -> torch.Tensor:
    """``cache``'s first ``columns`` columns with room for ``GROW`` more."""
    import torch

    rows, heads, _, dim = cache.shape
    return torch.cat([cache[:, :, :columns], cache.new_zeros(rows, heads, GROW, dim)], dim=2)


def _rows_first(packed: torch.Tensor) -> torch.Tensor:
    """``[1, heads, rows, head_dim]`` -> ``[rows, heads, 1, head_dim]``."""
    return packed[0].transpose(0, 1).unsqueeze(2)


def _attend(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
            scaling: float | None = None, dropout: float = 0.0, **kwargs: Any) -> tuple[torch.Tensor, None]:  # fmt: skip
    """The attention of a packed step: running rows over their cached columns, each new prompt causally over itself."""
    import torch
    import torch.nn.functional as F

    step: Step = _current.step
    parts = []
    if step.rows:
        layer, seen = step.layers[module.layer_idx], step.columns + 1
        out = F.scaled_dot_product_attention(_rows_first(query[:, :, : step.rows]), layer.keys[:, :, :seen],
                                             layer.values[:, :, :seen],
                                             attn_mask=step.mask[:, None, None, :], scale=scaling, enable_gqa=True)  # fmt: skip
        parts.append(out[:, :, 0].transpose(0, 1).unsqueeze(0))  # back to [1, heads, rows, head_dim]
    start = step.rows
    for length in step.prompt_lengths:
        end = start + length
        parts.append(F.scaled_dot_product_attention(query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                                                    is_causal=True, scale=scaling, enable_gqa=True))  # fmt: skip
        start = end
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    return out.transpose(1, 2).contiguous(), None


@contextmanager
def packed(model: Any, step: Step) -> Iterator[None]:
    """Run ``model``'s forwards inside with the packed attention of ``step`` (this thread only)."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(NAME, _attend)
        _registered = True
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = NAME
    _current.step = step
    try:
        yield
    finally:
        config._attn_implementation = previous
        _current.step = None
