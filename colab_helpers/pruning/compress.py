"""Prune to a parameter target across axes: :func:`compress` decides how much to take from attention heads, MLP
channels and whole layers by measured importance, then removes it in place.

How it decides (one round; ``rounds > 1`` repeats it towards the target, re-scoring the smaller model):

1. **Score every unit on one scale, the loss.** Heads and MLP channels: first-order Taylor estimates from one
   backward pass (``|d loss / d gate|`` per example, :func:`~.importance.taylor_scores`); layers: the measured loss
   increase when each is skipped (``layer_strategy="loss"``) or ShortGPT's block influence.
2. **Cost every unit in parameters.** A layer costs all its weights; an MLP channel its rows and column; a head
   its query rows and output columns. With grouped-query attention a unit is one head from *each* key/value
   group (the lowest scored), since uneven groups keep zeroed padding heads that save nothing.
3. **Try allocations.** For every split of the parameter budget over the allowed axes on a grid
   (``grid_step``), pick the units with the lowest score per parameter in each axis (coarse axes stop within
   their share, the finest takes what is left so the target is met), gate them all at once (heads and channels
   by hooks, layers skipped) and measure the loss on ``eval_batches``.
4. **Remove the best** (lowest measured loss) physically: heads, then MLP channels, then layers.

Everything is checked before any weight changes; the report (:class:`CompressReport`) says what went where.

Scoring, unit costs, the allocation search and the report stay in one module because they share one notion of
a unit and its cost; split, the planner's parameter counts and the report's could drift apart.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..checks import is_finite_number
from ..runtime.modules import parameter_count
from .flops import forward_flops
from .layers import LAYER_STRATEGIES, check_layers_removable, decoder_layers, layer_importance, mean_loss, remove_layers
from .layout import AttentionSite, attention_sites, base_layer, in_features, out_features
from .importance import check_batches, taylor_scores
from .mlp import MLP_STRATEGIES, mlp_importance, mlp_sites, supports_mlp
from .removal import check_removable, remove_heads

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

AXES = ("heads", "mlp", "layers")
_FINE_TO_COARSE = ("mlp", "heads", "layers")  # the finest allowed axis takes the rest of the budget


@dataclass(frozen=True)
class CompressReport:
    """What :func:`compress` removed, per axis and per layer, and what it predicts for speed.

    ``removed_params`` maps each axis to the parameters it removed; ``kept_layers`` / ``removed_layers`` are
    original layer indices; ``heads_*`` / ``mlp_*`` have one entry per *original* layer (0 for removed layers
    after). ``predicted_speedup`` is the ratio of forward FLOPs at ``seq_len`` tokens (:func:`~.flops.forward_flops`).
    ``candidates`` holds every allocation tried: its shares per axis, parameters after and calibration loss.
    """

    architecture: str
    target_params: float
    axes: tuple[str, ...]
    params_before: int
    params_after: int
    removed_params: dict[str, int]
    shares: dict[str, float]
    heads_before: tuple[int, ...]
    heads_after: tuple[int, ...]
    mlp_before: tuple[int, ...]
    mlp_after: tuple[int, ...]
    removed_layers: tuple[int, ...]
    kept_layers: tuple[int, ...]
    flops_before: float
    flops_after: float
    seq_len: int
    loss_before: float
    loss_after: float
    candidates: tuple[dict[str, Any], ...]
    seconds: float
    predicted_speedup: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "predicted_speedup", self.flops_before / self.flops_after if self.flops_after else 0.0)

    @property
    def kept_share(self) -> float:
        """Parameters after over parameters before."""
        return self.params_after / self.params_before if self.params_before else 1.0

    def summary(self) -> str:
        """One line: parameters, what each axis gave, layers removed, predicted speed-up, calibration loss."""
        parts = ", ".join(f"{axis} -{n:,}" for axis, n in self.removed_params.items() if n)
        layers = f"; layers removed {list(self.removed_layers)}" if self.removed_layers else ""
        return (
            f"{self.architecture}: parameters {self.params_before:,} -> {self.params_after:,} "
            f"({self.kept_share:.1%} kept, target {self.target_params:.1%}; {parts or 'nothing removed'}){layers}; "
            f"predicted forward speed-up {self.predicted_speedup:.2f}x; calibration loss {self.loss_before:.3f} -> "
            f"{self.loss_after:.3f}"
        )

    def _repr_markdown_(self) -> str:
        return f"**Compression** · {self.summary()}"

    def per_layer(self) -> list[dict[str, Any]]:
        """One row per original layer: heads and MLP channels before/after, whether the layer was removed."""
        return [
            {
                "layer": i,
                "removed": i in self.removed_layers,
                "heads_before": self.heads_before[i],
                "heads_after": self.heads_after[i],
                "mlp_before": self.mlp_before[i],
                "mlp_after": self.mlp_after[i],
            }
            for i in range(len(self.heads_before))
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able builtins, with the derived ``predicted_speedup`` and ``kept_share``."""
        data = asdict(self)
        data["kept_share"] = self.kept_share
        data["summary"] = self.summary()
        return data


