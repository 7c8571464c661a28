"""What a run leaves in its ``output_dir``: the folder itself (checked writable, removed again when a run set up in
a folder it made fails), the names inside it, the trained adapter or model at the end, the history summary."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ColabHelpersWarning
from ..runtime.files import atomic_write_text, ensure_writable_dir
from ..runtime.records import to_jsonable
from .lora import hooked_modules
from .result import FineTuneResult

CHECKPOINT_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"  # method="full": the trained model, saved whole
SUMMARY_FILE = "history.json"


@contextlib.contextmanager
def output_dir_for(path: Any) -> Iterator[Path]:
    """Yield ``path`` created and checked writable; when the block fails, a folder this call made and the block left
    empty is removed again (a failed set-up leaves no trace)."""
    new_folder = not Path(path).expanduser().exists()
    directory = writable_output_dir(path)
    try:
        yield directory
    except BaseException:
        if new_folder and not any(directory.iterdir()):
            directory.rmdir()
        raise


def writable_output_dir(path: Any) -> Path:
    """Return ``path`` created and checked writable; the error says what to pass instead."""
    try:
        return ensure_writable_dir(path)
    except (PermissionError, NotADirectoryError) as exc:
        raise type(exc)(
            f"output_dir {str(path)!r} is not writable ({exc}); pass output_dir= a directory you can "
            "write to, e.g. 'finetune' (on Colab a Drive folder survives a runtime reset)"
        ) from exc


def save_trained(model: Any, tokenizer: Any, output_dir: Path, *, full: bool,
                 write: bool) -> tuple[Path | None, Path | None]:  # fmt: skip
    """Save what a run trained; return ``(adapter dir, model dir)`` (only their paths where ``write`` is False:
    a data-parallel run's other ranks).

    LoRA: the adapter in ``<output_dir>/adapter``. ``full`` (``method="full"``): the whole model and the tokenizer in
    ``<output_dir>/model``, except for a gated model (its gates cannot be saved): one warning, nothing saved.
    """
    from .export import save_adapter, save_model  # looked up when called: a launcher's worker may wrap them

    if not full:
        adapter_dir = output_dir / ADAPTER_DIR
        return (save_adapter(model, adapter_dir) if write else adapter_dir), None
    gated = hooked_modules(model)
    if gated:
        warnings.warn(
            f"method='full': the trained model carries head-gate hooks ({gated[0]}, ...), which save_pretrained "
            f"cannot store, so {output_dir / MODEL_DIR} was not written; remove the gated heads physically "
            "(colab_helpers.pruning.remove_heads) and save result.model yourself",
            ColabHelpersWarning,
            stacklevel=5,  # save_trained <- _finish <- train <- fine_tune <- the caller
        )
        return None, None
    model_dir = output_dir / MODEL_DIR
    return None, (save_model(model, tokenizer, model_dir) if write else model_dir)


def write_summary(result: FineTuneResult, output_dir: Path) -> None:
    """Write ``result`` (history, events, outcome) as ``<output_dir>/history.json``, atomically."""
    summary = json.dumps(to_jsonable(result.to_dict()), indent=1, allow_nan=False)
    atomic_write_text(output_dir / SUMMARY_FILE, summary + "\n")
