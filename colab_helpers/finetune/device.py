"""Where a run's tensors live and how they move: the mixed-precision context, a micro-batch's inputs on the run's
device, weights and optimizer state moved or copied between devices (the CUDA fallback moves a run to the CPU)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from .completions import CompletionBatch

if TYPE_CHECKING:  # pragma: no cover
    import torch


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    """Return the mixed-precision context of ``amp_dtype`` on ``device`` (none in fp32, e.g. on the CPU)."""
    import torch

    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def batch_inputs(chunk: torch.Tensor | CompletionBatch, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Return ``(input_ids, attention_mask, labels)`` of a micro-batch on ``device``: plain blocks score every
    token, (prompt, completion) examples their completion tokens only."""
    import torch

    if isinstance(chunk, CompletionBatch):
        batch = chunk.to(device, non_blocking=True)
        return batch.input_ids, batch.attention_mask, batch.labels
    ids = chunk.to(device, non_blocking=True)
    return ids, torch.ones_like(ids), ids


def run_to_cpu(model: Any, optimizer: Any) -> torch.device:
    """Move ``model`` (in fp32) and ``optimizer``'s state to the CPU, after freeing what CUDA caches; return the CPU."""
    import torch

    cpu = torch.device("cpu")
    with contextlib.suppress(Exception):
        torch.cuda.empty_cache()
    module_to_cpu(model)
    move_optimizer_state(optimizer, cpu)
    return cpu


def module_to_cpu(module: Any) -> None:
    """Move ``module`` to the CPU, in fp32 when it holds half-precision weights (slow or missing matmuls there)."""
    import torch

    module.to(torch.device("cpu"))
    if any(p.dtype in (torch.float16, torch.bfloat16) for p in module.parameters()):
        module.float()


def move_optimizer_state(optimizer: Any, device: torch.device) -> None:
    """Move the tensors of ``optimizer``'s state to ``device`` in place (a CPU ``step`` counter stays)."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if hasattr(value, "detach") and not (key == "step" and value.device.type == "cpu"):
                state[key] = value.to(device)


def to_device(value: Any, device: torch.device) -> Any:
    """Return ``value`` with every tensor in it (nested in dicts and lists) moved to ``device``."""
    if hasattr(value, "to") and hasattr(value, "detach"):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [to_device(v, device) for v in value]
    return value


def load_values(params: list[torch.nn.Parameter], values: list[torch.Tensor]) -> None:
    """Copy ``values`` into ``params`` in place (a snapshot's or the best evaluation's weights)."""
    import torch

    with torch.no_grad():
        for param, value in zip(params, values):
            param.copy_(value)
