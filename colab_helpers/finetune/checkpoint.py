"""Atomic training checkpoints: a kill at any moment leaves the previous complete checkpoint usable.

A checkpoint is written into a temporary directory, fsynced, its ``manifest.json`` (each file and its size) written
last, then renamed to ``checkpoint-<step>``; only a directory whose manifest matches its files counts.
:func:`save_run` / :func:`load_run` fill one with a run (adapter or weights, optimizer, RNG states, best weights,
the :class:`~.state.TrainingState`); :mod:`.resume` picks the one a run continues from.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtime.files import atomic_write_text, size_mismatch
from ..runtime.records import to_jsonable

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "latest"
STATE = "state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")
_TMP_PREFIX = ".tmp-checkpoint-"
_TRASH_PREFIX = ".trash-checkpoint-"
_FORMAT = 1


def checkpoint_step(path: str | os.PathLike[str]) -> int | None:
    """Return the step in a ``checkpoint-<step>`` directory name, or None for any other name."""
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a finished checkpoint: its manifest names its step and every file with its size."""
    return checkpoint_problem(path) is None


def checkpoint_problem(path: str | os.PathLike[str]) -> str | None:
    """Return what makes ``path`` not a finished checkpoint, in a few words naming the file (None when it is one)."""
    path = Path(path)
    step = checkpoint_step(path)
    if step is None or not path.is_dir():
        return "not a checkpoint-<step> directory"
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        version, listed, files = manifest["format"], manifest["step"], dict(manifest["files"])
    except FileNotFoundError:
        return f"no {MANIFEST} (a save that never finished, or a partial copy)"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{MANIFEST} is damaged ({type(exc).__name__})"
    if version != _FORMAT or listed != step or not files:
        return f"{MANIFEST} does not describe this checkpoint (format {version!r}, step {listed!r}, {len(files)} files)"
    return size_mismatch(path, files)


def list_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """Return the complete checkpoints under ``directory``, oldest step first (half-written ones left out)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if checkpoint_step(p) is not None and is_complete(p)]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """Return the newest complete checkpoint under ``directory``, or None.

    The ``latest`` pointer is trusted only when it names a complete checkpoint at least as new as every other
    complete one; otherwise the directories are scanned (a kill between the rename and the pointer update
    leaves the pointer one checkpoint behind).
    """
    directory = Path(directory)
    complete = list_checkpoints(directory)
    newest = complete[-1] if complete else None
    pointer = directory / LATEST
    if pointer.is_file():
        try:
            text = pointer.read_text(encoding="utf-8").strip()
        except OSError:
            text = ""
        named = directory / text if text else None
        if named is not None and named == newest:
            return newest
        if named is not None and not is_complete(named):
            logger.warning("%s names %s, which is missing or incomplete; using %s", pointer, named.name, newest)
    return newest


def remove_stale(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary and trash directories a killed run left under ``directory``; return what was deleted."""
    return _remove_dirs(Path(directory), lambda path: path.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)))