@dataclass(frozen=True)
class _Plan:
    """One allocation: what to remove (positions in the model as it is now) and what it would leave."""

    shares: dict[str, float]
    head_mask: Any  # torch.bool [layers, max_heads]
    mlp_masks: list[Any]  # per layer, torch.bool [channels]
    layers: tuple[int, ...]
    removed: dict[str, int]


def compress(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    target_params: float = 0.75,
    axes: Sequence[str] = AXES,
    *,
    eval_batches: Iterable[Mapping[str, Any]] | None = None,
    mlp_strategy: str = "taylor",
    layer_strategy: str = "loss",
    grid_step: float = 0.25,
    rounds: int = 1,
    round_to: int = 8,
    max_batches: int | None = None,
    progress: bool = True,
) -> CompressReport:
    """Prune ``model`` in place to ``target_params`` of its parameters, across ``axes``; return a report.

    ``target_params`` is the share of the model's current parameters to keep, in (0, 1] (embeddings included:
    they are not pruned). ``axes`` is any non-empty subset of ``("heads", "mlp", "layers")``; an axis the
    architecture cannot prune is refused with the reason. ``batches`` (dicts with ``input_ids`` and optionally
    ``attention_mask``) calibrate the Taylor scores; the layers' loss cost and the allocations are measured on
    ``eval_batches`` (default: the calibration batches; fewer, separate batches are faster and less biased: on
    2 CPU cores a forward of 8 x 128 tokens of a 135M model takes ~2 s, and ``"loss"`` needs one per layer). ``mlp_strategy``: ``"taylor"`` (default), ``"activation"`` or ``"random"`` (for
    baselines; activations are on no common scale, so the allocation across layers is per layer then);
    ``layer_strategy``: ``"loss"`` (default), ``"block_influence"`` or ``"random"``. ``grid_step`` is the
    resolution of the allocation search (0.25: 15 splits over three axes), ``rounds`` how many score-and-prune
    rounds reach the target, ``round_to`` the multiple MLP sizes are rounded to (down, so the target holds).
    Every layer keeps at least one head (one per key/value group) and ``round_to`` MLP channels; at least one
    layer remains. See the module docstring for the method; the model is left unchanged on any error raised
    before removal (every check runs first).
    """
    started = time.perf_counter()
    target = _check_target(target_params)
    chosen_axes = check_axes(model, axes)
    _check_options(mlp_strategy, layer_strategy, grid_step, rounds, round_to)
    calibration = _batch_list(model, batches, max_batches, "batches")
    evaluation = calibration if eval_batches is None else _batch_list(model, eval_batches, max_batches, "eval_batches")

    params_before = parameter_count(model)
    _check_reachable(model, chosen_axes, target, params_before, round_to)
    heads_before = _heads_per_layer(model)
    mlp_before = _mlp_per_layer(model)
    original_layers = len(heads_before)
    seq_len = int(_first_ids(calibration).shape[-1])
    flops_before = forward_flops(model, 1, seq_len)
    loss_before = mean_loss(model, evaluation)
    removed = {axis: 0 for axis in chosen_axes}
    candidates: list[dict[str, Any]] = []
    shares: dict[str, float] = {}
    kept_layers = list(range(original_layers))
    for round_index in range(rounds):
        goal = int(round(params_before * (1 - (1 - target) * (round_index + 1) / rounds)))
        budget = parameter_count(model) - goal
        if budget <= 0:
            continue
        plan, tried = _best_plan(
            model, calibration, evaluation, chosen_axes, budget, mlp_strategy, layer_strategy, grid_step, round_to,
            progress,
        )
        candidates += [{"round": round_index + 1, **row} for row in tried]
        shares = plan.shares
        _apply_plan(model, plan, removed)
        kept_layers = [kept_layers[i] for i in range(len(kept_layers)) if i not in plan.layers]
    heads_after = _expand(_heads_per_layer(model), kept_layers, original_layers)
    mlp_after = _expand(_mlp_per_layer(model), kept_layers, original_layers)
    report = CompressReport(
        architecture=str(getattr(model.config, "model_type", type(model).__name__)),
        target_params=target,
        axes=chosen_axes,
        params_before=params_before,
        params_after=parameter_count(model),
        removed_params=removed,
        shares=shares,
        heads_before=tuple(heads_before),
        heads_after=tuple(heads_after),
        mlp_before=tuple(mlp_before),
        mlp_after=tuple(mlp_after),
        removed_layers=tuple(i for i in range(original_layers) if i not in kept_layers),
        kept_layers=tuple(kept_layers),
        flops_before=flops_before,
        flops_after=forward_flops(model, 1, seq_len),
        seq_len=seq_len,
        loss_before=loss_before,
        loss_after=mean_loss(model, evaluation),
        candidates=tuple(candidates),
        seconds=time.perf_counter() - started,
    )
    logger.info("%s", report.summary())
    return report


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
    return chosen


