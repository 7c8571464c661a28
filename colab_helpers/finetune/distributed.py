"""Data-parallel training under ``accelerate launch`` or ``torchrun``: one run, several processes.

    accelerate launch --multi_gpu --num_processes 2 scripts/finetune_ddp_example.py   # 2 GPUs, or 2 CPU processes

:func:`setup_distributed` joins (or reuses) the launcher's process group, ``nccl`` on CUDA and ``gloo`` on the CPU,
and returns None outside a launch; :class:`DistributedContext` holds the run's collectives (gradient averaging,
broadcasts, barriers).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .lora import fingerprint_differences, is_quantized

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launch_environment() -> dict[str, str] | None:
    """Return the launcher's variables when this process is one rank of several (``WORLD_SIZE`` > 1), else None.

    Raises ``ValueError`` naming the missing or malformed variable when ``WORLD_SIZE`` > 1 but the rest is not
    there (a launcher half set up by hand).
    """
    raw = os.environ.get("WORLD_SIZE", "").strip()
    if not raw:
        return None
    try:
        world_size = int(raw)
    except ValueError:
        raise ValueError(
            f"WORLD_SIZE must be an integer, got {raw!r}; unset it, or let accelerate launch / torchrun set it"
        ) from None
    if world_size <= 1:
        return None
    found = {name: os.environ.get(name, "").strip() for name in LAUNCH_VARIABLES}
    missing = [name for name, value in found.items() if not value and name != "LOCAL_RANK"]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: start the script with "
            "`accelerate launch --multi_gpu --num_processes N script.py` or `torchrun --nproc_per_node N script.py`, "
            "or unset WORLD_SIZE for a single-process run"
        )
    for name in ("RANK", "LOCAL_RANK", "MASTER_PORT"):
        if found[name] and not found[name].isdigit():
            raise ValueError(f"{name} must be a non-negative integer, got {found[name]!r}; let the launcher set it")
    if int(found["RANK"]) >= world_size:
        raise ValueError(f"RANK must be < WORLD_SIZE ({world_size}), got {found['RANK']}; let the launcher set it")
    found["LOCAL_RANK"] = found["LOCAL_RANK"] or found["RANK"]
    return found


def is_distributed_launch() -> bool:
    """True when this process was started as one rank of several (``WORLD_SIZE`` > 1 in the environment)."""
    return launch_environment() is not None


@dataclass
class DistributedContext:
    """This process's place in a data-parallel run and the few collectives the training loop uses."""

    rank: int
    world_size: int
    local_rank: int
    backend: str  # "gloo", "nccl", or what an existing group uses
    device: Any  # torch.device collectives run on: cuda:LOCAL_RANK under nccl, else cpu
    owns_group: bool  # True when setup_distributed created the group (and close() destroys it)

    @property
    def is_main_process(self) -> bool:
        """True on rank 0, the rank that writes files and shows progress."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        import torch.distributed as dist

        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def sum(self, values: Sequence[float]) -> list[float]:
        """Return ``values`` summed elementwise over the ranks."""
        import torch
        import torch.distributed as dist

        buffer = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(buffer)
        return buffer.tolist()

    def average_gradients(
        self, params: Sequence[torch.nn.Parameter], loss: torch.Tensor, *, failed: bool
    ) -> tuple[torch.Tensor, int]:
        """Average the gradients of ``params`` and ``loss`` over the ranks in one all-reduce, in place.

        Returns ``(mean loss, number of ranks that failed)``; ``loss`` may be a vector, each value averaged. A rank
        with ``failed=True`` (out of memory mid-step) contributes zeros; the caller retries the step on every rank
        when the count is > 0. A non-finite value on any rank makes the averaged loss or gradients non-finite on
        every rank, so the loop's non-finite check skips the step everywhere: the ranks agree without a separate flag.

        Not DistributedDataParallel: its bucketed all-reduce inside ``backward`` would leave the other ranks blocked
        in a collective when one fails mid-step (out of memory, a retried or skipped step). One collective at a known
        point per step lets every rank agree on everything at once; LoRA weights are small, the flat buffer cheap.
        """
        import torch
        import torch.distributed as dist

        parts = []
        for param in params:
            grad = param.grad
            if failed or grad is None:
                parts.append(torch.zeros(param.numel(), device=self.device, dtype=torch.float32))
            else:
                parts.append(grad.detach().reshape(-1).to(self.device, torch.float32))
        # the loss may be a vector (the loss and its parts, e.g. distillation's kd_loss and lm_loss): averaged alike
        local_loss = loss.detach().to(self.device, torch.float32).reshape(-1)
        if failed:
            local_loss = torch.zeros_like(local_loss)
        parts.append(torch.cat([local_loss, torch.tensor([float(failed)], device=self.device)]))
        flat = torch.cat(parts)
        dist.all_reduce(flat)
        failures = round(flat[-1].item())
        if failures:
            return loss, failures
        flat /= self.world_size
        offset = 0
        with torch.no_grad():
            for param in params:
                mean = flat[offset : offset + param.numel()].view_as(param)
                offset += param.numel()
                if param.grad is None:
                    param.grad = mean.to(param.device, param.dtype).clone()
                else:
                    param.grad.copy_(mean)
        return flat[offset : offset + local_loss.numel()].reshape(loss.shape).to(loss.device), 0

    def broadcast_parameters(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Copy rank 0's values of ``params`` to every rank (one broadcast of a flat buffer)."""
        import torch
        import torch.distributed as dist

        if not params:
            return
        flat = torch.cat([p.detach().reshape(-1).to(self.device, torch.float32) for p in params])
        dist.broadcast(flat, src=0)
        offset = 0
        with torch.no_grad():
            for param in params:
                param.copy_(flat[offset : offset + param.numel()].view_as(param))
                offset += param.numel()

    def broadcast_object(self, value: Any) -> Any:
        """Return rank 0's ``value`` on every rank (any picklable object)."""
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def gather_object(self, value: Any) -> list[Any]:
        """Return ``[value of rank 0, value of rank 1, ...]`` on every rank (any picklable object)."""
        return gather_object(value)

    def close(self) -> None:
        """Destroy the process group if :func:`setup_distributed` created it (a group made by others is kept)."""
        import torch.distributed as dist

        if self.owns_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
            logger.debug("rank %d: process group destroyed", self.rank)


