"""How much each head matters: :func:`head_importance` and its four strategies (which heads to prune:
:mod:`.selection`), and the optional per-layer rescaling of scores (:func:`normalize_scores`).

Scores are ``[layers, max_heads]`` float tensors, higher = more important. A layer with fewer heads than
``max_heads`` (after physical removal) has NaN past its last head: NaN means "no head here" everywhere in this
package, and ``select_heads`` never selects it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .batches import batch_inputs, check_batches, eval_mode, progress_bar
from .layout import AttentionSite, HeadLayout, attention_sites, layout_of, o_weight, qkv_weights
from .taylor import taylor_scores

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

STRATEGIES = ("random", "magnitude", "entropy", "gradient")
NORMALIZATIONS = ("none", "l2", "zscore")  # per-layer rescaling of scores; "none" keeps them raw (the default)


def check_strategy(strategy: Any) -> str:
    """Return ``strategy`` when it names an importance strategy, else raise ValueError listing them (the one check
    that configs, sweeps and :func:`head_importance` share)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    return strategy


def check_normalization(method: Any) -> str:
    """Return ``method`` when it names a normalisation (``NORMALIZATIONS``), else raise ValueError listing them."""
    if not isinstance(method, str) or method not in NORMALIZATIONS:
        choices = ", ".join(repr(m) for m in NORMALIZATIONS)
        raise ValueError(f"normalize must be one of {choices}, got {method!r}; 'none' keeps the raw scores")
    return method


def head_importance(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]] | None,
    strategy: str,
    *,
    seed: int = 0,
    max_batches: int | None = None,
    progress: bool = True,
    normalize: str = "none",
) -> torch.Tensor:
    """Return a float32 CPU tensor ``[layers, max_heads]`` of head importance, higher = more important.

    Entries past a layer's last head (layers with fewer heads after pruning) are NaN. ``batches`` is an
    iterable of dicts with ``input_ids`` and optionally ``attention_mask`` (padding is excluded everywhere); it
    is read by ``entropy`` and ``gradient`` only, up to ``max_batches`` batches. Strategies:

    - ``"random"``: uniform scores from ``seed`` (a baseline; the same seed gives the same scores).
    - ``"magnitude"``: L2 norm of each head's weights: its query rows, its key/value head's rows and its output
      columns (no data needed).
    - ``"entropy"``: how focused each head's attention is on tokens other than the first one, from the entropy
      of its attention weights, averaged over the data's real (non-pad) query positions: per query,
      ``(1 - sink) * (1 - H(rest) / log(n))`` where ``sink`` is the weight on the first real token, ``rest`` the
      other weights renormalised, and ``n`` how many other tokens the query sees. A focused head (previous-token,
      induction, delimiter heads) scores near 1; a head spreading attention uniformly, or parking it on the first
      token (an "attention sink", close to a no-op), scores near 0 (docs/pruning-results.md). Needs attention
      weights, which sdpa does not return: the model is switched to eager attention for the pass and back.
    - ``"gradient"``: expected absolute gradient of the LM loss with respect to a gate of ones on each head
      (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"), per example, averaged over examples
      (:mod:`.taylor`). Weight gradients are not computed.

    ``normalize`` (``"none"``, the default, ``"l2"`` or ``"zscore"``) rescales each layer's scores before they are
    returned (see :func:`normalize_scores`); NaN entries stay NaN. The model's weights, train/eval modes and
    attention implementation are left as they were (the passes run in eval mode). Unknown strategies or
    normalisations raise ``ValueError``.
    """
    check_strategy(strategy)
    check_normalization(normalize)
    return normalize_scores(_raw_scores(model, batches, strategy, seed, max_batches, progress), normalize)


def normalize_scores(scores: torch.Tensor, method: str) -> torch.Tensor:
    """Return a new float32 tensor: each layer's (row's) scores rescaled by ``method``; NaN entries stay NaN.

    - ``"none"``: unchanged (a copy).
    - ``"l2"``: divided by the layer's L2 norm (Michel et al. 2019). Order within a layer is kept; across layers
      a head now counts by its share of its layer. A layer whose scores are all zero is left at zero.
    - ``"zscore"``: minus the layer's mean, divided by its standard deviation (0 where a layer's scores are all
      equal, or it has one head). Every layer then spreads alike, even one whose heads hardly differ.
    """
    import torch

    check_normalization(method)
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or not scores.is_floating_point():
        found = f"{scores.dtype} {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a float tensor [layers, max_heads] (from head_importance), got {found}")
    values = scores.detach().to("cpu", torch.float64).clone()
    if method != "none":
        for row in values:
            exists = ~torch.isnan(row)
            if exists.any():
                row[exists] = _normalize_row(row[exists], method)
    return values.float().to(scores.device)


