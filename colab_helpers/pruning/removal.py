"""Physical head removal: slice q/k/v/o weights in place so pruned heads cost neither memory nor compute.

A query head is a ``head_dim``-row range of the query projection and a ``head_dim``-column range of the output
projection (GPT-2's Conv1D stores weights transposed, so rows and columns swap); a key/value head is a row range
of the key and value projections. Fused projections are sliced by layout: ``[q | k | v]`` blocks (GPT-2) or
``[q k v]`` per head (GPT-NeoX, BLOOM).

Grouped-query attention: a key/value head goes only when every query head of its group goes, and ``repeat_kv``
needs the same number of query heads per key/value head within a layer. When a mask leaves groups uneven, the
fewest pruned query heads needed to even them are kept as zeroed *padding* heads (query rows and output columns
zero), so the layer still computes exactly what the gated model computes; :class:`PruneReport` counts them.

What was kept is recorded on ``model.config.colab_helpers_pruning`` (original head indices per layer), so a
second removal composes with the first and :func:`~colab_helpers.pruning.save_pruned` can rebuild the shapes.
``model.config`` itself keeps the original head counts: head counts are per layer after removal.

Planning, slicing and the record that rebuilds a pruned model on load stay in one module because they must
agree on one layout of every projection; split, a fix to one could silently break the other.
"""

from __future__ import annotations

