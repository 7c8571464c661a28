"""Which checkpoint a run continues from (``resume=True``), and what becomes of those it cannot read.

:func:`checkpoint_to_resume` takes the newest checkpoint that reads whole; one that does not is never resumed,
overwritten or deleted but moved into ``<checkpoints>/unreadable-<time>/`` with one warning. One whose adapter holds
NaN or infinity is refused with an error before the model or any file is touched.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ColabHelpersWarning
from ..runtime.cuda_fallback import short_error
from ..runtime.files import atomic_write_text
from . import checkpoint as ckpt
from .lora import fingerprint_differences
from .state import TrainingState

if TYPE_CHECKING:  # pragma: no cover
    from .distributed import DistributedContext

logger = logging.getLogger(__name__)

ADAPTER = "adapter_model.safetensors"
BEST_ADAPTER = "best_adapter.safetensors"
UNREADABLE_PREFIX = "unreadable-"  # not a checkpoint-<step> name: never listed, resumed or cleaned up


def checkpoint_to_resume(
    directory: Path,
    fingerprint: dict[str, Any],
    *,
    resume: bool,
    distributed: DistributedContext | None,
) -> Path | None:
    """Return the checkpoint of ``directory`` to resume (checked against ``fingerprint``), or None to start over.

    With ``resume=False`` the old checkpoints are deleted (one warning says so). With ``resume=True`` checkpoints
    that cannot be read are moved aside with one warning (see the module docstring); a checkpoint whose adapter
    holds NaN or infinity, or one written for another model or config, raises ValueError. In a data-parallel run
    rank 0 alone cleans up and picks the checkpoint; every rank resumes that one (or raises the same error).
    """
    is_main_process = distributed is None or distributed.is_main_process
    if is_main_process:
        ckpt.remove_stale(directory)
    if not resume:
        removed = ckpt.remove_all(directory) if is_main_process else []
        if removed:
            warnings.warn(
                f"resume=False: deleted {len(removed)} old checkpoint(s) in {directory} "
                "(pass resume=True to continue a run instead)",
                ColabHelpersWarning,
                stacklevel=4,
            )
        return None
    latest, error = _pick(directory) if is_main_process else (None, None)
    if distributed is not None:
        chosen, error = distributed.broadcast_object((str(latest) if latest is not None else None, error))
        latest = Path(chosen) if chosen is not None else None
    if error is not None:
        raise ValueError(error)
    if latest is None:
        logger.info("resume=True but no checkpoint in %s: starting from step 0", directory)
        return None
    diffs = fingerprint_differences(ckpt.read_state(latest).get("fingerprint", {}), fingerprint)
    if diffs:
        raise ValueError(
            f"cannot resume from {latest}: it was written for a different model or config "
            f"(checkpoint vs now: {'; '.join(diffs)}). Pass a new output_dir to start a separate run, or "
            f"resume=False to start over in {directory.parent} (its checkpoints are deleted)"
        )
    return latest


def _pick(directory: Path) -> tuple[Path | None, str | None]:
    """Return (the newest readable checkpoint or None, an error that forbids resuming or None); move the
    unreadable ones newer than it aside with one warning. Nothing is moved when there is an error."""
    found = [p for p in directory.iterdir() if ckpt.checkpoint_step(p) is not None] if directory.is_dir() else []
    unreadable: list[tuple[Path, str]] = []
    chosen = None
    for path in sorted(found, key=lambda p: ckpt.checkpoint_step(p) or 0, reverse=True):
        problem, non_finite = _inspect(path)
        if non_finite:
            more = f" and {len(non_finite) - 1} more" if len(non_finite) > 1 else ""
            return None, (
                f"cannot resume from {path}: its adapter holds NaN or infinite values ({non_finite[0]}{more}), "
                f"the state of a run that diverged. Move {path.name} out of {directory} to resume from the checkpoint "
                "before it, or pass resume=False to start over (the checkpoints there are deleted)"
            )
        if problem is None:
            chosen = path
            break
        unreadable.append((path, problem))
    if unreadable:
        aside = _move_aside(directory, [path for path, _ in unreadable], chosen)
        what = "; ".join(f"{path.name}: {problem}" for path, problem in unreadable)
        then = f"resuming from {chosen.name}" if chosen is not None else "starting from step 0"
        warnings.warn(
            f"resume=True: {len(unreadable)} checkpoint(s) in {directory} could not be read ({what}); moved them to "
            f"{aside} (nothing deleted) and {then}. Delete that folder once you no longer need it",
            ColabHelpersWarning,
            stacklevel=5,  # _pick <- checkpoint_to_resume <- FineTuner <- fine_tune <- the caller
        )
    return chosen, None


def _inspect(path: Path) -> tuple[str | None, list[str]]:
    """Return (what makes checkpoint ``path`` unreadable, or None; the adapter tensors holding NaN or infinity)."""
    import torch
    from safetensors.torch import load_file

    problem = ckpt.checkpoint_problem(path)
    if problem is not None:
        return problem, []
    try:
        state = TrainingState.from_dict(ckpt.read_state(path))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{ckpt.STATE} cannot be read ({short_error(exc, limit=160)})", []
    if state.step != ckpt.checkpoint_step(path):
        return f"{ckpt.STATE} is of step {state.step}", []
    adapter: dict[str, torch.Tensor] = {}
    for name in (ADAPTER, BEST_ADAPTER, "optimizer.pt", "rng.pt"):
        file = path / name
        if name == BEST_ADAPTER and not file.exists():
            continue  # only a run with evaluations has one
        try:
            if name == ADAPTER:
                adapter = load_file(str(file), device="cpu")
            elif name == BEST_ADAPTER:
                load_file(str(file), device="cpu")
            else:  # mmap: the structure is read, the tensors stay on disk
                torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # noqa: BLE001 - any failure to read means: not this checkpoint
            return f"{name} cannot be read ({short_error(exc, limit=160)})", []
    non_finite = [n for n, t in adapter.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    return None, non_finite


def _move_aside(directory: Path, paths: list[Path], chosen: Path | None) -> Path:
    """Move ``paths`` into a new ``unreadable-<time>`` folder of ``directory``; point ``latest`` at ``chosen``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = directory / f"{UNREADABLE_PREFIX}{stamp}"
    number = 1
    while aside.exists():
        number += 1
        aside = directory / f"{UNREADABLE_PREFIX}{stamp}-{number}"
    aside.mkdir()
    for path in paths:
        os.replace(path, aside / path.name)
    pointer = directory / ckpt.LATEST
    if chosen is not None:
        atomic_write_text(pointer, chosen.name + "\n")
    else:
        pointer.unlink(missing_ok=True)
    return aside


