"""How much each head matters: ``head_importance`` and its four strategies (which heads to prune: :mod:`.selection`).

Scores are ``[layers, max_heads]`` float tensors, higher = more important. A layer with fewer heads than
``max_heads`` (after physical removal) has NaN past its last head: NaN means "no head here" everywhere in this
package, and ``select_heads`` never selects it.

The four strategies live in one module because they share the batch loop, the eval-mode and eager-attention
contexts and the NaN padding of layers with fewer heads; each strategy is one small function over them.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..evaluation.perplexity import check_token_ids, model_vocab_size
from ..runtime.modules import model_device
from .gating import gate_heads
from .layout import AttentionSite, HeadLayout, attention_sites, head_layout, layout_of, o_weight, qkv_weights

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

STRATEGIES = ("random", "magnitude", "entropy", "gradient")
NORMALIZATIONS = ("auto", "none", "l2", "zscore")
# What ``normalize="auto"`` applies per strategy: the best per-layer normalisation before a global ranking, as
# measured in docs/pruning-results.md ("Which normalisation"). Perplexity at 30% of heads gated, global scope,
# SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized), unpruned ~90, random median 616-665 (none / l2 / zscore):
# magnitude 400 / 690 / 520, gradient 135 / 134 / 138, entropy (sink-aware focus) 490 / 793 / 789 (the plain
# entropy of the first version: 32,140 / 974 / 808, worse than random even normalised).
AUTO_NORMALIZATION = {"random": "none", "magnitude": "none", "entropy": "none", "gradient": "none"}


def check_strategy(strategy: Any) -> str:
    """Return ``strategy`` when it names an importance strategy, else raise ValueError listing them (the one check
    that configs, sweeps and :func:`head_importance` share)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    return strategy