import copy
import inspect
import logging
import re
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..runtime.modules import parameter_count
from .gating import has_gates
from .layout import (
    RECORD_ATTR,
    AttentionSite,
    HeadLayout,
    attention_sites,
    is_conv1d,
    layout_of,
    pruning_record,
    validate_mask,
    weight_out_in,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

RECORD_VERSION = 1

# Integer attributes of attention modules that track the head counts (updated only when they hold the old value).
_Q_COUNT = ("num_heads", "num_attention_heads", "n_head", "n_heads")
_KV_COUNT = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
_GROUPS = ("num_key_value_groups", "num_kv_groups")
_Q_DIM = ("split_size", "embed_dim", "hidden_size", "all_head_size", "inner_dim")
_KV_DIM = ("kv_dim",)
# A forward that reads head counts from the shared config cannot run with per-layer counts (e.g. Phi-3).
_CONFIG_HEADS = re.compile(r"config\.(num_attention_heads|num_key_value_heads|n_head|num_heads)\b")


@dataclass(frozen=True)
class PruneReport:
    """What :func:`remove_heads` did, per layer and in parameters.

    ``padding_heads[i]`` counts the zeroed padding heads layer ``i`` now holds: heads pruned (by this mask or an
    earlier one) but kept to even grouped-query groups or to keep an emptied layer runnable; they still count in
    ``query_heads_after`` and compute nothing.
    ``kept_heads[i]`` lists the original indices (in the unpruned model) of the heads layer ``i`` now holds.
    """

    architecture: str
    query_heads_before: tuple[int, ...]
    query_heads_after: tuple[int, ...]
    kv_heads_before: tuple[int, ...]
    kv_heads_after: tuple[int, ...]
    padding_heads: tuple[int, ...]
    kept_heads: tuple[tuple[int, ...], ...]
    params_before: int
    params_after: int
    removed_params: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "removed_params", self.params_before - self.params_after)

    @property
    def removed_heads(self) -> tuple[int, ...]:
        """Query heads physically removed, per layer."""
        return tuple(b - a for b, a in zip(self.query_heads_before, self.query_heads_after))

    @property
    def total_padding(self) -> int:
        """Pruned heads kept as zeroed padding, over all layers."""
        return sum(self.padding_heads)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-able builtins (lists for tuples) plus the derived totals."""
        data = asdict(self)
        data["removed_heads"] = list(self.removed_heads)
        data["total_padding"] = self.total_padding
        return data

    def summary(self) -> str:
        """One line: heads removed, padding kept, parameters before -> after."""
        removed = sum(self.removed_heads)
        share = self.removed_params / self.params_before if self.params_before else 0.0
        padding = f" ({self.total_padding} kept as zeroed padding)" if self.total_padding else ""
        return (
            f"{self.architecture}: removed {removed} of {sum(self.query_heads_before)} query heads{padding}; "
            f"parameters {self.params_before:,} -> {self.params_after:,} (-{share:.1%})"
        )

    def _repr_markdown_(self) -> str:
        return f"**Removal** · {self.summary()}"

    def per_layer(self) -> list[dict[str, int]]:
        """Return one row per layer (for ``pandas.DataFrame(report.per_layer())``)."""
        return [
            {
                "layer": i,
                "query_heads_before": self.query_heads_before[i],
                "query_heads_after": self.query_heads_after[i],
                "kv_heads_before": self.kv_heads_before[i],
                "kv_heads_after": self.kv_heads_after[i],
                "removed_heads": self.removed_heads[i],
                "padding_heads": self.padding_heads[i],
            }
            for i in range(len(self.query_heads_before))
        ]


@dataclass(frozen=True)
class _LayerPlan:
    """Positions (in the current module) to keep, and which of the kept query heads become zeroed padding."""

    keep_q: tuple[int, ...]
    keep_kv: tuple[int, ...]
    padding: tuple[int, ...]  # positions in the current module, a subset of keep_q

    def changes(self, n_q: int, n_kv: int) -> bool:
        return len(self.keep_q) != n_q or len(self.keep_kv) != n_kv or bool(self.padding)


def remove_heads(model: nn.Module, mask: torch.Tensor, *, allow_empty_layers: bool = False) -> PruneReport:
    """Remove the heads where ``mask`` is True (bool ``[layers, max_heads]``, relative to the current heads).

    Slices weights and biases in place and updates the attention modules' head counts, so that logits equal the
    model gated with the same mask and ``generate()`` keeps working. With grouped-query attention, uneven groups
    keep zeroed padding heads (see the module docstring). A mask that prunes every head of a layer is refused
    unless ``allow_empty_layers=True``; such a layer then keeps one zeroed head, so its attention adds only the
    output projection's bias, exactly like the gated model. The model is left unchanged on any error.
    Returns a :class:`PruneReport`; the kept heads are recorded on ``model.config.colab_helpers_pruning``.
    """
    sites = attention_sites(model)
    layout = layout_of(model, sites)
    mask = validate_mask(mask, layout)
    for site in sites:
        if bool(mask[site.index, : site.n_q].all()) and not allow_empty_layers:
            raise ValueError(
                f"mask prunes all {site.n_q} heads of layer {site.index}; keep at least one "
                "(select_heads(..., min_heads_per_layer=1)) or pass allow_empty_layers=True to keep the layer "
                "as one zeroed head"
            )
    if any(has_gates(site.out_proj) for site in sites):
        raise ValueError(
            "the model has live head gates (gate_heads); call .remove() on them (or leave their with block) "
            "before remove_heads: their head counts would no longer match"
        )
    record = current_record(model, layout)
    plans = [_plan_layer(mask[s.index, : s.n_q].tolist(), s.n_q, s.n_kv) for s in sites]
    changed = [s for s, p in zip(sites, plans) if p.changes(s.n_q, s.n_kv)]
    for site in changed:
        check_removable(model, site)

    params_before = parameter_count(model)
    new_sites = _apply(model, sites, plans, zero_padding=True)
    new_record = _compose_record(record, plans)
    _install_alibi_hooks(new_sites, new_record)
    setattr(model.config, RECORD_ATTR, new_record)
    report = PruneReport(
        architecture=layout.architecture,
        query_heads_before=layout.query_heads,
        query_heads_after=tuple(s.n_q for s in new_sites),
        kv_heads_before=layout.kv_heads,
        kv_heads_after=tuple(s.n_kv for s in new_sites),
        padding_heads=tuple(len(p) for p in new_record["padding_heads"]),
        kept_heads=tuple(tuple(k) for k in new_record["kept_heads"]),
        params_before=params_before,
        params_after=parameter_count(model),
    )
    logger.info(
        "removed %d heads (%d parameters); %d kept as zeroed padding",
        sum(report.removed_heads),
        report.removed_params,
        report.total_padding,
    )
    return report


def apply_record(model: nn.Module, record: dict[str, Any]) -> None:
    """Give a freshly built (unpruned) model the head structure of ``record`` (weights are loaded afterwards)."""
    sites = attention_sites(model)
    layout = layout_of(model, sites)
    kept, kept_kv = record["kept_heads"], record["kept_kv_heads"]
    if len(kept) != layout.num_layers or list(record["original_query_heads"]) != list(layout.query_heads):
        raise ValueError(
            f"pruning record is for {len(kept)} layers with heads {record['original_query_heads']}, but the model "
            f"built from the config has heads {list(layout.query_heads)}; the saved files do not belong together"
        )
    plans = [_LayerPlan(tuple(q), tuple(kv), ()) for q, kv in zip(kept, kept_kv)]
    for site, plan in zip(sites, plans):
        if plan.changes(site.n_q, site.n_kv):
            check_removable(model, site)
    new_sites = _apply(model, sites, plans, zero_padding=False)
    _install_alibi_hooks(new_sites, record)
    setattr(model.config, RECORD_ATTR, copy.deepcopy(record))


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


def _plan_layer(prune: list[bool], n_q: int, n_kv: int) -> _LayerPlan:
    """Plan one layer: drop key/value groups with no kept query head, pad uneven groups with pruned heads."""
    group = n_q // n_kv
    members = [list(range(g * group, (g + 1) * group)) for g in range(n_kv)]
    kept = [[h for h in heads if not prune[h]] for heads in members]
    if not any(kept):  # emptied layer (allowed by the caller): one zeroed head keeps the shapes valid
        return _LayerPlan(keep_q=(0,), keep_kv=(0,), padding=(0,))
    width = max(len(k) for k in kept)
    keep_q: list[int] = []
    keep_kv: list[int] = []
    padding: list[int] = []
    for g, (heads, kept_heads) in enumerate(zip(members, kept)):
        if not kept_heads:
            continue
        extra = [h for h in heads if prune[h]][: width - len(kept_heads)]
        keep_kv.append(g)
        padding.extend(extra)
        keep_q.extend(sorted(kept_heads + extra))
    return _LayerPlan(tuple(keep_q), tuple(keep_kv), tuple(sorted(padding)))


def check_removable(model: nn.Module, site: AttentionSite) -> None:
    """Raise ``NotImplementedError`` if slicing this attention module would not give the gated model's outputs."""
    from torch import nn

    arch = getattr(model.config, "model_type", type(model).__name__)
    spec = site.spec
    names = [spec.qkv] if spec.fused else [spec.q, spec.k, spec.v]
    names.append(spec.out)
    proj_params: set[int] = set()
    for name in names:
        module = site.proj(name)
        if not (type(module) is nn.Linear or is_conv1d(module, unwrap=False)):
            raise NotImplementedError(
                f"layer {site.index}: {name} is a {type(module).__module__}.{type(module).__qualname__}, not a plain "
                "torch Linear or transformers Conv1D; remove heads "
                "before adding adapters or quantizing (or merge_and_unload() first)"
            )
        weight_out_in(module)
        proj_params.update(id(p) for p in module.parameters())
    if spec.fused_layout == "interleaved" and site.n_q != site.n_kv:
        raise NotImplementedError(f"{arch}: interleaved fused qkv with grouped-query attention is not supported")
    per_child: dict[str, int] = {}
    for pname, param in site.attn.named_parameters():
        if id(param) in proj_params:
            continue
        child = pname.split(".")[0]
        per_child[child] = per_child.get(child, 0) + 1
        if tuple(param.shape) != (site.head_dim,) or per_child[child] > 2:
            raise NotImplementedError(
                f"{arch}: attention parameter {pname!r} of shape {tuple(param.shape)} depends on the heads (e.g. a "
                "norm over all heads or per-head sinks); physical removal is not supported for it, gate_heads is"
            )
    if getattr(site.attn, "pretraining_tp", 1) > 1 and getattr(site.attn, "slow_but_exact", False):
        raise NotImplementedError(f"{arch}: pretraining_tp > 1 with slow_but_exact; set config.slow_but_exact=False")
    try:
        source = inspect.getsource(type(site.attn).forward)
    except (OSError, TypeError):
        source = ""
    if _CONFIG_HEADS.search(source):
        raise NotImplementedError(
            f"{arch}: {type(site.attn).__name__}.forward reads head counts from the shared config, so layers cannot "
            "have their own head counts; physical removal is not supported for it, gate_heads is"
        )


