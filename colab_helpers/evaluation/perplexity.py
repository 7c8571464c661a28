"""Perplexity on held-out text: batched, sliding window over long text, padding-aware, with a progress bar."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise ValueError("no text to tokenize: pass non-empty strings, e.g. load_text_dataset('embedded').validation")
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] + separator
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    return torch.tensor(ids[:max_tokens] if max_tokens else ids, dtype=torch.long)


def lm_batches(token_ids: "torch.Tensor", *, seq_len: int, batch_size: int, max_batches: int | None = None) -> list[dict]:
    """Cut a token stream into full blocks of ``seq_len`` and group them into batches of ``input_ids``.

    The result is what ``head_importance`` and training take: a list of ``{"input_ids", "attention_mask"}``.
    """
    if seq_len < 2 or batch_size < 1:
        raise ValueError(f"seq_len must be >= 2 and batch_size >= 1, got seq_len={seq_len}, batch_size={batch_size}")
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
    texts: str | Sequence[str],
    *,
    seq_len: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """Return the perplexity of ``model`` on ``texts`` (joined by EOS), scored with a sliding window.

    Windows are ``seq_len`` tokens (default: the model's context, at most 1024) moved by ``stride`` (default:
    half a window); each token is scored once, with up to ``seq_len - stride`` tokens of context. Windows are
    right-padded into batches; padded positions are masked out of attention and loss.
    """
    import torch
    from tqdm.auto import tqdm

    seq_len = seq_len or min(_model_context(model), 1024)
    stride = stride or max(1, seq_len // 2)
    if not 0 < stride <= seq_len:
        raise ValueError(f"stride must be in (0, seq_len={seq_len}], got {stride}")
    ids = tokenize_texts(tokenizer, texts, max_tokens=max_tokens)
    if ids.numel() < 2:
        raise ValueError("need at least 2 tokens of text to measure perplexity; pass longer text")
    windows = list(_windows(ids.numel(), seq_len, stride))
    device = model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total_nll, total_tokens, started = 0.0, 0, time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        bar = tqdm(range(0, len(windows), batch_size), desc="perplexity", disable=not progress, leave=False)
        for first in bar:
            batch = windows[first : first + batch_size]
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
            total_nll += nll.item()
            total_tokens += int((shift_labels != -100).sum())
            bar.set_postfix(ppl=f"{math.exp(total_nll / max(total_tokens, 1)):.2f}")
    finally:
        model.train(was_training)
    mean_nll = total_nll / total_tokens
    return PerplexityResult(math.exp(mean_nll), mean_nll, total_tokens, time.perf_counter() - started)


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
