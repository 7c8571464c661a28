"""Which heads to prune: ``select_heads`` turns importance scores into a mask, over the model or per layer.

Scores are ``[layers, max_heads]`` float tensors (higher = more important, NaN = no head there); the lowest go
first, never taking a layer below ``min_heads_per_layer``.
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
    ties go to the earlier layer and head. ``level`` must be in [0, 1). Raises ``ValueError`` when the count
    cannot be met without going below ``min_heads_per_layer``.
    """
    import torch

    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 <= level < 1:
        raise ValueError(f"level must be in [0, 1), got {level}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    if isinstance(min_heads_per_layer, bool) or not isinstance(min_heads_per_layer, int) or min_heads_per_layer < 0:
        raise ValueError(f"min_heads_per_layer must be an int >= 0, got {min_heads_per_layer!r}")
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or not scores.is_floating_point():
        found = f"{scores.dtype} {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a float tensor [layers, max_heads] (from head_importance), got {found}")
    values = scores.detach().to("cpu", torch.float64)
    exists = ~torch.isnan(values)
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


def _ascending(values: torch.Tensor, exists: torch.Tensor) -> torch.Tensor:
    """Return the indices of existing entries from lowest to highest value (stable: ties keep index order)."""
    import torch

    index = exists.nonzero().flatten()
    order = torch.sort(values[index], stable=True).indices
    return index[order]