def _check_options(mlp_strategy: Any, layer_strategy: Any, grid_step: Any, rounds: Any, round_to: Any) -> None:
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


def _check_reachable(model: nn.Module, axes: tuple[str, ...], target: float, params: int, round_to: int) -> None:
    """Refuse a target that would take every layer, every head of a layer or every MLP channel of a layer."""
    sites = attention_sites(model)
    within = [0] * len(sites)  # what heads and MLP channels can give in each layer
    if "heads" in axes:
        for site in sites:
            q_cost, kv_cost = _head_costs(site)
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


def _heads_per_layer(model: nn.Module) -> list[int]:
    return [s.n_q for s in attention_sites(model)]


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


def _head_costs(site: AttentionSite) -> tuple[int, int]:
    """Parameters of one query head (query rows and output columns) and one key/value head (key and value rows)."""
    hd, spec = site.head_dim, site.spec

    def rows(name: str | None) -> int:
        proj = base_layer(site.proj(name))
        return hd * (in_features(proj) + (1 if getattr(proj, "bias", None) is not None else 0))

    q = rows(spec.q if not spec.fused else spec.qkv)
    kv = 2 * rows(spec.k if not spec.fused else spec.qkv)
    return q + hd * out_features(site.out_proj), kv


# --- planning ----------------------------------------------------------------------------------------------


@dataclass
class _Scores:
    heads: Any | None  # [layers, max_heads] or None
    mlp: list[Any] | None
    layers: Any | None  # [layers]


def _score(
    model: nn.Module, batches: list[Any], evaluation: list[Any], axes: tuple[str, ...], mlp_strategy: str,
    layer_strategy: str, progress: bool,
) -> _Scores:
    """Score the units of ``axes``: heads and channels on the calibration batches, layers (one forward per layer
    per batch for ``"loss"``) on the evaluation batches, which are usually fewer."""
    from .importance import eval_mode

    want_heads, want_mlp = "heads" in axes, "mlp" in axes and mlp_strategy == "taylor"
    heads = mlp = layers = None
    if want_heads or want_mlp:
        with eval_mode(model):
            heads, mlp = taylor_scores(model, _bar(batches, "Taylor scores (heads, MLP)", progress),
                                       heads=want_heads, mlp=want_mlp)
    if "mlp" in axes and mlp_strategy != "taylor":
        mlp = mlp_importance(model, batches, mlp_strategy, progress=progress)
    if "layers" in axes:
        layers = layer_importance(model, evaluation, layer_strategy, progress=progress)
    return _Scores(heads=heads, mlp=mlp, layers=layers)


def _bar(batches: list[Any], desc: str, progress: bool) -> Iterable[Any]:
    from tqdm.auto import tqdm

    return tqdm(batches, desc=desc, disable=not progress, leave=False)


def _splits(axes: tuple[str, ...], step: float) -> list[dict[str, float]]:
    """Every split of 1 over ``axes`` in multiples of ``step`` (the finest axis may get 0: it takes the rest)."""
    n = int(round(1 / step))
    splits = []
    for parts in itertools.product(range(n + 1), repeat=len(axes)):
        if sum(parts) == n:
            splits.append({axis: p * step for axis, p in zip(axes, parts)})
    return splits


