"""ALiBi after head removal: BLOOM and Falcon-RW build per-head ALiBi biases for all of the model's original heads
and hand them to every attention layer; a layer that lost heads gets only the rows of the heads it keeps, through
a forward pre-hook (:func:`install_alibi_hooks`) that :mod:`.removal` installs after slicing and on load.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from .layout import AttentionSite


class _AlibiSlicer:
    """Forward pre-hook (with kwargs) giving a pruned attention module only its kept heads' ALiBi biases.

    BLOOM builds ``alibi`` as ``[batch * heads, 1, keys]``, older Falcon as ``[batch, heads, 1, keys]``, for all of
    the model's original heads; each layer keeps the rows of its own heads. Falcon also folds the biases into a
    ``[batch, heads, queries, keys]`` attention mask (from transformers 5.25 it passes no ``alibi`` at all), which is
    cut to the kept heads the same way; a mask with one row for all heads is left alone.
    """

    def __init__(self, kept: list[int], n_full: int, positions: dict[str, int] | None = None) -> None:
        self.kept = list(kept)
        self.n_full = n_full
        self.positions = positions if positions is not None else {"alibi": 2, "attention_mask": 3}
        self._index: dict[Any, Any] = {}

    def _rows(self, device: Any) -> Any:
        index = self._index.get(device)
        if index is None:
            import torch

            index = self._index[device] = torch.tensor(self.kept, dtype=torch.long, device=device)
        return index

    def _sliced(self, name: str, value: Any) -> Any:
        """Return ``value`` cut to the kept heads, or None when it carries no per-head rows."""
        if value is None or not hasattr(value, "dim"):
            return None
        if name == "attention_mask":
            per_head = value.dim() == 4 and value.shape[1] == self.n_full > 1
            return value.index_select(1, self._rows(value.device)) if per_head else None
        if value.dim() == 4 and value.shape[1] == self.n_full:  # Falcon: [batch, heads, 1, keys]
            return value.index_select(1, self._rows(value.device))
        rows, rest = value.shape[0], value.shape[1:]  # BLOOM: [batch * heads, 1, keys]
        if rows % self.n_full:
            raise RuntimeError(f"alibi has {rows} rows, not a multiple of the model's {self.n_full} heads")
        batch = rows // self.n_full
        return value.reshape(batch, self.n_full, *rest).index_select(1, self._rows(value.device)).reshape(-1, *rest)

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        args, kwargs = list(args), dict(kwargs)
        changed = False
        for name, at in self.positions.items():
            positional = name not in kwargs and len(args) > at
            new = self._sliced(name, args[at] if positional else kwargs.get(name))
            if new is None:
                continue
            changed = True
            if positional:
                args[at] = new
            else:
                kwargs[name] = new
        return (tuple(args), kwargs) if changed else None


def install_alibi_hooks(sites: list[AttentionSite], record: dict[str, Any]) -> None:
    """Give every ALiBi attention module of ``sites`` (``spec.alibi``) the biases of the heads ``record`` keeps in
    its layer: update an installed slicer, or install one where heads were removed."""
    for site in sites:
        if not site.spec.alibi:
            continue
        kept = list(record["kept_heads"][site.index])
        n_full = int(record["original_query_heads"][site.index])
        existing = [h for h in site.attn._forward_pre_hooks.values() if isinstance(h, _AlibiSlicer)]
        if existing:
            existing[0].kept, existing[0]._index = kept, {}
        elif kept != list(range(n_full)):
            site.attn.register_forward_pre_hook(_AlibiSlicer(kept, n_full, _positions(site.attn)), with_kwargs=True)


def _positions(attn: nn.Module) -> dict[str, int]:
    """Return where ``alibi`` and ``attention_mask`` sit among the attention forward's arguments (those it has)."""
    try:
        names = list(inspect.signature(attn.forward).parameters)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return {"alibi": 2, "attention_mask": 3}
    return {name: names.index(name) for name in ("alibi", "attention_mask") if name in names}
