"""The pruning record: which of the original heads each layer keeps, stored on ``model.config`` and in
``pruning.json``; checked when read back, and the guard against masks built for the heads a model held before.

A record holds, per layer, the kept query heads and key/value heads (original indices) and the zeroed padding
heads (:mod:`.removal`); ``original_query_heads`` / ``original_kv_heads`` / ``head_dim`` say what the unpruned
model had, so a pruned model's shapes can be rebuilt from its config (:func:`~colab_helpers.pruning.load_pruned`).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from .layout import RECORD_ATTR, HeadLayout, pruning_record

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

RECORD_VERSION = 1
_RECORD_KEYS = (
    "architecture",
    "head_dim",
    "original_query_heads",
    "original_kv_heads",
    "kept_heads",
    "kept_kv_heads",
    "padding_heads",
)


def current_record(model: nn.Module, layout: HeadLayout) -> dict[str, Any]:
    """Return the model's pruning record, or the identity record of an unpruned model."""
    record = pruning_record(model)
    if record is None:
        return {
            "format_version": RECORD_VERSION,
            "architecture": layout.architecture,
            "head_dim": layout.head_dim,
            "original_query_heads": list(layout.query_heads),
            "original_kv_heads": list(layout.kv_heads),
            "kept_heads": [list(range(n)) for n in layout.query_heads],
            "kept_kv_heads": [list(range(n)) for n in layout.kv_heads],
            "padding_heads": [[] for _ in layout.query_heads],
        }
    counts = [len(k) for k in record["kept_heads"]], [len(k) for k in record["kept_kv_heads"]]
    if counts != (list(layout.query_heads), list(layout.kv_heads)):
        raise RuntimeError(
            f"model.config.{RECORD_ATTR} says the layers hold {counts[0]} query heads but they hold "
            f"{list(layout.query_heads)}; the model was changed outside remove_heads. Delete the attribute only if "
            "the model is unpruned"
        )
    return copy.deepcopy(record)


def had_removals(record: dict[str, Any] | None) -> bool:
    if record is None:
        return False
    original = record["original_query_heads"]
    return any(len(k) != n for k, n in zip(record["kept_heads"], original)) or any(record["padding_heads"])


def _stale(layout: HeadLayout, record: dict[str, Any], problem: str) -> ValueError:
    return ValueError(
        f"{problem}. The model already had heads removed: its layers now hold {list(layout.query_heads)} query heads "
        f"(originally {list(record['original_query_heads'])}), and masks index the heads a layer holds now, so an "
        "old mask would remove other heads. Build the next mask from the pruned model: torch.zeros(layout.num_layers, "
        "layout.max_heads, dtype=torch.bool) with layout = head_layout(model), or select_heads(head_importance(model, "
        "...), level)"
    )


def check_mask_is_current(mask: Any, layout: HeadLayout, record: dict[str, Any] | None) -> None:
    """Refuse, with the reason, a mask built for the model before an earlier removal (its shape or its heads)."""
    import torch

    if not had_removals(record) or not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return
    assert record is not None
    original = (len(record["original_query_heads"]), max(record["original_query_heads"]))
    current = (layout.num_layers, layout.max_heads)
    if tuple(mask.shape) == original != current:
        raise _stale(layout, record, f"mask has shape {tuple(mask.shape)}, the shape before the earlier removal, "
                     f"not the current {current}")  # fmt: skip
    if tuple(mask.shape) == current and mask.dtype == torch.bool:
        for layer, n in enumerate(layout.query_heads):
            gone = mask[layer, n:].nonzero().flatten().tolist()
            if gone:
                raise _stale(layout, record, f"mask[{layer}, {n + gone[0]}] is True but layer {layer} holds only "
                             f"{n} heads now")  # fmt: skip


def check_mask_not_repeated(mask: torch.Tensor, record: dict[str, Any] | None) -> None:
    """Refuse the mask that the last removal applied when, passed again, its indices point at other heads now.

    (Where the positions still name the same heads, e.g. heads kept as zeroed padding, a repeat changes nothing.)
    """
    last = (record or {}).get("last_mask")
    if not isinstance(last, list) or not any(last) or len(last) != mask.shape[0] or record is None:
        return
    pruned = [mask[layer].nonzero().flatten().tolist() for layer in range(mask.shape[0])]
    named_now = [[record["kept_heads"][i][h] for h in positions] for i, positions in enumerate(pruned)]
    if pruned == [list(heads) for heads in last] and named_now != record.get("last_mask_heads"):
        raise ValueError(
            "mask is the one the last remove_heads applied to this model; its heads are already gone and, since "
            "masks index the heads a layer holds now, passing it again would remove other heads "
            f"(layers now hold {[len(k) for k in record['kept_heads']]} heads). Build the next mask from the pruned "
            "model (head_layout(model), head_importance(model, ...)); if it was built for the current heads and only "
            "happens to equal the last one, pass allow_repeat=True"
        )


def check_record(record: Any) -> None:
    """Raise ``ValueError`` saying what is wrong when ``record`` is not a consistent pruning record."""
    if not isinstance(record, dict):
        raise ValueError(f"the pruning record must be a JSON object, got {type(record).__name__}")
    missing = [k for k in _RECORD_KEYS if k not in record]
    if missing:
        raise ValueError(f"the pruning record lacks {', '.join(missing)}")

    def int_list(name: str, value: Any) -> list[int]:
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ValueError(f"{name} must be a list of integers, got {value!r}")
        return value

    original_q = int_list("original_query_heads", record["original_query_heads"])
    original_kv = int_list("original_kv_heads", record["original_kv_heads"])
    layers = len(original_q)
    if not layers or len(original_kv) != layers:
        raise ValueError(
            f"original_query_heads and original_kv_heads need one entry per layer, got {original_q} / {original_kv}"
        )
    if not isinstance(record["head_dim"], int) or record["head_dim"] < 1:
        raise ValueError(f"head_dim must be a positive integer, got {record['head_dim']!r}")
    for key in ("kept_heads", "kept_kv_heads", "padding_heads"):
        if not isinstance(record[key], list) or len(record[key]) != layers:
            raise ValueError(f"{key} needs one list per layer ({layers} layers), got {record[key]!r}")
    for i in range(layers):
        n_q, n_kv = original_q[i], original_kv[i]
        if n_q < 1 or n_kv < 1 or n_q % n_kv:
            raise ValueError(f"layer {i}: {n_q} query heads do not split into {n_kv} key/value groups")
        kept = int_list(f"kept_heads[{i}]", record["kept_heads"][i])
        kept_kv = int_list(f"kept_kv_heads[{i}]", record["kept_kv_heads"][i])
        padding = int_list(f"padding_heads[{i}]", record["padding_heads"][i])
        for name, values, limit in (("kept_heads", kept, n_q), ("kept_kv_heads", kept_kv, n_kv)):
            if not values or values != sorted(set(values)) or values[0] < 0 or values[-1] >= limit:
                raise ValueError(
                    f"{name}[{i}] must be increasing head indices in [0, {limit}) and not empty, got {values}"
                )
        if not set(padding) <= set(kept):
            raise ValueError(f"padding_heads[{i}] {padding} names heads missing from kept_heads[{i}] {kept}")
        group = n_q // n_kv
        per_group = [sum(1 for h in kept if h // group == g) for g in kept_kv]
        if {h // group for h in kept} != set(kept_kv) or len(set(per_group)) != 1:
            raise ValueError(
                f"layer {i}: kept query heads {kept} do not fill the kept key/value heads {kept_kv} evenly "
                f"({group} query heads per key/value head originally)"
            )