def _normalize_row(x: torch.Tensor, method: str) -> torch.Tensor:
    """Rescale one layer's existing scores (a 1-d float64 tensor without NaN)."""
    import torch

    if method == "l2":
        norm = x.norm()
        return x / norm if norm > 0 else torch.zeros_like(x)
    std = x.std(unbiased=False)  # zscore
    return (x - x.mean()) / std if std > 0 else torch.zeros_like(x)


def _raw_scores(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]] | None,
    strategy: str,
    seed: int,
    max_batches: int | None,
    progress: bool,
) -> torch.Tensor:
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
    sites = attention_sites(model)
    layout = layout_of(model, sites)
    if strategy == "random":
        return _random_scores(layout, seed)
    if strategy == "magnitude":
        return _magnitude_scores(sites, layout)
    if batches is None:
        raise ValueError(f"strategy {strategy!r} needs batches: an iterable of dicts with input_ids")
    check_batches(batches, model, max_batches=max_batches)
    iterator = progress_bar(batches, f"head importance ({strategy})", max_batches, progress)
    with eval_mode(model):
        if strategy == "entropy":
            return _entropy_scores(model, sites, layout, iterator)
        return _gradient_scores(model, sites, iterator)


def _nan_padded(layout: HeadLayout) -> torch.Tensor:
    import torch

    return torch.full((layout.num_layers, layout.max_heads), math.nan, dtype=torch.float32)


def _random_scores(layout: HeadLayout, seed: int) -> torch.Tensor:
    import torch

    generator = torch.Generator().manual_seed(int(seed))
    scores = torch.rand((layout.num_layers, layout.max_heads), generator=generator)
    for layer, n in enumerate(layout.query_heads):
        scores[layer, n:] = math.nan
    return scores


def _magnitude_scores(sites: list[AttentionSite], layout: HeadLayout) -> torch.Tensor:
    import torch

    scores = _nan_padded(layout)
    with torch.no_grad():
        for site in sites:
            q, k, v = qkv_weights(site)  # [heads, head_dim, in]
            group = site.n_q // site.n_kv
            sq = q.float().pow(2).sum(dim=(1, 2))
            skv = (k.float().pow(2).sum(dim=(1, 2)) + v.float().pow(2).sum(dim=(1, 2))).repeat_interleave(group)
            so = o_weight(site).float().pow(2).sum(dim=(0, 2))
            scores[site.index, : site.n_q] = (sq + skv + so).sqrt().cpu()
    return scores


def _entropy_scores(
    model: nn.Module, sites: list[AttentionSite], layout: HeadLayout, batches: Iterator[Any]
) -> torch.Tensor:
    """Sum each head's attention focus outside the sink over real query positions, layer by layer as the forward
    runs (so only one layer's attention weights are alive at a time), and return the mean (see ``_entropy_sum``)."""
    import torch

    totals: list[Any] = [0.0] * len(sites)
    counts = [0.0] * len(sites)
    capture = _FocusCapture(model, sites)
    seen = 0
    try:
        with _eager_attention(model), torch.no_grad():
            for batch in batches:
                seen += 1
                for index, (entropy_sum, n) in capture.batch_sums(batch).items():
                    totals[index] = totals[index] + entropy_sum
                    counts[index] += n
    finally:
        capture.remove()
    if not seen:
        raise ValueError("batches yielded no batch; pass at least one dict with input_ids")
    scores = _nan_padded(layout)
    for site in sites:
        mean = torch.as_tensor(totals[site.index]).double().cpu() / max(counts[site.index], 1.0)
        scores[site.index, : site.n_q] = mean.float()
    return scores


