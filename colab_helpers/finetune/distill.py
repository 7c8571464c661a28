"""Knowledge distillation through the guarded loop: the pruned model (student) learns the next-token distributions
of the model it was pruned from (teacher).

Owns :class:`DistillConfig`, the loss :func:`distillation_loss` (``alpha * T^2 * KL(teacher_T || student_T) +
(1 - alpha) * LM loss`` at the positions the LM loss scores; with ``top_k`` over the teacher's k tokens plus "any
other token") and :class:`Distiller` / :func:`distill`, a :class:`~.trainer.FineTuner` whose training loss adds
the teacher. The teacher's top-k logits cached on disk are :mod:`.teacher_cache`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..checks import check_number, field_help, is_integer
from ..runtime.files import check_creatable_dir
from ..runtime.modules import model_device
from .completions import IGNORE_INDEX, CompletionBatch, TrainingData
from .config import FineTuneConfig
from .device import module_to_cpu
from .guard import check_finite_weights
from .lora import model_fingerprint
from .result import FineTuneResult
from .teacher_cache import TeacherCache, cache_fingerprint, open_cache, read_cache
from .trainer import FineTuner

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)


@dataclass
class DistillConfig:
    """How the student learns from the teacher (see each field's ``help``); the rest of a run is its
    :class:`~.config.FineTuneConfig`."""

    temperature: float = field(
        default=2.0,
        metadata=field_help("softmax temperature T of teacher and student in the KD term, > 0; higher spreads the "
                       "teacher's probability over more tokens. The term is scaled by T^2 so its gradients keep "
                       "their size."),
    )  # fmt: skip
    alpha: float = field(
        default=0.5,
        metadata=field_help("weight of the KD term, in [0, 1]: loss = alpha * T^2 * KL(teacher || student) + "
                       "(1 - alpha) * LM loss; 1 = distillation alone, 0 = plain fine-tuning."),
    )  # fmt: skip
    top_k: int | None = field(
        default=None,
        metadata=field_help("keep the teacher's k largest logits per position: the KL is taken over those k tokens "
                       "and 'any other token' (the probability the k leave), k = vocabulary size being the full KL. "
                       "None = every token. Needed by teacher_cache; 32-128 is usual."),
    )  # fmt: skip
    teacher_cache: str | None = field(
        default=None,
        metadata=field_help("a folder: the teacher's top-k logits of every training sequence are computed once, "
                       "before training, into safetensors shards there, and every step (and a resumed or repeated "
                       "run) reads them instead of running the teacher, which is then moved off the GPU. Needs "
                       "top_k. A cache of another teacher, data, top_k, temperature or seq_len is computed again "
                       "(one warning)."),
    )  # fmt: skip

    def __post_init__(self) -> None:
        self.temperature = check_number(self.temperature, "temperature", fix="e.g. temperature=2.0")
        self.alpha = check_number(self.alpha, "alpha", low_inclusive=True, high=1.0, high_inclusive=True,
                                  fix="e.g. alpha=0.5")  # fmt: skip
        if self.top_k is not None:
            if not is_integer(self.top_k) or self.top_k < 1:
                raise ValueError(f"top_k must be an integer >= 1 or None, got {self.top_k!r}; e.g. top_k=64, or None "
                                 "for every token")  # fmt: skip
            self.top_k = int(self.top_k)
        if self.teacher_cache is not None:
            if not isinstance(self.teacher_cache, str | bytes) and not hasattr(self.teacher_cache, "__fspath__"):
                raise ValueError(f"teacher_cache must be a folder path or None, got {self.teacher_cache!r}; "
                                 "e.g. teacher_cache='teacher-cache'")  # fmt: skip
            if not str(self.teacher_cache).strip():
                raise ValueError("teacher_cache is empty; pass a folder path, e.g. teacher_cache='teacher-cache', or None")
            if self.top_k is None:
                raise ValueError(
                    "teacher_cache stores the teacher's top-k logits, and top_k is None: set top_k too, e.g. "
                    "top_k=64 (every logit would take vocabulary size x 4 bytes per token), or teacher_cache=None"
                )

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-serializable dict."""
        values = dataclasses.asdict(self)
        values["teacher_cache"] = str(values["teacher_cache"]) if values["teacher_cache"] is not None else None
        return values

    def fingerprint_fields(self) -> dict[str, Any]:
        """Return the settings a checkpoint must share to be resumed (the objective; where the cache is, not)."""
        return {"temperature": self.temperature, "alpha": self.alpha, "top_k": self.top_k}

    @classmethod
    def help(cls) -> dict[str, str]:
        """Return ``{field: help text}`` for every setting."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


# --- the loss ---------------------------------------------------------------------------------------------


class TeacherTopK(NamedTuple):
    """The teacher's k largest logits per position (``[batch, length, k]``), their token ids, and the log of its
    softmax denominator at the run's temperature (``logsumexp(logits / T)`` over the whole vocabulary,
    ``[batch, length]``; None: the KL is renormalised over the k tokens instead, see :func:`distillation_loss`)."""

    values: torch.Tensor
    indices: torch.Tensor
    log_normalizer: torch.Tensor | None = None


class DistillLoss(NamedTuple):
    """The loss of a micro-batch and its two parts: ``loss = alpha * kd + (1 - alpha) * lm``."""

    loss: torch.Tensor
    kd: torch.Tensor  # T^2 * mean KL(teacher_T || student_T) over the scored positions
    lm: torch.Tensor  # the causal-LM cross-entropy


def kd_positions(labels: torch.Tensor) -> torch.Tensor:
    """Return the ``[batch, length]`` positions a causal LM is scored at: ``t`` where ``labels[:, t + 1]`` is not
    -100 (the last position predicts no label)."""
    import torch

    positions = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    positions[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return positions


def distillation_loss(
    student_logits: torch.Tensor,
    teacher: torch.Tensor | TeacherTopK | tuple[torch.Tensor, ...],
    labels: torch.Tensor | None = None,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
    lm_loss: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> DistillLoss:
    """Return ``(loss, kd, lm)`` of a micro-batch: ``kd = T^2 * mean KL(softmax(teacher / T) || softmax(student /
    T))``, ``loss = alpha * kd + (1 - alpha) * lm``, in float32.

    ``teacher`` is the teacher's logits (``[batch, length, vocab]``) or its top k, a :class:`TeacherTopK`: with
    its ``log_normalizer`` the KL is over k + 1 outcomes (the k tokens and "any other token", whose probability is
    1 - the k's, for both models); given as ``(values, indices)`` alone, both distributions are renormalised over
    the k tokens (the mass outside them left out). With k = vocabulary size both are the full KL. The KL is averaged
    over the positions ``mask`` marks (bool ``[batch, length]``), by default those the LM loss scores
    (:func:`kd_positions` of ``labels``), or every position without labels. ``lm_loss`` (e.g. the model output's
    ``.loss``) is used as given; without it the causal-LM cross-entropy of ``student_logits`` and ``labels`` is
    computed (shifted, -100 ignored).
    """
    import torch

    scale = float(temperature)
    if mask is None:
        mask = kd_positions(labels) if labels is not None else torch.ones(student_logits.shape[:2], dtype=torch.bool,
                                                                           device=student_logits.device)  # fmt: skip
    teacher_logp, student_logp, tail = _log_probs(student_logits, teacher, scale)
    probs = teacher_logp.exp()
    # sum_v p (log p - log q); a token the teacher gives probability 0 (a -inf logit) adds 0, not NaN
    kl = torch.where(probs > 0, probs * (teacher_logp - student_logp), 0.0).sum(dim=-1)
    if tail is not None:
        kl = kl + tail
    kl = torch.where(mask, kl, 0.0)  # not kl * mask: garbage (NaN) at a padding position must not leak in
    kd = kl.sum() / mask.sum().clamp(min=1) * scale**2
    if lm_loss is None:
        lm_loss = _lm_loss(student_logits, labels, alpha)
    lm = lm_loss.float()
    return DistillLoss(alpha * kd + (1 - alpha) * lm, kd, lm)


def _log_probs(student_logits: torch.Tensor, teacher: torch.Tensor | tuple[torch.Tensor, ...],
               scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """Return the teacher's and the student's log-probabilities at temperature ``scale`` over the outcomes the KL
    compares, and the KL term of "any other token" (top-k with a log normalizer; else None)."""
    import torch
    import torch.nn.functional as F

    if not isinstance(teacher, tuple):
        student_logp = F.log_softmax(student_logits.float() / scale, dim=-1)
        return F.log_softmax(teacher.float() / scale, dim=-1), student_logp, None
    values, indices, log_normalizer = (*teacher, None)[:3]
    indices = indices.long()
    if log_normalizer is None:  # renormalised over the teacher's k tokens, on both sides
        teacher_logp = F.log_softmax(values.float() / scale, dim=-1)
        return teacher_logp, F.log_softmax(student_logits.gather(-1, indices).float() / scale, dim=-1), None
    scaled = student_logits.float() / scale
    student_norm = torch.logsumexp(scaled, dim=-1)
    teacher_logp = values.float() / scale - log_normalizer.float().unsqueeze(-1)
    student_logp = scaled.gather(-1, indices) - student_norm.unsqueeze(-1)
    if indices.shape[-1] >= scaled.shape[-1]:  # k = vocabulary: nothing else
        return teacher_logp, student_logp, None
    # "any other token" holds what the k leave, for both models: so the student also learns how much probability
    # to leave outside the teacher's top k, which a KL renormalised over the k alone would not teach it
    teacher_rest = (1 - teacher_logp.exp().sum(dim=-1)).clamp(min=0)
    student_rest = torch.logsumexp(scaled.scatter(-1, indices, -math.inf), dim=-1) - student_norm
    tail = torch.where(teacher_rest > 0, teacher_rest * (teacher_rest.log() - student_rest), 0.0)
    return teacher_logp, student_logp, tail


def _lm_loss(student_logits: torch.Tensor, labels: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """Return the causal-LM cross-entropy of ``student_logits`` and ``labels`` (shifted, -100 ignored); zero
    without labels, which only ``alpha == 1`` (no LM part) allows."""
    import torch
    import torch.nn.functional as F

    if labels is None:
        if alpha < 1:
            raise ValueError("distillation_loss needs labels or lm_loss when alpha < 1 (the LM part of the loss)")
        return torch.zeros((), device=student_logits.device)
    vocab = student_logits.shape[-1]
    return F.cross_entropy(student_logits[:, :-1].float().reshape(-1, vocab), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX)  # fmt: skip


# --- the teacher ------------------------------------------------------------------------------------------


def vocab_size(model: Any) -> int | None:
    """Return how many tokens ``model`` scores (its output layer's rows, else ``config.vocab_size``), or None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is not None and weight.dim() == 2:
        return int(weight.shape[0])
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if size is not None else None


def check_teacher(student: Any, teacher: Any, tokenizer: Any, top_k: int | None) -> None:
    """Raise before any work when ``teacher`` cannot teach ``student``: the same object or shared weights, another
    vocabulary, a tokenizer with more tokens than the models score, or ``top_k`` above the vocabulary size."""
    if teacher is None or not hasattr(teacher, "parameters"):
        raise TypeError(f"teacher must be a causal LM (a torch module), got {type(teacher).__name__}; e.g. "
                        "teacher = copy.deepcopy(model) before pruning the model")  # fmt: skip
    copy_hint = "keep a copy made before pruning as the teacher: teacher = copy.deepcopy(model), then prune model"
    if teacher is student:
        raise ValueError(f"the teacher is the student itself (it would be frozen and trained at once); {copy_hint}")
    student_storage = {p.data_ptr() for p in student.parameters()}
    shared = [name for name, p in teacher.named_parameters() if p.data_ptr() in student_storage]
    if shared:
        raise ValueError(f"the teacher shares weights with the student ({shared[0]}, ... {len(shared)} tensors): "
                         f"freezing the teacher would freeze them; {copy_hint}")  # fmt: skip
    student_vocab, teacher_vocab = vocab_size(student), vocab_size(teacher)
    if student_vocab != teacher_vocab:
        raise ValueError(
            f"the teacher scores {teacher_vocab} tokens and the student {student_vocab}: distillation compares their "
            "next-token distributions, so both must share one tokenizer and vocabulary; use a teacher of the "
            "student's family (the model it was pruned from)"
        )
    tokens = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    if tokens is not None and student_vocab is not None and tokens > student_vocab:
        raise ValueError(f"the tokenizer has {tokens} tokens but the models score {student_vocab}: pass the tokenizer "
                         "of the student and the teacher")  # fmt: skip
    if top_k is not None and student_vocab is not None and top_k > student_vocab:
        raise ValueError(f"top_k={top_k} is more than the vocabulary ({student_vocab} tokens); lower top_k, or None "
                         "for every token")  # fmt: skip


class Distiller(FineTuner):
    """A guarded run in which ``student`` learns from ``teacher``; see :func:`distill` and the module docstring."""

    loss_parts = ("kd_loss", "lm_loss")
    model_role = "the student"

    def __init__(
        self,
        student: Any,
        teacher: Any,
        tokenizer: Any,
        train_texts: TrainingData,
        eval_texts: TrainingData | None = None,
        config: FineTuneConfig | None = None,
        distill_config: DistillConfig | None = None,
        **options: Any,
    ) -> None:
        self.distill_config = distill_config if distill_config is not None else DistillConfig()
        if not isinstance(self.distill_config, DistillConfig):
            raise TypeError(f"distill_config must be a DistillConfig, got {type(self.distill_config).__name__}; "
                            "e.g. DistillConfig(temperature=2.0, alpha=0.5)")  # fmt: skip
        check_teacher(student, teacher, tokenizer, self.distill_config.top_k)  # before any data, model or file work
        check_finite_weights(teacher, "the teacher")  # the student is checked by FineTuner, before its folder
        if self.distill_config.teacher_cache is not None:
            check_creatable_dir(self.distill_config.teacher_cache, what="teacher_cache")
        self.teacher: Any = teacher  # None once a disk cache replaces it
        self._cache: TeacherCache | None = None
        # FineTuner's warnings name the line that called fine_tune, one frame up from here: re-issued from here,
        # they name the line that called distill (a stale checkpoint deleted, load_in_4bit ignored ...)
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                super().__init__(student, tokenizer, train_texts, eval_texts, config, **options)
        finally:  # through the caller's own filters, also when the set-up failed
            for caught_warning in caught:
                warnings.warn(caught_warning.message, caught_warning.category, stacklevel=3)
        # frozen while it teaches, handed back as it came by train(): a model left frozen is one that gradient-based
        # tools, torch-pruning among them, silently leave untouched
        self._teacher_state = teacher, teacher.training, [(p, p.requires_grad) for p in teacher.parameters()]
        teacher.eval()
        for param in teacher.parameters():
            param.requires_grad_(False)
        if self.distill_config.teacher_cache is not None:
            self._open_cache()

    def train(self) -> FineTuneResult:
        """Run the distillation (``FineTuner.train``), then give the teacher back its mode and ``requires_grad``."""
        try:
            return super().train()
        finally:
            teacher, training, flags = self._teacher_state  # self.teacher is None once a disk cache replaced it
            for param, flag in flags:
                param.requires_grad_(flag)
            teacher.train(training)

    def _fingerprint(self, model: Any) -> dict[str, Any]:
        """The run's fingerprint with the distillation settings and the teacher: a checkpoint resumes only with both."""
        fingerprint = super()._fingerprint(model)
        fingerprint["config"]["distill"] = self.distill_config.fingerprint_fields()
        fingerprint["teacher"] = model_fingerprint(self.teacher, [])
        return fingerprint

    # --- the teacher's side -----------------------------------------------------------------------------

    def _teacher_here(self) -> Any:
        """Return the teacher, first moved to the student's device when it is elsewhere (one logged warning)."""
        device = model_device(self.teacher)
        if device != self.device:
            logger.warning("the teacher is on %s and the student on %s: moving the teacher to %s", device, self.device,
                           self.device)  # fmt: skip
            self.teacher.to(self.device)
        return self.teacher

    def _teacher_logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | TeacherTopK:
        """Return the teacher's logits of a micro-batch (its top k and log normalizer with ``top_k``), without
        gradients."""
        import torch

        cfg = self.distill_config
        with torch.no_grad():
            with self._autocast():
                logits = self._teacher_here()(input_ids=ids, attention_mask=mask, use_cache=False).logits
            if cfg.top_k is None:
                return logits
            found = logits.topk(cfg.top_k, dim=-1)
            log_normalizer = torch.logsumexp(logits.float() / cfg.temperature, dim=-1)
        return TeacherTopK(found.values.float(), found.indices, log_normalizer)

    def _open_cache(self) -> None:
        """Read or compute the teacher cache (rank 0 computes in a data-parallel run), then let the teacher go."""
        import torch

        cfg = self.distill_config
        sequences = self._blocks.blocks
        fingerprint = cache_fingerprint(self.teacher, sequences, int(cfg.top_k or 0), cfg.temperature,
                                        self.config.seq_len)  # fmt: skip

        def forward(chunk: Any) -> tuple[torch.Tensor, ...]:
            ids, mask, _ = self._inputs(chunk)
            return tuple(part.cpu() for part in self._teacher_logits(ids, mask))

        if self.is_main_process:
            self._cache = open_cache(cfg.teacher_cache, fingerprint, sequences, forward, self.micro_batch_size)
        if self._dist is not None:
            self._dist.barrier()
            if not self.is_main_process:  # the other ranks read what rank 0 wrote, never write
                self._cache, problem = read_cache(Path(cfg.teacher_cache).expanduser(), fingerprint)
                if self._cache is None:
                    raise RuntimeError(f"rank {self.rank}: teacher_cache {cfg.teacher_cache!r} {problem or 'is missing'}"
                                       " after rank 0 wrote it: use a folder every rank sees")  # fmt: skip
        if model_device(self.teacher).type == "cuda":  # training reads the cache: the GPU is the student's
            self.teacher.to("cpu")
            torch.cuda.empty_cache()
            logger.info("teacher cache ready: the teacher was moved to the CPU (del teacher frees it)")
        self.teacher = None

    # --- the training loss ------------------------------------------------------------------------------

    def _train_loss(self, chunk: torch.Tensor | CompletionBatch, rows: torch.Tensor) -> torch.Tensor:
        """Return ``[loss, kd_loss, lm_loss]`` of a training micro-batch (the loss alone carries gradients)."""
        import torch

        cfg = self.distill_config
        ids, mask, labels = self._inputs(chunk)
        if self._cache is not None:
            teacher: torch.Tensor | TeacherTopK = TeacherTopK(*self._cache.lookup(rows, ids.shape[1], self.device))
        else:
            teacher = self._teacher_logits(ids, mask)
        with self._autocast():
            output = self.model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
        parts = distillation_loss(output.logits, teacher, labels, temperature=cfg.temperature, alpha=cfg.alpha,
                                  lm_loss=output.loss)  # fmt: skip
        return torch.stack([parts.loss, parts.kd.detach(), parts.lm.detach()])

    def move_to_cpu(self) -> None:
        """Move the run to the CPU (the guard's CUDA fallback), the teacher with it, in fp32 like the student."""
        super().move_to_cpu()
        if self.teacher is not None:
            module_to_cpu(self.teacher)


def distill(
    student: Any,
    teacher: Any,
    tokenizer: Any,
    train_texts: TrainingData,
    eval_texts: TrainingData | None = None,
    config: FineTuneConfig | None = None,
    distill_config: DistillConfig | None = None,
    **options: Any,
) -> FineTuneResult:
    """Train ``student`` to match ``teacher``'s next-token distributions (and the text); return a
    :class:`~.result.FineTuneResult`.

    ``config`` is the run's :class:`~.config.FineTuneConfig` (LoRA by default, every weight with
    ``method="full"``), ``distill_config`` the :class:`DistillConfig` (temperature, alpha, top_k, teacher_cache),
    ``options`` those of :func:`~.trainer.fine_tune` (``callbacks``, ``live_plot``, ``progress``). Everything
    :func:`~.trainer.fine_tune` guarantees holds: NaN skips and rollbacks, out-of-memory halving, the CUDA fallback
    (the teacher follows the student to the CPU), atomic checkpoints and ``resume=True``. The history rows add
    ``kd_loss`` and ``lm_loss``; ``eval_loss`` stays the student's LM loss.

    The teacher must not be the student (prune a copy: ``teacher = copy.deepcopy(model)`` before pruning) and must
    score the same vocabulary; both are checked before any work. It is frozen while it teaches (eval mode, no
    gradients) and handed back as it came (its mode and ``requires_grad`` flags restored: a model left frozen is one
    that gradient-based tools, and torch-pruning, silently leave untouched); on another device than the student it
    is moved to the student's, with one logged warning.
    """
    return Distiller(student, teacher, tokenizer, train_texts, eval_texts, config, distill_config, **options).train()
