"""Prompt -> completion training data: one example per sequence, the loss on the completion only.

    fine_tune(model, tokenizer, [("Q: Spell 'cat'.\nA:", " c a t"), ...], config=FineTuneConfig(seq_len=64))

Each example is prompt ids + completion ids + EOS (tokenized separately, as at inference), cut to ``seq_len`` and
right-padded into micro-batches with labels -100 on the prompt and padding; a step's loss is the mean over its
completion tokens, whatever the micro-batch size.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ColabHelpersWarning

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label transformers' causal-LM loss skips
# what fine_tune trains on: a text, texts, or (prompt, completion) pairs as tuples or as dicts
TrainingData = str | Sequence[str] | Sequence[tuple[str, str]] | Sequence[Mapping[str, str]]


@dataclass
class CompletionBatch:
    """Right-padded examples as three ``[n, length]`` tensors; ``labels`` is -100 on prompt and padding.

    Behaves like the ``[n, seq_len]`` tensor of plain blocks where the training loop needs it: ``shape``,
    indexing by rows (``batch[rank::world_size]``, ``batch[index_tensor]``) and :meth:`split` into micro-batches.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        """Return ``(examples, length)``."""
        return self.input_ids.shape

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def __getitem__(self, rows: Any) -> CompletionBatch:
        """Return the examples ``rows`` (a slice, or a tensor of indices) as a batch of the same width."""
        return CompletionBatch(self.input_ids[rows], self.attention_mask[rows], self.labels[rows])

    @property
    def targets(self) -> int:
        """Return how many tokens the loss covers: labels other than -100, the first position excepted (a causal
        LM predicts each token from the ones before it, so position 0 is never a target)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    def trimmed(self) -> CompletionBatch:
        """Return the batch without the padding columns that no example in it needs."""
        if len(self) == 0:
            return self
        width = int(self.attention_mask.sum(dim=1).max())
        return CompletionBatch(self.input_ids[:, :width], self.attention_mask[:, :width], self.labels[:, :width])

    def split(self, size: int) -> list[CompletionBatch]:
        """Return micro-batches of ``size`` examples (the last may be smaller), each trimmed to its longest."""
        return [self[start : start + size].trimmed() for start in range(0, len(self), size)]

    def to(self, device: Any, non_blocking: bool = False) -> CompletionBatch:
        """Return the batch on ``device``."""
        return CompletionBatch(
            self.input_ids.to(device, non_blocking=non_blocking),
            self.attention_mask.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
        )


def as_pairs(data: Any, what: str) -> list[tuple[str, str]] | None:
    """Return ``data`` as ``(prompt, completion)`` pairs, or None when it is plain text (a string or strings).

    Pairs are 2-tuples or 2-lists of strings, or mappings with string ``"prompt"`` and ``"completion"`` keys (the
    rows of a ``datasets.Dataset`` with those columns). Raises ValueError, naming the item and the fix, for a
    malformed pair or for texts and pairs mixed in one sequence.
    """
    if data is None or isinstance(data, str):
        return None
    items = list(data)
    if not any(_is_pair(item) for item in items):
        return None
    pairs = []
    for index, item in enumerate(items):
        if not _is_pair(item):
            raise ValueError(
                f"{what}[{index}] is {type(item).__name__} {_short(item)} among (prompt, completion) pairs: pass only "
                "pairs (tuples or {'prompt': ..., 'completion': ...} dicts), or only texts"
            )
        if isinstance(item, Mapping):
            if "prompt" not in item or "completion" not in item:
                raise ValueError(
                    f"{what}[{index}] has keys {sorted(map(str, item))}; a pair as a dict needs 'prompt' and "
                    "'completion', e.g. {'prompt': 'Q: Spell cat.\\nA:', 'completion': ' c a t'}"
                )
            prompt, completion = item["prompt"], item["completion"]
        else:
            if len(item) != 2:
                raise ValueError(
                    f"{what}[{index}] has {len(item)} items; a pair is (prompt, completion), e.g. ('Q: 2+2?\\nA:', ' 4')"
                )
            prompt, completion = item
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise ValueError(
                f"{what}[{index}] is ({type(prompt).__name__}, {type(completion).__name__}); prompt and completion "
                "must both be strings (an empty prompt is allowed)"
            )
        pairs.append((prompt, completion))
    return pairs


def tokenize_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]], seq_len: int, what: str) -> CompletionBatch:
    """Return the examples of ``pairs`` as one right-padded :class:`CompletionBatch` (width: the longest example).

    Each example is prompt ids + completion ids + EOS (when the tokenizer has one), without added special tokens,
    cut to ``seq_len``; labels are -100 on the prompt and the padding. Examples left without a completion token
    are dropped with one warning; raises ValueError when none is left.
    """
    import torch

    if not pairs:
        raise ValueError(f"{what} is empty: pass at least one (prompt, completion) pair")
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=False, verbose=False)["input_ids"]
    completions = tokenizer([c for _, c in pairs], add_special_tokens=False, verbose=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    examples: list[tuple[list[int], list[int]]] = []
    cut = 0
    for prompt, completion in zip(prompts, completions, strict=True):
        ids = (list(prompt) + list(completion) + eos)[:seq_len]
        labels = ([IGNORE_INDEX] * len(prompt) + list(completion) + eos)[:seq_len]
        if any(label != IGNORE_INDEX for label in labels[1:]):
            examples.append((ids, labels))
            cut += len(prompt) + len(completion) + len(eos) > seq_len
    dropped = len(pairs) - len(examples)
    if not examples:
        raise ValueError(
            f"no example of {what} has a completion token within seq_len={seq_len} (prompts too long, or empty "
            "completions with a tokenizer without EOS): raise seq_len or shorten the prompts"
        )
    if dropped:
        warnings.warn(
            f"{dropped} of {len(pairs)} examples of {what} have no completion token within seq_len={seq_len} "
            "(the prompt fills it): left out. Raise seq_len to train on them",
            ColabHelpersWarning,
            stacklevel=4,  # tokenize_pairs <- FineTuner <- fine_tune <- the caller
        )
    if cut:
        logger.info("%d examples of %s were cut to seq_len=%d tokens", cut, what, seq_len)
    width = max(len(ids) for ids, _ in examples)
    pad = _pad_id(tokenizer)
    input_ids = torch.full((len(examples), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, targets) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(targets)] = torch.tensor(targets, dtype=torch.long)
    return CompletionBatch(input_ids, attention_mask, labels)


def weight(batch: Any) -> int:
    """Return what a batch counts for in a mean loss: its rows for plain blocks, its completion tokens for pairs."""
    return batch.targets if isinstance(batch, CompletionBatch) else batch.shape[0]


def _pad_id(tokenizer: Any) -> int:
    """Return the id written in padding positions (masked and ignored: any valid id does)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _is_pair(item: Any) -> bool:
    return isinstance(item, tuple | list | Mapping)


def _short(item: Any) -> str:
    text = repr(item)
    return text if len(text) <= 40 else text[:37] + "..."