class _FocusCapture:
    """Forward hooks on every attention module that turn its attention weights into per-head focus sums
    (``_entropy_sum``) as one batch's forward runs; the model's returned ``attentions`` fill in for modules that
    return no weights themselves."""

    def __init__(self, model: nn.Module, sites: list[AttentionSite]) -> None:
        self.model, self.sites = model, sites
        self.sums: dict[int, tuple[torch.Tensor, float]] = {}
        self.attention_mask: torch.Tensor | None = None
        self.ask = False  # set when the model returns attention weights only if asked
        self.handles = [s.attn.register_forward_hook(self._hook(s)) for s in sites]

    def _hook(self, site: AttentionSite) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            weights = _attention_weights(output)
            if weights is not None and weights.shape[1] == site.n_q:
                self.sums[site.index] = _entropy_sum(weights, self.attention_mask)

        return hook

    def batch_sums(self, batch: Any) -> dict[int, tuple[torch.Tensor, float]]:
        """Run one batch; return ``{layer: (per-head focus sum, queries counted)}`` for every layer, or raise."""
        input_ids, self.attention_mask = batch_inputs(batch, self.model)
        outputs = self._forward(input_ids)
        if len(self.sums) < len(self.sites) and not self.ask:
            self.ask = True
            outputs = self._forward(input_ids)
        attentions = getattr(outputs, "attentions", None) or ()
        del outputs
        for site in self.sites:
            if site.index not in self.sums and site.index < len(attentions):
                weights = attentions[site.index]
                if weights is not None and weights.dim() == 4 and weights.shape[1] == site.n_q:
                    self.sums[site.index] = _entropy_sum(weights, self.attention_mask)
            if site.index not in self.sums:
                raise RuntimeError(
                    f"no attention weights of shape [batch, {site.n_q}, query, key] from layer {site.index} "
                    "even with eager attention; the entropy strategy cannot score this model, use gradient"
                )
        return self.sums

    def _forward(self, input_ids: torch.Tensor) -> Any:
        self.sums.clear()
        extra = {"output_attentions": True} if self.ask else {}
        return self.model(input_ids=input_ids, attention_mask=self.attention_mask, use_cache=False, **extra)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _attention_weights(output: Any) -> torch.Tensor | None:
    """Return the first 4-d tensor after the attention output in an attention module's return value."""
    import torch

    if isinstance(output, tuple):
        for item in output[1:]:
            if isinstance(item, torch.Tensor) and item.dim() == 4:
                return item
    return None


def _entropy_sum(weights: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, float]:
    """Return the per-head sum of attention focus outside the sink over real query positions, and how many.

    Focus of one query: ``(1 - sink) * (1 - H(rest) / log(n))``, ``sink`` the weight on the row's first real
    key, ``rest`` the other weights renormalised, ``n`` the real keys the query sees besides the sink. Queries
    that see fewer than two other keys carry no information about focus and are left out.
    """
    import torch

    p = weights.float()  # [batch, heads, query, key]
    batch, heads, queries, keys = p.shape
    if attention_mask is None:
        key_mask = torch.ones((batch, keys), dtype=torch.bool, device=p.device)
    else:
        key_mask = attention_mask[:, -keys:].bool().to(p.device)
    first = key_mask.float().argmax(dim=1).view(batch, 1, 1, 1).expand(batch, heads, queries, 1)
    sink = p.gather(-1, first).squeeze(-1)  # [batch, heads, query]
    rest = p.scatter(-1, first, 0.0)
    rest = rest / rest.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    entropy = -(rest * torch.log(rest.clamp_min(1e-12))).sum(dim=-1)
    others = (key_mask.long().cumsum(dim=1) - 1)[:, -queries:]  # real keys each query sees, besides the sink
    counted = key_mask[:, -queries:] & (others >= 2)  # [batch, query]
    spread = entropy / torch.log(others.clamp_min(2).float())[:, None, :]
    focus = (1 - sink) * (1 - spread)
    focus = torch.where(counted[:, None, :], focus, torch.zeros((), dtype=focus.dtype, device=focus.device))
    return focus.sum(dim=(0, 2)).double(), float(counted.sum())


def _gradient_scores(model: nn.Module, sites: list[AttentionSite], batches: Iterator[Any]) -> torch.Tensor:
    scores, _ = taylor_scores(model, batches, heads=sites)
    assert scores is not None
    return scores


class _eager_attention:  # noqa: N801
    """Switch the model to eager attention for a block (sdpa returns no attention weights), then switch back."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.previous: str | None = None

    def __enter__(self) -> None:
        previous = getattr(self.model.config, "_attn_implementation", None)
        if previous in (None, "eager"):
            return
        logger.info("entropy importance: switching attention from %r to 'eager' for the pass (sdpa returns no "
                    "attention weights); it is switched back afterwards", previous)
        _set_attention(self.model, "eager")
        self.previous = previous

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            _set_attention(self.model, self.previous)


def _set_attention(model: nn.Module, implementation: str) -> None:
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        setter(implementation)
    else:  # pragma: no cover - transformers without set_attn_implementation
        model.config._attn_implementation = implementation