def remove_all(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete every checkpoint (complete or not), the pointer and stale temporaries; return the checkpoints deleted."""
    directory = Path(directory)
    removed = _remove_dirs(directory, lambda path: checkpoint_step(path) is not None)
    (directory / LATEST).unlink(missing_ok=True)
    remove_stale(directory)
    return removed


def _remove_dirs(directory: Path, chosen: Callable[[Path], bool]) -> list[Path]:
    """Delete the sub-directories of ``directory`` that ``chosen`` picks; return them (none when it is missing)."""
    removed = [path for path in directory.iterdir() if path.is_dir() and chosen(path)] if directory.is_dir() else []
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some file systems (and Windows) cannot open a directory: rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_checkpoint(
    directory: str | os.PathLike[str],
    step: int,
    writers: dict[str, Callable[[Path], None]],
    state: dict[str, Any],
    *,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``checkpoint-<step>`` atomically under ``directory`` and return its path.

    ``writers`` maps a file name to a function writing that file at the path it is given; ``state`` is stored
    as ``state.json``. Afterwards ``latest`` points at the new checkpoint and only the newest ``keep`` complete
    checkpoints remain.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"checkpoint-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{step}-", dir=directory))
    try:
        for name, write in writers.items():
            write(tmp / name)
        (tmp / STATE).write_text(json.dumps(state, indent=1), encoding="utf-8")
        files = {}
        for path in sorted(tmp.iterdir()):
            _fsync_file(path)
            files[path.name] = path.stat().st_size
        manifest = {"format": _FORMAT, "step": step, "files": files}
        with open(tmp / MANIFEST, "w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(tmp)
        if final.exists():  # rewriting a step (e.g. after a CUDA fallback at a checkpoint step): swap it out first
            trash = Path(tempfile.mkdtemp(prefix=f"{_TRASH_PREFIX}{step}-", dir=directory))
            os.replace(final, trash / final.name)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(directory / LATEST, final.name + "\n")
    for old in list_checkpoints(directory)[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the ``state.json`` of a checkpoint directory."""
    return json.loads((Path(path) / STATE).read_text(encoding="utf-8"))


# --- a LoRA run's checkpoint ------------------------------------------------------------------------------


def save_run(
    directory: Path,
    step: int,
    model: Any,
    optimizer: Any,
    state: dict[str, Any],
    *,
    best: dict[str, torch.Tensor] | None = None,
    keep: int = 2,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint ``checkpoint-<step>`` of a LoRA run under ``directory``; return its path.

    It holds the peft ``model``'s adapter and config, the ``optimizer`` state, the RNG states, ``best`` (name ->
    weights of the best evaluation) when given, and ``state`` (plus the Python and numpy RNG) as ``state.json``.
    ``weights`` (name -> trained tensor; ``method="full"``, a model without an adapter) are saved instead of the
    adapter, in the same ``adapter_model.safetensors`` file (so :mod:`.resume` reads both alike), without
    ``adapter_config.json``.
    """
    import torch
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    def tensors(path: Path, values: dict[str, torch.Tensor]) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in values.items()}, str(path))

    def adapter_config(path: Path) -> None:
        config = to_jsonable(model.peft_config["default"].to_dict())
        path.write_text(json.dumps(config, indent=1), encoding="utf-8")

    writers: dict[str, Callable[[Path], None]] = {
        "adapter_model.safetensors": lambda path: tensors(path, weights if weights is not None
                                                          else get_peft_model_state_dict(model)),
        "adapter_config.json": adapter_config,
        "optimizer.pt": lambda path: torch.save(optimizer.state_dict(), path),
        "rng.pt": lambda path: torch.save(_torch_rng_states(), path),
    }
    if weights is not None:
        del writers["adapter_config.json"]
    if best is not None:
        writers["best_adapter.safetensors"] = lambda path: tensors(path, best)
    state = {**state, "python_rng": _python_rng_state(), "numpy_rng": _numpy_rng_state()}
    return write_checkpoint(directory, step, writers, state, keep=keep)


def load_run(
    path: Path, model: Any, optimizer: Any, device: torch.device, *, params: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Load checkpoint ``path`` of a LoRA run into ``model``, ``optimizer`` and the RNGs; return its ``state.json``
    and the best evaluation's weights (name -> tensor on ``device``; None when it has none). With ``params``
    (name -> parameter; ``method="full"``) the saved weights are copied into those parameters instead of an adapter."""
    import torch
    from safetensors.torch import load_file

    state = read_state(path)
    adapter = load_file(str(path / "adapter_model.safetensors"), device=str(device))
    if params is not None:
        _load_weights(path, params, adapter)
    else:
        from peft.utils import set_peft_model_state_dict

        unexpected = getattr(set_peft_model_state_dict(model, adapter), "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"checkpoint {path} holds adapter weights this model does not have: {unexpected[:3]}")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    _set_torch_rng_states(torch.load(path / "rng.pt", weights_only=True))
    _set_python_rng(state.get("python_rng"))
    _set_numpy_rng(state.get("numpy_rng"))
    best_file = path / "best_adapter.safetensors"
    best = load_file(str(best_file), device=str(device)) if best_file.is_file() else None
    return state, best


def _load_weights(path: Path, params: dict[str, Any], saved: dict[str, torch.Tensor]) -> None:
    """Copy the weights of a full-training checkpoint into ``params``; raise ValueError when the names differ."""
    import torch

    missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not hold the weights of this model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}); pass a new output_dir, or resume=False")  # fmt: skip
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(saved[name])


def _torch_rng_states() -> dict[str, Any]:
    import torch

    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_torch_rng_states(states: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        with contextlib.suppress(Exception):
            torch.cuda.set_rng_state_all(states["cuda"])


def _python_rng_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_python_rng(state: list[Any] | None) -> None:
    if state:
        random.setstate((state[0], tuple(state[1]), state[2]))


def _numpy_rng_state() -> list[Any] | None:
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return None
    name, keys, pos, has_gauss, cached = numpy.random.get_state()
    return [name, keys.tolist(), pos, has_gauss, cached]


def _set_numpy_rng(state: list[Any] | None) -> None:
    numpy = sys.modules.get("numpy")
    if numpy is None or not state:
        return
    name, keys, pos, has_gauss, cached = state
    numpy.random.set_state((name, numpy.asarray(keys, dtype=numpy.uint32), pos, has_gauss, cached))