def join_device(context: DistributedContext, model: Any, device: torch.device) -> torch.device:
    """Under nccl, put ``model`` on this rank's GPU (``cuda:LOCAL_RANK``) and return the device it trains on; a
    4-bit model cannot move and must be loaded there (ValueError)."""
    target = context.device
    if target.type != "cuda" or device == target:
        return device
    if is_quantized(model):
        raise ValueError(
            f"rank {context.rank}: the 4-bit model is on {device}, but this rank trains on {target}: load it "
            f"there, e.g. load_model(name, load_in_4bit=True, device='cuda:{context.local_rank}') (LOCAL_RANK)"
        )
    logger.info("rank %d: moving the model from %s to %s", context.rank, device, target)
    model.to(target)
    return target


def check_same_model(context: DistributedContext, fingerprint: dict[str, Any]) -> None:
    """Raise ValueError when a rank's base model or settings differ from rank 0's (no sense in averaging)."""
    prints = context.gather_object(fingerprint)
    for rank, other in enumerate(prints[1:], start=1):
        diffs = fingerprint_differences(prints[0], other)
        if diffs:
            raise ValueError(
                f"rank {rank} trains a different model or config than rank 0 ({'; '.join(diffs)}): load the same "
                "weights with the same settings on every rank (seed before building a random model)"
            )


def setup_distributed(model_device: torch.device | None = None) -> DistributedContext | None:
    """Join the data-parallel run this process belongs to; return its :class:`DistributedContext`, or None.

    None means single-process: no launcher variables and no existing process group of more than one rank. An
    existing group (made by ``accelerate.PartialState``, ``Accelerator`` or the script) is reused and left open.
    Otherwise the group is created from the environment, with ``nccl`` when ``model_device`` is CUDA (and
    ``cuda:LOCAL_RANK`` made the current device) and ``gloo`` otherwise.
    """
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        world_size = dist.get_world_size()
        if world_size <= 1:
            return None
        backend = str(dist.get_backend())
        local_rank = int(os.environ.get("LOCAL_RANK") or dist.get_rank())
        return DistributedContext(
            rank=dist.get_rank(),
            world_size=world_size,
            local_rank=local_rank,
            backend="nccl" if "nccl" in backend else backend,
            device=torch.device("cuda", local_rank) if "nccl" in backend else torch.device("cpu"),
            owns_group=False,
        )
    env = launch_environment()
    if env is None:
        return None
    if not dist.is_available():
        raise RuntimeError(
            f"WORLD_SIZE={env['WORLD_SIZE']} but this torch build has no torch.distributed: install a standard "
            "torch wheel, or run a single process"
        )
    rank, world_size, local_rank = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    on_cuda = model_device is not None and torch.device(model_device).type == "cuda"
    if on_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible: launch at "
                f"most {torch.cuda.device_count()} processes per machine (--num_processes), or train on the CPU"
            )
        torch.cuda.set_device(local_rank)
        backend, device = "nccl", torch.device("cuda", local_rank)
    else:
        # several CPU processes: `accelerate launch --multi_gpu --num_processes 2` starts them through
        # torch.distributed.run even without CUDA (`--cpu --num_processes 2` starts only one)
        backend, device = "gloo", torch.device("cpu")
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    logger.info("rank %d of %d joined the process group (%s, %s)", rank, world_size, backend, device)
    return DistributedContext(rank, world_size, local_rank, backend, device, owns_group=True)


def gather_object(value: Any) -> list[Any]:
    """Return every rank's ``value`` as a list indexed by rank; ``[value]`` when not distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def remote_oom(failures: int, micro_batch_size: int) -> BaseException:
    """Return the out-of-memory error a rank raises when another rank ran out of memory (all ranks retry together)."""
    import torch

    return torch.OutOfMemoryError(f"CUDA out of memory on {failures} other rank(s) at micro-batch {micro_batch_size}")
