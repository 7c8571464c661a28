"""First-order Taylor importance of heads and MLP channels, from one pass of per-example gate gradients.

A gate of ones multiplies each head's output (:class:`~.gating.HeadGates`) and each MLP channel
(:class:`~.mlp.MlpGates`); ``|d loss / d gate|`` per example, averaged over examples, estimates the loss change
when the unit is removed (Michel et al. 2019 for heads, LLM-Pruner for channels). Head and channel scores come
from the same backward pass, on one scale (the loss's), which is what lets :func:`~.compress.compress` compare
them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..runtime.modules import model_device
from .batches import batch_inputs, per_example_loss
from .gating import HeadGates
from .layout import AttentionSite, HeadLayout, layout_of
from .mlp import MlpGates, MlpSite

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


def taylor_scores(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    heads: list[AttentionSite] | None = None,
    mlp: list[MlpSite] | None = None,
) -> tuple[torch.Tensor | None, list[torch.Tensor] | None]:
    """One pass of per-example gate gradients for the located ``heads`` and/or ``mlp`` sites: ``(head scores
    [layers, max_heads] with NaN past a layer's heads, MLP scores per layer)``, None for what was not asked.

    Only the gates get gradients; parameters' ``requires_grad`` flags are restored afterwards. The model's mode is
    the caller's (run it under :class:`~.batches.eval_mode`).
    """
    passes = _TaylorPass(model, layout_of(model, heads) if heads is not None else None, heads or [], mlp or [])
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for param, _ in flags:
            param.requires_grad_(False)
        for batch in batches:
            passes.add(batch)
    finally:
        passes.close()
        for param, flag in flags:
            param.requires_grad_(flag)
    if not passes.examples:
        raise ValueError(
            "batches held no example with at least two real tokens; gradient (Taylor) importance needs text"
        )
    return passes.head_scores(), (passes.mlp_scores() if mlp is not None else None)


class _TaylorPass:
    """Sums of ``|d loss / d gate|`` over the examples seen so far, with the head gates installed once."""

    def __init__(self, model: nn.Module, layout: HeadLayout | None, heads: list[AttentionSite], mlp: list[MlpSite]):
        import torch

        self.model, self.layout, self.mlp = model, layout, mlp
        self.device = model_device(model)
        self.head_total = None
        self.gates = None
        if layout is not None:
            self.head_total = torch.zeros(layout.num_layers, layout.max_heads, dtype=torch.float64)
            ones = torch.ones(layout.num_layers, layout.max_heads, device=self.device)
            self.gates = HeadGates(ones, heads, layout)  # all ones: no hooks until per-example values are set
        self.mlp_totals = [torch.zeros(s.size, dtype=torch.float64) for s in mlp]
        self.examples = 0

    def add(self, batch: Any) -> None:
        """Run one batch forward and backward with per-example gates of one; add its gate gradients."""
        import torch

        input_ids, attention_mask = batch_inputs(batch, self.model)
        n = input_ids.shape[0]
        with torch.enable_grad():
            head_values = None
            if self.gates is not None and self.layout is not None:
                shape = (n, self.layout.num_layers, self.layout.max_heads)
                head_values = torch.ones(*shape, device=self.device, requires_grad=True)
                self.gates.set(head_values)
            mlp_values = [torch.ones(n, s.size, device=self.device, requires_grad=True) for s in self.mlp]
            with MlpGates(self.mlp, mlp_values):
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
                losses, has_tokens = per_example_loss(logits, input_ids, attention_mask)
                losses.sum().backward()
        keep = has_tokens.cpu()
        if head_values is not None and self.head_total is not None:
            self.head_total += head_values.grad.detach().abs().double().cpu()[keep].sum(dim=0)
        for total, values in zip(self.mlp_totals, mlp_values):
            total += values.grad.detach().abs().double().cpu()[keep].sum(dim=0)
        self.examples += int(keep.sum())

    def close(self) -> None:
        if self.gates is not None:
            self.gates.remove()

    def head_scores(self) -> torch.Tensor | None:
        if self.head_total is None or self.layout is None:
            return None
        scores = (self.head_total / self.examples).float()
        for layer, count in enumerate(self.layout.query_heads):
            scores[layer, count:] = math.nan
        return scores

    def mlp_scores(self) -> list[torch.Tensor]:
        return [(t / self.examples).float() for t in self.mlp_totals]