def _best_plan(
    model: nn.Module, calibration: list[Any], evaluation: list[Any], axes: tuple[str, ...], budget: int,
    mlp_strategy: str, layer_strategy: str, grid_step: float, round_to: int, progress: bool,
) -> tuple[_Plan, list[dict[str, Any]]]:
    from tqdm.auto import tqdm

    scores = _score(model, calibration, evaluation, axes, mlp_strategy, layer_strategy, progress)
    units = _Units(model, scores, global_mlp=mlp_strategy == "taylor", round_to=round_to)
    plans = [units.plan(split, budget) for split in _splits(axes, grid_step)]
    unique = list({_plan_key(p): p for p in plans}.values())  # splits that pick the same units are measured once
    tried = []
    best: tuple[float, _Plan] | None = None
    params_now = parameter_count(model)
    for plan in tqdm(unique, desc="allocations (calibration loss)", disable=not progress, leave=False):
        loss = _gated_loss(model, plan, evaluation)
        tried.append({**{f"share_{a}": plan.shares[a] for a in axes},
                      **{f"removed_{a}": plan.removed[a] for a in axes},
                      "params_after": params_now - sum(plan.removed.values()), "loss": loss})
        if best is None or loss < best[0]:
            best = (loss, plan)
    assert best is not None
    return best[1], tried


def _plan_key(plan: _Plan) -> tuple[Any, ...]:
    return (plan.layers, plan.head_mask.numpy().tobytes(), tuple(m.numpy().tobytes() for m in plan.mlp_masks))


