"""Which heads to prune: ``select_heads`` turns importance scores into a mask, over the model or per layer.

Scores are ``[layers, max_heads]`` float tensors (higher = more important, NaN = no head there); the lowest go
first, never taking a layer below ``min_heads_per_layer``. Every layer holds at least one head and its heads come
first, so a row that is all NaN, or NaN before a number, is a broken score and is refused rather than read as
"nothing to prune".
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

SCOPES = ("global", "layer")  # one ranking over the whole model, or the same share in every layer


def select_heads(
    scores: torch.Tensor,
    level: float,
    scope: str = "global",
    min_heads_per_layer: int = 1,
) -> torch.Tensor:
    """Return a bool tensor shaped like ``scores``, True = prune: the lowest-scoring heads first.

    ``scope="global"`` prunes exactly ``round(level * total_heads)`` heads over the whole model, skipping heads
    that would leave a layer with fewer than ``min_heads_per_layer`` and taking the next lowest instead;
    ``scope="layer"`` prunes ``round(level * heads)`` in each layer. NaN scores (no head) are never selected;
    ties go to the earlier layer and head. ``level`` must be a number in [0, 1). Raises ``ValueError`` when the
    count cannot be met without going below ``min_heads_per_layer``, and when ``scores`` hold no head or NaN where
    a head must be (a layer of all NaN, or NaN before a number in a row).
    """
    import torch

    if isinstance(level, bool) or not isinstance(level, numbers.Real):
        raise ValueError(f"level must be a number in [0, 1), got {level!r} (a {type(level).__name__})")
    if not 0 <= level < 1:
        raise ValueError(f"level must be in [0, 1), got {level}")
    if not isinstance(scope, str) or scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if isinstance(min_heads_per_layer, bool) or not isinstance(min_heads_per_layer, int) or min_heads_per_layer < 0:
        raise ValueError(
            f"min_heads_per_layer must be an int >= 0, got {min_heads_per_layer!r} "
            f"(a {type(min_heads_per_layer).__name__})"
        )
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or not scores.is_floating_point():
        found = f"{scores.dtype} {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a float tensor [layers, max_heads] (from head_importance), got {found}")
    values = scores.detach().to("cpu", torch.float64)
    exists = ~torch.isnan(values)
    _check_rows(exists)
    heads = exists.sum(dim=1).tolist()
    mask = torch.zeros(values.shape, dtype=torch.bool)
    if scope == "layer":
        for layer, n in enumerate(heads):
            count = int(round(level * n))
            if count and n - count < min_heads_per_layer:
                raise ValueError(
                    f"level {level} prunes {count} of the {n} heads of layer {layer}, leaving fewer than "
                    f"min_heads_per_layer={min_heads_per_layer}; lower level or min_heads_per_layer"
                )
            order = _ascending(values[layer], exists[layer])
            mask[layer, order[:count]] = True
        return mask.to(scores.device)
    total = int(exists.sum())
    count = int(round(level * total))
    flat_order = _ascending(values.flatten(), exists.flatten())
    remaining = list(heads)
    width = values.shape[1]
    taken = 0
    for index in flat_order.tolist():
        if taken == count:
            break
        layer, head = divmod(index, width)
        if remaining[layer] - 1 < min_heads_per_layer:
            continue
        mask[layer, head] = True
        remaining[layer] -= 1
        taken += 1
    if taken < count:
        raise ValueError(
            f"level {level} asks for {count} of {total} heads but only {taken} can go with "
            f"min_heads_per_layer={min_heads_per_layer}; lower level or min_heads_per_layer"
        )
    return mask.to(scores.device)


def _check_rows(exists: torch.Tensor) -> None:
    """Refuse scores whose NaN entries cannot mean "no head": every layer has heads, and they come first."""
    if exists.numel() == 0 or not bool(exists.any()):
        raise ValueError(
            f"scores hold no head: all {exists.numel()} entries of the {tuple(exists.shape)} tensor are NaN (NaN "
            "means no head); the importance pass produced no score: check its batches and the model's outputs "
            "for NaN, or use strategy='magnitude' (needs no data)"
        )
    for layer, row in enumerate(exists.tolist()):
        heads = sum(row)
        if heads == 0 or not all(row[:heads]):
            last = len(row) - 1 - row[::-1].index(True) if heads else 0
            where = "every entry" if heads == 0 else f"head {row.index(False)}, before head {last}"
            raise ValueError(
                f"scores of layer {layer} are NaN at {where}, where a head exists (NaN may only follow a layer's "
                "heads): the scores are broken, e.g. a NaN loss or NaN in the model's outputs; recompute them "
                "(check the data and the model for NaN) rather than pruning by them"
            )


def _ascending(values: torch.Tensor, exists: torch.Tensor) -> torch.Tensor:
    """Return the indices of existing entries from lowest to highest value (stable: ties keep index order)."""
    import torch

    index = exists.nonzero().flatten()
    order = torch.sort(values[index], stable=True).indices
    return index[order]
