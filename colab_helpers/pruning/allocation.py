"""The allocation search of :func:`~.compress.compress`: every prunable unit (a head, or one head per key/value
group; an MLP channel; a layer) with its score and parameter cost, budgets split over the axes on a grid, each
split's units gated at once and measured, and the best split removed (its output projections refit by least
squares when asked, :mod:`.reconstruct`).

What is measured is measured frugally: forwards are what compress spends its time on. Layers (``"loss"``): the
loss with each layer skipped, on the first evaluation batch, only for the layers that turn their input the least
(:func:`~.layers.screened_loss_costs`): as many as the budget could remove plus three, at least a third of them.
Splits: every distinct split on a screen (the first quarter of the first evaluation batch's rows), then the
``FINALISTS`` lowest on all the evaluation batches; the lowest of those wins. Splits differ in loss by much more
than the screen's noise, and a loss difference between two splits measured on the same tokens is steadier than
either loss.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..runtime.modules import model_device, parameter_count
from .batches import eval_mode, loss_sum, progress_bar
from .gating import HeadGates
from .importance import head_importance
from .layers import SkippedLayers, decoder_layers, layer_importance, remove_layers, screened_loss_costs
from .layout import AttentionSite, HeadLayout, attention_sites, layout_of
from .mlp import MlpGates, MlpSite, mlp_sites, remove_mlp_channels
from .mlp_importance import mlp_importance
from .reconstruct import GramCollector, OutputError, collect_grams, plan_refits, write_refits
from .removal import remove_heads
from .surgery import base_layer, in_features, out_features
from .taylor import taylor_scores

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

_FINE_TO_COARSE = ("mlp", "heads", "layers")  # the finest allowed axis takes the rest of the budget
FINALISTS = 3  # splits measured on all the evaluation batches after the screen
SCREEN_SHARE = 0.25  # of the first evaluation batch's rows: the screen every split is measured on


@dataclass(frozen=True)
class SearchOptions:
    """How :func:`best_plan` scores and splits (the options of :func:`~.compress.compress`)."""

    axes: tuple[str, ...]
    head_strategy: str
    mlp_strategy: str
    layer_strategy: str
    grid_step: float
    round_to: int
    progress: bool
    reconstruct: bool = False
    seed: int = 0


@dataclass(frozen=True)
class Plan:
    """One allocation: what to remove (positions in the model as it is now) and what it would leave."""

    shares: dict[str, float]
    head_mask: Any  # torch.bool [layers, max_heads]
    mlp_masks: list[Any]  # per layer, torch.bool [channels]
    layers: tuple[int, ...]
    removed: dict[str, int]


@dataclass
class _Scores:
    heads: Any | None  # [layers, max_heads] or None
    mlp: list[Any] | None
    layers: Any | None  # [layers]
    grams: GramCollector | None = None  # inputs of the output projections, for the least-squares refit


@dataclass(frozen=True)
class Search:
    """What :func:`best_plan` found: the plan, a row per split tried, and the sums the refit needs (or None)."""

    plan: Plan
    tried: list[dict[str, Any]]
    grams: GramCollector | None
    located: _Located


@dataclass(frozen=True)
class _Located:
    """Where the model's attention, decoder layers and MLPs are in one round (the model does not change in it)."""

    sites: list[AttentionSite]
    layout: HeadLayout
    layers: list[nn.Module]
    mlp: list[MlpSite]

    @classmethod
    def of(cls, model: nn.Module, axes: Sequence[str]) -> _Located:
        sites = attention_sites(model)
        mlp = mlp_sites(model) if "mlp" in axes else []
        return cls(sites, layout_of(model, sites), decoder_layers(model), mlp)


def head_costs(site: AttentionSite) -> tuple[int, int]:
    """Parameters of one query head (query rows and output columns) and one key/value head (key and value rows)."""
    hd, spec = site.head_dim, site.spec

    def rows(name: str | None) -> int:
        proj = base_layer(site.proj(name))
        return hd * (in_features(proj) + (1 if getattr(proj, "bias", None) is not None else 0))

    q = rows(spec.q if not spec.fused else spec.qkv)
    kv = 2 * rows(spec.k if not spec.fused else spec.qkv)
    return q + hd * out_features(site.out_proj), kv


