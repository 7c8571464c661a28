"""The measuring instruments every stage uses: text data, perplexity, generations, latency, general ability.

- :mod:`.data` -- text datasets: the embedded offline corpus, or WikiText from the hub; texts of another domain
  (``other_domain_text``: legal prose, Python's reference documentation); the shipped word list;
- :mod:`.perplexity` -- perplexity on held-out text, token batches, side-by-side generations;
- :mod:`.latency` -- per-token generation latency and forward latency, measured so models compare;
- :mod:`.tasks` -- the zero-shot task catalogue and presets, and the local tasks built for lm-evaluation-harness;
- :mod:`.harness` -- task accuracy of the model in memory through lm-evaluation-harness, with 95% intervals;
- :mod:`.ability` -- what a smaller model still knows: in-domain and other-domain perplexity and task accuracy in
  one call, and the table that tells domain adaptation from a better model.
"""

from __future__ import annotations

from .ability import AbilityConfig, AbilityResult, ability_reading, ability_retention, ability_table, evaluate_ability
from .data import TextDataset, available_datasets, load_text_dataset, other_domain_text
from .harness import TaskScore, is_lm_eval_available, task_accuracy
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
from .tasks import PRESETS, TASKS, TaskSpec

__all__ = [
    "AbilityConfig",
    "AbilityResult",
    "PRESETS",
    "TASKS",
    "TaskScore",
    "TaskSpec",
    "ability_reading",
    "ability_retention",
    "ability_table",
    "evaluate_ability",
    "is_lm_eval_available",
    "task_accuracy",
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
