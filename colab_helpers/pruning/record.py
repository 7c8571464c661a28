"""The pruning record: which of the original heads each layer keeps, stored on ``model.config`` and in
``pruning.json``; checked when read back, and the guard against masks built for the heads a model held before.

A record holds, per layer, the kept query heads and key/value heads (original indices) and the zeroed padding
heads (:mod:`.removal`); ``original_query_heads`` / ``original_kv_heads`` / ``head_dim`` say what the unpruned
model had, so a pruned model's shapes can be rebuilt from its config (:func:`~colab_helpers.pruning.load_pruned`).
Version 2 adds, where MLP channels or whole layers were removed (:mod:`.mlp`, :mod:`.layers`): ``mlp_sizes`` and
``original_mlp_sizes`` (intermediate channels per layer: transformers configs hold one ``intermediate_size``), and
``kept_layers`` / ``original_num_layers`` (which of the original decoder layers remain). Every per-layer list has
one entry per layer the model holds *now*: removing a layer removes its entries.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from .layout import HeadLayout

RECORD_VERSION = 2
RECORD_ATTR = "colab_helpers_pruning"  # attribute of model.config holding the record


def pruning_record(model: Any) -> dict[str, Any] | None:
    """Return what earlier removals kept (``model.config.colab_helpers_pruning``), or None for an unpruned model."""
    record = getattr(getattr(model, "config", None), RECORD_ATTR, None)
    return record if isinstance(record, dict) and record.get("kept_heads") is not None else None


_RECORD_KEYS = (
    "architecture",
    "head_dim",
    "original_query_heads",
    "original_kv_heads",
    "kept_heads",
    "kept_kv_heads",
    "padding_heads",
)

_PER_LAYER_KEYS = (*_RECORD_KEYS[2:], "kept_layers", "mlp_sizes", "original_mlp_sizes")


def current_record(model: nn.Module, layout: HeadLayout, mlp_sizes: list[int] | None = None) -> dict[str, Any]:
    """Return the model's pruning record, or the identity record of an unpruned model.

    ``mlp_sizes`` (the intermediate channels each layer holds now, when the MLPs can be located) fills the MLP
    entries of a record that has none and is checked against one that has them.
    """
    record = pruning_record(model)
    if record is None:
        record = {
            "format_version": RECORD_VERSION,
            "architecture": layout.architecture,
            "head_dim": layout.head_dim,
            "original_query_heads": list(layout.query_heads),
            "original_kv_heads": list(layout.kv_heads),
            "kept_heads": [list(range(n)) for n in layout.query_heads],
            "kept_kv_heads": [list(range(n)) for n in layout.kv_heads],
            "padding_heads": [[] for _ in layout.query_heads],
        }
    else:
        counts = [len(k) for k in record["kept_heads"]], [len(k) for k in record["kept_kv_heads"]]
        if counts != (list(layout.query_heads), list(layout.kv_heads)):
            raise RuntimeError(
                f"model.config.{RECORD_ATTR} says the layers hold {counts[0]} query heads but they hold "
                f"{list(layout.query_heads)}; the model was changed outside remove_heads. Delete the attribute only "
                "if the model is unpruned"
            )
        record = copy.deepcopy(record)
    record.setdefault("original_num_layers", layout.num_layers)
    record.setdefault("kept_layers", list(range(layout.num_layers)))
    if mlp_sizes is not None:
        if "mlp_sizes" not in record:
            record["mlp_sizes"] = list(mlp_sizes)
            record["original_mlp_sizes"] = list(mlp_sizes)
        elif list(record["mlp_sizes"]) != list(mlp_sizes):
            raise RuntimeError(
                f"model.config.{RECORD_ATTR} says the layers hold {record['mlp_sizes']} MLP channels but they hold "
                f"{list(mlp_sizes)}; the model was changed outside remove_mlp_channels"
            )
    record["format_version"] = RECORD_VERSION
    return record


def drop_layers_from_record(record: dict[str, Any], kept: list[int]) -> dict[str, Any]:
    """Return ``record`` with only the entries of the layers at positions ``kept`` (current positions)."""
    new = copy.deepcopy(record)
    for key in _PER_LAYER_KEYS:
        if key in record:
            new[key] = [copy.deepcopy(record[key][i]) for i in kept]
    new.pop("last_mask", None)  # positions of a mask for the old layers mean nothing now
    new.pop("last_mask_heads", None)
    return new


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
    _check_layer_entries(record, layers, int_list)
    _check_mlp_entries(record, layers, int_list)


def _check_layer_entries(record: dict[str, Any], layers: int, int_list: Any) -> None:
    if "kept_layers" not in record and "original_num_layers" not in record:
        return
    total = record.get("original_num_layers")
    if not isinstance(total, int) or isinstance(total, bool) or total < layers:
        raise ValueError(f"original_num_layers must be an integer >= the {layers} layers recorded, got {total!r}")
    kept = int_list("kept_layers", record.get("kept_layers"))
    if len(kept) != layers or kept != sorted(set(kept)) or (kept and (kept[0] < 0 or kept[-1] >= total)):
        raise ValueError(
            f"kept_layers must be {layers} increasing layer indices in [0, {total}), got {kept}"
        )


def _check_mlp_entries(record: dict[str, Any], layers: int, int_list: Any) -> None:
    if "mlp_sizes" not in record and "original_mlp_sizes" not in record:
        return
    sizes = int_list("mlp_sizes", record.get("mlp_sizes"))
    original = int_list("original_mlp_sizes", record.get("original_mlp_sizes"))
    if len(sizes) != layers or len(original) != layers:
        raise ValueError(f"mlp_sizes and original_mlp_sizes need one entry per layer ({layers}), got {sizes} / {original}")
    for i, (n, full) in enumerate(zip(sizes, original)):
        if not 1 <= n <= full:
            raise ValueError(f"mlp_sizes[{i}] must be in [1, original_mlp_sizes[{i}] = {full}], got {n}")
