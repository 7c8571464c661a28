"""Reversible head gating: scale each head's slice of the attention output projection's input.

A forward pre-hook on every layer's output projection (GPT-2 ``c_proj``, OPT ``out_proj``, GPT-NeoX/BLOOM
``dense``, Llama-family ``o_proj``) multiplies the concatenated head outputs, viewed as ``[..., heads, head_dim]``,
by one gate per head. That is the same wherever attention is computed (sdpa, eager, flash), so gating works
under every attention implementation. Gate 0 removes a head's contribution exactly; gate 1 keeps it.

Layers whose gates are all ones and do not require grad get no hook at all, so all-ones gates cost nothing
(torch's fast call path stays on). After editing ``HeadGates.gates`` in place, call :meth:`HeadGates.refresh`
(or assign through :meth:`HeadGates.set`) so that the hooks follow the new values. Gates must be finite where
heads exist (a NaN gate would turn every logit NaN); entries past a layer's heads are never read.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..runtime.modules import model_device
from .layout import AttentionSite, HeadLayout, attention_sites, layout_of, validate_mask

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

logger = logging.getLogger(__name__)


class HeadGates:
    """Gates on the heads of a model, live until :meth:`remove` (or the end of a ``with`` block).

    ``gates`` is a float tensor ``[layers, max_heads]`` (1 = keep, 0 = gate off; values in between scale the head)
    on the model's device; it may require grad, which is how gradient importance is measured. A ``[batch, layers,
    max_heads]`` tensor gates each example of a batch separately (per-example gradients in one backward pass).
    """

    def __init__(self, gates: torch.Tensor, sites: list[AttentionSite], layout: HeadLayout) -> None:
        self.layout = layout
        self._sites = sites
        self._gates: torch.Tensor = gates
        self._active: list[bool] = [False] * len(sites)
        self._handles: list[Any] = [None] * len(sites)
        self._removed = False
        self.set(gates)

    @property
    def gates(self) -> torch.Tensor:
        """The gate values, ``[layers, max_heads]`` (or ``[batch, layers, max_heads]``)."""
        return self._gates

    @gates.setter
    def gates(self, values: torch.Tensor) -> None:
        self.set(values)

    @property
    def active(self) -> bool:
        """True until :meth:`remove` (layers whose gates are all ones hold no hook even while active)."""
        return not self._removed

    def set(self, values: torch.Tensor) -> HeadGates:
        """Use ``values`` (``[layers, max_heads]`` or ``[batch, layers, max_heads]``) as the gates; return self.

        The tensor is used as is (not copied), so a leaf that requires grad collects the gradient.
        """
        import torch

        shape = (self.layout.num_layers, self.layout.max_heads)
        if not isinstance(values, torch.Tensor) or not values.is_floating_point() or tuple(values.shape[-2:]) != shape:
            found = (
                f"{values.dtype} {tuple(values.shape)}" if isinstance(values, torch.Tensor) else type(values).__name__
            )
            raise ValueError(
                f"gates must be a float tensor of shape {shape} (or [batch, *{shape}]), got {found}; "
                "for a boolean prune mask use gate_heads(model, mask)"
            )
        if values.dim() not in (2, 3):
            raise ValueError(f"gates must have 2 or 3 dimensions, got shape {tuple(values.shape)}")
        self._check_finite(values)
        self._gates = values
        self.refresh()
        return self

    def _check_finite(self, values: torch.Tensor) -> None:
        """Refuse NaN or infinite gates on existing heads (they would make every logit NaN)."""
        import torch

        g = values.detach()
        for site in self._sites:
            bad = (~torch.isfinite(g[..., site.index, : site.n_q])).nonzero()
            if len(bad):
                at = bad[0].tolist()
                value = g[(*at[:-1], site.index, at[-1])].item()
                raise ValueError(
                    f"gates must be finite, got {value} for head {at[-1]} of layer {site.index}"
                    f"{f' (example {at[0]})' if g.dim() == 3 else ''}; 1 keeps a head, 0 gates it off "
                    "(use torch.nan_to_num or a bool mask)"
                )

    def refresh(self) -> None:
        """Recompute which layers need the multiply (call after editing ``gates`` in place).

        Raises ``ValueError`` (and leaves the hooks as they were) if the edited gates are not finite.
        """
        g = self._gates
        self._check_finite(g)
        if g.requires_grad or g.dim() == 3:
            self._active = [True] * len(self._sites)
        else:
            self._active = [bool((g[s.index, : s.n_q] != 1).any()) for s in self._sites]
        if self._removed:
            return
        for site, active in zip(self._sites, self._active):
            handle = self._handles[site.index]
            if active and handle is None:
                hook = _make_hook(self, site.index, site.n_q, site.head_dim)
                self._handles[site.index] = site.out_proj.register_forward_pre_hook(hook)
            elif not active and handle is not None:
                handle.remove()
                self._handles[site.index] = None

    def remove(self) -> None:
        """Remove the hooks: the model computes exactly as before gating. Safe to call twice."""
        for handle in self._handles:
            if handle is not None:
                handle.remove()
        self._handles = [None] * len(self._sites)
        self._removed = True

    def __enter__(self) -> HeadGates:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        gated = int((self._gates.detach() == 0).sum()) if self._gates.dim() == 2 else "per-example"
        return f"HeadGates({state}, {self.layout.num_layers} layers, gated off: {gated})"


def _make_hook(owner: HeadGates, layer: int, n_heads: int, head_dim: int) -> Any:
    """Return the pre-hook of one layer: one multiply of a ``[..., heads, head_dim]`` view, no loop over heads."""

    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0]
        g = owner._gates
        if g.dim() == 2:
            gate = g[layer, :n_heads].unsqueeze(-1)  # [heads, 1]
        else:  # per example: [batch, 1 ..., heads, 1]
            gate = g[:, layer, :n_heads].reshape(g.shape[0], *([1] * (x.dim() - 2)), n_heads, 1)
        gate = gate.to(dtype=x.dtype, device=x.device)
        gated = (x.unflatten(-1, (n_heads, head_dim)) * gate).flatten(-2)
        return (gated, *args[1:])

    hook._colab_helpers_gate = True  # type: ignore[attr-defined]  # lets remove_heads spot live gates
    return hook


def has_gates(module: nn.Module) -> bool:
    """True if a :class:`HeadGates` hook is installed on ``module``."""
    return any(getattr(h, "_colab_helpers_gate", False) for h in module._forward_pre_hooks.values())


def gate_heads(
    model: nn.Module,
    mask: torch.Tensor | None = None,
    *,
    gates: torch.Tensor | None = None,
    requires_grad: bool = False,
) -> HeadGates:
    """Gate heads reversibly and return the :class:`HeadGates` handle (also a context manager).

    ``mask`` is a bool ``[layers, max_heads]`` tensor, True = gate the head off (as from :func:`select_heads`);
    or pass float ``gates`` directly (1 = keep). With neither, all gates are ones (outputs unchanged).
    ``requires_grad=True`` makes the gates a leaf that collects ``d loss / d gate`` on ``backward()``.
    Works under sdpa and eager attention; call ``.remove()`` (or leave the ``with`` block) to undo.
    """
    import torch

    if mask is not None and gates is not None:
        raise ValueError("pass either mask (bool, True = prune) or gates (float, 1 = keep), not both")
    sites = attention_sites(model)
    layout = layout_of(model, sites)
    device = model_device(model)
    if gates is None:
        keep = torch.ones(layout.num_layers, layout.max_heads, dtype=torch.bool)
        if mask is not None:
            keep = ~validate_mask(mask, layout)
        gates = keep.to(device=device, dtype=torch.float32)
    elif isinstance(gates, torch.Tensor) and gates.device != device and not gates.requires_grad:
        gates = gates.to(device)  # a leaf that requires grad stays where it is: the hook moves a view
    if requires_grad and isinstance(gates, torch.Tensor) and not gates.requires_grad:
        gates = gates.detach().clone().requires_grad_(True)
    return HeadGates(gates, sites, layout)
