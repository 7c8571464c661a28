"""Calibration batches and the losses read from them, shared by every importance and by :func:`~.compress.compress`.

A batch is a dict with ``input_ids`` and optionally ``attention_mask`` (padding excluded everywhere): checked
before any model sees it (:func:`check_batch`, :func:`check_batches`), moved to the model's device
(:func:`batch_inputs`), scored by next-token loss over real tokens (:func:`token_losses`, :func:`mean_loss`).
Passes run in eval mode (:class:`eval_mode`) behind an optional progress bar (:func:`progress_bar`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..evaluation.perplexity import check_token_ids, model_vocab_size
from ..runtime.modules import model_device

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


def check_batch(
    batch: Any, *, vocab_size: int | None, name: str = "each batch"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return one batch's ``(input_ids, attention_mask)`` as 2-D tensors, checked before any model sees them.

    Refused with a ValueError saying the fix: not a dict with ``input_ids``; ids that are not integers, empty
    (zero-length sequences), negative or ``>= vocab_size`` (:func:`~colab_helpers.evaluation.check_token_ids`: on a
    GPU an id past the embedding is a device-side assert that poisons the CUDA context); a mask of another shape.
    """
    import torch

    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise ValueError(
            f"{name} must be a dict with input_ids (and optionally attention_mask), got {type(batch).__name__}"
        )
    raw = batch["input_ids"]
    try:
        input_ids = torch.as_tensor(raw)
    except (TypeError, ValueError, RuntimeError) as exc:  # text, ragged lists
        raise ValueError(
            f"{name}['input_ids'] must be token ids (a tensor, or equal-length lists of ints), got {raw!r:.60}; "
            "e.g. lm_batches(tokenize_texts(tokenizer, texts), seq_len=128, batch_size=8)"
        ) from exc
    input_ids = check_token_ids(input_ids, vocab_size=vocab_size, name=f"{name}['input_ids']").view(input_ids.shape)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    attention_mask = batch.get("attention_mask")
    if attention_mask is not None:
        attention_mask = torch.as_tensor(attention_mask)
        if attention_mask.dim() == 1:
            attention_mask = attention_mask[None]
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids {tuple(input_ids.shape)}"
            )
    return input_ids, attention_mask


def check_batches(
    batches: Iterable[Any], model: nn.Module, *, max_batches: int | None = None, name: str = "batches"
) -> None:
    """Check every batch of a list or tuple (up to ``max_batches``) with :func:`check_batch` before any work starts,
    naming the first bad one (``batches[2]['input_ids'] ...``). Other iterables are read once, so their batches are
    checked one by one as they are read, still before the model sees each."""
    if not isinstance(batches, list | tuple):
        return
    vocab_size = model_vocab_size(model)
    for index, batch in enumerate(itertools.islice(batches, max_batches)):
        check_batch(batch, vocab_size=vocab_size, name=f"{name}[{index}]")


def batch_inputs(batch: Any, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return one batch's ``(input_ids, attention_mask)`` checked (:func:`check_batch`) and on ``model``'s device."""
    input_ids, attention_mask = check_batch(batch, vocab_size=model_vocab_size(model))
    device = model_device(model)
    return input_ids.to(device), (attention_mask.to(device) if attention_mask is not None else None)


def token_losses(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return each position's next-token loss (float32, zero where not scored) and which positions are scored: both
    the token and the one it predicts are real (not padding)."""
    import torch

    targets = input_ids[:, 1:]
    scores = logits[:, :-1].float()
    # cross-entropy as log-sum-exp minus the target's logit: the same numbers as F.cross_entropy, without its
    # log-softmax of the whole vocabulary (on a 49k vocabulary, half the time of a loss on the CPU)
    token_loss = torch.logsumexp(scores, dim=-1) - scores.gather(-1, targets[..., None]).squeeze(-1)
    if attention_mask is None:
        valid = torch.ones_like(targets, dtype=torch.bool)
    else:
        valid = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    token_loss = torch.where(valid, token_loss, torch.zeros((), dtype=token_loss.dtype, device=token_loss.device))
    return token_loss, valid


def per_example_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return each example's mean next-token loss over real tokens, and which examples had any."""
    token_loss, valid = token_losses(logits, input_ids, attention_mask)
    n = valid.sum(dim=1)
    return token_loss.sum(dim=1) / n.clamp_min(1), n > 0


def mean_loss(model: nn.Module, batches: Sequence[Any]) -> float:
    """Mean next-token loss over the real tokens of ``batches`` (no grad, the model as it is now)."""
    total, count = loss_sum(model, batches)
    if not count:
        raise ValueError("batches held no pair of real tokens; a loss needs text")
    return total / count


def loss_sum(model: nn.Module, batches: Sequence[Any]) -> tuple[float, int]:
    """``(summed next-token loss, scored tokens)`` over ``batches``: means over several sets of batches combine."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            input_ids, attention_mask = batch_inputs(batch, model)
            logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            loss, valid = token_losses(logits, input_ids, attention_mask)
            total += float(loss.sum())
            count += int(valid.sum())
    return total, count


def progress_bar(batches: Iterable[Any], desc: str, max_batches: int | None, progress: bool) -> Iterator[Any]:
    """Return an iterator over ``batches`` (the first ``max_batches`` when given) behind a tqdm bar if ``progress``."""
    from tqdm.auto import tqdm

    total = None
    try:
        total = len(batches)  # type: ignore[arg-type]
    except TypeError:
        pass
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
        batches = itertools.islice(batches, max_batches)
    return iter(tqdm(batches, total=total, desc=desc, disable=not progress, leave=False))


class eval_mode:  # noqa: N801 - used as a context manager like torch.no_grad
    """Put the model in eval mode for a block, then restore every submodule's own training flag."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.flags: list[tuple[Any, bool]] = []

    def __enter__(self) -> None:
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for module, flag in self.flags:
            module.training = flag
