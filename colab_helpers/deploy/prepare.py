"""The model to serve beside the unpruned one: the newest compressed model notebook 08 saved, or else the model
compressed here to a parameter target without recovery (serving speed depends on the shapes, not on the weights).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..checks import check_number, check_positive_integer

logger = logging.getLogger(__name__)

COMPRESS_RESULTS = "results/08_compress"


def newest_saved_model(root: str | os.PathLike[str] = COMPRESS_RESULTS) -> Path | None:
    """The most recently written ``<root>/*/model`` folder holding ``pruning.json`` (a ``save_pruned`` folder), or
    None when there is none."""
    folders = [p for p in Path(root).glob("*/model") if (p / "pruning.json").is_file()]
    return max(folders, key=lambda p: (p / "pruning.json").stat().st_mtime) if folders else None


def compress_for_serving(model: str, out_dir: str | os.PathLike[str], *, target_params: float = 0.75,
                         dataset: str = "embedded", batches: int = 4, seq_len: int = 128,
                         progress: bool = False) -> Path:  # fmt: skip
    """Load ``model``, compress it to ``target_params`` of its parameters across heads, MLP channels and layers
    (``batches`` of 8 x ``seq_len`` tokens of ``dataset``: half score, half compare allocations), no recovery, and
    save it with ``save_pruned`` to ``out_dir``; return the folder. ``target_params=1.0`` saves it unchanged."""
    check_number(target_params, "target_params", high=1.0, high_inclusive=True, fix="e.g. target_params=0.75")
    check_positive_integer(batches, "batches", fix="e.g. batches=4")
    from ..evaluation.data import load_text_dataset
    from ..evaluation.perplexity import lm_batches, model_vocab_size, tokenize_texts
    from ..models.loading import load_model
    from ..pruning.compress import compress
    from ..pruning.io import save_pruned

    loaded, tokenizer = load_model(model, device="cpu")
    ids = tokenize_texts(tokenizer, load_text_dataset(dataset).train, max_tokens=batches * 8 * seq_len)
    calibration = lm_batches(ids, seq_len=seq_len, batch_size=8, max_batches=batches,
                             vocab_size=model_vocab_size(loaded))  # fmt: skip
    half = (len(calibration) + 1) // 2
    scoring, evaluation = (calibration[:half], calibration[half:]) if len(calibration) >= 2 else (calibration, None)
    if target_params < 1.0:  # 1.0: the model as it is, saved as a plain folder (the unpruned side of a comparison)
        logger.info("%s", compress(loaded, scoring, target_params, eval_batches=evaluation, progress=progress).summary())
    return save_pruned(loaded, tokenizer, out_dir)


def model_to_serve(model: str, out_dir: str | os.PathLike[str], *, target_params: float = 0.75,
                   search: str | os.PathLike[str] | None = COMPRESS_RESULTS, seq_len: int = 128) -> Path:
    """The newest compressed model under ``search`` (notebook 08's results) when there is one, else ``model``
    compressed to ``target_params`` into ``out_dir`` (:func:`compress_for_serving`); return its folder."""
    found = newest_saved_model(search) if search else None
    if found is not None:
        logger.info("serving the compressed model saved in %s", found)
        return found
    return compress_for_serving(model, out_dir, target_params=target_params, seq_len=seq_len)


__all__ = ["compress_for_serving", "model_to_serve", "newest_saved_model"]
