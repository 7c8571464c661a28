"""Least-squares reconstruction of the output projections after pruning: what :func:`~.compress.compress` does
with ``reconstruct=True``.

Removing heads or MLP channels drops columns of the projection reading them (``o_proj`` / ``down_proj`` and their
equivalents). The kept columns can absorb part of what the removed ones carried, because channels are correlated:
with ``x`` the projection's input on calibration tokens, ``G = E[x x^T]``, ``S`` the kept and ``R`` the removed
columns, the refit

    W'_S = (W G[:, S] + lambda W_S) (G[S, S] + lambda I)^-1  =  W_S + W_R G[R, S] (G[S, S] + lambda I)^-1

minimises ``E||W x - W'_S x_S||^2 + lambda ||W'_S - W_S||^2``: the layer's output error, with a ridge that pulls
towards the kept weights as they are (a ridge towards zero, ``W G[:, S] (G[S, S] + lambda I)^-1``, shrinks the kept
weights where the few calibration tokens vary little, and measured worse than no refit at all). A projection
with a bias refits it too: the same solve on the covariance ``G - mu mu^T``, then ``b' = b + W mu - W'_S mu_S``,
the least-squares fit with an intercept. ``lambda`` is ``DAMPING`` times the mean of ``diag(G[S, S])``.

The Grams are collected by :class:`GramCollector`, forward pre-hooks on the output projections that sum ``x x^T``
over real tokens (per batch in the input's dtype, into float64 totals on the CPU: ``width^2 * 8`` bytes per layer,
19 MB for an MLP of 1536). :func:`~.allocation.best_plan` opens it around its Taylor pass, so no extra forward is
needed when heads or channels are scored by Taylor; otherwise :func:`collect_grams` makes one pass. The Grams come
from the model before pruning; each layer is refit on its own (errors of earlier layers are not propagated).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..runtime.modules import HookHandles
from .batches import batch_inputs
from .layout import AttentionSite
from .mlp import MlpSite
from .removal import plan_layer
from .surgery import weight_out_in

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

# lambda over the mean diagonal of G[S, S]. Measured on SmolLM2-135M at 4,096 calibration tokens (perplexity after
# the refit against the damping): 1e-3 and 1e-2 overfit the calibration tokens, 0.3 to 1 did best, 3 gave some back
DAMPING = 0.5


@dataclass
class _Gram:
    """Running sums over the real tokens seen: ``x x^T`` and ``x`` (float64, CPU), and the token count."""

    outer: Any
    total: Any
    tokens: int = 0

    def add(self, rows: torch.Tensor) -> None:
        import torch

        if not rows.is_floating_point() or rows.dtype in (torch.float16, torch.bfloat16):
            rows = rows.float()  # half-precision sums of a few thousand tokens lose digits
        self.outer += (rows.T @ rows).to("cpu", torch.float64)
        self.total += rows.sum(dim=0).to("cpu", torch.float64)
        self.tokens += int(rows.shape[0])

    def moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(E[x x^T], E[x])`` over the tokens seen."""
        count = max(self.tokens, 1)
        return self.outer / count, self.total / count