def _apply(
    model: nn.Module, sites: list[AttentionSite], plans: list[_LayerPlan], *, zero_padding: bool
) -> list[AttentionSite]:
    """Slice every layer per its plan; on any error restore every touched module and re-raise."""
    import torch

    saved = [_snapshot(site) for site in sites]
    new_sites = []
    try:
        with torch.no_grad():
            for site, plan in zip(sites, plans):
                if not plan.changes(site.n_q, site.n_kv):
                    new_sites.append(site)
                    continue
                new_site = _slice_site(site, plan)
                if zero_padding and plan.padding:
                    _zero_heads(new_site, [plan.keep_q.index(p) for p in plan.padding])
                new_sites.append(new_site)
    except BaseException:
        for state in saved:
            _restore(state)
        raise
    return new_sites


def _projections(site: AttentionSite) -> list[nn.Module]:
    spec = site.spec
    names = [spec.qkv] if spec.fused else [spec.q, spec.k, spec.v]
    return [site.proj(n) for n in [*names, spec.out]]


def _snapshot(site: AttentionSite) -> list[tuple[nn.Module, dict[str, Any], dict[str, int]]]:
    modules = [site.attn, *_projections(site)]
    return [(m, dict(m._parameters), {k: v for k, v in vars(m).items() if type(v) is int}) for m in modules]


