"""MLP channels (intermediate neurons): where each architecture's MLP lives, reversible gating by hooks, and
physical removal with per-layer sizes recorded (importance: :mod:`.mlp_importance`; selection: :mod:`.selection`).

An MLP maps the hidden state up to ``intermediate`` channels (one projection, or two for gated MLPs: ``act(gate)
* up``) and back down with one output projection. Channel ``c`` is row ``c`` of every up projection (rows ``c``
and ``intermediate + c`` of Phi-3's fused ``gate_up_proj``) and column ``c`` of the output projection, so
removing it removes exactly its contribution, the output projection's input ``c``. Gating multiplies that input
(a forward pre-hook on the output projection), which is why gated and removed logits agree.

transformers configs hold one ``intermediate_size``: the per-layer sizes go into the pruning record
(:mod:`.record`, ``mlp_sizes``), from which :func:`~colab_helpers.pruning.load_pruned` rebuilds the shapes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..runtime.modules import HookHandles, model_device, parameter_count
from .layout import decoder_layer_list, get_path, head_layout, model_type_of
from .record import RECORD_ATTR, current_record
from .reports import MlpReport
from .surgery import (
    base_layer,
    in_features,
    is_conv1d,
    out_features,
    replace_int_attributes,
    slice_in,
    slice_out,
    weight_out_in,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

# Integer attributes of MLP modules that track the intermediate size (updated only when they hold the old value).
_SIZE_ATTRS = ("intermediate_size", "ffn_dim", "inner_dim", "n_inner")


@dataclass(frozen=True)
class MlpSpec:
    """Where the MLP sits in a decoder layer: ``mlp`` (dotted path, ``""`` for the layer itself as in OPT), the
    projections producing the intermediate channels (``inputs``) and the one reading them (``output``).
    ``fused_gate_up``: one input projection holding ``[gate | up]`` halves (Phi-3)."""

    model_types: tuple[str, ...]
    mlp: str
    inputs: tuple[str, ...]
    output: str
    fused_gate_up: bool = False


def _gated(*model_types: str) -> MlpSpec:
    return MlpSpec(model_types, mlp="mlp", inputs=("gate_proj", "up_proj"), output="down_proj")


# Read from each architecture's MLP forward in transformers 5.x (models/*/modeling_*.py).
_MLP_SPECS: tuple[MlpSpec, ...] = (
    _gated("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3_text", "stablelm"),
    MlpSpec(("gpt2", "gpt_bigcode", "gpt_neo"), mlp="mlp", inputs=("c_fc",), output="c_proj"),
    MlpSpec(("opt",), mlp="", inputs=("fc1",), output="fc2"),
    MlpSpec(("gpt_neox", "bloom", "falcon"), mlp="mlp", inputs=("dense_h_to_4h",), output="dense_4h_to_h"),
    MlpSpec(("gptj",), mlp="mlp", inputs=("fc_in",), output="fc_out"),
    MlpSpec(("phi",), mlp="mlp", inputs=("fc1",), output="fc2"),
    MlpSpec(("phi3",), mlp="mlp", inputs=("gate_up_proj",), output="down_proj", fused_gate_up=True),
)


@dataclass
class MlpSite:
    """One decoder layer's MLP: its projections and current channel count (internal)."""

    index: int
    module: nn.Module
    spec: MlpSpec
    size: int

    @property
    def inputs(self) -> list[nn.Module]:
        return [get_path(self.module, name) for name in self.spec.inputs]

    @property
    def output(self) -> nn.Module:
        return get_path(self.module, self.spec.output)

    def params_per_channel(self) -> int:
        """Parameters one channel costs: its rows (and biases) in the input projections, its output column."""
        rows = 2 if self.spec.fused_gate_up else 1
        total = 0
        for proj in self.inputs:
            bias = getattr(base_layer(proj), "bias", None)
            total += rows * (in_features(proj) + (1 if bias is not None else 0))
        return total + out_features(self.output)


def mlp_sites(model: nn.Module) -> list[MlpSite]:
    """Locate every decoder layer's MLP and read its channel count from the weights.

    Raises ``NotImplementedError`` naming the architecture when the MLP cannot be located (MLP pruning supports
    the architectures of head pruning; mixtures of experts are refused).
    """
    _, layers, _ = decoder_layer_list(model)
    spec = _spec_for(model, layers[0])
    sites = []
    for index, layer in enumerate(layers):
        try:
            module = get_path(layer, spec.mlp)
            inputs = [get_path(module, name) for name in spec.inputs]
            output = get_path(module, spec.output)
        except AttributeError as exc:
            raise _unsupported(model, f"layer {index} has no MLP projections {spec.inputs} / {spec.output!r}") from exc
        size = in_features(output)
        for proj in inputs:
            expected = 2 * size if spec.fused_gate_up else size
            if out_features(proj) != expected:
                raise _unsupported(
                    model, f"layer {index}: MLP projection gives {out_features(proj)} channels, output reads {size}"
                )
        sites.append(MlpSite(index=index, module=module, spec=spec, size=size))
    return sites


