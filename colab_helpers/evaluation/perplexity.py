"""Perplexity on held-out text: batched, sliding window over long text, padding-aware, with a progress bar."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..checks import check_integer, check_positive_integer
from ..runtime.modules import model_device

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity over ``tokens`` scored tokens, with the mean negative log-likelihood and the time taken."""

    perplexity: float
    nll: float
    tokens: int
    seconds: float

    def __str__(self) -> str:
        return f"perplexity {self.perplexity:.2f} over {self.tokens:,} tokens ({self.seconds:.1f} s)"

    def to_dict(self) -> dict[str, float | int]:
        return {"perplexity": self.perplexity, "nll": self.nll, "tokens": self.tokens, "seconds": self.seconds}


def tokenize_texts(tokenizer: Any, texts: str | Sequence[str], *, max_tokens: int | None = None) -> "torch.Tensor":
    """Return one 1-D LongTensor of token ids: the texts joined by the tokenizer's EOS token (if it has one)."""
    import torch

    if isinstance(texts, str):
        texts = [texts]
    items = list(texts) if isinstance(texts, Iterable) and not isinstance(texts, bytes | Mapping) else [texts]
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"texts must be a string or a list of strings, got {item!r:.60} ({type(item).__name__}) "
                             "in them; token ids go to perplexity() as one tensor, or to lm_batches()")  # fmt: skip
    texts = [text for text in items if text.strip()]
    if not texts:
        raise ValueError("no text to tokenize: pass non-empty strings, e.g. load_text_dataset('embedded').validation")
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for text in texts:
        ids += _leading_ids(tokenizer, text, None if max_tokens is None else max_tokens - len(ids)) + separator
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    return torch.tensor(ids[:max_tokens] if max_tokens else ids, dtype=torch.long)


def _leading_ids(tokenizer: Any, text: str, wanted: int | None) -> list[int]:
    """The ids of ``text``, or at least its first ``wanted`` ones: a long text's prefix is tokenized first, since
    tokenizing a whole book to keep its first tokens costs seconds. Tokens well before the cut do not depend on it."""
    if wanted is not None and len(text) > 16 * (wanted + 64):
        ids = tokenizer(text[: 16 * (wanted + 64)], add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) >= wanted + 64:
            return ids[:wanted]
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def model_vocab_size(model: Any) -> int | None:
    """Return how many token ids ``model`` embeds (its input embedding rows, else ``config.vocab_size``), or None."""
    get = getattr(model, "get_input_embeddings", None)
    try:
        embeddings = get() if callable(get) else None
    except (NotImplementedError, AttributeError):
        embeddings = None
    rows = getattr(embeddings, "num_embeddings", None)
    if isinstance(rows, int):
        return rows
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return size if isinstance(size, int) and size > 0 else None


def check_token_ids(token_ids: Any, *, vocab_size: int | None = None, name: str = "token_ids") -> "torch.Tensor":
    """Return ``token_ids`` as a 1-D LongTensor after checking it before any model sees it; else ValueError.

    Refused, with the fix in the message: something that is not a tensor of integers (floats, text), an empty
    tensor, negative ids, and ids >= ``vocab_size`` (the model's embedding rows: an id past them is an index error
    on the CPU and a device-side assert that poisons the CUDA context on a GPU; it means the tokenizer is not the
    model's own).
    """
    import torch

    if not isinstance(token_ids, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor of token ids, got {type(token_ids).__name__}; "
                         "e.g. tokenize_texts(tokenizer, texts)")  # fmt: skip
    if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids, got dtype {token_ids.dtype}; "
                         f"convert with {name}.long() if the values are whole ids, or tokenize the text again")  # fmt: skip
    if token_ids.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(token_ids.shape)}); pass the ids of some text, "
                         "e.g. tokenize_texts(tokenizer, load_text_dataset('embedded').validation)")  # fmt: skip
    token_ids = token_ids.reshape(-1).long()
    low, high = int(token_ids.min()), int(token_ids.max())
    if low < 0:
        raise ValueError(f"{name} holds a negative id ({low}); token ids are >= 0 (padding labels such as -100 "
                         "belong in labels, not in input ids)")  # fmt: skip
    if vocab_size is not None and high >= vocab_size:
        raise ValueError(
            f"{name} holds id {high}, outside the model's vocabulary of {vocab_size} ids (0..{vocab_size - 1}); "
            "the tokenizer is not the model's own: load both with load_model(name), or resize the embeddings "
            "with model.resize_token_embeddings(len(tokenizer))"
        )
    return token_ids


def lm_batches(token_ids: "torch.Tensor", *, seq_len: int, batch_size: int, max_batches: int | None = None,
               vocab_size: int | None = None) -> list[dict]:  # fmt: skip
    """Cut a token stream into full blocks of ``seq_len`` and group them into batches of ``input_ids``.

    The result is what ``head_importance`` and training take: a list of ``{"input_ids", "attention_mask"}``.
    ``token_ids`` is checked first (:func:`check_token_ids`: integers, not empty, ids below ``vocab_size`` when
    given, e.g. ``model_vocab_size(model)``).
    """
    check_integer(seq_len, "seq_len", least=2)
    check_integer(batch_size, "batch_size", least=1)
    check_positive_integer(max_batches, "max_batches", optional=True)
    token_ids = check_token_ids(token_ids, vocab_size=vocab_size)
    blocks = token_ids.numel() // seq_len
    if blocks == 0:
        raise ValueError(f"only {token_ids.numel()} tokens, fewer than one block of seq_len={seq_len}; pass more text")
    stacked = token_ids[: blocks * seq_len].view(blocks, seq_len)
    batches = [
        {"input_ids": chunk, "attention_mask": chunk.new_ones(chunk.shape)}
        for chunk in stacked.split(batch_size)
    ]
    return batches[:max_batches] if max_batches else batches