def best_plan(
    model: nn.Module, calibration: list[Any], evaluation: list[Any], budget: int, options: SearchOptions
) -> Search:
    """Score the model's units, try every split of ``budget`` parameters over the axes, and return the split with
    the lowest gated loss on ``evaluation`` (after a screen, see the module docstring), a row per split tried
    (shares, removed parameters, loss, the tokens it was measured on, its loss on the screen, whether it won) and,
    with ``options.reconstruct``, the Gram sums of the output projections' inputs on ``calibration``."""
    axes = options.axes
    located = _Located.of(model, axes)
    scores = _score(model, located, calibration, evaluation, options, budget)
    units = _Units(located, scores, global_mlp=options.mlp_strategy == "taylor", round_to=options.round_to)
    plans = [units.plan(split, budget) for split in _splits(axes, options.grid_step)]
    unique = list({_plan_key(p): p for p in plans}.values())  # splits that pick the same units are measured once
    losses = _measure(model, located, unique, evaluation, options.progress)
    params_now = parameter_count(model)
    winner = min(range(len(unique)), key=lambda i: (-losses[i][1], losses[i][0]))
    tried = [{**{f"share_{a}": plan.shares[a] for a in axes}, **{f"removed_{a}": plan.removed[a] for a in axes},
              "params_after": params_now - sum(plan.removed.values()), "loss": loss, "tokens": tokens,
              "screen_loss": screen, "chosen": i == winner}
             for i, (plan, (loss, tokens, screen)) in enumerate(zip(unique, losses))]  # fmt: skip
    return Search(unique[winner], tried, scores.grams, located)


def _measure(
    model: nn.Module, located: _Located, plans: list[Plan], evaluation: list[Any], progress: bool
) -> list[tuple[float, int, float]]:
    """``(loss, tokens it was measured on, loss on the screen)`` per plan: every plan on the screen, the
    ``FINALISTS`` lowest there on the rest of the evaluation batches too."""
    from tqdm.auto import tqdm

    screen, rest = _screen_split(evaluation)
    first = [_gated_loss(model, located, plan, screen) for plan in
             tqdm(plans, desc="allocations (screen)", disable=not progress, leave=False)]  # fmt: skip
    results = [(total / max(count, 1), count, total / max(count, 1)) for total, count in first]
    if rest and len(plans) > 1:
        screened = first[0][1] > 0  # a screen of padding alone tells nothing: every plan is a finalist
        finalists = sorted(range(len(plans)), key=lambda i: results[i][0])[: FINALISTS if screened else None]
        for i in finalists:
            total, count = _gated_loss(model, located, plans[i], rest)
            results[i] = ((first[i][0] + total) / max(first[i][1] + count, 1), first[i][1] + count, results[i][2])
    return results


def _screen_split(evaluation: list[Any]) -> tuple[list[Any], list[Any]]:
    """The first ``SCREEN_SHARE`` of the first batch's rows (at least one), and everything else."""
    import torch

    first = evaluation[0]
    ids = torch.as_tensor(first["input_ids"])
    if ids.dim() < 2 or ids.shape[0] < 2:
        return evaluation[:1], evaluation[1:]
    cut = max(1, int(ids.shape[0] * SCREEN_SHARE))
    mask = first.get("attention_mask")
    mask = torch.as_tensor(mask) if mask is not None else torch.ones_like(ids)
    head, tail = ({"input_ids": ids[part], "attention_mask": mask[part]} for part in (slice(cut), slice(cut, None)))
    return [head], [tail, *evaluation[1:]]


def _score(
    model: nn.Module, located: _Located, batches: list[Any], evaluation: list[Any], options: SearchOptions,
    budget: int,
) -> _Scores:
    """Score the units of the axes: heads and channels on the calibration batches, layers on the evaluation batches
    (``"loss"``: screened, see the module docstring); with ``options.reconstruct``, sum the Grams of the output
    projections' inputs in the same calibration pass."""
    import contextlib

    axes, progress = options.axes, options.progress
    want_heads = "heads" in axes and options.head_strategy == "taylor"
    want_mlp = "mlp" in axes and options.mlp_strategy == "taylor"
    heads = mlp = layers = grams = None
    gram_heads = located.sites if "heads" in axes else None
    gram_mlp = located.mlp if "mlp" in axes else None
    if want_heads or want_mlp:
        collector = GramCollector(model, gram_heads, gram_mlp) if options.reconstruct else contextlib.nullcontext()
        with eval_mode(model), collector:
            heads, mlp = taylor_scores(model, progress_bar(batches, "Taylor scores (heads, MLP)", None, progress),
                                       heads=located.sites if want_heads else None,
                                       mlp=located.mlp if want_mlp else None)  # fmt: skip
        grams = collector if options.reconstruct else None
    elif options.reconstruct and (gram_heads or gram_mlp):
        with eval_mode(model):
            grams = collect_grams(model, batches, gram_heads, gram_mlp)
    if "heads" in axes and options.head_strategy != "taylor":
        heads = head_importance(model, None, options.head_strategy, seed=options.seed, progress=False)
    if "mlp" in axes and options.mlp_strategy != "taylor":
        mlp = mlp_importance(model, batches, options.mlp_strategy, seed=options.seed, progress=progress)
    if "layers" in axes and options.layer_strategy == "loss":
        measure = _layers_to_measure(located.layers, budget)
        layers = screened_loss_costs(model, evaluation[:1], measure, progress=progress)
    elif "layers" in axes:
        layers = layer_importance(model, evaluation, options.layer_strategy, seed=options.seed, progress=progress)
    return _Scores(heads=heads, mlp=mlp, layers=layers, grams=grams)


