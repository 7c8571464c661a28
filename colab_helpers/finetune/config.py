"""``FineTuneConfig``: every setting of a fine-tuning run (LoRA by default, or every weight with
``method="full"``), with a default and a help text, checked when it is built."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..checks import check_choice, check_integer, check_number, field_help, is_finite_number, is_integer

DTYPES = ("auto", "bf16", "fp16", "fp32")
BACKENDS = ("auto", "peft", "unsloth")
METHODS = ("lora", "full")

# Fields that decide what is being trained: a checkpoint can only be resumed under the same values.
# Left out on purpose: everything about *how* (micro-batch, dtype, backend, 4-bit, eval and checkpoint cadence,
# safety ladder), so a run can resume on another runtime (T4 fp16 after an A100 bf16) or with a smaller micro-batch;
# and max_steps / epochs / max_minutes, so a finished run can be continued for more steps (the cosine decay stretches
# from there).
_FINGERPRINT_FIELDS = (
    "r",
    "alpha",
    "dropout",
    "learning_rate",
    "seq_len",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "seed",
)


@dataclass
class FineTuneConfig:
    """Settings of one LoRA fine-tuning run (see each field's ``help``); ``.smoke()`` gives a tiny copy."""

    # --- what is trained ---
    method: str = field(
        default="lora",
        metadata=field_help("'lora' (a low-rank adapter on the frozen model: small files, little memory) or 'full' "
                       "(every floating-point weight of the model, no adapter: about 4x the model's memory for "
                       "weights, gradients and AdamW moments, plus in-memory copies for rollback and the best "
                       "evaluation; float32 or bfloat16 weights; the model is saved whole to <output_dir>/model and "
                       "r, alpha, dropout, target_modules and backend are unused)."),
    )  # fmt: skip
    # --- LoRA ---
    r: int = field(default=16, metadata=field_help("LoRA rank: size of the low-rank update; 8-64 is usual."))
    alpha: float = field(default=32, metadata=field_help("LoRA alpha: the update is scaled by alpha / r."))
    dropout: float = field(default=0.05, metadata=field_help("dropout on the LoRA input, in [0, 1)."))
    target_modules: list[str] | None = field(
        default=None,
        metadata=field_help(
            "short names of the linear layers to adapt (e.g. ['q_proj', 'v_proj']); None = attention q/k/v/o "
            "and MLP projections of this architecture."
        ),
    )
    # --- optimisation ---
    learning_rate: float = field(default=2e-4, metadata=field_help("peak AdamW learning rate."))
    max_steps: int | None = field(default=200, metadata=field_help("optimizer steps to run (ignored when epochs is set)."))
    epochs: float | None = field(default=None, metadata=field_help("passes over the training text; overrides max_steps."))
    max_minutes: float | None = field(
        default=None,
        metadata=field_help("a time budget: training ends when this many minutes of it have passed (the final "
                       "evaluation and save come after), and the cosine decay is planned on the steps the budget "
                       "reaches at the pace measured so far, at most max_steps (or epochs); None = no budget."),
    )  # fmt: skip
    micro_batch_size: int = field(default=8, metadata=field_help("sequences per forward pass; halved on out-of-memory."))
    gradient_accumulation_steps: int = field(
        default=1, metadata=field_help("micro-batches per optimizer step; effective batch = micro_batch_size x this.")
    )
    seq_len: int = field(
        default=256, metadata=field_help("tokens per training sequence; with (prompt, completion) pairs, the most per example.")
    )
    warmup_steps: int = field(default=10, metadata=field_help("linear warm-up steps before the cosine decay."))
    weight_decay: float = field(default=0.0, metadata=field_help("AdamW weight decay on the LoRA weights."))
    max_grad_norm: float = field(default=1.0, metadata=field_help("gradients are clipped to this global norm."))
    seed: int = field(default=0, metadata=field_help("seed of LoRA initialisation, data order and dropout."))
    dtype: str = field(
        default="auto",
        metadata=field_help("'auto' (bf16 on CUDA capability >= 8, fp16 + GradScaler on older GPUs, fp32 on CPU), "
                       "'bf16', 'fp16' or 'fp32'."),
    )  # fmt: skip
    load_in_4bit: bool = field(
        default=False,
        metadata=field_help("QLoRA: the model must be loaded 4-bit (load_model(..., load_in_4bit=True)); "
                       "without CUDA one warning and unquantized training."),
    )  # fmt: skip
    backend: str = field(
        default="auto",
        metadata=field_help("'auto' (unsloth when on CUDA, installed and the architecture is supported, else peft), "
                       "'peft' or 'unsloth'."),
    )  # fmt: skip
    # --- evaluation and early stopping ---
    eval_every: int = field(default=50, metadata=field_help("evaluate on eval_texts every this many steps."))
    eval_batches: int = field(default=8, metadata=field_help("micro-batches of eval_texts scored per evaluation."))
    early_stopping_patience: int | None = field(
        default=None, metadata=field_help("stop after this many evaluations without a better eval loss; None = off.")
    )
    restore_best: bool = field(default=True, metadata=field_help("restore the adapter of the best eval loss at the end."))
    # --- surviving failures ---
    nan_skip_patience: int = field(
        default=3, metadata=field_help("non-finite steps in a row before rolling back and halving the learning rate.")
    )
    snapshot_every: int = field(default=10, metadata=field_help("good steps between in-memory rollback snapshots."))
    min_micro_batch_size: int = field(default=1, metadata=field_help("micro-batch floor for out-of-memory and NaN halving."))
    max_rollbacks: int = field(default=3, metadata=field_help("rollbacks allowed before training stops (best state kept)."))
    # --- checkpoints and display ---
    output_dir: str = field(
        default="finetune",
        metadata=field_help("checkpoints, final adapter and plot go here; on Colab a Drive folder survives a runtime reset."),
    )
    checkpoint_every: int | None = field(
        default=50, metadata=field_help("write an atomic checkpoint every this many steps; None = only at the end.")
    )
    keep_checkpoints: int = field(default=2, metadata=field_help("complete checkpoints kept on disk (newest ones)."))
    save_gradients: bool = field(
        default=False,
        metadata=field_help("at each checkpoint step, save per-parameter gradient norms to <output_dir>/gradients/ "
                       "(plot them with colab_helpers.plot_gradient_norms(output_dir))."),
    )  # fmt: skip
    resume: bool = field(
        default=False,
        metadata=field_help("continue from the newest checkpoint in output_dir that reads whole; any newer one that "
                       "does not is moved to <output_dir>/checkpoints/unreadable-<time>/ with one warning (never "
                       "overwritten or deleted), and with none readable the run starts from step 0. A checkpoint "
                       "whose adapter holds NaN is refused with an error. False starts over (old checkpoints there "
                       "are deleted)."),
    )  # fmt: skip
    plot_every_seconds: float = field(
        default=10.0, metadata=field_help("minimum seconds between live-plot redraws (each redraw costs CPU time).")
    )
    plot_title: str = field(default="LoRA fine-tuning", metadata=field_help("title of the live plot (e.g. which run it is)."))

    def __post_init__(self) -> None:
        for name in ("load_in_4bit", "restore_best", "save_gradients", "resume"):
            value = getattr(self, name)
            if not isinstance(value, bool):  # "False" is a true string: a switch must be a real bool
                raise ValueError(f"{name} must be True or False, got {value!r} ({type(value).__name__}); e.g. {name}=False")
        check_choice(self.method, METHODS, "method", fix="e.g. method='lora' (an adapter) or method='full' (every weight)")
        _integer(self, "r", "e.g. r=16")
        _number(self, "alpha", "e.g. alpha=32 (2 x r is usual)")
        _number(self, "dropout", "e.g. dropout=0.05", low_inclusive=True, high=1.0)
        _number(self, "learning_rate", "e.g. learning_rate=2e-4")
        if self.max_steps is None and self.epochs is None:
            raise ValueError("set max_steps (e.g. max_steps=200) or epochs (e.g. epochs=1.0); both are None")
        _integer(self, "max_steps", "e.g. max_steps=200", optional=True)
        if self.epochs is not None:
            _number(self, "epochs", "e.g. epochs=1.0, or epochs=None to use max_steps")
        if self.max_minutes is not None:
            _number(self, "max_minutes", "e.g. max_minutes=10, or max_minutes=None for no time budget")
        _integer(self, "micro_batch_size", "e.g. micro_batch_size=8")
        _integer(self, "gradient_accumulation_steps", "e.g. gradient_accumulation_steps=1")
        _integer(self, "min_micro_batch_size", "e.g. min_micro_batch_size=1")
        if self.min_micro_batch_size > self.micro_batch_size:
            raise ValueError(f"min_micro_batch_size ({self.min_micro_batch_size}) must be <= micro_batch_size "
                             f"({self.micro_batch_size}); lower min_micro_batch_size")  # fmt: skip
        _integer(self, "seq_len", "e.g. seq_len=256", least=2)
        _integer(self, "warmup_steps", "e.g. warmup_steps=10", least=0)
        _number(self, "weight_decay", "e.g. weight_decay=0.0 (0.01 is usual)", low_inclusive=True)
        _number(self, "max_grad_norm", "e.g. max_grad_norm=1.0")
        if not is_integer(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        check_choice(self.dtype, DTYPES, "dtype", fix="'auto' picks per device")
        check_choice(self.backend, BACKENDS, "backend", fix="'auto' picks per device")
        self._check_full_method()
        self.target_modules = _target_modules(self.target_modules)
        _integer(self, "eval_every", "e.g. eval_every=50")
        _integer(self, "eval_batches", "e.g. eval_batches=8")
        _integer(self, "early_stopping_patience", "e.g. 3, or None to turn early stopping off", optional=True)
        _integer(self, "nan_skip_patience", "e.g. nan_skip_patience=3")
        _integer(self, "snapshot_every", "e.g. snapshot_every=10")
        _integer(self, "max_rollbacks", "e.g. max_rollbacks=3", least=0)
        _integer(self, "checkpoint_every", "e.g. 50, or None for a checkpoint at the end only", optional=True)
        _integer(self, "keep_checkpoints", "e.g. keep_checkpoints=2")
        if not isinstance(self.output_dir, str | bytes) and not hasattr(self.output_dir, "__fspath__"):
            raise ValueError(f"output_dir must be a path, got {self.output_dir!r}; e.g. output_dir='finetune'")
        if not str(self.output_dir).strip():
            raise ValueError("output_dir is empty; pass a directory path, e.g. output_dir='finetune'")
        _number(self, "plot_every_seconds", "e.g. plot_every_seconds=10.0 (live_plot=False draws nothing)",
                low_inclusive=True)  # fmt: skip

    def _check_full_method(self) -> None:
        """Refuse the settings ``method="full"`` cannot train with: 4-bit weights, unsloth's LoRA-only kernels."""
        if self.method == "full" and self.load_in_4bit:
            raise ValueError("method='full' trains every weight, and 4-bit weights cannot be trained: set "
                             "load_in_4bit=False, or method='lora' for QLoRA")
        if self.method == "full" and self.backend == "unsloth":
            raise ValueError("method='full' trains every weight, and backend='unsloth' trains LoRA adapters only: set "
                             "backend='auto', or method='lora'")

    @property
    def effective_batch_size(self) -> int:
        """Sequences per optimizer step: ``micro_batch_size * gradient_accumulation_steps``."""
        return self.micro_batch_size * self.gradient_accumulation_steps

    def smoke(self) -> FineTuneConfig:
        """Return a tiny copy for SMOKE runs: 8 steps of 4 x 64 tokens, evaluation and checkpoints every 4 steps."""
        return dataclasses.replace(
            self,
            max_steps=8,
            epochs=None,
            micro_batch_size=min(self.micro_batch_size, 4),
            min_micro_batch_size=min(self.min_micro_batch_size, min(self.micro_batch_size, 4)),
            gradient_accumulation_steps=1,
            seq_len=min(self.seq_len, 64),
            warmup_steps=min(self.warmup_steps, 2),
            eval_every=4,
            eval_batches=2,
            checkpoint_every=4,
            snapshot_every=min(self.snapshot_every, 2),
        )

    def with_intervals(self, *, evaluations: int = 8, checkpoints: int = 4, warmup_ratio: float = 0.1) -> FineTuneConfig:
        """Return a copy whose evaluation, checkpoint and warm-up intervals follow from ``max_steps``: about
        ``evaluations`` evaluations and ``checkpoints`` checkpoints (0 = only at the end) per run, and
        ``warmup_ratio`` of the steps warming up. The one formula the pipeline, the spelling study and the notebooks
        use; with ``epochs`` set (steps not known yet) it paces a 200-step run."""
        check_integer(evaluations, "evaluations", fix="e.g. evaluations=8")
        check_integer(checkpoints, "checkpoints", least=0, fix="0 saves only at the end")
        if not is_finite_number(warmup_ratio) or not 0 <= warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio!r}; e.g. warmup_ratio=0.1")
        steps = self.max_steps if self.epochs is None and self.max_steps else 200
        return dataclasses.replace(
            self,
            eval_every=max(1, steps // evaluations),
            checkpoint_every=max(1, steps // checkpoints) if checkpoints else None,
            warmup_steps=int(round(steps * warmup_ratio)),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-serializable dict."""
        values = dataclasses.asdict(self)
        values["output_dir"] = str(values["output_dir"])
        return values

    def fingerprint_fields(self) -> dict[str, Any]:
        """Return the settings a checkpoint must share to be resumed (what is trained, not how)."""
        values = {name: getattr(self, name) for name in _FINGERPRINT_FIELDS}
        values["effective_batch_size"] = self.effective_batch_size
        if self.method != "lora":  # only when not the default: checkpoints written before the field still resume
            values["method"] = self.method
        return values

    @classmethod
    def help(cls) -> dict[str, str]:
        """Return ``{field: help text}`` for every setting."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _number(config: FineTuneConfig, name: str, fix: str, **bounds: Any) -> None:
    """Check that setting ``name`` is a finite real number within ``bounds`` (> 0 by default; see
    :func:`~colab_helpers.checks.check_number`); numpy and other real scalars become a Python float."""
    setattr(config, name, check_number(getattr(config, name), name, fix=fix, **bounds))


def _integer(config: FineTuneConfig, name: str, fix: str, *, least: int = 1, optional: bool = False) -> None:
    """Check that setting ``name`` is an integer >= ``least`` (or None when ``optional``); numpy integers become int."""
    value = getattr(config, name)
    if not (optional and value is None):
        setattr(config, name, check_integer(value, name, least=least, fix=fix))


def _target_modules(targets: Any) -> list[str] | None:
    """Return ``target_modules`` as a list of module names, or None (the per-architecture default)."""
    if targets is None:
        return None
    if isinstance(targets, str) or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"target_modules must be a list of module names such as ['q_proj', 'v_proj'] or None, got "
                         f"{targets!r}")  # fmt: skip
    if not targets:
        raise ValueError("target_modules is empty; pass None for the per-architecture default")
    return list(targets)
