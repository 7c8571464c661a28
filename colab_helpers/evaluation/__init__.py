"""The measuring instruments every stage uses: text data, perplexity, generations, latency.

- :mod:`.data` -- text datasets: the embedded offline corpus, or WikiText from the hub; shipped texts of another
  domain (``other_domain_text``);
- :mod:`.perplexity` -- perplexity on held-out text, token batches, side-by-side generations;
- :mod:`.latency` -- per-token generation latency and forward latency, measured so models compare.
"""

from __future__ import annotations

from .data import TextDataset, available_datasets, load_text_dataset, other_domain_text
from .latency import forward_latency, generation_latency
from .perplexity import (
    PerplexityResult,
    check_token_ids,
    compare_generations,
    lm_batches,
    model_vocab_size,
    perplexity,
    tokenize_texts,
)

__all__ = [
    "TextDataset",
    "available_datasets",
    "forward_latency",
    "generation_latency",
    "load_text_dataset",
    "PerplexityResult",
    "check_token_ids",
    "compare_generations",
    "lm_batches",
    "model_vocab_size",
    "other_domain_text",
    "perplexity",
    "tokenize_texts",
]
