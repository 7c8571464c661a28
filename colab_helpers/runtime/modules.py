"""Facts about a loaded torch module that every stage asks: which device it is on, how many parameters it has;
and :class:`HookHandles`, the hooks of one reversible edit, removed together."""

from __future__ import annotations

from typing import Any, Self


def model_device(model: Any) -> Any:
    """Return the ``torch.device`` of the model's first parameter; ``model.device`` or the CPU when it has none."""
    import torch

    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device(getattr(model, "device", "cpu"))


def parameter_count(model: Any, *, count_lora: bool = True) -> int:
    """Return the number of distinct parameters (tied weights counted once); ``count_lora=False`` skips adapters."""
    return sum(p.numel() for name, p in model.named_parameters() if count_lora or "lora_" not in name)


class HookHandles:
    """torch hook handles removed together, also by leaving a ``with`` block: what every reversible edit made by
    hooks (MLP gates, skipped layers) holds. :meth:`remove` is safe to call twice."""

    def __init__(self) -> None:
        self._handles: list[Any] = []

    def add(self, handle: Any) -> None:
        self._handles.append(handle)

    def remove(self) -> None:
        """Remove every hook: the model computes exactly as before."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
