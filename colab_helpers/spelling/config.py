"""Run configs of the spelling study: the constants, the search space, ``base_config``, checks, ``finetune_config``.

A run config is a nested mapping ``{"model", "lora": {...}, "training": {...}}`` (see :func:`base_config`); the
sweep varies its dotted keys (``"lora.r"``, ``"training.learning_rate"``) and :func:`check_run_config` rejects a
wrong key or type, naming the fix, before anything trains.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..experiments.sweep_config import SweepConfig
    from ..finetune import FineTuneConfig

DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"
OFFLINE_MODEL = "embedded-gpt2"
TRANSFER_TASKS: tuple[str, ...] = ("position", "count")
METRICS: tuple[str, ...] = ("spelling_accuracy", "position_accuracy", "count_accuracy", "transfer_accuracy")
REFERENCE_SWEEP = "reference"
CONTROL_MODES: tuple[str, ...] = ("per_steps", "per_run", "none")
MIN_SPELLING_GAIN = 0.02  # below this |spelling gain| the transfer ratio is None
SEARCH_SPACE: dict[str, list[Any]] = {
    "lora.r": [4, 8, 16, 32],
    "lora.alpha": [8, 16, 32, 64],
    "training.learning_rate": [1e-4, 2e-4, 5e-4, 1e-3],
    "training.batch_size": [4, 8, 16, 32],
    "training.gradient_accumulation_steps": [1, 2, 4, 8],
    "training.max_steps": [500, 1000, 2000, 5000],
}
SMOKE_SEARCH_SPACE: dict[str, list[Any]] = {"lora.r": [4, 8]}  # 2 runs of the smoke base (5 steps each)


_BACKENDS = ("auto", "peft", "unsloth")
_QUOTES_HINT = {"backend": "", "bool": " (write true or false without quotes)"}  # else: numbers without quotes
# dotted key -> (kind, example): what check_run_config accepts
_RUN_KEYS: dict[str, tuple[str, str]] = {
    "lora.r": ("int", "8"),
    "lora.alpha": ("number", "16"),
    "lora.dropout": ("fraction", "0.05"),
    "training.learning_rate": ("number", "2.0e-4"),
    "training.batch_size": ("int", "8"),
    "training.gradient_accumulation_steps": ("int", "1"),
    "training.max_steps": ("int", "1000"),
    "training.seq_len": ("int", "128"),
    "training.warmup_ratio": ("fraction", "0.05"),
    "training.evaluations": ("int", "20"),
    "training.early_stopping_patience": ("int_or_none", "4"),
    "training.checkpoints": ("int_or_zero", "4"),
    "training.seed": ("seed", "0"),
    "training.backend": ("backend", "auto"),
    "training.completion_only": ("bool", "true"),
}
EVAL_BATCHES = 4  # micro-batches of validation text per evaluation (plain blocks of seq_len tokens)
EVAL_BATCHES_PAIRS = 16  # the same for (prompt, answer) pairs: ~4x more, as one pair is a few tokens, not seq_len


def base_config(model_name: str = DEFAULT_MODEL, *, smoke: bool = False) -> dict[str, Any]:
    """Return the run config the sweep varies: ``model``, ``lora.*`` and ``training.*`` (see ``_RUN_KEYS``).

    ``training.batch_size`` is the micro-batch; ``evaluations`` is how many validation-loss evaluations a
    run makes (``eval_every = max_steps // evaluations``); ``checkpoints`` how many it writes (0 = only at the end).
    ``completion_only=True`` trains on (prompt, answer) pairs with the loss on the answer only, one example per
    sequence of at most ``seq_len`` tokens; ``False`` on the rows' texts (prompt + answer) packed into ``seq_len``
    blocks, the loss on every token.
    """
    config = {
        "model": model_name,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
        "training": {"learning_rate": 2e-4, "batch_size": 8, "gradient_accumulation_steps": 1, "max_steps": 1000,
                     "seq_len": 128, "warmup_ratio": 0.05, "evaluations": 20, "early_stopping_patience": 4,
                     "checkpoints": 4, "seed": 0, "backend": "auto", "completion_only": True},
    }  # fmt: skip
    if smoke:
        config["lora"].update(alpha=16)
        config["training"].update(learning_rate=1e-3, batch_size=4, max_steps=5, seq_len=64, evaluations=2,
                                  early_stopping_patience=2, checkpoints=1)  # fmt: skip
    return config


def default_sweep(*, smoke: bool = False, search: str = "random", num_runs: int = 8, seed: int = 0,
                  name: str = "spelling") -> SweepConfig:  # fmt: skip
    """Return the study's sweep over :data:`SEARCH_SPACE`: ``num_runs`` seeded random draws by default, every
    combination (4,096 runs) with ``search="grid"``; in smoke mode a 2-run grid over ``lora.r``.
    """
    from ..experiments.sweep_config import SweepConfig

    if smoke:
        return SweepConfig(parameters=copy.deepcopy(SMOKE_SEARCH_SPACE), search="grid", name=name)
    parameters = {key: {"values": list(values)} for key, values in SEARCH_SPACE.items()}
    return SweepConfig(parameters=parameters, search=search, num_runs=num_runs if search == "random" else None,
                       seed=seed, name=name)  # fmt: skip


def _type_problem(kind: str, value: Any) -> str | None:
    """Return what is wrong with ``value`` for ``kind``, or None when it is fine."""
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    integer = isinstance(value, int) and not isinstance(value, bool)
    problems = {
        "int": None if integer and value >= 1 else "an integer >= 1",
        "int_or_none": None if value is None or (integer and value >= 1) else "an integer >= 1 or null",
        "int_or_zero": None if integer and value >= 0 else "an integer >= 0",
        "seed": None if integer else "an integer",
        "number": None if number and value > 0 else "a number > 0",
        "fraction": None if number and 0 <= value < 1 else "a number in [0, 1)",
        "backend": None if value in _BACKENDS else f"one of {list(_BACKENDS)}",
        "bool": None if isinstance(value, bool) else "true or false",
    }
    return problems[kind]


def check_run_config(config: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the key, the value and the fix when ``config`` is not a valid run config.

    Checks every ``lora.*`` / ``training.*`` key is known and of the right type (``"2e-4"`` in quotes is a
    string, ``8.0`` is not an integer), and that ``model`` is a non-empty string.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"a run config must be a mapping, got {type(config).__name__}")
    model = config.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model must be a model name such as {DEFAULT_MODEL!r}, got {model!r}")
    for section in ("lora", "training"):
        values = config.get(section)
        if not isinstance(values, Mapping):
            raise ValueError(f"{section} must be a mapping of settings, got {values!r}; start from base_config()")
        for key in values:
            dotted = f"{section}.{key}"
            if dotted not in _RUN_KEYS:
                near = difflib.get_close_matches(dotted, list(_RUN_KEYS), n=1, cutoff=0.5)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise ValueError(f"unknown setting {dotted!r}{hint}; the settings are {sorted(_RUN_KEYS)}")
    for dotted, (kind, example) in _RUN_KEYS.items():
        section, key = dotted.split(".")
        if key not in config[section]:
            raise ValueError(f"{dotted} is missing; e.g. {dotted}: {example} (base_config() has every key)")
        value = config[section][key]
        problem = _type_problem(kind, value)
        if problem:
            raise ValueError(
                f"{dotted} must be {problem}, got {value!r} ({type(value).__name__}); e.g. {dotted}: {example}"
                + (_QUOTES_HINT.get(kind, " (write numbers without quotes)") if isinstance(value, str) else "")
            )


def check_sweep(base: Mapping[str, Any], sweep: Any) -> list[dict[str, Any]]:
    """Return the run configs of ``sweep`` over ``base``, every listed value and every config checked first.

    A bad value raises ``ValueError`` naming the parameter, even one a random draw would not have picked.
    """
    from ..experiments.sweep_config import expand, load_sweep, merge

    sweep_config = load_sweep(sweep)
    check_run_config(base)
    for key, spec in sweep_config.parameters.items():
        for value in spec.get("values", []):
            try:
                check_run_config(merge(base, {key: value}))
            except ValueError as exc:
                raise ValueError(f"sweep {sweep_config.name!r}, parameter {key!r}, value {value!r}: {exc}") from None
    return expand(base, sweep_config, validate=check_run_config)


def finetune_config(config: Mapping[str, Any], output_dir: str | Path, *,
                    early_stopping: bool = True) -> FineTuneConfig:  # fmt: skip
    """Return the :class:`~colab_helpers.finetune.FineTuneConfig` of run ``config``, writing to ``output_dir``.

    Checkpoints keep only the newest one and ``resume=True``: a run restarted after a disconnect continues.
    An evaluation scores :data:`EVAL_BATCHES` micro-batches of validation text, or :data:`EVAL_BATCHES_PAIRS`
    of (prompt, answer) pairs with ``training.completion_only``.
    """
    from ..finetune import FineTuneConfig

    check_run_config(config)
    lora, training = config["lora"], config["training"]
    return FineTuneConfig(
        r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"], learning_rate=training["learning_rate"],
        max_steps=training["max_steps"], micro_batch_size=training["batch_size"],
        gradient_accumulation_steps=training["gradient_accumulation_steps"], seq_len=training["seq_len"],
        eval_batches=EVAL_BATCHES_PAIRS if training["completion_only"] else EVAL_BATCHES,
        early_stopping_patience=training["early_stopping_patience"] if early_stopping else None,
        keep_checkpoints=1, output_dir=str(output_dir), resume=True, backend=training["backend"], seed=training["seed"],
    ).with_intervals(evaluations=training["evaluations"], checkpoints=training["checkpoints"],
                     warmup_ratio=training["warmup_ratio"])  # fmt: skip


def merge_steps(base: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with the ``training.max_steps`` of ``config`` (the settings of a per-steps control)."""
    merged = copy.deepcopy(dict(base))
    merged["training"] = {**merged["training"], "max_steps": config["training"]["max_steps"]}
    return merged
