"""Depth pruning: rank whole decoder layers, skip them reversibly, remove them physically.

Two measured rankings (``LAYER_STRATEGIES``), plus the random baseline:

- ``"block_influence"``: ShortGPT's block influence (Men et al. 2024), ``1 - cos(input, output)`` of each layer's
  hidden states averaged over real tokens: a layer that barely turns its input changes little when dropped;
- ``"loss"``: the measured cost of dropping each layer alone, mean LM loss with the layer skipped minus the
  intact model's (per layer and batch, a forward of the layers after it, the ones before replayed from one intact
  pass: slower, and what the loss actually does); :func:`screened_loss_costs` measures only the layers of lowest
  block influence.

Skipping is a forward hook that hands the layer's input on as its output (:func:`skip_layers`), so skipped and
removed logits agree. :func:`remove_layers` deletes layers from the decoder's ``ModuleList`` and keeps the rest
consistent: each remaining layer's ``layer_idx`` (which indexes the KV cache) is renumbered,
``config.num_hidden_layers`` and per-layer config lists (``layer_types``; GPT-Neo's ``attention_types``) are
cut, and the pruning record (:mod:`.record`) drops the removed layers' entries and notes the original indices
kept (``kept_layers``), so incremental decoding equals a full forward and a saved model reloads with its layers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..runtime.modules import HookHandles, parameter_count
from .batches import batch_inputs, check_batches, eval_mode, token_losses
from .gating import has_gates
from .layout import decoder_layer_list, get_path, head_layout, model_type_of, text_config
from .mlp import known_mlp_sizes
from .record import RECORD_ATTR, current_record, drop_layers_from_record
from .reports import LayerReport

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

LAYER_STRATEGIES = ("block_influence", "loss", "random")
_INDEX_ATTRS = ("layer_idx", "layer_id")  # module attributes holding the layer's position (KV cache index)
_PER_LAYER_CONFIG = ("layer_types", "attention_layers")


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """Return the model's decoder layers, in order."""
    return list(decoder_layer_list(model)[1])


def check_layer_strategy(strategy: Any) -> str:
    """Return ``strategy`` when it names a layer importance strategy, else raise ValueError listing them."""
    if strategy not in LAYER_STRATEGIES:
        raise ValueError(f"layer importance strategy must be one of {', '.join(LAYER_STRATEGIES)}, got {strategy!r}")
    return strategy


# --- skipping ----------------------------------------------------------------------------------------------


class SkippedLayers(HookHandles):
    """Forward hooks making the chosen layers pass their input through unchanged; live until :meth:`remove`."""

    def __init__(self, layers: list[nn.Module], skipped: Iterable[int]) -> None:
        super().__init__()
        self.skipped = sorted(set(skipped))
        for i in self.skipped:
            self.add(layers[i].register_forward_hook(_pass_through, with_kwargs=True))


def _layer_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs["hidden_states"]


def _layer_output(output: Any) -> Any:
    return output[0] if isinstance(output, tuple) else output