def _layers_to_measure(layers: list[nn.Module], budget: int) -> int:
    """As many layers as ``budget`` parameters could remove (smallest first) plus three, and at least a third."""
    sizes = sorted(parameter_count(layer) for layer in layers)
    reachable = len(list(itertools.takewhile(lambda total: total <= budget, itertools.accumulate(sizes))))
    return min(len(layers), max(-(-len(layers) // 3), reachable + 3))  # one of the three: the finest axis overshoots


def _splits(axes: tuple[str, ...], step: float) -> list[dict[str, float]]:
    """Every split of 1 over ``axes`` in multiples of ``step`` (the finest axis may get 0: it takes the rest)."""
    n = int(round(1 / step))
    splits = []
    for parts in itertools.product(range(n + 1), repeat=len(axes)):
        if sum(parts) == n:
            splits.append({axis: p * step for axis, p in zip(axes, parts)})
    return splits


def _plan_key(plan: Plan) -> tuple[Any, ...]:
    return (plan.layers, plan.head_mask.numpy().tobytes(), tuple(m.numpy().tobytes() for m in plan.mlp_masks))


class _Units:
    """The prunable units of a model with their scores and parameter costs; :meth:`plan` fills a budget."""

    def __init__(self, located: _Located, scores: _Scores, *, global_mlp: bool, round_to: int) -> None:
        self.sites = located.sites
        self.layer_count = len(self.sites)
        self.max_heads = max(s.n_q for s in self.sites)
        self.layer_params = [parameter_count(layer) for layer in located.layers]
        self.scores = scores
        self.round_to = round_to
        self.global_mlp = global_mlp
        self.mlp_sites = located.mlp if scores.mlp is not None else []
        self.channel_cost = [s.params_per_channel() for s in self.mlp_sites]
        self.head_cost = [head_costs(s) for s in self.sites]

    def plan(self, shares: dict[str, float], budget: int) -> Plan:
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
        return Plan(shares=dict(shares), head_mask=head_mask, mlp_masks=mlp_masks, layers=tuple(sorted(layers)),
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


def _gated_loss(model: nn.Module, located: _Located, plan: Plan, batches: list[Any]) -> tuple[float, int]:
    """``(summed token loss, tokens)`` on ``batches`` with the plan's heads and channels gated off and its layers
    skipped."""
    import torch

    device = model_device(model)
    head_gates = HeadGates((~plan.head_mask).to(device=device, dtype=torch.float32), located.sites, located.layout)
    mlp_gates = MlpGates(located.mlp, [(~m).to(device=device, dtype=torch.float32) for m in plan.mlp_masks])
    with eval_mode(model), head_gates, SkippedLayers(located.layers, plan.layers), mlp_gates:
        return loss_sum(model, batches)


def apply_plan(
    model: nn.Module, search: Search, removed: dict[str, int], errors: dict[str, OutputError] | None = None
) -> None:
    """Remove the search's plan: heads, then MLP channels (their output projections refit when ``search.grams``),
    then layers; add what each took to ``removed`` and the refit's output errors to ``errors`` (per axis)."""
    plan = search.plan
    refits = None
    if search.grams is not None:  # computed from the weights as they are, before anything is removed
        refits = plan_refits(search.grams, search.located.sites, search.located.mlp, plan.head_mask, plan.mlp_masks,
                             plan.layers)  # fmt: skip
    before = parameter_count(model)
    if bool(plan.head_mask.any()):
        remove_heads(model, plan.head_mask, allow_repeat=True)
    after_heads = parameter_count(model)
    if plan.mlp_masks and any(bool(m.any()) for m in plan.mlp_masks):
        remove_mlp_channels(model, plan.mlp_masks)
    after_mlp = parameter_count(model)
    if refits is not None:
        for axis, error in write_refits(refits).items():
            if errors is not None and axis in errors:
                errors[axis].add(error)
    if plan.layers:
        remove_layers(model, plan.layers)
    after_layers = parameter_count(model)
    for axis, amount in (("heads", before - after_heads), ("mlp", after_heads - after_mlp),
                         ("layers", after_mlp - after_layers)):
        if axis in removed:
            removed[axis] += amount
