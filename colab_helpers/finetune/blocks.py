"""The training data of a run: texts tokenised and cut into ``seq_len`` blocks, or (prompt, completion) pairs
padded into examples, checked before any model work so that a bad input fails fast; :class:`TrainingBlocks`
deals each step its sequences in a seeded order; :func:`total_steps` turns ``epochs`` into steps. The step's
sequences depend only on the step number, so a resumed or retried step sees the same data without any
data-loader state to save.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from .completions import CompletionBatch, TrainingData, as_pairs, tokenize_pairs
from .config import FineTuneConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

Sequences = Any  # a [n, seq_len] token tensor or a CompletionBatch: both index, split and .to(device) alike


class TrainingBlocks:
    """Training sequences, visited in a seeded order per epoch: the token stream cut into ``seq_len`` blocks
    (:func:`cut_blocks`), or the padded examples of (prompt, completion) pairs (a :class:`CompletionBatch`)."""

    def __init__(self, blocks: torch.Tensor | CompletionBatch, seed: int) -> None:
        self.blocks = blocks
        self.seed = seed
        self._orders: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def _order(self, epoch: int) -> torch.Tensor:
        import torch

        if epoch not in self._orders:
            if len(self._orders) > 2:
                self._orders.clear()
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._orders[epoch] = torch.randperm(len(self), generator=generator)
        return self._orders[epoch]

    def for_step(self, step: int, count: int) -> torch.Tensor | CompletionBatch:
        """Return the ``count`` sequences of (1-based) ``step`` (``[count, seq_len]`` for plain blocks)."""
        return self.blocks[self.rows_for_step(step, count)]

    def rows_for_step(self, step: int, count: int) -> torch.Tensor:
        """Return the row numbers (in :attr:`blocks`) of the ``count`` sequences of (1-based) ``step``."""
        import torch

        n = len(self)
        first = (step - 1) * count
        parts = []
        position = first
        while position < first + count:
            epoch, offset = divmod(position, n)
            take = min(n - offset, first + count - position)
            parts.append(self._order(epoch)[offset : offset + take])
            position += take
        return torch.cat(parts)


def training_blocks(tokenizer: Any, texts: TrainingData, config: FineTuneConfig) -> tuple[TrainingBlocks, bool]:
    """Return the training sequences of ``texts`` and whether they are (prompt, completion) pairs (prompts masked)."""
    texts = materialize(texts, "train_texts")
    pairs = as_pairs(texts, "train_texts")
    if pairs is not None:
        return TrainingBlocks(tokenize_pairs(tokenizer, pairs, config.seq_len, "train_texts"), config.seed), True
    ids = tokenize_checked(tokenizer, texts, "train_texts", config.micro_batch_size, config.seq_len)
    return TrainingBlocks(cut_blocks(ids, config.seq_len), config.seed), False


def eval_blocks(tokenizer: Any, texts: TrainingData | None, config: FineTuneConfig) -> Sequences | None:
    """Return the evaluation sequences (at most ``eval_batches`` micro-batches), or None without ``texts``."""
    if texts is None:
        if config.early_stopping_patience is not None:
            raise ValueError("early_stopping_patience needs eval_texts: pass eval_texts, or early_stopping_patience=None")
        return None
    texts = materialize(texts, "eval_texts")
    pairs = as_pairs(texts, "eval_texts")
    if pairs is not None:
        blocks = tokenize_pairs(tokenizer, pairs, config.seq_len, "eval_texts")
    else:
        blocks = cut_blocks(tokenize_checked(tokenizer, texts, "eval_texts", 1, config.seq_len), config.seq_len)
    return blocks[: config.eval_batches * config.micro_batch_size]


def tokenize_checked(tokenizer: Any, texts: Any, what: str, sequences: int, seq_len: int) -> torch.Tensor:
    """Return the token ids of ``texts``; raise ValueError when they cannot fill ``sequences`` x ``seq_len``."""
    from ..evaluation.perplexity import tokenize_texts

    needed = sequences * seq_len
    texts = [texts] if isinstance(texts, str) else list(texts if texts is not None else [])
    wrong = [(index, text) for index, text in enumerate(texts) if not isinstance(text, str)]
    if wrong:
        index, item = wrong[0]
        kinds = sorted({type(text).__name__ for _, text in wrong})
        more = f" and {len(wrong) - 1} more" if len(wrong) > 1 else ""
        raise ValueError(
            f"{what} holds {' and '.join(kinds)} values where strings or (prompt, completion) pairs are expected "
            f"({what}[{index}] is {item!r}{more}); pass texts, e.g. ['first text', 'second text'], or pairs, "
            "e.g. [('Q: 2+2?\\nA:', ' 4')]"
        )
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise ValueError(
            f"{what} is empty: one micro-batch of {sequences} x seq_len={seq_len} needs {needed} tokens; "
            "pass a list of strings, e.g. load_text_dataset('embedded').train"
        )
    ids = tokenize_texts(tokenizer, texts)
    if ids.numel() < needed:
        raise ValueError(
            f"{what} has {ids.numel()} tokens, but one micro-batch of {sequences} x seq_len={seq_len} needs "
            f"{needed}; pass more text, or lower seq_len{' / micro_batch_size' if sequences > 1 else ''}"
        )
    return ids


def total_steps(config: FineTuneConfig, blocks: TrainingBlocks, world_size: int, completion_only: bool) -> int:
    """Return the run's number of optimizer steps: ``max_steps``, or ``epochs`` passes over ``blocks``."""
    if config.epochs is None:
        return int(config.max_steps)
    steps = max(1, math.ceil(config.epochs * len(blocks) / (config.effective_batch_size * world_size)))
    unit = "(prompt, completion) examples of at most" if completion_only else "sequences of"
    logger.info("epochs=%s over %d %s %d tokens: %d steps", config.epochs, len(blocks), unit, config.seq_len, steps)
    return steps


def materialize(data: Any, what: str) -> Any:
    """Return ``data`` as a list, so that a generator can be looked at twice (a string or None as it is); raise
    ValueError naming ``what`` when it is neither text nor a collection."""
    if data is None or isinstance(data, str):
        return data
    try:
        return list(data)
    except TypeError:
        raise ValueError(
            f"{what} must be a text, a list of texts or of (prompt, completion) pairs, got {type(data).__name__} "
            f"{data!r:.60}; e.g. {what}=['first text', 'second text']"
        ) from None


def cut_blocks(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Return the token stream ``ids`` cut into full ``[n, seq_len]`` blocks (the tail that does not fill one is
    dropped)."""
    n = ids.numel() // seq_len
    return ids[: n * seq_len].view(n, seq_len)