def _windows(n_tokens: int, seq_len: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """Yield (start, end, scored) for the sliding windows: each token is scored exactly once."""
    previous_end = 0
    for start in range(0, n_tokens, stride):
        end = min(start + seq_len, n_tokens)
        yield start, end, end - previous_end
        previous_end = end
        if end == n_tokens:
            break


def _model_context(model: Any) -> int:
    config = getattr(model, "config", None)
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1024


def perplexity(
    model: Any,
    tokenizer: Any,
    texts: "str | Sequence[str] | torch.Tensor",
    *,
    seq_len: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """Return the perplexity of ``model`` on ``texts`` (joined by EOS), scored with a sliding window.

    ``texts`` may also be a 1-D tensor of token ids. Either way the ids are checked before the model runs
    (:func:`check_token_ids`): empty, non-integer or out-of-vocabulary ids are a ValueError saying the fix.

    Windows are ``seq_len`` tokens (default: the model's context, at most 1024) moved by ``stride`` (default:
    half a window); each token is scored once, with up to ``seq_len - stride`` tokens of context. Windows are
    right-padded into batches; padded positions are masked out of attention and loss.
    """
    from tqdm.auto import tqdm

    if seq_len is not None:  # checked before the default: 0 or 1 is a mistake, not a request for the default
        check_integer(seq_len, "seq_len", least=2, fix="a perplexity window needs at least 2 tokens (one to "
                      "predict the next from); pass e.g. seq_len=128, or None for the model's context (at most 1024)")
    seq_len = seq_len or min(_model_context(model), 1024)
    stride = stride or max(1, seq_len // 2)
    if not 0 < stride <= seq_len:
        raise ValueError(f"stride must be in (0, seq_len={seq_len}], got {stride}")
    ids = _scored_ids(model, tokenizer, texts, max_tokens)
    windows = list(_windows(ids.numel(), seq_len, stride))
    device = model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total_nll, total_tokens, started = 0.0, 0, time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        bar = tqdm(range(0, len(windows), batch_size), desc="perplexity", disable=not progress, leave=False)
        for first in bar:
            nll, scored = _window_batch_nll(model, ids, windows[first : first + batch_size], pad_id, device)
            total_nll += nll
            total_tokens += scored
            bar.set_postfix(ppl=f"{math.exp(total_nll / max(total_tokens, 1)):.2f}")
    finally:
        model.train(was_training)
    mean_nll = total_nll / total_tokens
    return PerplexityResult(math.exp(mean_nll), mean_nll, total_tokens, time.perf_counter() - started)


def _scored_ids(model: Any, tokenizer: Any, texts: Any, max_tokens: int | None) -> "torch.Tensor":
    """Return the checked token ids ``perplexity`` scores: ``texts`` tokenized, or the ids it already is."""
    import torch

    if isinstance(texts, torch.Tensor):  # already token ids
        ids = check_token_ids(texts, vocab_size=model_vocab_size(model), name="texts (token ids)")
        ids = ids[:max_tokens] if max_tokens else ids
    else:
        ids = check_token_ids(tokenize_texts(tokenizer, texts, max_tokens=max_tokens), vocab_size=model_vocab_size(model),
                              name="the tokenized texts")  # fmt: skip
    if ids.numel() < 2:
        raise ValueError("need at least 2 tokens of text to measure perplexity; pass longer text")
    return ids


def _window_batch_nll(
    model: Any, ids: "torch.Tensor", batch: list[tuple[int, int, int]], pad_id: int, device: Any
) -> tuple[float, int]:
    """Return ``(summed negative log-likelihood, scored tokens)`` of one batch of windows, right-padded.

    Each window's first ``end - start - scored`` tokens are context only; padding is masked out of attention and loss.
    """
    import torch

    width = max(end - start for start, end, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for row, (start, end, scored) in enumerate(batch):
        input_ids[row, : end - start] = ids[start:end]
        attention[row, : end - start] = 1
        labels[row, end - start - scored : end - start] = ids[end - scored : end]
    with torch.no_grad():
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:].to(device)
    nll = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return nll.item(), int((shift_labels != -100).sum())


def compare_generations(prompt: str, *, perplexity: dict[str, float] | None = None, **generations: Any) -> Any:
    """Return a table with one row per named generation (``before=..., after=...``): text and perplexity.

    Each generation is a ``GenerationResult`` (or plain text); the prompt is shown in front of the text.
    """
    import pandas as pd

    rows = {
        name: {
            "text": prompt + getattr(generation, "text", str(generation)),
            **({"perplexity": round(perplexity[name], 2)} if perplexity and name in perplexity else {}),
        }
        for name, generation in generations.items()
    }
    return pd.DataFrame(rows).T