def mlp_sizes(model: nn.Module) -> list[int]:
    """Return the intermediate channels each decoder layer's MLP holds now."""
    return [site.size for site in mlp_sites(model)]


def supports_mlp(model: nn.Module) -> str | None:
    """Return None when the model's MLP channels can be pruned, else why not (one sentence)."""
    try:
        sites = mlp_sites(model)
        for site in sites:
            for proj in (*site.inputs, site.output):
                weight_out_in(proj)
    except (NotImplementedError, TypeError) as exc:
        return str(exc)
    return None


def _spec_for(model: nn.Module, layer: nn.Module) -> MlpSpec:
    model_type = model_type_of(model)
    for spec in _MLP_SPECS:
        if model_type in spec.model_types:
            return spec
    for path, module in layer.named_modules():  # name-based discovery: a gated or plain up/down MLP
        children = dict(module.named_children())
        if {"gate_proj", "up_proj", "down_proj"} <= children.keys():
            return MlpSpec((model_type,), mlp=path, inputs=("gate_proj", "up_proj"), output="down_proj")
        if {"up_proj", "down_proj"} <= children.keys():
            return MlpSpec((model_type,), mlp=path, inputs=("up_proj",), output="down_proj")
    raise _unsupported(model, "no MLP with known projection names in its decoder layers")


def _unsupported(model: Any, why: str) -> NotImplementedError:
    known = sorted({t for spec in _MLP_SPECS for t in spec.model_types})
    return NotImplementedError(
        f"cannot prune MLP channels of architecture {model_type_of(model)!r} ({type(model).__name__}): {why}. "
        f"Supported: {', '.join(known)}, and decoders whose MLP has gate_proj/up_proj/down_proj or up_proj/down_proj. "
        "Prune heads or layers only (axes=('heads', 'layers')), or add a row to colab_helpers.pruning.mlp._MLP_SPECS"
    )


# --- gating ------------------------------------------------------------------------------------------------


class MlpGates(HookHandles):
    """Gates on the MLP channels (a forward pre-hook on each output projection), live until :meth:`remove`.

    ``gates[i]`` is a float tensor ``[channels]`` (1 keeps, 0 removes the channel's contribution) or
    ``[batch, channels]`` (per example, for per-example gradients). Layers whose gates are all ones and need no
    gradient get no hook.
    """

    def __init__(self, sites: list[MlpSite], gates: list[torch.Tensor]) -> None:
        super().__init__()
        self._sites = sites
        self.gates = gates
        for site, gate in zip(sites, gates):
            if gate.requires_grad or gate.dim() == 2 or bool((gate != 1).any()):
                self.add(site.output.register_forward_pre_hook(_gate_hook(gate)))