class _Units:
    """The prunable units of a model with their scores and parameter costs; :meth:`plan` fills a budget."""

    def __init__(self, model: nn.Module, scores: _Scores, *, global_mlp: bool, round_to: int) -> None:

        self.sites = attention_sites(model)
        self.layer_count = len(self.sites)
        self.max_heads = max(s.n_q for s in self.sites)
        self.layer_params = [parameter_count(layer) for layer in decoder_layers(model)]
        self.scores = scores
        self.round_to = round_to
        self.global_mlp = global_mlp
        self.mlp_sites = mlp_sites(model) if scores.mlp is not None else []
        self.channel_cost = [s.params_per_channel() for s in self.mlp_sites]
        self.head_cost = [_head_costs(s) for s in self.sites]

    def plan(self, shares: dict[str, float], budget: int) -> _Plan:
        import torch

        finest = next(a for a in _FINE_TO_COARSE if a in shares)
        removed = {axis: 0 for axis in shares}
        left = budget
        layers: list[int] = []
        if "layers" in shares and self.scores.layers is not None:
            allowance = budget if finest == "layers" else int(shares["layers"] * budget)
            order = torch.argsort(self.scores.layers).tolist()
            for index in order:
                if len(layers) == self.layer_count - 1:
                    break
                cost = self.layer_params[index]
                if finest != "layers" and removed["layers"] + cost > allowance:
                    continue
                if finest == "layers" and removed["layers"] >= allowance:
                    break
                layers.append(index)
                removed["layers"] += cost
            left -= removed["layers"]
        head_mask = torch.zeros(self.layer_count, self.max_heads, dtype=torch.bool)
        if "heads" in shares and self.scores.heads is not None:
            allowance = left if finest == "heads" else min(left, int(shares["heads"] * budget))
            removed["heads"] = self._plan_heads(head_mask, set(layers), allowance, exact=finest == "heads")
            left -= removed["heads"]
        mlp_masks = [torch.zeros(s.size, dtype=torch.bool) for s in self.mlp_sites]
        if "mlp" in shares and self.scores.mlp is not None and left > 0:
            removed["mlp"] = self._plan_mlp(mlp_masks, set(layers), left)
        return _Plan(shares=dict(shares), head_mask=head_mask, mlp_masks=mlp_masks, layers=tuple(sorted(layers)),
                     removed=removed)

    def _plan_heads(self, mask: Any, skipped: set[int], allowance: int, *, exact: bool) -> int:
        """Mark heads in ``mask``, cheapest score per parameter first, until ``allowance`` parameters; return saved."""
        import torch

        scores = self.scores.heads
        units: list[tuple[float, int, list[int]]] = []  # (score per parameter, layer, heads)
        for site in self.sites:
            if site.index in skipped:
                continue
            group = site.n_q // site.n_kv
            q_cost, kv_cost = self.head_cost[site.index]
            layer_scores = scores[site.index, : site.n_q]
            if group == 1:  # each head is its own key/value group: a unit is one head
                order = torch.argsort(layer_scores).tolist()[:-1]  # keep the best head
                for h in order:
                    units.append((float(layer_scores[h]) / (q_cost + kv_cost), site.index, [h]))
            else:  # a unit is the lowest remaining head of every group, so groups stay even (no padding)
                per_group = layer_scores.reshape(site.n_kv, group)
                ranked = torch.argsort(per_group, dim=1).tolist()
                for depth in range(group - 1):  # keep the best head of each group
                    heads = [g * group + ranked[g][depth] for g in range(site.n_kv)]
                    units.append((float(layer_scores[heads].sum()) / (q_cost * len(heads)), site.index, heads))
        # within a group heads are ranked, so a layer's deeper units score higher and sort after its shallower ones
        units.sort(key=lambda u: u[0])
        saved = 0
        for _, layer, heads in units:
            if saved >= allowance:
                break
            cost = self._head_unit_cost(layer, heads)
            if not exact and saved + cost > allowance:
                continue
            mask[layer, heads] = True
            saved += cost
        return saved

    def _head_unit_cost(self, layer: int, heads: list[int]) -> int:
        site = self.sites[layer]
        q_cost, kv_cost = self.head_cost[layer]
        return len(heads) * (q_cost + (kv_cost if site.n_q == site.n_kv else 0))

    def _plan_mlp(self, masks: list[Any], skipped: set[int], allowance: int) -> int:
        """Mark MLP channels, lowest score per parameter first (globally or per layer), until ``allowance``."""
        import torch

        sites = [s for s in self.mlp_sites if s.index not in skipped]
        if not sites:
            return 0
        floor = self.round_to
        if self.global_mlp:
            flat = torch.cat([self.scores.mlp[s.index].float() / self.channel_cost[s.index] for s in sites])
            layer_of = torch.cat([torch.full((s.size,), s.index) for s in sites])[torch.argsort(flat)].tolist()
            prune = {s.index: 0 for s in sites}
            saved = 0
            for layer in layer_of:
                if saved >= allowance:
                    break
                if self.mlp_sites[layer].size - prune[layer] <= floor:
                    continue
                prune[layer] += 1
                saved += self.channel_cost[layer]
        else:  # scores on no common scale: the same share from every layer
            total = sum(self.channel_cost[s.index] * s.size for s in sites)
            share = min(1.0, allowance / total)
            prune = {s.index: min(s.size - floor, int(-(-share * s.size // 1))) for s in sites}
        saved = 0
        for site in sites:
            keep = site.size - prune[site.index]
            if keep < site.size and floor > 1:
                keep = max(floor, (keep // floor) * floor)  # round down: more removed, the target still holds
            order = torch.argsort(self.scores.mlp[site.index].float(), descending=True)
            masks[site.index][order[keep:]] = True
            saved += (site.size - keep) * self.channel_cost[site.index]
        return saved


def _gated_loss(model: nn.Module, plan: _Plan, batches: list[Any]) -> float:
    from .gating import gate_heads
    from .importance import eval_mode
    from .layers import skip_layers
    from .mlp import gate_mlp

    with eval_mode(model), gate_heads(model, plan.head_mask), skip_layers(model, plan.layers):
        if plan.mlp_masks:
            with gate_mlp(model, plan.mlp_masks):
                return mean_loss(model, batches)
        return mean_loss(model, batches)


def _apply_plan(model: nn.Module, plan: _Plan, removed: dict[str, int]) -> None:
    from .mlp import remove_mlp_channels

    before = parameter_count(model)
    if bool(plan.head_mask.any()):
        remove_heads(model, plan.head_mask, allow_repeat=True)
    after_heads = parameter_count(model)
    if plan.mlp_masks and any(bool(m.any()) for m in plan.mlp_masks):
        remove_mlp_channels(model, plan.mlp_masks)
    after_mlp = parameter_count(model)
    if plan.layers:
        remove_layers(model, plan.layers)
    after_layers = parameter_count(model)
    for axis, amount in (("heads", before - after_heads), ("mlp", after_heads - after_mlp),
                         ("layers", after_mlp - after_layers)):
        if axis in removed:
            removed[axis] += amount
