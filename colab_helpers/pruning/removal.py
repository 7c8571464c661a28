"""Physical head removal: slice q/k/v/o weights in place so pruned heads cost neither memory nor compute.

A query head is a ``head_dim``-row range of the query projection and a ``head_dim``-column range of the output
projection (GPT-2's Conv1D stores weights transposed, so rows and columns swap); a key/value head is a row range
of the key and value projections. Fused projections are sliced by layout: ``[q | k | v]`` blocks (GPT-2, Phi-3,
multi-query GPTBigCode and Falcon), ``[q k v]`` per head (GPT-NeoX, BLOOM) or ``[q .. q k v]`` per key/value head
(Falcon's new decoder architecture). An attention forward that reads head counts from the shared config (Phi-3)
gets a per-layer view of the config that answers with the layer's own counts.

Grouped-query attention: a key/value head goes only when every query head of its group goes, and ``repeat_kv``
needs the same number of query heads per key/value head within a layer. When a mask leaves groups uneven, the
fewest pruned query heads needed to even them are kept as zeroed *padding* heads (query rows and output columns
zero), so the layer still computes exactly what the gated model computes; :class:`~.reports.PruneReport` counts
them. ALiBi models get each layer's kept heads' biases (:mod:`.alibi`).

What was kept is recorded on ``model.config.colab_helpers_pruning`` (:mod:`.record`: original head indices per
layer), so a second removal composes with the first and :func:`~colab_helpers.pruning.save_pruned` can rebuild the
shapes. ``model.config`` itself keeps the original head counts: head counts are per layer after removal. Masks
index the heads a model holds *now*; a stale mask is refused (:func:`~.record.check_mask_is_current`).
"""

from __future__ import annotations

import copy
import inspect
import logging
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..runtime.modules import parameter_count
from .alibi import install_alibi_hooks
from .gating import has_gates
from .layout import AttentionSite, HeadLayout, attention_sites, fused_blocks, layout_of, text_config, validate_mask
from .record import (
    RECORD_ATTR,
    check_mask_is_current,
    check_mask_not_repeated,
    check_record,
    current_record,
    pruning_record,
)
from .reports import PruneReport
from .surgery import (
    is_conv1d,
    plain_linear,
    replace_int_attributes,
    slice_in,
    slice_out,
    weight_out_in,
    zero_in_features,
    zero_out_features,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

# Integer attributes of attention modules that track the head counts (updated only when they hold the old value).
_Q_COUNT = ("num_heads", "num_attention_heads", "n_head", "n_heads")
_KV_COUNT = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "kv_heads")
_GROUPS = ("num_key_value_groups", "num_kv_groups")
_Q_DIM = ("split_size", "embed_dim", "hidden_size", "all_head_size", "inner_dim")
_KV_DIM = ("kv_dim",)
# A forward that reads head counts from the shared config (e.g. Phi-3) gets a per-layer view of it (_LayerConfig).
_CONFIG_HEADS = re.compile(r"config\.(num_attention_heads|num_key_value_heads|n_head|num_heads)\b")
_CONFIG_Q = ("num_attention_heads", "n_head", "num_heads")
_CONFIG_KV = ("num_key_value_heads", "num_kv_heads", "n_head_kv")


@dataclass(frozen=True)
class _LayerPlan:
    """Positions (in the current module) to keep, and which of the kept query heads become zeroed padding."""

    keep_q: tuple[int, ...]
    keep_kv: tuple[int, ...]
    padding: tuple[int, ...]  # positions in the current module, a subset of keep_q

    def changes(self, n_q: int, n_kv: int) -> bool:
        return len(self.keep_q) != n_q or len(self.keep_kv) != n_kv or bool(self.padding)


