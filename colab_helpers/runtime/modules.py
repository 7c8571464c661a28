"""Facts about a loaded torch module that every stage asks: which device it is on, how many parameters it has."""

from __future__ import annotations

from typing import Any


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
