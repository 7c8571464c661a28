"""Model surgery on single projections: read a Linear's or GPT-2 Conv1D's shape, slice it by rows or columns,
zero parts of it, and update the integer attributes a module's forward reads its sizes from.

GPT-2's ``Conv1D`` stores its weight as ``[in, out]`` (a Linear's is ``[out, in]``), so rows and columns swap;
every helper here hides that, and peft adapters are looked through (:func:`base_layer`) where only shapes are read.
Head removal (:mod:`.removal`) and MLP-channel removal (:mod:`.mlp`) slice through these same helpers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


def base_layer(module: nn.Module) -> nn.Module:
    """Return the layer an adapter wraps (peft's ``get_base_layer``), or the module itself."""
    getter = getattr(module, "get_base_layer", None)
    return getter() if callable(getter) else module


def is_conv1d(module: nn.Module, *, unwrap: bool = True) -> bool:
    """True for GPT-2's ``Conv1D`` (weight stored as ``[in, out]``), also when wrapped by an adapter if ``unwrap``."""
    if unwrap:
        module = base_layer(module)
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - defensive
        Conv1D = ()  # noqa: N806
    return isinstance(module, Conv1D) or (type(module).__name__ == "Conv1D" and hasattr(module, "nf"))


def plain_linear(module: nn.Module) -> bool:
    """True for torch's Linear and transformers' own subclasses of it (Falcon's FalconLinear), not adapters or
    quantized layers (peft, bitsandbytes)."""
    from torch import nn

    kind = type(module)
    return kind is nn.Linear or (isinstance(module, nn.Linear) and kind.__module__.startswith("transformers."))


def in_features(module: nn.Module) -> int:
    """Return the input width of a Linear-like or Conv1D projection."""
    module = base_layer(module)
    if is_conv1d(module):
        return int(module.weight.shape[0])
    value = getattr(module, "in_features", None)
    return int(value) if value is not None else int(module.weight.shape[1])


def out_features(module: nn.Module) -> int:
    """Return the output width of a Linear-like or Conv1D projection."""
    module = base_layer(module)
    if is_conv1d(module):
        return int(module.weight.shape[1])
    value = getattr(module, "out_features", None)
    return int(value) if value is not None else int(module.weight.shape[0])


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """Return the projection's weight as ``[out, in]`` (a view: Conv1D is transposed; adapters are ignored)."""
    module = base_layer(module)
    weight = module.weight
    if is_conv1d(module):
        weight = weight.t()
    if tuple(weight.shape) != (out_features(module), in_features(module)) or not weight.is_floating_point():
        raise NotImplementedError(
            f"{type(module).__name__} weight of shape {tuple(weight.shape)} and dtype {weight.dtype} is not a plain "
            "[out, in] matrix (quantized or wrapped?); use an unquantized model without adapters (merge_and_unload)"
        )
    return weight


def _new_param(old: torch.nn.Parameter, value: torch.Tensor) -> torch.nn.Parameter:
    from torch import nn

    return nn.Parameter(value.contiguous(), requires_grad=old.requires_grad)


def slice_out(module: nn.Module, rows: torch.Tensor) -> None:
    """Keep only output features ``rows`` of a Linear (weight rows) or Conv1D (weight columns)."""
    conv = is_conv1d(module)
    module.weight = _new_param(module.weight, module.weight.index_select(1 if conv else 0, rows))
    if getattr(module, "bias", None) is not None:
        module.bias = _new_param(module.bias, module.bias.index_select(0, rows))
    if conv:
        module.nf = len(rows)
    else:
        module.out_features = len(rows)


def slice_in(module: nn.Module, cols: torch.Tensor) -> None:
    """Keep only input features ``cols`` of a Linear (weight columns) or Conv1D (weight rows)."""
    conv = is_conv1d(module)
    module.weight = _new_param(module.weight, module.weight.index_select(0 if conv else 1, cols))
    if conv:
        module.nx = len(cols)
    else:
        module.in_features = len(cols)


def zero_out_features(module: nn.Module, start: int, stop: int) -> None:
    """Zero output features ``start:stop`` (weight and bias) of a Linear or Conv1D, in place (under no_grad)."""
    if is_conv1d(module):
        module.weight[:, start:stop] = 0
    else:
        module.weight[start:stop] = 0
    if getattr(module, "bias", None) is not None:
        module.bias[start:stop] = 0


def zero_in_features(module: nn.Module, start: int, stop: int) -> None:
    """Zero input features ``start:stop`` of a Linear or Conv1D weight, in place (under no_grad)."""
    if is_conv1d(module):
        module.weight[start:stop, :] = 0
    else:
        module.weight[:, start:stop] = 0


def replace_int_attributes(module: nn.Module, names: Iterable[str], old: int, new: int) -> None:
    """Set each attribute of ``module`` named in ``names`` that holds the int ``old`` to ``new``.

    Attention and MLP modules keep their head counts and sizes as plain ints their forward reads; one that holds
    another value is not a count of what was sliced and is left alone.
    """
    for name in names:
        value = vars(module).get(name)
        if type(value) is int and value == old:
            setattr(module, name, new)
