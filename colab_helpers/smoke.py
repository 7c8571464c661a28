"""Smoke mode, defined once: what ``SMOKE = True`` shrinks a notebook or a config to (an embedded toy, seconds).

Every notebook builds a config object from its parameters cell and says ``if SMOKE: config = config.smoke()``;
every config's ``smoke()`` (:class:`~colab_helpers.experiments.config.ExperimentConfig`,
:class:`~colab_helpers.pruning.study.PruningStudyConfig`, ...) takes its model, data and budget from here, so
smoke means the same thing everywhere. Imports nothing: any stage may use it.
"""

from __future__ import annotations

SMOKE_MODEL = "embedded-gpt2"  # the 1M-parameter GPT-2 shipped in the package: runs anywhere, shows mechanics only
SMOKE_DATASET = "embedded"  # the corpus shipped in the package
SMOKE_SEQ_LEN = 64  # tokens per sequence
SMOKE_EVAL_TOKENS = 1500  # validation tokens per perplexity
SMOKE_STEPS = 6  # LoRA steps
SMOKE_TASK_ITEMS = 4  # items per zero-shot task of the ability evaluation at every stage of a run (mechanics only)
SMOKE_TEACHER_SAMPLES = 4  # texts sampled from a teacher for recovery (recovery_text 'generated' / 'mix')


def smoke_model(name: str) -> str:
    """Return ``name`` when it is already an embedded toy model (``embedded-llama``), else :data:`SMOKE_MODEL`."""
    return name if name.startswith("embedded-") else SMOKE_MODEL