def _restore(state: list[tuple[nn.Module, dict[str, Any], dict[str, int]]]) -> None:
    for module, params, ints in state:
        module._parameters.update(params)
        for name, value in ints.items():
            setattr(module, name, value)


def _head_index(positions: tuple[int, ...] | list[int], size: int, offset: int, device: torch.device) -> torch.Tensor:
    """Return the flat row indices of ``positions`` when each head spans ``size`` rows starting at ``offset``."""
    import torch

    starts = torch.tensor(list(positions), dtype=torch.long, device=device) * size + offset
    return (starts[:, None] + torch.arange(size, device=device)).flatten()


def _slice_site(site: AttentionSite, plan: _LayerPlan) -> AttentionSite:
    hd, spec = site.head_dim, site.spec
    device = site.out_proj.weight.device
    q_rows = _head_index(plan.keep_q, hd, 0, device)
    kv_rows = _head_index(plan.keep_kv, hd, 0, device)
    if not spec.fused:
        _slice_out(site.proj(spec.q), q_rows)
        _slice_out(site.proj(spec.k), kv_rows)
        _slice_out(site.proj(spec.v), kv_rows)
    elif spec.fused_layout == "interleaved":
        _slice_out(site.proj(spec.qkv), _head_index(plan.keep_q, 3 * hd, 0, device))
    else:
        import torch

        q_dim, kv_dim = site.n_q * hd, site.n_kv * hd
        rows = torch.cat([q_rows, kv_rows + q_dim, kv_rows + q_dim + kv_dim])
        _slice_out(site.proj(spec.qkv), rows)
    _slice_in(site.out_proj, q_rows)
    new_q, new_kv = len(plan.keep_q), len(plan.keep_kv)
    _update_counts(site.attn, site.n_q, site.n_kv, new_q, new_kv, hd)
    return replace(site, n_q=new_q, n_kv=new_kv)


def _new_param(old: torch.nn.Parameter, value: torch.Tensor) -> torch.nn.Parameter:
    from torch import nn

    return nn.Parameter(value.contiguous(), requires_grad=old.requires_grad)


def _slice_out(module: nn.Module, rows: torch.Tensor) -> None:
    """Keep only output features ``rows`` of a Linear (weight rows) or Conv1D (weight columns)."""
    conv = is_conv1d(module)
    module.weight = _new_param(module.weight, module.weight.index_select(1 if conv else 0, rows))
    if getattr(module, "bias", None) is not None:
        module.bias = _new_param(module.bias, module.bias.index_select(0, rows))
    if conv:
        module.nf = len(rows)
    else:
        module.out_features = len(rows)


def _slice_in(module: nn.Module, cols: torch.Tensor) -> None:
    """Keep only input features ``cols`` of a Linear (weight columns) or Conv1D (weight rows)."""
    conv = is_conv1d(module)
    module.weight = _new_param(module.weight, module.weight.index_select(0 if conv else 1, cols))
    if conv:
        module.nx = len(cols)
    else:
        module.in_features = len(cols)


