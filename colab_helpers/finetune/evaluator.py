"""The run's evaluation: the eval loss over this rank's share of the eval sequences (the mean over every rank's in
a data-parallel run), the weights of the best eval loss, and the patience of early stopping."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..runtime.cuda_fallback import is_cuda_oom
from .completions import weight
from .device import load_values, to_device
from .distributed import remote_oom

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .blocks import Sequences
    from .distributed import DistributedContext
    from .state import TrainingState


class Evaluator:
    """Scores the model on ``blocks`` (None: a run without eval data, which never has best weights) and keeps the
    weights of the best eval loss; in a data-parallel run each rank scores a disjoint share of the blocks."""

    def __init__(self, blocks: Sequences | None, dist: DistributedContext | None) -> None:
        self.dist = dist
        self.total = weight(blocks) if blocks is not None else 0  # every rank's: the mean is over all of them
        if blocks is not None and dist is not None:
            blocks = blocks[dist.rank :: dist.world_size]
        self.blocks = blocks
        self.best_params: list[torch.Tensor] | None = None

    @property
    def enabled(self) -> bool:
        """True when the run has eval data."""
        return self.blocks is not None

    def loss(self, model: Any, loss: Callable[[Any], torch.Tensor], micro_batch_size: int,
             device: torch.device) -> float:  # fmt: skip
        """Return the mean ``loss`` of the eval blocks in micro-batches (summed on ``device``), ``model`` in eval
        mode meanwhile."""
        import torch

        assert self.blocks is not None
        model.eval()
        try:
            total = torch.zeros((), device=device, dtype=torch.float32)
            failure: BaseException | None = None
            try:
                with torch.no_grad():
                    for chunk in self.blocks.split(micro_batch_size):
                        total += loss(chunk).float() * weight(chunk)
            except Exception as exc:
                if self.dist is None or not is_cuda_oom(exc):
                    raise
                failure = exc  # as in a training step: the other ranks must hear of it, then all retry smaller
            if self.dist is None:
                return (total / weight(self.blocks)).item()
            # each rank scored its share of the eval sequences: the mean over all of them, the same on every rank
            loss_sum, failures = self.dist.sum([0.0, 1.0] if failure is not None else [total.item(), 0.0])
            if failures:
                raise failure or remote_oom(round(failures), micro_batch_size)
            return loss_sum / self.total
        finally:
            model.train()

    def observe(self, state: TrainingState, loss: float, step: int, params: list[torch.nn.Parameter],
                patience: int | None) -> str | None:  # fmt: skip
        """Record eval ``loss`` of ``step`` in ``state``: a better one keeps a copy of ``params`` as the best
        weights. Return why training stops when ``patience`` evaluations in a row did not improve, else None."""
        if math.isfinite(loss) and (state.best_eval_loss is None or loss < state.best_eval_loss):
            state.best_eval_loss, state.best_step = loss, step
            self.best_params = [p.detach().clone() for p in params]
            state.evals_without_improvement = 0
            return None
        state.evals_without_improvement += 1
        if patience is not None and state.evals_without_improvement >= patience:
            return (f"eval loss did not improve for {patience} evaluation(s) (best {state.best_eval_loss} at step "
                    f"{state.best_step}): stopping")  # fmt: skip
        return None

    def restore_best(self, params: list[torch.nn.Parameter]) -> bool:
        """Copy the best weights into ``params``; False when there are none."""
        if self.best_params is None:
            return False
        load_values(params, self.best_params)
        return True

    def move_to(self, device: torch.device) -> None:
        """Move the best weights to ``device`` (the CUDA fallback)."""
        if self.best_params is not None:
            self.best_params = to_device(self.best_params, device)