def remove_heads(
    model: nn.Module, mask: torch.Tensor, *, allow_empty_layers: bool = False, allow_repeat: bool = False
) -> PruneReport:
    """Remove the heads where ``mask`` is True (bool ``[layers, max_heads]``, relative to the current heads).

    After a removal, build the next mask from the pruned model (``head_layout(model)``, or ``head_importance`` on
    it): a mask of the earlier shape, naming heads that are gone, or equal to the mask applied last time raises
    ``ValueError``, because its indices would now point at other heads. ``allow_repeat=True`` accepts a mask equal
    to the last one when it was built for the current heads (iterative pruning that picks the same positions again).

    Slices weights and biases in place and updates the attention modules' head counts, so that logits equal the
    model gated with the same mask and ``generate()`` keeps working. With grouped-query attention, uneven groups
    keep zeroed padding heads (see the module docstring). A mask that prunes every head of a layer is refused
    unless ``allow_empty_layers=True``; such a layer then keeps one zeroed head, so its attention adds only the
    output projection's bias, exactly like the gated model. The model is left unchanged on any error.
    Returns a :class:`PruneReport`; the kept heads are recorded on ``model.config.colab_helpers_pruning``.
    """
    sites = attention_sites(model)
    layout = layout_of(model, sites)
    earlier = pruning_record(model)
    check_mask_is_current(mask, layout, earlier)
    mask = validate_mask(mask, layout)
    if not allow_repeat:
        check_mask_not_repeated(mask, earlier)
    _check_layers_keep_heads(sites, mask, allow_empty_layers)
    record = current_record(model, layout)
    plans = [plan_layer(mask[s.index, : s.n_q].tolist(), s.n_q, s.n_kv) for s in sites]
    changed = [s for s, p in zip(sites, plans) if p.changes(s.n_q, s.n_kv)]
    for site in changed:
        check_removable(model, site)

    params_before = parameter_count(model)
    new_sites = _apply(model, sites, plans, zero_padding=True)
    new_record = _compose_record(record, plans)
    if changed:  # the mask just applied and the heads it named, so that passing it again is recognised
        new_record["last_mask"] = [[h for h in range(s.n_q) if mask[s.index, h]] for s in sites]
        new_record["last_mask_heads"] = [
            [record["kept_heads"][i][h] for h in positions] for i, positions in enumerate(new_record["last_mask"])
        ]
    install_alibi_hooks(new_sites, new_record)
    setattr(model.config, RECORD_ATTR, new_record)
    report = _report(layout, new_sites, new_record, params_before, parameter_count(model))
    logger.info("removed %d heads (%d parameters); %d kept as zeroed padding", sum(report.removed_heads),
                report.removed_params, report.total_padding)  # fmt: skip
    return report


def _check_layers_keep_heads(sites: list[AttentionSite], mask: torch.Tensor, allow_empty_layers: bool) -> None:
    """Refuse a mask emptying a layer (unless allowed) and a model with live gates, before anything changes."""
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


def _report(
    layout: HeadLayout, new_sites: list[AttentionSite], record: dict[str, Any], params_before: int, params_after: int
) -> PruneReport:
    return PruneReport(
        architecture=layout.architecture,
        query_heads_before=layout.query_heads,
        query_heads_after=tuple(s.n_q for s in new_sites),
        kv_heads_before=layout.kv_heads,
        kv_heads_after=tuple(s.n_kv for s in new_sites),
        padding_heads=tuple(len(p) for p in record["padding_heads"]),
        kept_heads=tuple(tuple(k) for k in record["kept_heads"]),
        params_before=params_before,
        params_after=params_after,
    )


def apply_record(model: nn.Module, record: dict[str, Any]) -> None:
    """Give a freshly built (unpruned) model the head structure of ``record`` (weights are loaded afterwards).

    Raises ``ValueError`` saying what is wrong when the record is inconsistent or does not fit the model.
    """
    check_record(record)
    sites = attention_sites(model)
    layout = layout_of(model, sites)
    kept, kept_kv = record["kept_heads"], record["kept_kv_heads"]
    recorded = (list(record["original_query_heads"]), list(record["original_kv_heads"]), record["head_dim"])
    if recorded != (list(layout.query_heads), list(layout.kv_heads), layout.head_dim):
        raise ValueError(
            f"the pruning record is for {len(kept)} layers with query heads {recorded[0]}, key/value heads "
            f"{recorded[1]} and head size {recorded[2]}, but the model built from the config has "
            f"{list(layout.query_heads)}, {list(layout.kv_heads)} and {layout.head_dim}; the saved files do not "
            "belong together"
        )
    plans = [_LayerPlan(tuple(q), tuple(kv), ()) for q, kv in zip(kept, kept_kv)]
    for site, plan in zip(sites, plans):
        if plan.changes(site.n_q, site.n_kv):
            check_removable(model, site)
    new_sites = _apply(model, sites, plans, zero_padding=False)
    install_alibi_hooks(new_sites, record)
    setattr(model.config, RECORD_ATTR, copy.deepcopy(record))


def plan_layer(prune: list[bool], n_q: int, n_kv: int) -> _LayerPlan:
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

    arch = getattr(model.config, "model_type", type(model).__name__)
    spec = site.spec
    names = [spec.qkv] if spec.fused else [spec.q, spec.k, spec.v]
    names.append(spec.out)
    proj_params: set[int] = set()
    for name in names:
        module = site.proj(name)
        if not (plain_linear(module) or is_conv1d(module, unwrap=False)):
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
    if _CONFIG_HEADS.search(source) and not _config_view_possible(model, site.attn, source):
        raise NotImplementedError(
            f"{arch}: {type(site.attn).__name__}.forward reads head counts from a config other than its own "
            "self.config, so layers cannot have their own head counts; physical removal is not supported for it, "
            "gate_heads is"
        )


