"""How much each MLP channel matters: :func:`mlp_importance` and its strategies (``MLP_STRATEGIES``).

- ``"activation"``: mean absolute value of the channel's input to the output projection over real tokens
  (Minitron's activation-based width importance);
- ``"taylor"``: first-order Taylor estimate of the loss change when the channel is removed (:mod:`.taylor`,
  LLM-Pruner's first-order criterion at the channel level, the same estimate as gradient head importance);
- ``"random"``: uniform scores from a seed (the baseline).

Scores come as one float32 CPU tensor per layer (layers may hold different channel counts after removal).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .batches import batch_inputs, check_batches, eval_mode, progress_bar
from .mlp import MlpSite, mlp_sites
from .taylor import taylor_scores

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

MLP_STRATEGIES = ("activation", "taylor", "random")


def check_mlp_strategy(strategy: Any) -> str:
    """Return ``strategy`` when it names an MLP importance strategy, else raise ValueError listing them."""
    if strategy not in MLP_STRATEGIES:
        raise ValueError(f"MLP importance strategy must be one of {', '.join(MLP_STRATEGIES)}, got {strategy!r}")
    return strategy


def mlp_importance(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]] | None,
    strategy: str = "taylor",
    *,
    seed: int = 0,
    max_batches: int | None = None,
    progress: bool = True,
) -> list[torch.Tensor]:
    """Return one float32 CPU tensor per decoder layer: the importance of each MLP channel, higher = keep.

    ``strategy``: ``"activation"`` (mean |activation| over real tokens, as Minitron), ``"taylor"`` (first-order
    Taylor, ``|sum over a sequence of a * dL/da|`` averaged over examples, as LLM-Pruner) or ``"random"``.
    ``batches`` are dicts with ``input_ids`` (and optionally ``attention_mask``; padding is excluded), read up to
    ``max_batches``. The model's weights, train/eval flags and ``requires_grad`` flags are left as they were.
    """
    import torch

    check_mlp_strategy(strategy)
    sites = mlp_sites(model)
    if strategy == "random":
        generator = torch.Generator().manual_seed(seed)
        return [torch.rand(s.size, generator=generator) for s in sites]
    if batches is None:
        raise ValueError(f"MLP importance {strategy!r} needs calibration batches (dicts with input_ids); got None")
    check_batches(batches, model, max_batches=max_batches)
    batches = progress_bar(batches, f"MLP importance ({strategy})", max_batches, progress)
    with eval_mode(model):
        if strategy == "activation":
            return _activation_scores(model, sites, batches)
        scores = taylor_scores(model, batches, mlp=sites)[1]
        assert scores is not None
        return scores


def _activation_scores(model: nn.Module, sites: list[MlpSite], batches: Iterable[Any]) -> list[torch.Tensor]:
    import torch

    totals = [torch.zeros(s.size, dtype=torch.float64) for s in sites]
    state: dict[str, Any] = {"mask": None}

    def capture(index: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].detach().abs().float()
            mask = state["mask"]
            if mask is not None:
                rows = mask.reshape(-1, 1) if x.dim() == 2 else mask.reshape(*mask.shape, *([1] * (x.dim() - 2)))
                x = torch.where(rows.bool(), x, 0.0)  # not x * mask: inf or NaN at a padded position stays out
            totals[index] += x.reshape(-1, x.shape[-1]).sum(dim=0).double().cpu()

        return hook

    handles = [s.output.register_forward_pre_hook(capture(s.index)) for s in sites]
    tokens = 0
    try:
        with torch.no_grad():
            for batch in batches:
                input_ids, attention_mask = batch_inputs(batch, model)
                state["mask"] = attention_mask
                model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
                tokens += int(attention_mask.sum()) if attention_mask is not None else input_ids.numel()
    finally:
        for handle in handles:
            handle.remove()
    if not tokens:
        raise ValueError("batches held no real tokens; activation importance needs text")
    return [(t / tokens).float() for t in totals]
