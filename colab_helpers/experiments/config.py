"""``ExperimentConfig``: every setting of one prune-then-recover run, checked when it is built.

What is pruned is one spec, ``ExperimentConfig.pruning``: :class:`HeadPruning` (attention heads by importance, the
default) or :class:`Compression` (a share of the parameters across heads, MLP channels and layers,
:func:`colab_helpers.pruning.compress.compress`). How it recovers: ``recovery_method`` ``'lora'`` (LM loss) or
``'distill'`` (knowledge distillation from the unpruned model, :func:`colab_helpers.finetune.distill`), training a LoRA
adapter or every weight (``fine_tuning_method``) on ``recovery_text`` (the dataset, text the unpruned model writes,
or both). With ``ability`` (the default) every stage is also measured on general ability
(:func:`colab_helpers.evaluation.evaluate_ability`: text of other domains, zero-shot tasks).

Flat keys: YAML run configs, sweeps, the command line and :meth:`ExperimentConfig.from_dict` write the pruning as
flat keys, which build the spec: ``target_params`` (not None) and ``axes`` make a :class:`Compression`; otherwise
``strategy``, ``pruning_level``, ``scope`` and ``remove_heads`` make a :class:`HeadPruning` (the keys of the other
kind are then unused). :meth:`ExperimentConfig.to_dict` writes them back the same way (None for the unused kind),
which is what ``result.json`` and ``runs.csv`` hold. ``CONFIG_KEYS`` lists every key.

The fine-tuning settings are fields of this flat config and become a :class:`~colab_helpers.finetune.FineTuneConfig`
in one method, :meth:`ExperimentConfig.finetune_config`. Importance strategies and scopes are pruning's
(``check_strategy`` in :mod:`colab_helpers.pruning.importance`, ``SCOPES`` in :mod:`colab_helpers.pruning.selection`).
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checks import field_help, is_finite_number
from ..errors import ColabHelpersWarning
from ..evaluation.ability import AbilityConfig
from ..evaluation.tasks import PRESETS, resolve_tasks
from ..finetune.config import METHODS
from ..finetune.teacher_text import RECOVERY_TEXTS, check_recovery_text
from ..models.loading import check_model_name
from ..pruning.compress import AXES  # what compress may prune: heads, mlp, layers (in this order)
from ..pruning.importance import check_strategy
from ..pruning.selection import SCOPES
from ..smoke import (SMOKE_DATASET, SMOKE_EVAL_TOKENS, SMOKE_SEQ_LEN, SMOKE_STEPS, SMOKE_TASK_ITEMS,
                     SMOKE_TEACHER_SAMPLES, smoke_model)

if TYPE_CHECKING:  # pragma: no cover
    from ..finetune import DistillConfig, FineTuneConfig

ABILITY_TOKENS = AbilityConfig().tokens  # other-domain tokens scored per text at most (fewer when eval_tokens is)

STAGES = ("baseline", "pruned", "fine_tuned")
RECOVERY_METHODS = ("lora", "distill")  # how the pruned model recovers: LM-loss LoRA, or KD from the unpruned model
HEAD_KEYS = {"strategy": "strategy", "pruning_level": "level", "scope": "scope", "remove_heads": "remove"}  # flat -> field
COMPRESSION_KEYS = ("target_params", "axes")

# a field's annotation -> the kind _check_type checks ("?": None allowed too)
_KINDS = {"str": "str", "str | None": "str?", "bool": "bool", "int": "int", "float": "float", "int | None": "int?", "float | None": "float?",
          "tuple[str, ...]": "names", "HeadPruning | Compression": "pruning"}  # fmt: skip
# fields whose default is None
_EXAMPLE = {"fine_tuning_steps": 200, "fine_tuning_epochs": 1.0, "fine_tuning_minutes": 10.0, "eval_stride": 64,
            "target_params": 0.75, "axes": ["heads", "mlp"], "distill_top_k": 64,
            "ability_tasks": "offline"}  # fmt: skip
_WANTED = {"str": "a string", "bool": "True or False", "int": "an integer", "float": "a finite number",
           "names": "a list of names", "pruning": "HeadPruning(...) or Compression(...)"}  # fmt: skip


def _check_type(name: str, value: Any, kind: str, example: Any) -> None:
    """Raise ValueError when ``value`` of field ``name`` is not of ``kind`` (str, bool, int, float; '?' allows None).

    The message names the field, the value and its type, and a valid ``name=example``.
    """
    optional, kind = kind.endswith("?"), kind.rstrip("?")
    if optional and value is None:
        return
    checks = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "int": isinstance(value, numbers.Integral) and not isinstance(value, bool),
        "float": is_finite_number(value),
        "names": isinstance(value, list | tuple) and all(isinstance(item, str) for item in value),
        "pruning": isinstance(value, HeadPruning | Compression),
    }
    if checks[kind]:
        return
    hint = ""
    if isinstance(value, str) and kind in ("int", "float") and _looks_numeric(value):
        hint = " (a number in quotes is text: drop the quotes)"
    elif kind == "int" and isinstance(value, float) and value == int(value):
        hint = f" (write {int(value)} for a whole number)"
    elif kind == "names" and isinstance(value, str):
        hint = f" (one name is a list of one: [{value!r}]; a sweep lists lists: {{values: [[a, b], [a]]}})"
    wanted = _WANTED[kind] + (" or None" if optional else "")
    raise ValueError(f"{name} must be {wanted}, got {value!r} ({type(value).__name__}){hint}; e.g. {name}={example!r}")


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_fields(config: Any) -> None:
    """Check the type of every field of the dataclass ``config``; turn numpy scalars into Python numbers."""
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        kind = _KINDS[str(spec.type)]
        _check_type(spec.name, value, kind, _EXAMPLE.get(spec.name, spec.default))
        if isinstance(value, numbers.Number) and type(value) not in (int, float, bool):  # numpy scalars
            object.__setattr__(config, spec.name, int(value) if kind.startswith("int") else float(value))


# --- what is pruned ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeadPruning:
    """Prune attention heads: the ``level`` share with the lowest ``strategy`` importance, ranked ``scope``-wide,
    sliced out of the model (``remove``) or only gated."""

    strategy: str = field(default="gradient", metadata=field_help("head importance: random, magnitude, entropy or gradient."))
    level: float = field(default=0.3, metadata=field_help("fraction of attention heads to prune, in [0, 1)."))
    scope: str = field(default="global", metadata=field_help("'global' (lowest heads anywhere) or 'layer' (same share per layer)."))
    remove: bool = field(default=True, metadata=field_help("slice pruned heads out (smaller, faster) or only gate them."))

    def __post_init__(self) -> None:
        _check_fields(self)
        check_strategy(self.strategy)
        if not 0 <= self.level < 1:
            raise ValueError(f"level must be in [0, 1), got {self.level!r}; e.g. level=0.3 for 30% of heads")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")

    def flat(self) -> dict[str, Any]:
        """The flat keys of a config file: ``strategy``, ``pruning_level``, ``scope``, ``remove_heads``."""
        return {key: getattr(self, name) for key, name in HEAD_KEYS.items()}

    def label(self) -> str:
        """``gradient-30``: strategy and level in percent (run names)."""
        return f"{self.strategy}-{round(self.level * 100)}"


@dataclass(frozen=True)
class Compression:
    """Keep ``target_params`` of the parameters, pruning across ``axes`` (heads, MLP channels, whole layers) where the
    measured loss says it costs least (:func:`colab_helpers.pruning.compress.compress`); always removed physically."""

    target_params: float = field(metadata=field_help("share of the parameters to keep, in (0, 1]."))
    axes: tuple[str, ...] = field(default=AXES, metadata=field_help(
        "what may be pruned: a non-empty list of 'heads', 'mlp' (MLP channels), 'layers' (whole layers); order does "
        "not matter."))

    def __post_init__(self) -> None:
        """Check both fields; store ``axes`` as a tuple in the order heads, mlp, layers."""
        _check_fields(self)
        if not 0 < self.target_params <= 1:
            raise ValueError(f"target_params must be the share of parameters to keep, in (0, 1], got "
                             f"{self.target_params!r}; e.g. target_params=0.75 keeps 75%")  # fmt: skip
        unknown = [axis for axis in self.axes if axis not in AXES]
        repeated = sorted({axis for axis in self.axes if list(self.axes).count(axis) > 1})
        if not self.axes or unknown or repeated:
            why = ("it is empty" if not self.axes else f"{unknown[0]!r} is not an axis" if unknown
                   else f"{repeated[0]!r} appears twice")  # fmt: skip
            raise ValueError(f"axes must be a non-empty list of distinct names from {list(AXES)}, got "
                             f"{list(self.axes)!r} ({why}); e.g. axes=['heads', 'mlp']")  # fmt: skip
        object.__setattr__(self, "axes", tuple(axis for axis in AXES if axis in self.axes))

    def flat(self) -> dict[str, Any]:
        """The flat keys of a config file: ``target_params`` and ``axes`` (a list)."""
        return {"target_params": self.target_params, "axes": list(self.axes)}

    def label(self) -> str:
        """``keep70-heads+mlp+layers``: the share kept in percent and the axes (run names)."""
        return f"keep{round(self.target_params * 100, 2):g}-{'+'.join(self.axes)}"


def pruning_from_flat(values: Mapping[str, Any]) -> HeadPruning | Compression:
    """Return the pruning spec the flat keys of ``values`` describe (see the module docstring); errors name the keys.

    ``target_params`` not None: :class:`Compression` (``remove_heads=False`` is refused: compression always
    removes). Otherwise :class:`HeadPruning`, with its defaults for the keys not given (``axes`` is checked all the
    same).
    """
    target = values.get("target_params")
    _check_type("target_params", target, "float?", 0.75)
    if target is not None:
        if values.get("remove_heads") is False:
            raise ValueError("target_params always removes what it prunes (remove_heads=False only gates heads pruned "
                             "by pruning_level); set remove_heads=True, or target_params=None")  # fmt: skip
        return Compression(target, **({"axes": values["axes"]} if "axes" in values else {}))
    if values.get("axes") is not None:  # unused without a target, but a typo in it fails here all the same
        Compression(1.0, values["axes"])
    try:
        return HeadPruning(**{name: values[key] for key, name in HEAD_KEYS.items() if key in values})
    except ValueError as error:  # say pruning_level / remove_heads, as the input wrote them
        flat = {"level": "pruning_level", "remove": "remove_heads"}
        raise ValueError(re.sub(r"\b(level|remove)\b(?=[ =])", lambda m: flat[m[1]], str(error))) from None


# --- one run -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExperimentConfig:
    """One prune-then-recover run. Every field has a default; ``smoke()`` gives a seconds-long copy."""

    model: str = field(default="auto", metadata=field_help("catalog name ('gpt2'), hub id 'owner/name', existing local path, 'embedded-gpt2', or 'auto'."))
    dataset: str = field(default="auto", metadata=field_help("'auto', 'embedded' or a hub dataset such as 'wikitext-2-raw-v1'."))
    pruning: HeadPruning | Compression = field(default=HeadPruning(), metadata=field_help(
        "what is pruned: HeadPruning(strategy, level, scope, remove) (attention heads) or "
        "Compression(target_params, axes) (a parameter share across heads, MLP channels and layers)."))
    prompt: str = field(default="A hacker is", metadata=field_help("prompt for the generation at each stage."))
    max_new_tokens: int = field(default=30, metadata=field_help("tokens generated at each stage."))
    fine_tuning_steps: int | None = field(default=None, metadata=field_help("recovery optimizer steps (default 200 when epochs is None)."))
    fine_tuning_epochs: float | None = field(default=None, metadata=field_help("passes over the training text; overrides steps."))
    fine_tuning_minutes: float | None = field(default=None, metadata=field_help(
        "a time budget for recovery (and the control), each: training ends after this many minutes, its learning-rate "
        "decay planned on the steps that fit (at most fine_tuning_steps); None = no budget."))
    learning_rate: float = field(default=1e-3, metadata=field_help(
        "peak learning rate of recovery and the control: 1e-3 suits LoRA; fine_tuning_method='full' wants ~1e-4."))
    lora_r: int = field(default=16, metadata=field_help("LoRA rank."))
    lora_alpha: float = field(default=32, metadata=field_help("LoRA alpha (scale alpha / r)."))
    micro_batch_size: int = field(default=8, metadata=field_help("sequences per forward pass (halved on out-of-memory)."))
    seq_len: int = field(default=128, metadata=field_help("tokens per sequence for scoring, training and perplexity."))
    eval_tokens: int = field(default=8192, metadata=field_help("validation tokens scored per perplexity measurement (its cost)."))
    eval_stride: int | None = field(default=None, metadata=field_help(
        "perplexity window step; None = seq_len (non-overlapping windows, each token scored once, cost = eval_tokens); "
        "a smaller stride gives every token more context at seq_len / stride times the cost."))
    importance_batches: int = field(default=8, metadata=field_help("batches of 8 training sequences read by entropy / gradient."))
    latency_rounds: int = field(default=5, metadata=field_help("interleaved timing rounds per model for latency per token (medians)."))
    seed: int = field(default=0, metadata=field_help("seed of random scores, data sampling and LoRA."))
    control: bool = field(default=False, metadata=field_help(
        "also fine-tune the unpruned model for the same steps, on the same text, the same way (LM loss)."))
    dtype: str = field(default="auto", metadata=field_help(
        "weights and training precision: 'auto' (fp32 on a CPU, bf16 on GPUs of capability >= 8, else fp16), 'bf16', 'fp16', 'fp32'."))
    load_in_4bit: bool = field(default=False, metadata=field_help(
        "QLoRA: load the model in 4 bits (CUDA + bitsandbytes); heads are then gated, not removed (HeadPruning(remove=False))."))
    save_model: bool = field(default=False, metadata=field_help("save the pruned, fine-tuned model (safetensors) as <run>/model."))
    recovery_method: str = field(default="lora", metadata=field_help(
        "the pruned model's training objective: 'lora' (the LM loss) or 'distill' (knowledge distillation from the "
        "unpruned model, colab_helpers.finetune.distill); the control always trains on the LM loss. What is trained "
        "is fine_tuning_method's."))
    distill_temperature: float = field(default=2.0, metadata=field_help(
        "recovery_method='distill': softmax temperature T of teacher and student, > 0."))
    distill_alpha: float = field(default=0.5, metadata=field_help(
        "recovery_method='distill': weight of the KD term in [0, 1]; loss = alpha * T^2 * KL + (1 - alpha) * LM loss."))
    distill_top_k: int | None = field(default=None, metadata=field_help(
        "recovery_method='distill': keep the teacher's k most likely tokens per position (64 is usual) and compute "
        "them once, before training, into <run>/finetune/teacher_cache on disk, so the teacher is not run beside the "
        "student (a bigger model on a T4); None = the live teacher, full logits."))
    fine_tuning_method: str = field(default="lora", metadata=field_help(
        "what recovery and the control train: 'lora' (an adapter, merged in afterwards) or 'full' (every weight; "
        "about 4x the model's memory, no 4-bit or fp16 weights; lora_r and lora_alpha unused)."))
    recovery_text: str = field(default="dataset", metadata=field_help(
        "what recovery and the control train on: 'dataset' (the dataset's training split: adapts the model to that "
        "domain), 'generated' (text the unpruned model writes: keeps general ability) or 'mix' (the two "
        "interleaved). Generated text is shipped for smollm2-135m-instruct, else sampled from the unpruned model."))
    recovery_samples: int | None = field(default=None, metadata=field_help(
        "recovery_text 'generated' / 'mix': how many texts of the unpruned model (up to 128 tokens each): the first "
        "of the shipped sample when it has that many, else sampled from the model (once per model and seed). None: "
        "every shipped text (480 for smollm2-135m-instruct), else 96 sampled."))
    ability: bool = field(default=True, metadata=field_help(
        "measure general ability at every stage (perplexity on text of other domains, zero-shot tasks: "
        "colab_helpers.evaluation.evaluate_ability) beside the in-domain perplexity; False: the in-domain table only, "
        "faster."))
    ability_tasks: str | None = field(default="offline", metadata=field_help(
        "ability=True: zero-shot tasks, a preset ('offline': five tasks built locally; 'standard', 'tiny': from the "
        "hub), a task name or names joined by commas ('capitals,antonyms'); None: other-domain perplexity only."))
    ability_limit: int = field(default=100, metadata=field_help(
        "ability=True: items per zero-shot task (100 gives a 95% interval of about +-0.1)."))

    def __post_init__(self) -> None:
        """Check every field's type and value; ValueError naming the field, the value (and its type) and the fix.

        Types are checked first (a config comes from Python, YAML, sweeps and the command line, which all report a
        ValueError as bad input): ints are ints (not bools, not ``2.5``), numbers are finite numbers (not strings),
        switches are ``True`` / ``False``, names are strings. A run fails here, before minutes of work, not later.
        """
        _check_fields(self)
        for name in ("model", "dataset"):
            if not getattr(self, name).strip():
                raise ValueError(f"{name} must be a non-empty name, got {getattr(self, name)!r}; e.g. {name}='auto'")
        # A typo fails here, smoke or not (smoke() would swap it for the toy unseen). A folder is checked when the
        # model is needed (smoke(), loading), not here: a saved result's config names folders that may have moved.
        check_model_name(self.model, paths_must_exist=False)
        if self.fine_tuning_steps is not None and self.fine_tuning_epochs is not None:
            raise ValueError("give fine_tuning_steps or fine_tuning_epochs, not both; e.g. fine_tuning_steps=200")
        if self.fine_tuning_steps is not None and self.fine_tuning_steps < 0:
            raise ValueError(f"fine_tuning_steps must be >= 0 (0 skips fine-tuning), got {self.fine_tuning_steps!r}")
        if self.fine_tuning_epochs is not None and not self.fine_tuning_epochs > 0:
            raise ValueError(f"fine_tuning_epochs must be > 0, got {self.fine_tuning_epochs!r}; e.g. 1.0 for one pass")
        if self.fine_tuning_minutes is not None and not self.fine_tuning_minutes > 0:
            raise ValueError(f"fine_tuning_minutes must be > 0, got {self.fine_tuning_minutes!r}; e.g. 10, or None for "
                             "no time budget")  # fmt: skip
        for name in ("max_new_tokens", "lora_r", "micro_batch_size", "seq_len", "eval_tokens", "importance_batches",
                     "latency_rounds"):  # fmt: skip
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.eval_stride is not None and not 0 < self.eval_stride <= self.seq_len:
            raise ValueError(f"eval_stride must be an integer in [1, seq_len={self.seq_len}] or None, got {self.eval_stride!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}; e.g. seed=0")
        if self.dtype not in ("auto", "bf16", "fp16", "fp32"):
            raise ValueError(f"dtype must be 'auto', 'bf16', 'fp16' or 'fp32', got {self.dtype!r}")
        for name, example in (("learning_rate", "1e-3"), ("lora_alpha", "32")):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}; e.g. {name}={example}")
        self._check_recovery()
        self._check_ability()
        if self.load_in_4bit and isinstance(self.pruning, Compression):
            raise ValueError("Compression removes weights physically, which 4-bit weights cannot be (sliced); set "
                             "load_in_4bit=False, or target_params=None to gate heads (HeadPruning(remove=False))")
        if self.load_in_4bit and self.pruning.remove:
            raise ValueError("load_in_4bit=True cannot remove heads physically (4-bit weights cannot be sliced); "
                             "set remove_heads=False (HeadPruning(remove=False)) to gate the pruned heads instead")

    def _check_recovery(self) -> None:
        """Check ``recovery_method`` and the distillation settings."""
        if self.recovery_method not in RECOVERY_METHODS:
            raise ValueError(f"recovery_method must be 'lora' (LoRA on the LM loss) or 'distill' (from the unpruned "
                             f"model), got {self.recovery_method!r}; e.g. recovery_method='distill'")  # fmt: skip
        if not self.distill_temperature > 0:
            raise ValueError(f"distill_temperature must be > 0, got {self.distill_temperature!r}; e.g. distill_temperature=2.0")
        if not 0 <= self.distill_alpha <= 1:
            raise ValueError(f"distill_alpha must be in [0, 1], got {self.distill_alpha!r}; e.g. distill_alpha=0.5")
        if self.distill_top_k is not None and self.distill_top_k < 1:
            raise ValueError(f"distill_top_k must be a positive integer or None, got {self.distill_top_k!r}; "
                             "e.g. distill_top_k=64")  # fmt: skip
        if self.fine_tuning_method not in METHODS:
            raise ValueError(f"fine_tuning_method must be one of {METHODS}, got {self.fine_tuning_method!r}; e.g. "
                             "fine_tuning_method='lora' (an adapter) or 'full' (every weight)")  # fmt: skip
        if self.fine_tuning_method == "full" and (self.load_in_4bit or self.dtype == "fp16"):
            what = "load_in_4bit=True" if self.load_in_4bit else "dtype='fp16'"
            raise ValueError(f"fine_tuning_method='full' cannot train the weights of {what} (AdamW's updates need "
                             "fp32 or bf16 weights); set fine_tuning_method='lora', or dtype='fp32' / 'bf16'")  # fmt: skip
        check_recovery_text(self.recovery_text, name="recovery_text",
                            fix="e.g. recovery_text='mix' (dataset and text the unpruned model writes)")
        if self.recovery_samples is not None and self.recovery_samples < 1:
            raise ValueError(f"recovery_samples must be a positive integer, got {self.recovery_samples!r}; e.g. "
                             "recovery_samples=96, or None for every shipped text")  # fmt: skip

    def _check_ability(self) -> None:
        """Check the ability settings (the task names too: an unknown one fails here, not after the baseline)."""
        if self.ability_tasks is not None:
            try:
                resolve_tasks(self.ability_task_names())
            except ValueError as error:
                raise ValueError(f"ability_tasks={self.ability_tasks!r}: {error}; or ability_tasks=None for "
                                 "other-domain perplexity only") from None  # fmt: skip
        if self.ability_limit < 1:
            raise ValueError(f"ability_limit must be a positive integer, got {self.ability_limit!r}; e.g. "
                             "ability_limit=100 items per task")  # fmt: skip

    def ability_task_names(self) -> str | list[str] | None:
        """``ability_tasks`` as :class:`~colab_helpers.evaluation.AbilityConfig` takes it: a preset, or a list of names."""
        tasks = self.ability_tasks
        if tasks is None or tasks in PRESETS:
            return tasks
        return [name.strip() for name in tasks.split(",") if name.strip()]

    def ability_config(self) -> AbilityConfig:
        """Return what :func:`~colab_helpers.evaluation.evaluate_ability` measures at each stage: the other-domain
        texts in blocks of ``seq_len``, ``eval_tokens`` of each (at most AbilityConfig's default), and the tasks."""
        tokens = max(self.seq_len, min(self.eval_tokens, ABILITY_TOKENS))
        return AbilityConfig(tokens=tokens, seq_len=self.seq_len, tasks=self.ability_task_names(),
                             limit=self.ability_limit)  # fmt: skip

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> tuple[ExperimentConfig, dict[str, Any]]:
        """Return the config built from the known keys of ``config`` (``CONFIG_KEYS``: the pruning as flat keys, see
        the module docstring) and a dict of the other keys (tracked, unused)."""
        if "pruning" in config:
            raise ValueError("a config names its pruning by flat keys: strategy, pruning_level, scope, remove_heads "
                             "(heads), or target_params and axes (compression); drop 'pruning'")  # fmt: skip
        extra = {key: value for key, value in config.items() if key not in CONFIG_KEYS}
        if extra.get("recovery") in RECOVERY_METHODS:  # the command line's --recovery is this setting
            raise ValueError(f"the recovery setting is recovery_method; write recovery_method: {extra['recovery']}")
        typos = {key: difflib.get_close_matches(str(key), CONFIG_KEYS, n=1, cutoff=0.8) for key in extra}
        typos = {key: near[0] for key, near in typos.items() if near}
        if typos:  # an extra key is tracked, never used: one that looks like a setting is probably a typo
            listed = ", ".join(f"{key!r} (did you mean {near!r}?)" for key, near in typos.items())
            warnings.warn(f"config keys {listed} are not settings of a run: they are tracked in runs.csv but change "
                          "nothing; fix the spelling if you meant the setting", ColabHelpersWarning, stacklevel=2)
        known = {key: value for key, value in config.items() if key in CONFIG_KEYS and key not in _PRUNING_KEYS}
        return cls(pruning=pruning_from_flat(config), **known), extra

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as plain builtins, the pruning as flat keys (None for those of the other kind): what
        YAML, ``result.json`` and runs.csv hold, and :meth:`from_dict` reads."""
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(self):
            if spec.name == "pruning":
                values.update({**dict.fromkeys(_PRUNING_KEYS), **self.pruning.flat()})
            else:
                values[spec.name] = getattr(self, spec.name)
        return values

    def smoke(self) -> ExperimentConfig:
        """Return a copy that runs in seconds on a CPU (:mod:`colab_helpers.smoke`): an embedded toy model (the
        chosen one when it is embedded), the embedded corpus, few tokens, a few training steps, few task items and
        teacher samples."""
        check_model_name(self.model)  # a folder that is not there is named, not swapped for the toy unseen
        return dataclasses.replace(
            self, model=smoke_model(self.model), dataset=SMOKE_DATASET, fine_tuning_steps=SMOKE_STEPS,
            fine_tuning_epochs=None, seq_len=min(self.seq_len, SMOKE_SEQ_LEN), eval_tokens=SMOKE_EVAL_TOKENS,
            eval_stride=None, importance_batches=2, micro_batch_size=4, max_new_tokens=8, latency_rounds=2,
            ability_limit=min(self.ability_limit, SMOKE_TASK_ITEMS),  # and eval_tokens of each other-domain text
            recovery_samples=min(self.recovery_samples or SMOKE_TEACHER_SAMPLES, SMOKE_TEACHER_SAMPLES),
        )  # fmt: skip

    @property
    def steps(self) -> int | None:
        """Fine-tuning steps (None when epochs decide)."""
        if self.fine_tuning_epochs is not None:
            return None
        return 200 if self.fine_tuning_steps is None else self.fine_tuning_steps

    def finetune_config(self, output_dir: str | os.PathLike[str], *, control: bool = False) -> FineTuneConfig:
        """Return the fine-tuning config of this run (``fine_tuning_method``: LoRA or every weight): the one place the pipeline's settings become fine-tuning settings
        (:meth:`distill_config` adds the distillation settings of ``recovery_method='distill'``).

        Field names differ on purpose (``lora_r`` is ``r``, ``fine_tuning_steps`` is ``max_steps``): a run config
        is flat, so its fine-tuning fields say what they tune. Recovery after pruning trains faster than a plain
        LoRA run, hence the higher default learning rate (1e-3 against FineTuneConfig's 2e-4).
        """
        from ..finetune import FineTuneConfig

        return FineTuneConfig(
            method=self.fine_tuning_method, r=self.lora_r, alpha=self.lora_alpha, learning_rate=self.learning_rate, max_steps=self.steps,
            epochs=self.fine_tuning_epochs, max_minutes=self.fine_tuning_minutes,
            micro_batch_size=self.micro_batch_size, seq_len=self.seq_len,
            seed=self.seed, dtype=self.dtype, load_in_4bit=self.load_in_4bit, output_dir=str(output_dir), eval_batches=4,
            plot_title=self._plot_title(control),
        ).with_intervals(evaluations=8, checkpoints=4)

    def _plot_title(self, control: bool) -> str:
        what = "LoRA" if self.fine_tuning_method == "lora" else "full fine-tuning"
        if control:
            return f"control: the unpruned model, {what} as long"
        teacher = ", distilled from the unpruned one" if self.recovery_method == "distill" else ""
        text = "" if self.recovery_text == "dataset" else f", on {self.recovery_text} text"
        return f"{what} recovery of the pruned model{teacher}{text}"

    def distill_config(self, cache_dir: str | os.PathLike[str] | None = None) -> DistillConfig:
        """Return the distillation settings of ``recovery_method='distill'``: temperature and alpha, and with
        ``distill_top_k`` the teacher's top-k logits precomputed into ``cache_dir``."""
        from ..finetune import DistillConfig

        cache = str(cache_dir) if self.distill_top_k is not None and cache_dir is not None else None
        return DistillConfig(temperature=self.distill_temperature, alpha=self.distill_alpha, top_k=self.distill_top_k,
                             teacher_cache=cache)  # fmt: skip

    def run_name(self) -> str:
        """A readable, file-safe name: ``embedded-gpt2-gradient-30`` (heads), ``embedded-gpt2-keep70-heads+mlp+layers``
        (compression to 70%); ``-distill`` appended for distillation, ``-full`` for full fine-tuning, ``-mix`` /
        ``-generated`` for that recovery text."""
        model = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(self.model).name or self.model)
        parts = [model, self.pruning.label()]
        parts += [self.recovery_method] if self.recovery_method != "lora" else []
        parts += [self.fine_tuning_method] if self.fine_tuning_method != "lora" else []
        parts += [self.recovery_text] if self.recovery_text != "dataset" else []
        return "-".join(parts)


_PRUNING_KEYS = (*HEAD_KEYS, *COMPRESSION_KEYS)
# every key a flat config may set: the fields, the pruning as its flat keys in the place of ``pruning``
CONFIG_KEYS: tuple[str, ...] = tuple(
    key for spec in dataclasses.fields(ExperimentConfig)
    for key in (_PRUNING_KEYS if spec.name == "pruning" else (spec.name,))
)  # fmt: skip