def _config_view_possible(model: nn.Module, attn: nn.Module, source: str) -> bool:
    """True when the forward reads head counts through ``self.config``, the model's config: a per-layer view works."""
    config = vars(attn).get("config")
    shared = (getattr(model, "config", None), text_config(model))
    return "self.config" in source and (isinstance(config, _LayerConfig) or any(config is c for c in shared))


class _LayerConfig:
    """The model's config as one pruned attention layer sees it: its own head counts, everything else shared.

    Installed as ``attn.config`` where the forward reads head counts from the config (Phi-3). Reads other than the
    overridden counts (and all writes) go to the shared config, so ``set_attn_implementation`` still reaches it.
    """

    def __init__(self, base: Any, overrides: dict[str, int]) -> None:
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_overrides", dict(overrides))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_base", "_overrides"):
            raise AttributeError(name)
        overrides = self.__dict__["_overrides"]
        return overrides[name] if name in overrides else getattr(self.__dict__["_base"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__dict__["_base"], name, value)

    def __repr__(self) -> str:
        return f"_LayerConfig({self.__dict__['_overrides']} over {type(self.__dict__['_base']).__name__})"


def _update_config_view(attn: nn.Module, new_q: int, new_kv: int) -> None:
    """Give ``attn`` a per-layer config view with its head counts, where its forward reads them from the config."""
    config = vars(attn).get("config")
    if config is None:
        return
    try:
        source = inspect.getsource(type(attn).forward)
    except (OSError, TypeError):
        return
    if not _CONFIG_HEADS.search(source):
        return
    base = config.__dict__["_base"] if isinstance(config, _LayerConfig) else config
    overrides = {n: new_q for n in _CONFIG_Q if isinstance(getattr(base, n, None), int)}
    overrides.update({n: new_kv for n in _CONFIG_KV if isinstance(getattr(base, n, None), int)})
    attn.config = _LayerConfig(base, overrides)


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


def _snapshot(site: AttentionSite) -> list[tuple[nn.Module, dict[str, Any], dict[str, Any]]]:
    modules = [site.attn, *_projections(site)]
    return [
        (m, dict(m._parameters), {k: v for k, v in vars(m).items() if type(v) is int or k == "config"})
        for m in modules
    ]


def _restore(state: list[tuple[nn.Module, dict[str, Any], dict[str, Any]]]) -> None:
    for module, params, attrs in state:
        module._parameters.update(params)
        for name, value in attrs.items():
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
    new_q, new_kv = len(plan.keep_q), len(plan.keep_kv)
    if not spec.fused:
        slice_out(site.proj(spec.q), q_rows)
        slice_out(site.proj(spec.k), kv_rows)
        slice_out(site.proj(spec.v), kv_rows)
    else:  # new block b of the fused projection comes from old block source[b]
        layout = spec.fused_layout or ""
        old_q, old_k, old_v = fused_blocks(layout, site.n_q, site.n_kv)
        new_blocks = fused_blocks(layout, new_q, new_kv)
        source = [0] * (new_q + 2 * new_kv)
        for new, old, keep in zip(new_blocks, (old_q, old_k, old_v), (plan.keep_q, plan.keep_kv, plan.keep_kv)):
            for b, position in zip(new, keep):
                source[b] = old[position]
        slice_out(site.proj(spec.qkv), _head_index(source, hd, 0, device))
    slice_in(site.out_proj, q_rows)
    _update_counts(site.attn, site.n_q, site.n_kv, new_q, new_kv, hd)
    _update_config_view(site.attn, new_q, new_kv)
    return replace(site, n_q=new_q, n_kv=new_kv)


def _update_counts(attn: nn.Module, old_q: int, old_kv: int, new_q: int, new_kv: int, hd: int) -> None:
    """Update the attention module's head-count attributes that hold the old counts."""
    for names, old, new in (
        (_Q_COUNT, old_q, new_q),
        (_KV_COUNT, old_kv, new_kv),
        (_GROUPS, old_q // old_kv, new_q // new_kv),
        (_Q_DIM, old_q * hd, new_q * hd),
        (_KV_DIM, old_kv * hd, new_kv * hd),
    ):
        replace_int_attributes(attn, names, old, new)


def _zero_heads(site: AttentionSite, positions: list[int]) -> None:
    """Zero the query rows (and biases) and output columns of the heads at ``positions``: padding heads."""
    hd, spec = site.head_dim, site.spec
    for j in positions:
        if not spec.fused:
            zero_out_features(site.proj(spec.q), j * hd, (j + 1) * hd)
        else:
            block = fused_blocks(spec.fused_layout or "", site.n_q, site.n_kv)[0][j]
            zero_out_features(site.proj(spec.qkv), block * hd, (block + 1) * hd)
        zero_in_features(site.out_proj, j * hd, (j + 1) * hd)


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
