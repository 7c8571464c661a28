"""Which heads and MLP channels to prune: :func:`select_heads` and :func:`select_mlp_channels` turn importance
scores into masks (True = prune), over the model or per layer.

Head scores are ``[layers, max_heads]`` float tensors (higher = more important, NaN = no head there); the lowest
go first, never taking a layer below ``min_heads_per_layer``. Every layer holds at least one head and its heads come
first, so a row that is all NaN, or NaN before a number, is a broken score and is refused rather than read as
"nothing to prune". MLP scores are one tensor per layer (layers may hold different channel counts).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

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

    _check_options(level, scope, min_heads_per_layer)
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or not scores.is_floating_point():
        found = f"{scores.dtype} {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a float tensor [layers, max_heads] (from head_importance), got {found}")
    values = scores.detach().to("cpu", torch.float64)
    exists = ~torch.isnan(values)
    _check_rows(exists)
    pick = _per_layer if scope == "layer" else _over_the_model
    return pick(values, exists, level, min_heads_per_layer).to(scores.device)


def _check_options(level: Any, scope: Any, min_heads_per_layer: Any) -> None:
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


def _per_layer(values: torch.Tensor, exists: torch.Tensor, level: float, minimum: int) -> torch.Tensor:
    """Mask the ``round(level * heads)`` lowest heads of every layer."""
    import torch

    mask = torch.zeros(values.shape, dtype=torch.bool)
    for layer, n in enumerate(exists.sum(dim=1).tolist()):
        count = int(round(level * n))
        if count and n - count < minimum:
            raise ValueError(
                f"level {level} prunes {count} of the {n} heads of layer {layer}, leaving fewer than "
                f"min_heads_per_layer={minimum}; lower level or min_heads_per_layer"
            )
        order = _ascending(values[layer], exists[layer])
        mask[layer, order[:count]] = True
    return mask


def _over_the_model(values: torch.Tensor, exists: torch.Tensor, level: float, minimum: int) -> torch.Tensor:
    """Mask the ``round(level * total heads)`` lowest heads of the model, none taking a layer below ``minimum``."""
    import torch

    mask = torch.zeros(values.shape, dtype=torch.bool)
    total = int(exists.sum())
    count = int(round(level * total))
    remaining = exists.sum(dim=1).tolist()
    width = values.shape[1]
    taken = 0
    for index in _ascending(values.flatten(), exists.flatten()).tolist():
        if taken == count:
            break
        layer, head = divmod(index, width)
        if remaining[layer] - 1 < minimum:
            continue
        mask[layer, head] = True
        remaining[layer] -= 1
        taken += 1
    if taken < count:
        raise ValueError(
            f"level {level} asks for {count} of {total} heads but only {taken} can go with "
            f"min_heads_per_layer={minimum}; lower level or min_heads_per_layer"
        )
    return mask


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


def select_mlp_channels(
    scores: Sequence[torch.Tensor], level: float, *, scope: str = "global", min_channels: int = 1, round_to: int = 1
) -> list[torch.Tensor]:
    """Return bool masks (True = prune) removing the ``level`` share of all channels with the lowest scores.

    ``scope="global"`` ranks all layers' channels together (for scores on one scale, e.g. ``"taylor"``),
    ``"layer"`` removes the share from every layer. Every layer keeps at least ``min_channels``, and the kept
    count of a layer is a multiple of ``round_to`` where possible (GPU kernels favour multiples of 8).
    """
    import torch

    if not 0 <= level < 1:
        raise ValueError(f"level must be in [0, 1) (share of MLP channels to prune), got {level!r}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    for name, value in (("min_channels", min_channels), ("round_to", round_to)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(
                f"{name} must be an int >= 1 (every layer keeps a channel; remove whole layers with remove_layers), "
                f"got {value!r}"
            )
    sizes = [len(s) for s in scores]
    if scope == "layer":
        keep = [max(min_channels, n - int(round(level * n))) for n in sizes]
    else:
        flat = torch.cat([s.float() for s in scores])
        k = int(round(level * flat.numel()))
        order = torch.argsort(flat)[:k]
        layer_of = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        pruned = torch.bincount(layer_of[order], minlength=len(sizes)).tolist()
        keep = [max(min_channels, n - p) for n, p in zip(sizes, pruned)]
    return masks_keeping(scores, [_round(k, n, round_to, min_channels) for k, n in zip(keep, sizes)])


def _round(keep: int, size: int, round_to: int, minimum: int) -> int:
    if round_to <= 1 or keep >= size:
        return keep
    return min(size, max(minimum, round_to * round(keep / round_to)))


def masks_keeping(scores: Sequence[torch.Tensor], keep: Sequence[int]) -> list[torch.Tensor]:
    """Return per-layer bool masks (True = prune) keeping the ``keep[i]`` highest-scored channels of layer ``i``."""
    import torch

    masks = []
    for layer_scores, k in zip(scores, keep):
        mask = torch.ones(len(layer_scores), dtype=torch.bool)
        mask[torch.argsort(layer_scores.float(), descending=True)[:k]] = False
        masks.append(mask)
    return masks