def _pass_through(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
    hidden = _layer_input(args, kwargs)
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def skip_layers(model: nn.Module, layers: Iterable[int]) -> SkippedLayers:
    """Skip decoder layers reversibly (their input passes through); returns a handle / context manager."""
    all_layers = decoder_layers(model)
    chosen = _check_indices(layers, len(all_layers), allow_all=True)
    return SkippedLayers(all_layers, chosen)


# --- importance --------------------------------------------------------------------------------------------


def layer_importance(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]] | None,
    strategy: str = "block_influence",
    *,
    seed: int = 0,
    max_batches: int | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Return a float32 CPU tensor ``[layers]``, higher = more important (see the module docstring).

    ``"loss"`` is in nats per token (mean loss with the layer skipped minus without), ``"block_influence"`` in
    ``[0, 2]``. ``batches`` are dicts with ``input_ids`` (and optionally ``attention_mask``), up to
    ``max_batches``; ``"loss"`` reads them once per layer (running only the layers after the skipped one).
    """
    import itertools

    import torch

    check_layer_strategy(strategy)
    layers = decoder_layers(model)
    if strategy == "random":
        return torch.rand(len(layers), generator=torch.Generator().manual_seed(seed))
    if batches is None:
        raise ValueError(f"layer importance {strategy!r} needs calibration batches (dicts with input_ids); got None")
    batch_list = list(itertools.islice(batches, max_batches) if max_batches is not None else batches)
    check_batches(batch_list, model)

    with eval_mode(model), torch.no_grad():
        if strategy == "block_influence":
            return _block_influence(model, layers, batch_list, progress)
        return _loss_cost(model, layers, batch_list, progress)


def _loss_cost(
    model: nn.Module, layers: list[nn.Module], batches: list[Any], progress: bool, *, measure: int | None = None
) -> torch.Tensor:
    """Loss with each layer skipped minus the intact model's. The layers before the skipped one compute what the
    intact model computed, so their outputs are replayed from one intact pass per batch (:class:`_Replayed`) and
    only the layers after it run: about half the work of a full forward per layer, the same numbers.

    ``measure``: skip only that many layers, those of lowest block influence in the first batch's intact pass; the
    others score above every measured layer, in order of block influence (see :func:`screened_loss_costs`)."""
    import torch
    from tqdm.auto import tqdm

    skipped_totals = torch.zeros(len(layers), dtype=torch.float64)
    base_total, count = 0.0, 0
    chosen: list[int] | None = None
    influence = None
    for batch in tqdm(batches, desc="layer importance (loss)", disable=not progress, leave=False):
        input_ids, attention_mask = batch_inputs(batch, model)
        with _Recorded(layers, attention_mask) as recorded:
            total, tokens = _batch_loss(model, input_ids, attention_mask)
        base_total, count = base_total + total, count + tokens
        if chosen is None:
            influence = recorded.distances / max(recorded.tokens, 1)
            order = torch.argsort(influence).tolist()
            chosen = sorted(order[:measure] if measure is not None else order)
        for index in chosen:
            with SkippedLayers(layers, [index]), _Replayed(layers[:index], recorded.outputs[:index]):
                skipped_totals[index] += _batch_loss(model, input_ids, attention_mask)[0]
    if not count or chosen is None or influence is None:
        raise ValueError("batches held no pair of real tokens; a loss needs text")
    costs = (skipped_totals - base_total) / count
    unmeasured = [i for i in range(len(layers)) if i not in chosen]
    if unmeasured:  # above every measured layer, in order of block influence (in [0, 2])
        costs[unmeasured] = float(costs[chosen].max()) + 1 + influence[unmeasured]
    return costs.float()


def screened_loss_costs(
    model: nn.Module, batches: Iterable[Mapping[str, Any]], measure: int, *, progress: bool = True
) -> torch.Tensor:
    """Layer costs as :func:`layer_importance`'s ``"loss"``, measured for only ``measure`` layers: those that turn
    their input the least (ShortGPT's block influence, read from the intact pass the loss needs anyway). A layer
    that changes its input much costs much to drop, so the cheapest layers are among them; the others get a score
    above every measured one, ordered by block influence (for ranking, not in nats). Returns float32 ``[layers]``.
    """
    import torch

    layers = decoder_layers(model)
    if isinstance(measure, bool) or not isinstance(measure, int) or measure < 1:
        raise ValueError(f"measure must be a positive number of layers, got {measure!r}")
    batch_list = list(batches)
    check_batches(batch_list, model)
    with eval_mode(model), torch.no_grad():
        return _loss_cost(model, layers, batch_list, progress, measure=min(measure, len(layers)))


def _batch_loss(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> tuple[float, int]:
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    loss, valid = token_losses(logits, input_ids, attention_mask)
    return float(loss.sum()), int(valid.sum())


class _Recorded(HookHandles):
    """Forward hooks keeping, over one forward, each layer's output (``outputs[i]``) and its block influence summed
    over real tokens (``distances[i]``, ``1 - cos(input, output)``; ``tokens`` counts them)."""

    def __init__(self, layers: list[nn.Module], attention_mask: torch.Tensor | None) -> None:
        import torch

        super().__init__()
        self.outputs: list[Any] = [None] * len(layers)
        self.distances = torch.zeros(len(layers), dtype=torch.float64)
        self.mask = attention_mask.bool() if attention_mask is not None else None
        self.tokens = 0
        for index, layer in enumerate(layers):
            self.add(layer.register_forward_hook(self._keeper(index), with_kwargs=True))

    def _keeper(self, index: int) -> Any:
        import torch

        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            self.outputs[index] = output
            before, after = _layer_input(args, kwargs).float(), _layer_output(output).float()
            distance = 1 - torch.nn.functional.cosine_similarity(before, after, dim=-1)  # [batch, seq]
            if self.mask is not None:  # not distance * mask: inf or NaN at a padded position stays out
                distance = torch.where(self.mask, distance, 0.0)
            self.distances[index] += float(distance.sum())
            if index == 0:
                self.tokens += int(self.mask.sum()) if self.mask is not None else distance.numel()

        return hook


class _Replayed:
    """Layers answering with recorded outputs instead of computing them, until the block ends (the instance
    attribute ``forward`` shadows the class's; hooks and the surrounding model run as usual)."""

    def __init__(self, layers: list[nn.Module], outputs: list[Any]) -> None:
        self.pairs = list(zip(layers, outputs))

    def __enter__(self) -> _Replayed:
        for layer, output in self.pairs:
            layer.forward = lambda *args, _output=output, **kwargs: _output
        return self

    def __exit__(self, *exc: object) -> None:
        for layer, _ in self.pairs:
            vars(layer).pop("forward", None)


def _block_influence(model: nn.Module, layers: list[nn.Module], batches: list[Any], progress: bool) -> torch.Tensor:
    import torch
    from tqdm.auto import tqdm

    totals = torch.zeros(len(layers), dtype=torch.float64)
    tokens = 0
    for batch in tqdm(batches, desc="layer importance (block influence)", disable=not progress, leave=False):
        input_ids, attention_mask = batch_inputs(batch, model)
        with _Recorded(layers, attention_mask) as recorded:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        totals += recorded.distances
        tokens += recorded.tokens
    if not tokens:
        raise ValueError("batches held no real tokens; block influence needs text")
    return (totals / tokens).float()


# --- removal -----------------------------------------------------------------------------------------------


def remove_layers(model: nn.Module, layers: Iterable[int]) -> LayerReport:
    """Remove the decoder layers at positions ``layers`` (positions in the model as it is now) in place.

    At least one layer must remain. Remaining layers are renumbered for the KV cache, the config and the pruning
    record follow (see the module docstring). Everything is checked before the model changes.
    """
    from torch import nn

    path, module_list, _ = decoder_layer_list(model)
    n = len(module_list)
    removed = _check_indices(layers, n, allow_all=False)
    check_layers_removable(model)
    layout = head_layout(model)
    record = current_record(model, layout, known_mlp_sizes(model))
    keep = [i for i in range(n) if i not in set(removed)]
    original = list(record["kept_layers"])
    params_before = parameter_count(model)
    if removed:
        parent_path, _, name = path.rpartition(".")
        parent = get_path(model, parent_path)
        for new_index, old_index in enumerate(keep):
            for sub in module_list[old_index].modules():
                for attr in _INDEX_ATTRS:
                    if type(getattr(sub, attr, None)) is int and getattr(sub, attr) == old_index:
                        setattr(sub, attr, new_index)
        setattr(parent, name, nn.ModuleList([module_list[i] for i in keep]))
        _cut_config(model, keep, n)
        setattr(model.config, RECORD_ATTR, drop_layers_from_record(record, keep))
    report = LayerReport(
        architecture=layout.architecture,
        layers_before=n,
        removed=tuple(original[i] for i in removed),
        kept=tuple(original[i] for i in keep),
        params_before=params_before,
        params_after=parameter_count(model),
    )
    logger.info("%s", report.summary())
    return report


def _cut_config(model: nn.Module, keep: list[int], old: int) -> None:
    configs = [model.config]
    text = text_config(model)
    if text is not model.config:
        configs.append(text)
    for config in configs:
        config.num_hidden_layers = len(keep)
        for name in _PER_LAYER_CONFIG:
            value = getattr(config, name, None)
            if isinstance(value, list) and len(value) == old:
                setattr(config, name, [value[i] for i in keep])
        if model_type_of(model) == "gpt_neo" and isinstance(getattr(config, "attention_layers", None), list):
            # GPT-Neo rebuilds attention_layers from attention_types ([[kinds, repeat], ...]) when loaded
            config.attention_types = [[[kind], 1] for kind in config.attention_layers]


def _check_indices(layers: Iterable[int], n: int, *, allow_all: bool) -> list[int]:
    import operator

    try:  # operator.index takes ints (numpy's and torch's too) and refuses what int() would round or parse
        items = list(layers)
        chosen = [operator.index(i) for i in items if not isinstance(i, bool)]
    except TypeError as exc:
        raise ValueError(f"layers must be an iterable of layer indices (integers), got {layers!r}") from exc
    if len(chosen) != len(items):
        raise ValueError(f"layers must be an iterable of layer indices (integers), got {layers!r}")
    bad = [i for i in chosen if not 0 <= i < n]
    if bad:
        raise ValueError(f"layer indices {bad} are out of range: the model holds {n} decoder layers (0-{n - 1})")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"layer indices {sorted(chosen)} name a layer twice")
    if not allow_all and len(chosen) >= n:
        raise ValueError(f"removing all {n} decoder layers leaves no model; keep at least one")
    return sorted(chosen)


def check_layers_removable(model: nn.Module) -> None:
    """Refuse a model whose layers cannot be removed (an adapter, live gates, layer-index-scaled attention)."""
    if hasattr(model, "peft_config"):
        raise ValueError(
            "the model carries a peft adapter; merge it first (model = model.merge_and_unload()) and remove layers "
            "from the plain model"
        )
    if getattr(text_config(model), "scale_attn_by_inverse_layer_idx", False):
        raise NotImplementedError(
            "this GPT-2 config scales attention by 1 / (layer index + 1) (scale_attn_by_inverse_layer_idx=True): "
            "removing a layer would change how the layers after it scale; prune heads and MLP channels only"
        )
    if any(has_gates(m) for m in model.modules()):
        raise ValueError("the model has live gates (gate_heads / gate_mlp); remove them before remove_layers")
