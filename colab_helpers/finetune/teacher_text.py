"""Recovery text: :func:`teacher_texts` samples it from the teacher itself; :func:`recovery_texts` picks a kind.

Distilling a pruned student on one corpus pulls it towards that corpus' domain; text the unpruned model writes
on its own follows the model's *general* distribution, so distillation on it restores what the model knew rather
than adapting it to a domain (self-data distillation). It needs no data set, which matters offline.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Sequence
from importlib import resources
from typing import Any

from ..checks import check_number, is_integer

logger = logging.getLogger(__name__)

# Short openers that steer sampling to varied registers; "" starts from the model's own first token.
DEFAULT_OPENERS: tuple[str, ...] = ("", "", "", "", "The", "In", "A", "How", "Once", "Here is", "Why", "When")
# what recovery trains on: the dataset's training split, text the teacher wrote, or both interleaved
RECOVERY_TEXTS: tuple[str, ...] = ("dataset", "generated", "mix")
# teacher texts sampled once and shipped (colab_helpers/embedded/generated/SOURCE.md): model name -> file
SHIPPED_GENERATED: dict[str, str] = {"smollm2-135m-instruct": "smollm2-135m-instruct.jsonl.gz"}
# teacher texts sampled when none are shipped and no count is asked (sampling costs minutes per hundred on a CPU)
SAMPLED_BY_DEFAULT = 96


def check_recovery_text(kind: Any, *, name: str = "recovery text", fix: str = "e.g. 'mix'") -> str:
    """``kind`` when it is one of :data:`RECOVERY_TEXTS`, else a ValueError naming ``name``, the value and ``fix``."""
    if kind not in RECOVERY_TEXTS:
        raise ValueError(f"{name} must be one of {RECOVERY_TEXTS}, got {kind!r}; {fix}")
    return kind


def recovery_texts(kind: str, dataset_train: Sequence[str], model_name: str | None = None, *, teacher: Any = None,
                   tokenizer: Any = None, samples: int | None = None) -> list[str]:  # fmt: skip
    """Return the texts recovery trains on: ``"dataset"`` (``dataset_train``, e.g. a TextDataset's ``train``),
    ``"generated"`` (``samples`` texts the teacher wrote: the first ``samples`` of the shipped sample for
    ``model_name`` when it has that many, else ``samples`` texts from :func:`teacher_texts`, which needs ``teacher``
    and ``tokenizer``; ``None``: every shipped text, else ``SAMPLED_BY_DEFAULT`` sampled), or ``"mix"`` (the two
    interleaved, one dataset paragraph of at least 300 characters after each generated text, as many of each).
    """
    check_recovery_text(kind)
    if samples is not None and (not is_integer(samples) or samples < 1):
        raise ValueError(f"samples must be an integer >= 1 or None (every shipped text), got {samples!r}; e.g. "
                         "samples=96")  # fmt: skip
    train = list(dataset_train)
    if kind == "dataset":
        return train
    shipped = shipped_generated(model_name) or []
    if samples is None:  # more text the teacher wrote reads better on general text at the same steps (docs/)
        samples = len(shipped) or SAMPLED_BY_DEFAULT
    if len(shipped) >= samples:
        generated = shipped[:samples]
    else:
        if teacher is None or tokenizer is None:
            have = f"{len(shipped)} shipped texts for model {model_name!r}" if shipped else (
                f"no shipped teacher text for model {model_name!r} (shipped: {sorted(SHIPPED_GENERATED)})")
            raise ValueError(f"{have}, samples={samples} asked; pass teacher= and tokenizer= to sample them, ask for "
                             "fewer, or use recovery text 'dataset'")  # fmt: skip
        generated = teacher_texts(teacher, tokenizer, samples=samples)
    if kind == "generated":
        return generated
    long = [p for p in train if len(p) >= 300] or train
    return [text for pair in zip(generated, long) for text in pair]


def shipped_generated(model_name: str | None) -> list[str] | None:
    """The shipped teacher texts of ``model_name`` (a catalog name, e.g. ``"smollm2-135m-instruct"``), else None."""
    file = SHIPPED_GENERATED.get(str(model_name).lower()) if model_name else None
    if file is None:
        return None
    data = resources.files("colab_helpers").joinpath("embedded", "generated", file).read_bytes()
    return [json.loads(line)["text"] for line in gzip.decompress(data).decode("utf-8").splitlines() if line.strip()]


def teacher_texts(
    model: Any,
    tokenizer: Any,
    *,
    samples: int = 64,
    new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 0.95,
    batch_size: int = 16,
    openers: Sequence[str] = DEFAULT_OPENERS,
    seed: int = 0,
    progress: bool = True,
) -> list[str]:
    """Sample ``samples`` texts of up to ``new_tokens`` tokens from ``model``; return them as strings.

    Each text starts from the tokenizer's beginning-of-text token (when it has one) and an opener taken in turn
    from ``openers``; sampling is seeded (``seed``), at ``temperature`` with nucleus ``top_p``. Texts that come out
    empty are dropped, so fewer than ``samples`` may return (one warning).
    """
    import torch
    from tqdm.auto import tqdm

    _check(samples, new_tokens, temperature, top_p, batch_size, openers)
    prompts = [openers[i % len(openers)] for i in range(samples)]
    start = tokenizer.bos_token or ""
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # generation continues at the right end of every row
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    texts: list[str] = []
    try:
        for first in tqdm(range(0, samples, batch_size), desc="teacher text", unit="batch", disable=not progress):
            texts += _sample_batch(model, tokenizer, [start + p for p in prompts[first:first + batch_size]],
                                   new_tokens, temperature, top_p)  # fmt: skip
    finally:
        torch.random.set_rng_state(generator_state)
        tokenizer.padding_side = side
        model.train(was_training)
    kept = [t for t in texts if t.strip()]
    if len(kept) < samples:
        logger.warning("teacher_texts: %d of %d samples came out empty and were dropped", samples - len(kept), samples)
    return kept


def _sample_batch(model: Any, tokenizer: Any, prompts: list[str], new_tokens: int, temperature: float,
                  top_p: float) -> list[str]:  # fmt: skip
    import torch

    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(**encoded, do_sample=True, temperature=temperature, top_p=top_p,
                             max_new_tokens=new_tokens, pad_token_id=pad)  # fmt: skip
    prompt_len = encoded["input_ids"].shape[1]
    # the opener is part of the text; the beginning-of-text token is not
    return [p.removeprefix(tokenizer.bos_token or "") + tokenizer.decode(row[prompt_len:], skip_special_tokens=True)
            for p, row in zip(prompts, out)]  # fmt: skip


def _check(samples: Any, new_tokens: Any, temperature: Any, top_p: Any, batch_size: Any, openers: Any) -> None:
    for name, value in (("samples", samples), ("new_tokens", new_tokens), ("batch_size", batch_size)):
        if not is_integer(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    check_number(temperature, "temperature", fix="e.g. temperature=1.0")
    check_number(top_p, "top_p", high=1.0, high_inclusive=True, fix="e.g. top_p=0.95")
    if isinstance(openers, str) or not openers or not all(isinstance(o, str) for o in openers):
        raise ValueError(f"openers must be a non-empty list of strings (\"\" = no opener), got {openers!r}")