def head_importance(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]] | None,
    strategy: str,
    *,
    seed: int = 0,
    max_batches: int | None = None,
    progress: bool = True,
    normalize: str = "auto",
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
      induction, delimiter heads) scores near 1 and routes specific information: important. A head spreading
      attention uniformly scores near 0: its output is close to a plain average of the context. A head parking
      its attention on the first token (an "attention sink", close to a no-op) also scores near 0: plain minus
      entropy called those the most important heads, which on SmolLM2-135M-Instruct (93 of 270 heads are sinks)
      made it worse than random (docs/pruning-results.md). Needs attention weights, which sdpa does not return:
      the model is switched to eager attention for the pass and back afterwards. Still well behind ``gradient``.
    - ``"gradient"``: expected absolute gradient of the LM loss with respect to a gate of ones on each head
      (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"), per example, averaged over examples.
      Weight gradients are not computed.

    ``normalize`` rescales each layer's scores before they are returned, so that a global ranking
    (``select_heads(..., scope="global")``) compares like with like (see :func:`normalize_scores`). ``"auto"``
    applies ``AUTO_NORMALIZATION[strategy]``, the choice measured best per strategy: ``zscore`` for entropy (raw
    entropies empty whole layers: 30% of SmolLM2's heads gated, perplexity 32,140 raw, 808 zscore, 974 l2), none
    for the others (magnitude raw 400 vs l2 690; gradient 135 vs 134; unpruned 91.1). ``"none"`` returns the raw
    scores; NaN entries stay NaN.

    The model's weights, train/eval modes and attention implementation are left as they were (the passes run in
    eval mode). Unknown strategies or normalisations raise ``ValueError``.
    """
    check_strategy(strategy)
    method = resolve_normalization(normalize, strategy)
    return normalize_scores(_raw_scores(model, batches, strategy, seed, max_batches, progress), method)


def normalize_scores(scores: torch.Tensor, method: str) -> torch.Tensor:
    """Return a new float32 tensor: each layer's (row's) scores rescaled by ``method``; NaN entries stay NaN.

    - ``"none"``: unchanged (a copy).
    - ``"l2"``: divided by the layer's L2 norm (Michel et al. 2019). Order within a layer is kept; across layers
      a head now counts by its share of its layer. A layer whose scores are all zero is left at zero.
    - ``"zscore"``: minus the layer's mean, divided by its standard deviation (0 where a layer's scores are all
      equal, or it has one head). Every layer then spreads alike, even one whose heads hardly differ.

    ``"auto"`` needs a strategy (use :func:`head_importance`), so it is not accepted here.
    """
    import torch

    if method not in NORMALIZATIONS or method == "auto":
        choices = ", ".join(repr(m) for m in NORMALIZATIONS if m != "auto")
        raise ValueError(f"normalize must be one of {choices} here ('auto' needs a strategy: pass it to "
                         f"head_importance), got {method!r}")  # fmt: skip
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


def resolve_normalization(normalize: Any, strategy: str) -> str:
    """Return the concrete method for ``normalize`` (resolving ``"auto"`` for ``strategy``), or raise."""
    if not isinstance(normalize, str) or normalize not in NORMALIZATIONS:
        raise ValueError(
            f"normalize must be one of {', '.join(repr(m) for m in NORMALIZATIONS)}, got {normalize!r}; "
            "'auto' picks the measured best per strategy, 'none' keeps the raw scores"
        )
    return AUTO_NORMALIZATION[strategy] if normalize == "auto" else normalize


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
        return _gradient_scores(model, layout, iterator)


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
    batch_sums: dict[int, tuple[torch.Tensor, float]] = {}
    current: dict[str, Any] = {}

    def capture(site: AttentionSite) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            weights = _attention_weights(output)
            if weights is not None and weights.shape[1] == site.n_q:
                batch_sums[site.index] = _entropy_sum(weights, current["attention_mask"])

        return hook

    handles = [s.attn.register_forward_hook(capture(s)) for s in sites]
    ask_attentions = False  # set when the model returns attention weights only if asked
    seen = 0
    try:
        with _eager_attention(model), torch.no_grad():
            for batch in batches:
                input_ids, attention_mask = batch_inputs(batch, model)
                current["attention_mask"] = attention_mask
                seen += 1
                batch_sums.clear()
                extra = {"output_attentions": True} if ask_attentions else {}
                outputs = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra)
                if len(batch_sums) < len(sites) and not ask_attentions:
                    ask_attentions = True
                    batch_sums.clear()
                    outputs = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                                    output_attentions=True)
                attentions = getattr(outputs, "attentions", None) or ()
                del outputs
                for site in sites:
                    if site.index not in batch_sums and site.index < len(attentions):
                        weights = attentions[site.index]
                        if weights is not None and weights.dim() == 4 and weights.shape[1] == site.n_q:
                            batch_sums[site.index] = _entropy_sum(weights, attention_mask)
                    if site.index not in batch_sums:
                        raise RuntimeError(
                            f"no attention weights of shape [batch, {site.n_q}, query, key] from layer {site.index} "
                            "even with eager attention; the entropy strategy cannot score this model, use gradient"
                        )
                    entropy_sum, n = batch_sums[site.index]
                    totals[site.index] = totals[site.index] + entropy_sum
                    counts[site.index] += n
                del attentions
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise ValueError("batches yielded no batch; pass at least one dict with input_ids")
    scores = _nan_padded(layout)
    for site in sites:
        mean = torch.as_tensor(totals[site.index]).double().cpu() / max(counts[site.index], 1.0)
        scores[site.index, : site.n_q] = mean.float()
    return scores


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


def _gradient_scores(model: nn.Module, layout: HeadLayout, batches: Iterator[Any]) -> torch.Tensor:
    scores, _ = taylor_scores(model, batches, heads=True, mlp=False)
    assert scores is not None
    return scores


def taylor_scores(
    model: nn.Module, batches: Iterable[Any], *, heads: bool, mlp: bool
) -> tuple[torch.Tensor | None, list[torch.Tensor] | None]:
    """One pass of per-example gate gradients for heads and/or MLP channels: ``(head scores, MLP scores)``.

    Each score is the expected ``|d loss / d gate|`` at gates of one, the first-order estimate of the loss change
    when the unit is removed, so head and channel scores are on one scale (the loss's). Only the gates get
    gradients; parameters' ``requires_grad`` flags are restored afterwards.
    """
    import torch

    from .mlp import MlpGates, mlp_sites

    device = model_device(model)
    sites = mlp_sites(model) if mlp else []
    layout = head_layout(model) if heads else None
    head_total = torch.zeros(layout.num_layers, layout.max_heads, dtype=torch.float64) if layout else None
    mlp_totals = [torch.zeros(s.size, dtype=torch.float64) for s in sites]
    examples = 0
    flags = [(p, p.requires_grad) for p in model.parameters()]
    head_gates = gate_heads(model) if layout else None
    try:
        for param, _ in flags:
            param.requires_grad_(False)
        with torch.enable_grad():
            for batch in batches:
                input_ids, attention_mask = batch_inputs(batch, model)
                n = input_ids.shape[0]
                head_values = None
                if head_gates is not None and layout is not None:
                    head_values = torch.ones(n, layout.num_layers, layout.max_heads, device=device, requires_grad=True)
                    head_gates.set(head_values)
                mlp_values = [torch.ones(n, s.size, device=device, requires_grad=True) for s in sites]
                with MlpGates(sites, mlp_values):
                    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
                    losses, has_tokens = per_example_loss(logits, input_ids, attention_mask)
                    losses.sum().backward()
                keep = has_tokens.cpu()
                if head_values is not None and head_total is not None:
                    head_total += head_values.grad.detach().abs().double().cpu()[keep].sum(dim=0)
                for total, values in zip(mlp_totals, mlp_values):
                    total += values.grad.detach().abs().double().cpu()[keep].sum(dim=0)
                examples += int(keep.sum())
                del logits, losses
    finally:
        if head_gates is not None:
            head_gates.remove()
        for param, flag in flags:
            param.requires_grad_(flag)
    if not examples:
        raise ValueError("batches held no example with at least two real tokens; gradient (Taylor) importance needs text")
    head_scores = None
    if head_total is not None and layout is not None:
        head_scores = (head_total / examples).float()
        for layer, count in enumerate(layout.query_heads):
            head_scores[layer, count:] = math.nan
    return head_scores, ([(t / examples).float() for t in mlp_totals] if mlp else None)


def token_losses(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return each position's next-token loss (float32, zero where not scored) and which positions are scored: both
    the token and the one it predicts are real (not padding)."""
    import torch

    targets = input_ids[:, 1:]
    token_loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
    if attention_mask is None:
        valid = torch.ones_like(targets, dtype=torch.bool)
    else:
        valid = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    token_loss = torch.where(valid, token_loss, torch.zeros((), dtype=token_loss.dtype, device=token_loss.device))
    return token_loss, valid


def per_example_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return each example's mean next-token loss over real tokens, and which examples had any."""
    token_loss, valid = token_losses(logits, input_ids, attention_mask)
    n = valid.sum(dim=1)
    return token_loss.sum(dim=1) / n.clamp_min(1), n > 0


def check_batch(
    batch: Any, *, vocab_size: int | None, name: str = "each batch"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return one batch's ``(input_ids, attention_mask)`` as 2-D tensors, checked before any model sees them.

    Refused with a ValueError saying the fix: not a dict with ``input_ids``; ids that are not integers, empty
    (zero-length sequences), negative or ``>= vocab_size`` (:func:`~colab_helpers.evaluation.check_token_ids`: on a
    GPU an id past the embedding is a device-side assert that poisons the CUDA context); a mask of another shape.
    """
    import torch

    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise ValueError(
            f"{name} must be a dict with input_ids (and optionally attention_mask), got {type(batch).__name__}"
        )
    raw = batch["input_ids"]
    try:
        input_ids = torch.as_tensor(raw)
    except (TypeError, ValueError, RuntimeError) as exc:  # text, ragged lists
        raise ValueError(
            f"{name}['input_ids'] must be token ids (a tensor, or equal-length lists of ints), got {raw!r:.60}; "
            "e.g. lm_batches(tokenize_texts(tokenizer, texts), seq_len=128, batch_size=8)"
        ) from exc
    input_ids = check_token_ids(input_ids, vocab_size=vocab_size, name=f"{name}['input_ids']").view(input_ids.shape)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    attention_mask = batch.get("attention_mask")
    if attention_mask is not None:
        attention_mask = torch.as_tensor(attention_mask)
        if attention_mask.dim() == 1:
            attention_mask = attention_mask[None]
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids {tuple(input_ids.shape)}"
            )
    return input_ids, attention_mask


def check_batches(
    batches: Iterable[Any], model: nn.Module, *, max_batches: int | None = None, name: str = "batches"
) -> None:
    """Check every batch of a list or tuple (up to ``max_batches``) with :func:`check_batch` before any work starts,
    naming the first bad one (``batches[2]['input_ids'] ...``). Other iterables are read once, so their batches are
    checked one by one as they are read, still before the model sees each."""
    if not isinstance(batches, list | tuple):
        return
    vocab_size = model_vocab_size(model)
    for index, batch in enumerate(itertools.islice(batches, max_batches)):
        check_batch(batch, vocab_size=vocab_size, name=f"{name}[{index}]")


def batch_inputs(batch: Any, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return one batch's ``(input_ids, attention_mask)`` checked (:func:`check_batch`) and on ``model``'s device."""
    input_ids, attention_mask = check_batch(batch, vocab_size=model_vocab_size(model))
    device = model_device(model)
    return input_ids.to(device), (attention_mask.to(device) if attention_mask is not None else None)


def progress_bar(batches: Iterable[Any], desc: str, max_batches: int | None, progress: bool) -> Iterator[Any]:
    from tqdm.auto import tqdm

    total = None
    try:
        total = len(batches)  # type: ignore[arg-type]
    except TypeError:
        pass
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
        batches = itertools.islice(batches, max_batches)
    return iter(tqdm(batches, total=total, desc=desc, disable=not progress, leave=False))


class eval_mode:  # noqa: N801 - used as a context manager like torch.no_grad
    """Put the model in eval mode for a block, then restore every submodule's own training flag."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags: list[tuple[Any, bool]] = []

    def __enter__(self) -> None:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for module, flag in self.flags:
            module.training = flag


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
