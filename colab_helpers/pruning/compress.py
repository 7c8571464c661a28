"""Prune to a parameter target across axes: :func:`compress` decides how much to take from attention heads, MLP
channels and whole layers by measured importance, then removes it in place.

How it decides (one round; ``rounds > 1`` repeats it towards the target, re-scoring the smaller model):

1. **Score every unit on one scale, the loss.** Heads and MLP channels: first-order Taylor estimates from one
   backward pass (``|d loss / d gate|`` per example, :func:`~.taylor.taylor_scores`); layers: the measured loss
   increase when each is skipped (``layer_strategy="loss"``: on the first evaluation batch, for the layers that
   turn their input the least, :func:`~.layers.screened_loss_costs`) or ShortGPT's block influence.
2. **Cost every unit in parameters.** A layer costs all its weights; an MLP channel its rows and column; a head
   its query rows and output columns. With grouped-query attention a unit is one head from *each* key/value
   group (the lowest scored), since uneven groups keep zeroed padding heads that save nothing.
3. **Try allocations** (:mod:`.allocation`). For every split of the parameter budget over the allowed axes on a
   grid (``grid_step``), pick the units with the lowest score per parameter in each axis (coarse axes stop within
   their share, the finest takes what is left so the target is met), gate them all at once (heads and channels
   by hooks, layers skipped) and measure the loss: every split on a quarter of the first evaluation batch, the
   three lowest there on all of ``eval_batches``.
4. **Remove the best** (lowest measured loss) physically: heads, then MLP channels, then layers. With
   ``reconstruct=True`` (the default) the output projections of the layers that lost heads or channels are refit
   by least squares on the calibration tokens' activations (:mod:`.reconstruct`), so each layer's output changes
   as little as its kept units allow.

Everything is checked before any weight changes; the report (:class:`~.reports.CompressReport`) says what went where.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..checks import is_finite_number
from ..runtime.modules import parameter_count
from .allocation import SearchOptions, apply_plan, best_plan, head_costs
from .reconstruct import OutputError
from .batches import check_batches, mean_loss
from .flops import forward_flops
from .layers import LAYER_STRATEGIES, check_layers_removable, decoder_layers
from .layout import AttentionSite, attention_sites
from .mlp import mlp_sites, supports_mlp
from .mlp_importance import MLP_STRATEGIES
from .removal import check_removable
from .reports import CompressReport

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

AXES = ("heads", "mlp", "layers")
HEAD_STRATEGIES = ("taylor", "random")  # compress's own: Taylor scores on the loss's scale, or the random baseline


def compress(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    target_params: float = 0.75,
    axes: Sequence[str] = AXES,
    *,
    eval_batches: Iterable[Mapping[str, Any]] | None = None,
    head_strategy: str = "taylor",
    mlp_strategy: str = "taylor",
    layer_strategy: str = "loss",
    reconstruct: bool = True,
    seed: int = 0,
    grid_step: float = 0.25,
    rounds: int = 1,
    round_to: int = 8,
    max_batches: int | None = None,
    progress: bool = True,
) -> CompressReport:
    """Prune ``model`` in place to ``target_params`` of its parameters, across ``axes``; return a report.

    ``target_params`` is the share of the current parameters to keep, in (0, 1] (embeddings count; never pruned).
    ``axes``: a non-empty subset of ``("heads", "mlp", "layers")``; an axis the architecture cannot prune is
    refused with the reason. ``batches`` (dicts with ``input_ids``, optionally ``attention_mask``) calibrate the
    Taylor scores; layer costs and allocations are measured on ``eval_batches`` (default: ``batches``; fewer,
    separate ones are faster and less biased). ``head_strategy``: ``"taylor"`` or ``"random"`` (uniform scores:
    random units across layers); ``mlp_strategy``: ``"taylor"``, ``"activation"`` or ``"random"`` (the last two
    allocate per layer: no common scale); ``layer_strategy``: ``"loss"``, ``"block_influence"`` or ``"random"``;
    all three ``"random"`` is the random baseline (the split over the axes is still the measured best), seeded by
    ``seed``. ``reconstruct``: refit the output projections of the layers that lost heads or MLP channels by
    least squares (:mod:`.reconstruct`; one calibration pass, shared with the Taylor scores).
    ``grid_step``: resolution of the allocation search (0.25: 15 splits over three axes);
    ``rounds``: score-and-prune rounds to the target; ``round_to``: the multiple MLP sizes are rounded down to.
    Every layer keeps a head per key/value group and ``round_to`` MLP channels; a layer remains. Every check runs
    before any weight changes.
    """
    started = time.perf_counter()
    target = _check_target(target_params)
    chosen_axes, sites = _checked_axes(model, axes)
    _check_options(head_strategy, mlp_strategy, layer_strategy, grid_step, rounds, round_to)
    _check_flags(reconstruct, seed)
    calibration = _batch_list(model, batches, max_batches, "batches")
    evaluation = calibration if eval_batches is None else _batch_list(model, eval_batches, max_batches, "eval_batches")
    params_before = parameter_count(model)
    _check_reachable(model, sites, chosen_axes, target, params_before, round_to)
    seq_len = int(_first_ids(calibration).shape[-1])
    before = _Before(params_before, [s.n_q for s in sites], _mlp_per_layer(model), forward_flops(model, 1, seq_len),
                     mean_loss(model, evaluation), seq_len)  # fmt: skip
    options = SearchOptions(chosen_axes, head_strategy, mlp_strategy, layer_strategy, grid_step, round_to, progress,
                            reconstruct=reconstruct, seed=seed)  # fmt: skip
    goals = [int(round(params_before * (1 - (1 - target) * (i + 1) / rounds))) for i in range(rounds)]
    done = _prune_rounds(model, calibration, evaluation, goals, options, layer_count=len(sites))
    report = _report(model, before, done, evaluation, target=target, options=options, started=started)
    logger.info("%s", report.summary())
    return report


def _report(
    model: nn.Module, before: _Before, done: _Rounds, evaluation: list[Any], *, target: float, options: SearchOptions,
    started: float,
) -> CompressReport:
    layer_count = len(before.heads)
    return CompressReport(
        architecture=str(getattr(model.config, "model_type", type(model).__name__)),
        target_params=target,
        axes=options.axes,
        params_before=before.params,
        params_after=parameter_count(model),
        removed_params=done.removed,
        shares=done.shares,
        heads_before=tuple(before.heads),
        heads_after=tuple(_expand([s.n_q for s in attention_sites(model)], done.kept_layers, layer_count)),
        mlp_before=tuple(before.mlp),
        mlp_after=tuple(_expand(_mlp_per_layer(model), done.kept_layers, layer_count)),
        removed_layers=tuple(i for i in range(layer_count) if i not in done.kept_layers),
        kept_layers=tuple(done.kept_layers),
        flops_before=before.flops,
        flops_after=forward_flops(model, 1, before.seq_len),
        seq_len=before.seq_len,
        loss_before=before.loss,
        loss_after=mean_loss(model, evaluation),
        candidates=tuple(done.candidates),
        strategies={"heads": options.head_strategy, "mlp": options.mlp_strategy, "layers": options.layer_strategy},
        reconstructed=options.reconstruct and any(e.energy > 0 for e in done.errors.values()),
        output_error={axis: e.shares() for axis, e in done.errors.items() if e.energy > 0},
        seconds=time.perf_counter() - started,
    )


@dataclass(frozen=True)
class _Before:
    """The model before compression: parameters, heads and MLP channels per layer, forward FLOPs at ``seq_len``
    tokens, loss on the evaluation batches."""

    params: int
    heads: list[int]
    mlp: list[int]
    flops: float
    loss: float
    seq_len: int


@dataclass
class _Rounds:
    """What the rounds removed (parameters per axis), the last split, every allocation tried, the layers kept, and
    the output errors of the refit output projections (per axis)."""

    removed: dict[str, int]
    errors: dict[str, OutputError] = field(default_factory=lambda: {"heads": OutputError(), "mlp": OutputError()})
    shares: dict[str, float] = field(default_factory=dict)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    kept_layers: list[int] = field(default_factory=list)


def _prune_rounds(
    model: nn.Module, calibration: list[Any], evaluation: list[Any], goals: list[int], options: SearchOptions, *,
    layer_count: int,
) -> _Rounds:
    """Score, plan and remove once per goal (parameters to keep after that round); skip a goal already met."""
    done = _Rounds(removed={axis: 0 for axis in options.axes}, kept_layers=list(range(layer_count)))
    for round_index, goal in enumerate(goals):
        budget = parameter_count(model) - goal
        if budget <= 0:
            continue
        search = best_plan(model, calibration, evaluation, budget, options)
        plan = search.plan
        done.candidates += [{"round": round_index + 1, **row} for row in search.tried]
        done.shares = plan.shares
        apply_plan(model, search, done.removed, done.errors)
        done.kept_layers = [done.kept_layers[i] for i in range(len(done.kept_layers)) if i not in plan.layers]
    return done


# --- checks ------------------------------------------------------------------------------------------------


def _check_target(target_params: Any) -> float:
    if isinstance(target_params, bool) or not is_finite_number(target_params) or not 0 < target_params <= 1:
        raise ValueError(
            f"target_params must be the share of parameters to keep, in (0, 1] (e.g. 0.75 keeps 75%), got "
            f"{target_params!r}"
        )
    return float(target_params)


def check_axes(model: nn.Module, axes: Any) -> tuple[str, ...]:
    """Return ``axes`` as a tuple after checking each is known and prunable on ``model`` (else ValueError: why)."""
    return _checked_axes(model, axes)[0]


def _checked_axes(model: nn.Module, axes: Any) -> tuple[tuple[str, ...], list[AttentionSite]]:
    """:func:`check_axes`, also returning the attention sites it located."""
    if isinstance(axes, str):
        axes = (axes,)
    try:
        chosen = tuple(dict.fromkeys(axes))
    except TypeError as exc:
        raise ValueError(f"axes must be a sequence of {AXES}, got {axes!r}") from exc
    unknown = [a for a in chosen if a not in AXES]
    if not chosen or unknown:
        raise ValueError(f"axes must be a non-empty subset of {AXES}, got {axes!r}")
    sites = attention_sites(model)  # not a causal LM, or attention not found: say so before anything else
    if "heads" in chosen:
        for site in sites:
            try:
                check_removable(model, site)
            except (NotImplementedError, ValueError) as exc:
                raise ValueError(f"axis 'heads' cannot be pruned on this model: {exc}") from exc
    if "mlp" in chosen:
        why = supports_mlp(model)
        if why is not None:
            raise ValueError(f"axis 'mlp' cannot be pruned on this model: {why}")
    if "layers" in chosen:
        try:
            check_layers_removable(model)
        except (NotImplementedError, ValueError) as exc:
            raise ValueError(f"axis 'layers' cannot be pruned on this model: {exc}") from exc
        if len(decoder_layers(model)) < 2:
            raise ValueError("axis 'layers' cannot be pruned: the model holds one decoder layer")
    if hasattr(model, "peft_config"):
        raise ValueError("the model carries a peft adapter; merge it first (model = model.merge_and_unload())")
    return chosen, sites


def _check_options(
    head_strategy: Any, mlp_strategy: Any, layer_strategy: Any, grid_step: Any, rounds: Any, round_to: Any
) -> None:
    if head_strategy not in HEAD_STRATEGIES:
        raise ValueError(f"head_strategy must be one of {HEAD_STRATEGIES}, got {head_strategy!r}")
    if mlp_strategy not in MLP_STRATEGIES:
        raise ValueError(f"mlp_strategy must be one of {MLP_STRATEGIES}, got {mlp_strategy!r}")
    if layer_strategy not in LAYER_STRATEGIES:
        raise ValueError(f"layer_strategy must be one of {LAYER_STRATEGIES}, got {layer_strategy!r}")
    if isinstance(grid_step, bool) or not is_finite_number(grid_step) or not 0 < grid_step <= 1:
        raise ValueError(f"grid_step must be in (0, 1] (e.g. 0.25), got {grid_step!r}")
    if abs(round(1 / grid_step) * grid_step - 1) > 1e-9:
        raise ValueError(f"grid_step must divide 1 (0.5, 0.25, 0.2, 0.1 ...), got {grid_step!r}")
    for name, value in (("rounds", rounds), ("round_to", round_to)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_flags(reconstruct: Any, seed: Any) -> None:
    if not isinstance(reconstruct, bool):
        raise ValueError(f"reconstruct must be True or False, got {reconstruct!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer (e.g. 0), got {seed!r}")


def _check_reachable(
    model: nn.Module, sites: list[AttentionSite], axes: tuple[str, ...], target: float, params: int, round_to: int
) -> None:
    """Refuse a target that would take every layer, every head of a layer or every MLP channel of a layer."""
    within = [0] * len(sites)  # what heads and MLP channels can give in each layer
    if "heads" in axes:
        for site in sites:
            q_cost, kv_cost = head_costs(site)
            group = site.n_q // site.n_kv
            within[site.index] += (site.n_q - 1) * (q_cost + kv_cost) if group == 1 else \
                (group - 1) * site.n_kv * q_cost  # fmt: skip
    if "mlp" in axes:
        for site in mlp_sites(model):
            within[site.index] += max(0, site.size - round_to) * site.params_per_channel()
    if "layers" in axes:
        layer_params = [parameter_count(layer) for layer in decoder_layers(model)]
        most = sum(layer_params) - min(p - w for p, w in zip(layer_params, within))
    else:
        most = sum(within)
    need = params - int(round(target * params))
    if need > most:
        floor = (params - most) / params
        keeps = {"heads": "one head per key/value group", "mlp": f"{round_to} MLP channels (round_to)",
                 "layers": "one layer"}  # fmt: skip
        kept = ", ".join(keeps[a] for a in axes)
        raise ValueError(
            f"target_params={target!r} would remove {need:,} of {params:,} parameters, but axes {axes} can remove "
            f"at most {most:,} (the model keeps at least {kept}; embeddings and norms are not pruned): pass "
            f"target_params >= {math.ceil(floor * 1000) / 1000:.3f} or allow more axes"
        )


def _batch_list(model: nn.Module, batches: Any, max_batches: int | None, name: str) -> list[Any]:
    if batches is None:
        raise ValueError(f"{name} are needed: dicts with input_ids (and attention_mask), e.g. from calibration text")
    listed = list(itertools.islice(batches, max_batches) if max_batches is not None else batches)
    if not listed:
        raise ValueError(f"{name} is empty: pass at least one dict with input_ids")
    check_batches(listed, model, name=name)  # dicts of integer ids inside the vocabulary, before any forward
    return listed


def _first_ids(batches: list[Any]) -> torch.Tensor:
    import torch

    ids = torch.as_tensor(batches[0]["input_ids"])
    return ids if ids.dim() == 2 else ids[None]


# --- shapes ------------------------------------------------------------------------------------------------


def _mlp_per_layer(model: nn.Module) -> list[int]:
    try:
        return [s.size for s in mlp_sites(model)]
    except NotImplementedError:
        return [0] * len(decoder_layers(model))


def _expand(values: list[int], kept: list[int], total: int) -> list[int]:
    full = [0] * total
    for value, index in zip(values, kept):
        full[index] = value
    return full