def _gate_hook(gate: torch.Tensor) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        g = gate
        if gate.dim() == 2 and x.dim() == 2:  # OPT flattens [batch, seq] into rows before its MLP
            g = gate.repeat_interleave(x.shape[0] // gate.shape[0], dim=0)
        elif gate.dim() == 2:
            g = gate.reshape(gate.shape[0], *([1] * (x.dim() - 2)), gate.shape[-1])
        return (x * g.to(dtype=x.dtype, device=x.device), *args[1:])

    hook._colab_helpers_gate = True  # type: ignore[attr-defined]
    return hook


def gate_mlp(model: nn.Module, masks: Sequence[Any] | None = None) -> MlpGates:
    """Gate MLP channels reversibly; ``masks[i]`` is a bool tensor ``[channels of layer i]``, True = gate off.

    Returns an :class:`MlpGates` handle (a context manager); with no masks all gates are ones (no hooks).
    """
    import torch

    sites = mlp_sites(model)
    device = model_device(model)
    masks = check_masks(masks, sites) if masks is not None else [torch.zeros(s.size, dtype=torch.bool) for s in sites]
    return MlpGates(sites, [(~m).to(device=device, dtype=torch.float32) for m in masks])


def check_masks(masks: Any, sites: list[MlpSite], *, name: str = "masks") -> list[torch.Tensor]:
    """Return ``masks`` as CPU bool tensors after checking one per layer, of the layer's current channel count."""
    import torch

    sizes = [s.size for s in sites]
    if not isinstance(masks, Sequence) or len(masks) != len(sites):
        found = f"{len(masks)} entries" if isinstance(masks, Sequence) else type(masks).__name__
        raise ValueError(
            f"{name} needs one bool tensor per decoder layer ({len(sites)} layers, channels {sizes}), got {found}; "
            "build them with select_mlp_channels(mlp_importance(model, ...), level)"
        )
    checked = []
    for i, (mask, size) in enumerate(zip(masks, sizes)):
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (size,):
            found = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(
                f"{name}[{i}] must be a torch.bool tensor of shape ({size},) (layer {i} holds {size} channels now; "
                f"True = prune), got {found}"
            )
        checked.append(mask.detach().to("cpu"))
    return checked


# --- removal -----------------------------------------------------------------------------------------------


def remove_mlp_channels(model: nn.Module, masks: Sequence[Any]) -> MlpReport:
    """Remove the MLP channels where ``masks[i]`` is True (one bool tensor per layer, current channels).

    Slices the input projections' rows (and biases) and the output projection's columns in place, so logits
    equal the model gated with the same masks. Every layer must keep at least one channel. Checked before any
    weight changes (a refused call leaves the model as it was); the new sizes go into the pruning record.
    """
    sites = mlp_sites(model)
    masks = check_masks(masks, sites)
    for site, mask in zip(sites, masks):
        if bool(mask.all()):
            raise ValueError(
                f"masks[{site.index}] prunes all {site.size} MLP channels of layer {site.index}; keep at least one "
                "(or remove the whole layer with remove_layers)"
            )
        for proj in (*site.inputs, site.output):
            _check_plain(model, site, proj)
    layout = head_layout(model)
    sizes_before = tuple(s.size for s in sites)
    record = current_record(model, layout, list(sizes_before))
    params_before = parameter_count(model)
    for site, mask in zip(sites, masks):
        if not bool(mask.any()):
            continue
        keep = (~mask).nonzero().flatten()
        _slice_site(site, keep.to(site.output.weight.device))
    after = [s.size for s in sites]  # _slice_site keeps each site's size current
    record["mlp_sizes"] = after
    setattr(model.config, RECORD_ATTR, record)
    report = MlpReport(
        architecture=layout.architecture,
        sizes_before=sizes_before,
        sizes_after=tuple(after),
        params_before=params_before,
        params_after=parameter_count(model),
    )
    logger.info("%s", report.summary())
    return report


def apply_mlp_sizes(model: nn.Module, sizes: Sequence[int], *, original: Sequence[int] | None = None) -> None:
    """Cut a freshly built model's MLPs to ``sizes`` channels per layer (its weights are loaded afterwards).

    ``original`` (the record's ``original_mlp_sizes``), when given, must be the sizes the model was built with.
    """
    import torch

    sites = mlp_sites(model)
    if original is not None and list(original) != [s.size for s in sites]:
        raise ValueError(
            f"the record's original MLP sizes {list(original)} differ from the model built from the config "
            f"({[s.size for s in sites]} channels per layer)"
        )
    if len(sizes) != len(sites) or any(not 1 <= n <= s.size for n, s in zip(sizes, sites)):
        raise ValueError(
            f"the record's MLP sizes {list(sizes)} do not fit the model built from the config "
            f"({[s.size for s in sites]} channels per layer)"
        )
    for site, n in zip(sites, sizes):
        if n != site.size:
            _slice_site(site, torch.arange(n, device=site.output.weight.device))


def _slice_site(site: MlpSite, keep: torch.Tensor) -> None:
    import torch

    old = site.size
    rows = torch.cat([keep, keep + old]) if site.spec.fused_gate_up else keep
    with torch.no_grad():
        for proj in site.inputs:
            slice_out(proj, rows)
        slice_in(site.output, keep)
    for module in (site.module, *site.inputs):
        replace_int_attributes(module, _SIZE_ATTRS, old, len(keep))
    site.size = len(keep)


def _check_plain(model: nn.Module, site: MlpSite, proj: nn.Module) -> None:
    if base_layer(proj) is not proj:
        raise ValueError(
            f"layer {site.index}'s MLP projection {type(proj).__name__} carries an adapter; merge it first "
            "(model = model.merge_and_unload()) and prune the plain model"
        )
    weight_out_in(proj)  # raises for quantized weights
    if not (is_conv1d(proj) or hasattr(proj, "in_features")):  # pragma: no cover - defensive
        raise _unsupported(model, f"layer {site.index}: {type(proj).__name__} is not a Linear or Conv1D")


def known_mlp_sizes(model: nn.Module) -> list[int] | None:
    """Return :func:`mlp_sizes`, or None for a model whose MLPs cannot be located (heads and layers still can)."""
    try:
        return mlp_sizes(model)
    except NotImplementedError:
        return None