class GramCollector(HookHandles):
    """Sums ``x x^T`` of the inputs of the heads' and MLPs' output projections over real tokens, while open.

    ``heads`` / ``mlp``: the located sites (None: not that axis). The attention mask of each forward is read from
    the model's own call (a keyword pre-hook), so padded positions stay out. Use as a context manager around the
    forwards to count; :attr:`heads` and :attr:`mlp` map a layer index to its sums.
    """

    def __init__(self, model: nn.Module, heads: list[AttentionSite] | None, mlp: list[MlpSite] | None) -> None:
        import torch

        super().__init__()
        self._mask: Any = None
        self.heads: dict[int, _Gram] = {}
        self.mlp: dict[int, _Gram] = {}
        self.add(model.register_forward_pre_hook(self._read_mask, with_kwargs=True))
        for sums, sites in ((self.heads, heads or []), (self.mlp, mlp or [])):
            for site in sites:
                proj = site.out_proj if isinstance(site, AttentionSite) else site.output
                width = weight_out_in(proj).shape[1]
                sums[site.index] = _Gram(torch.zeros(width, width, dtype=torch.float64),
                                         torch.zeros(width, dtype=torch.float64))  # fmt: skip
                self.add(proj.register_forward_pre_hook(self._counter(sums[site.index])))

    def _read_mask(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._mask = kwargs.get("attention_mask")

    def _counter(self, gram: _Gram) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach()  # the Taylor pass runs with gradients on: the sums need none
            rows = x.reshape(-1, x.shape[-1])  # [batch, seq, width]; OPT's MLP sees [batch * seq, width] already
            mask = self._mask
            if mask is not None and mask.numel() == rows.shape[0]:
                rows = rows[mask.reshape(-1).to(rows.device).bool()]
            gram.add(rows)

        return hook


def collect_grams(
    model: nn.Module, batches: list[Any], heads: list[AttentionSite] | None, mlp: list[MlpSite] | None
) -> GramCollector:
    """One forward pass over ``batches`` (no grad) with a :class:`GramCollector` open; return its sums."""
    import torch

    with torch.no_grad(), GramCollector(model, heads, mlp) as grams:
        for batch in batches:
            input_ids, attention_mask = batch_inputs(batch, model)
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return grams


@dataclass
class OutputError:
    """Squared output error of the pruned output projections on the calibration tokens, summed over layers:
    ``energy`` (``E||W x||^2`` before pruning), ``removed`` (plain removal), ``reconstructed`` (after the refit)."""

    energy: float = 0.0
    removed: float = 0.0
    reconstructed: float = 0.0

    def add(self, other: OutputError) -> None:
        self.energy += other.energy
        self.removed += other.removed
        self.reconstructed += other.reconstructed

    def shares(self) -> dict[str, float]:
        """Both errors as shares of the output energy: ``{"removed": ..., "reconstructed": ...}``."""
        scale = self.energy if self.energy > 0 else 1.0
        return {"removed": self.removed / scale, "reconstructed": self.reconstructed / scale}


@dataclass
class _Refit:
    """New columns (the kept ones, in the order removal keeps them) and bias for one output projection."""

    proj: nn.Module
    weight: Any
    bias: Any
    error: OutputError = field(default_factory=OutputError)


def refit_columns(
    weight: torch.Tensor, bias: torch.Tensor | None, gram: torch.Tensor, mean: torch.Tensor, keep: torch.Tensor,
    damping: float = DAMPING,
) -> tuple[torch.Tensor, torch.Tensor | None, OutputError]:
    """Least-squares columns ``keep`` of ``weight`` (``[out, in]``) given ``gram = E[x x^T]`` and ``mean = E[x]``
    (float64): ``(new columns [out, len(keep)], new bias or None, the output error)``, all float64."""
    import torch

    w = weight.detach().to("cpu", torch.float64)
    keep = keep.to("cpu")
    product = w @ gram  # W G: the right-hand side of the solve and every error below reuse it
    rhs = product[:, keep]
    a = gram[keep][:, keep]
    if bias is not None:  # an intercept fits the mean: solve on the covariance G - mu mu^T
        rhs = rhs - torch.outer(w @ mean, mean[keep])
        a = a - torch.outer(mean[keep], mean[keep])
    scale = float(a.diagonal().mean())
    new_w = w[:, keep]
    if scale > 0:  # else every kept input is constant: nothing to fit
        ridge = damping * scale
        a = a + ridge * torch.eye(len(keep), dtype=torch.float64)
        rhs = rhs + ridge * w[:, keep]  # the ridge pulls towards the kept weights, not towards zero
        factor, info = torch.linalg.cholesky_ex(a)
        if int(info) == 0:
            new_w = torch.cholesky_solve(rhs.T, factor).T
    new_b = None
    if bias is not None:
        new_b = bias.detach().to("cpu", torch.float64) + w @ mean - new_w @ mean[keep]
    return new_w, new_b, _error(w, product, bias, gram, mean, keep, new_w, new_b)


def _error(
    w: torch.Tensor, product: torch.Tensor, bias: Any, gram: torch.Tensor, mean: torch.Tensor, keep: torch.Tensor,
    new_w: torch.Tensor, new_b: Any,
) -> OutputError:
    """``E||y - y'||^2`` for plain removal and for the refit, from the moments alone (no forward)."""
    import torch

    dropped = torch.ones(w.shape[1], dtype=torch.bool)
    dropped[keep] = False
    w_r = w[:, dropped]
    removed = float(((w_r @ gram[dropped][:, dropped]) * w_r).sum())
    delta = w.clone()
    delta[:, keep] -= new_w
    refit = float(((product - new_w @ gram[keep]) * delta).sum())  # delta G delta^T, with W G computed once
    if new_b is not None:  # y - y' = delta x + (b - b')
        shift = bias.detach().to("cpu", torch.float64) - new_b
        refit += float(2 * shift @ (delta @ mean) + shift @ shift)
    return OutputError(energy=float((product * w).sum()), removed=removed, reconstructed=max(refit, 0.0))


def plan_refits(
    grams: GramCollector, heads: list[AttentionSite], mlp: list[MlpSite], head_mask: Any, mlp_masks: list[Any],
    skipped: tuple[int, ...],
) -> dict[str, list[_Refit]]:
    """The refits of every layer that loses heads or MLP channels and stays (``skipped`` layers go whole), computed
    from the current weights before anything is removed: ``{"heads": [...], "mlp": [...]}``."""
    import torch

    refits: dict[str, list[_Refit]] = {"heads": [], "mlp": []}
    for site in heads:
        row = head_mask[site.index, : site.n_q].tolist() if head_mask is not None else []
        if site.index in skipped or site.index not in grams.heads or not any(row):
            continue
        layer = plan_layer(row, site.n_q, site.n_kv)  # the heads removal keeps, padding (zeroed) among them
        live = [position for position in layer.keep_q if position not in layer.padding]
        hd = site.head_dim
        cols = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in live])
        refit = _refit(site.out_proj, grams.heads[site.index], cols)
        if layer.padding:  # padding heads keep zero columns
            full = torch.zeros(refit.weight.shape[0], len(layer.keep_q) * hd, dtype=refit.weight.dtype)
            slots = torch.cat([torch.arange(j * hd, (j + 1) * hd) for j, h in enumerate(layer.keep_q) if h in live])
            full[:, slots] = refit.weight
            refit.weight = full
        refits["heads"].append(refit)
    for site, mask in zip(mlp, mlp_masks):
        if site.index in skipped or site.index not in grams.mlp or not bool(mask.any()):
            continue
        refits["mlp"].append(_refit(site.output, grams.mlp[site.index], (~mask).nonzero().flatten()))
    return refits


def _refit(proj: nn.Module, gram: _Gram, keep: torch.Tensor) -> _Refit:
    second, mean = gram.moments()
    bias = getattr(proj, "bias", None)
    weight, new_bias, error = refit_columns(weight_out_in(proj), bias, second, mean, keep)
    return _Refit(proj, weight, new_bias, error)


def write_refits(refits: dict[str, list[_Refit]]) -> dict[str, OutputError]:
    """Write the refits into the projections, now sliced to the kept columns; return the output errors per axis."""
    import torch

    errors = {}
    with torch.no_grad():
        for axis, items in refits.items():
            errors[axis] = OutputError()
            for refit in items:
                weight = weight_out_in(refit.proj)  # a view: Conv1D's [in, out] storage is written through it
                if tuple(weight.shape) != tuple(refit.weight.shape):
                    raise RuntimeError(
                        f"refit of shape {tuple(refit.weight.shape)} does not fit the pruned projection "
                        f"{tuple(weight.shape)}: removal kept other columns than planned"
                    )
                weight.copy_(refit.weight.to(weight.dtype))
                if refit.bias is not None:
                    refit.proj.bias.copy_(refit.bias.to(refit.proj.bias.dtype))
                errors[axis].add(refit.error)
    return errors