def _update_counts(attn: nn.Module, old_q: int, old_kv: int, new_q: int, new_kv: int, hd: int) -> None:
    """Update the attention module's head-count attributes that hold the old counts."""
    expected = [
        (_Q_COUNT, old_q, new_q),
        (_KV_COUNT, old_kv, new_kv),
        (_GROUPS, old_q // old_kv, new_q // new_kv),
        (_Q_DIM, old_q * hd, new_q * hd),
        (_KV_DIM, old_kv * hd, new_kv * hd),
    ]
    for name, value in list(vars(attn).items()):
        if type(value) is not int:
            continue
        for names, old, new in expected:
            if name in names and value == old:
                setattr(attn, name, new)
                break


def _zero_heads(site: AttentionSite, positions: list[int]) -> None:
    """Zero the query rows (and biases) and output columns of the heads at ``positions``: padding heads."""
    hd, spec = site.head_dim, site.spec
    for j in positions:
        if not spec.fused:
            _zero_out_rows(site.proj(spec.q), j * hd, (j + 1) * hd)
        elif spec.fused_layout == "interleaved":
            _zero_out_rows(site.proj(spec.qkv), j * 3 * hd, j * 3 * hd + hd)
        else:
            _zero_out_rows(site.proj(spec.qkv), j * hd, (j + 1) * hd)
        module = site.out_proj
        if is_conv1d(module):
            module.weight[j * hd : (j + 1) * hd, :] = 0
        else:
            module.weight[:, j * hd : (j + 1) * hd] = 0


def _zero_out_rows(module: nn.Module, start: int, stop: int) -> None:
    if is_conv1d(module):
        module.weight[:, start:stop] = 0
    else:
        module.weight[start:stop] = 0
    if getattr(module, "bias", None) is not None:
        module.bias[start:stop] = 0


def _compose_record(record: dict[str, Any], plans: list[_LayerPlan]) -> dict[str, Any]:
    """Return the record after applying ``plans`` (positions) on top of ``record`` (original indices)."""
    new = copy.deepcopy(record)
    for i, plan in enumerate(plans):
        kept = [record["kept_heads"][i][p] for p in plan.keep_q]
        padding = {record["kept_heads"][i][p] for p in plan.padding} | set(record["padding_heads"][i])
        new["kept_heads"][i] = kept
        new["kept_kv_heads"][i] = [record["kept_kv_heads"][i][p] for p in plan.keep_kv]
        new["padding_heads"][i] = [h for h in kept if h in padding]
    return new


class _AlibiSlicer:
    """Forward pre-hook (with kwargs) giving a pruned BLOOM attention module only its kept heads' ALiBi slopes.

    BLOOM builds ``alibi`` as ``[batch * heads, 1, keys]`` for all of the model's original heads; each layer keeps
    the rows of its own heads.
    """

    def __init__(self, kept: list[int], n_full: int) -> None:
        self.kept = list(kept)
        self.n_full = n_full
        self._index: dict[Any, Any] = {}

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        positional = "alibi" not in kwargs and len(args) > 2
        alibi = args[2] if positional else kwargs.get("alibi")
        if alibi is None:
            return None
        rows = alibi.shape[0]
        if rows % self.n_full:
            raise RuntimeError(f"alibi has {rows} rows, not a multiple of the model's {self.n_full} heads")
        index = self._index.get(alibi.device)
        if index is None:
            import torch

            index = self._index[alibi.device] = torch.tensor(self.kept, dtype=torch.long, device=alibi.device)
        batch = rows // self.n_full
        rest = alibi.shape[1:]
        sliced = alibi.reshape(batch, self.n_full, *rest).index_select(1, index).reshape(batch * len(self.kept), *rest)
        if positional:
            return (*args[:2], sliced, *args[3:]), kwargs
        return args, {**kwargs, "alibi": sliced}


def _install_alibi_hooks(sites: list[AttentionSite], record: dict[str, Any]) -> None:
    for site in sites:
        if not site.spec.alibi:
            continue
        kept = list(record["kept_heads"][site.index])
        n_full = int(record["original_query_heads"][site.index])
        existing = [h for h in site.attn._forward_pre_hooks.values() if isinstance(h, _AlibiSlicer)]
        if existing:
            existing[0].kept, existing[0]._index = kept, {}
        elif kept != list(range(n_full)):
            site.attn.register_forward_pre_hook(_AlibiSlicer(kept, n_full), with_kwargs=True)
