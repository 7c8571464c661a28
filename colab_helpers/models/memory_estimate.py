"""How much memory will this model need? A peak-memory estimate for inference, LoRA, QLoRA and full training.

``estimate_memory(model, mode, batch_size=..., seq_len=...)`` returns a ``MemoryEstimate``: the bytes held by
weights, gradients, optimizer state, activations and a fixed overhead, and their peak total. This module owns
the rules of thumb and the arithmetic that applies them; docs/memory-estimates.md says how each part is counted
and how close the estimate comes to measured peaks. The model's shape is :mod:`.shapes`; :mod:`.peak_memory`
measures a case for real.
"""

from __future__ import annotations

import html
import logging
import sys
from dataclasses import asdict, dataclass
from typing import Any

from ..checks import check_integer
from .shapes import ModelShape, resolve_model

logger = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("inference", "lora", "qlora", "full")
DTYPES: tuple[str, ...] = ("auto", "float32", "float16", "bfloat16")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
ATTN_IMPLEMENTATIONS: tuple[str, ...] = ("sdpa", "eager", "flash_attention_2")
GB = 1024**3
MB = 1024**2

# --- rules of thumb (calibrated in docs/memory-estimates.md) --------------------------------------------
CUDA_CONTEXT_BYTES = 512 * MB  # CUDA context + cuBLAS/cuDNN handles, outside torch's allocator
CPU_BASELINE_BYTES = 400 * MB  # peak RSS of a fresh Python process that imported torch + transformers and built a tiny model
CPU_TRAINING_BYTES = 20 * MB  # autograd engine and optimizer bookkeeping on top of that (peft adds nothing measurable)
QLORA_BYTES_PER_WEIGHT = 0.5 + 4 / 64  # NF4: 4 bits per weight + a float32 absmax per 64-weight block
ADAPTER_BYTES = 4  # peft keeps LoRA adapters in float32 (autocast_adapter_dtype=True)
ADAM_BYTES = 8  # AdamW: exp_avg and exp_avg_sq in float32
MASTER_BYTES = 4  # float32 master copy of 16-bit weights in mixed-precision full training
LOSS_BYTES_PER_LOGIT = 12  # float32 log-softmax output + its gradient + the logits' gradient, alive together
MASK_BYTES = 1  # a dropout mask is a bool tensor
STEP_SCRATCH_BYTES = 4  # AdamW's foreach step builds sqrt(exp_avg_sq): one float32 tensor per trainable parameter
CPU_LAYER_FACTOR = 1.6  # glibc keeps freed mid-sized blocks mapped: CPU peak RSS / live per-layer activations
EAGER_SCORE_COPIES = 4  # eager attention's scores, scaled, masked and softmaxed batch x heads x seq^2 tensors

_NORM_WORDS = {"layernorm": 2, "rmsnorm": 3}  # saved per norm: input and output (+ normalized for RMSNorm)
_MLP_SAVED = {"relu": 1, "gelu": 2, "gelu_new": 5, "bloom_gelu": 2, "silu_gated": 4, "gelu_gated": 4}
_MLP_TRANSIENT = {"relu": 2, "gelu": 2, "gelu_new": 3, "bloom_gelu": 3, "silu_gated": 3, "gelu_gated": 3}

_DTYPE_ALIASES = {
    "auto": "auto", "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16",
}  # fmt: skip
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated peak memory of one run, in bytes, split by what holds it.

    ``weights`` (frozen and trainable weights, adapters included), ``gradients``, ``optimizer`` (AdamW
    moments and any float32 master copy), ``activations`` (saved tensors, logits and loss, KV cache) and
    ``overhead`` (CUDA context, or the Python process on the CPU). ``total`` is their sum. ``notes`` are
    caveats worth reading (QLoRA on a CPU, a sequence longer than the model's context ...).
    """

    model: str
    mode: str
    device: str
    dtype: str
    batch_size: int
    seq_len: int
    params: int
    trainable_params: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    overhead: int
    notes: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        """Return the estimated peak in bytes: weights + optimizer + overhead + max(activations, gradients).

        The backward pass frees the saved activations while it produces the gradients, and the gradients
        are freed after the optimizer step, so the two never peak together.
        """
        return self.weights + self.optimizer + self.overhead + max(self.activations, self.gradients)

    @property
    def total_gb(self) -> float:
        """Return the estimated peak in GB (1024**3 bytes, as Colab and nvidia-smi count)."""
        return self.total / GB

    def parts(self) -> dict[str, int]:
        """Return ``{part: bytes}`` for the five parts (``total`` counts only the larger of the last two)."""
        return {
            "weights": self.weights,
            "optimizer": self.optimizer,
            "overhead": self.overhead,
            "activations": self.activations,
            "gradients": self.gradients,
        }

    def to_dict(self) -> dict[str, Any]:
        """Return every field plus ``total`` and ``total_gb`` as a JSON-serializable dict."""
        data = asdict(self)
        data["notes"] = list(self.notes)
        data["total"] = self.total
        data["total_gb"] = round(self.total_gb, 3)
        return data

    def summary(self) -> str:
        """One line: ``gpt2 lora (float32, cpu, 4 x 256): ~3.1 GB = weights 0.5 GB + ...``."""
        parts = [f"weights {_gb(self.weights)}"]
        if self.optimizer:
            parts.append(f"optimizer {_gb(self.optimizer)}")
        parts.append(f"overhead {_gb(self.overhead)}")
        if self.gradients:
            parts.append(f"max(activations {_gb(self.activations)}, gradients {_gb(self.gradients)})")
        else:
            parts.append(f"activations {_gb(self.activations)}")
        return (
            f"{self.model} {self.mode} ({self.dtype}, {self.device}, {self.batch_size} x {self.seq_len}): "
            f"~{_gb(self.total)} = {' + '.join(parts)}"
        )

    def _repr_html_(self) -> str:
        """Return an HTML table of the parts, the total and the notes (every cell escaped)."""
        head = html.escape(
            f"{self.model}: {self.mode}, {self.dtype} on {self.device}, batch {self.batch_size} x seq {self.seq_len}"
        )
        rows = [(name, _gb(value)) for name, value in self.parts().items()]
        rows.append(("total (activations and gradients do not peak together)", _gb(self.total)))
        cells = "".join(
            f"<tr><th style='text-align:left'>{html.escape(name)}</th><td style='text-align:right'>{html.escape(value)}</td></tr>"
            for name, value in rows
        )
        notes = "".join(f"<li>{html.escape(note)}</li>" for note in self.notes)
        return f"<p><b>{head}</b></p><table>{cells}</table>" + (f"<ul>{notes}</ul>" if notes else "")


def _gb(n: float) -> str:
    """Return bytes as ``"1.23 GB"`` (or ``"45 MB"`` under 1 GB)."""
    return f"{n / GB:.2f} GB" if n >= GB else f"{n / MB:.0f} MB"


# --- arguments -----------------------------------------------------------------------------------------


def normalized_choice(label: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return ``value`` lower-cased if it is one of ``choices``, else raise ValueError naming both."""
    key = value.strip().lower() if isinstance(value, str) else value
    if key not in choices:
        raise ValueError(f"{label} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return key


def normalize_dtype(dtype: Any) -> str:
    """Return ``"auto"``, ``"float32"``, ``"float16"`` or ``"bfloat16"`` for a name, alias or torch.dtype."""
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in _DTYPE_ALIASES:
        raise ValueError(
            f"dtype must be one of {', '.join(map(repr, DTYPES))} (or fp32/fp16/bf16, or a torch.dtype), got {dtype!r}"
        )
    return _DTYPE_ALIASES[key]


def _cuda_available() -> bool:
    """True when torch is importable and sees a CUDA device (tests replace this)."""
    from importlib.util import find_spec

    if "torch" not in sys.modules and find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def _cuda_bf16() -> bool:
    """True when the current CUDA device has native bf16 (compute capability >= 8; not a T4's emulation)."""
    import torch

    return torch.cuda.get_device_capability()[0] >= 8


def _resolve_device_dtype(device: str, dtype: str, mode: str, model_dtype: str | None, model_device: str | None) -> tuple[str, str]:
    """Return the concrete ``(device, compute dtype)``: auto follows the loaded model, then the machine."""
    if device == "auto":
        device = model_device if model_device in ("cpu", "cuda") else ("cuda" if _cuda_available() else "cpu")
    if dtype == "auto":
        if model_dtype in _DTYPE_BYTES and mode != "qlora":
            dtype = model_dtype
        elif device == "cuda":  # a what-if on a machine without CUDA gets float16, the T4's choice
            dtype = "bfloat16" if _cuda_available() and _cuda_bf16() else "float16"
        else:
            dtype = "float16" if mode == "qlora" else "float32"  # QLoRA computes in 16 bits (bitsandbytes' default)
    return device, dtype


# --- the estimate --------------------------------------------------------------------------------------


def estimate_memory(
    model: Any,
    mode: str = "inference",
    *,
    batch_size: int = 1,
    seq_len: int = 512,
    dtype: Any = "auto",
    device: str = "auto",
    lora_r: int = 16,
    lora_dropout: float = 0.0,
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
) -> MemoryEstimate:
    """Return the estimated peak memory of running ``model`` in ``mode`` as a ``MemoryEstimate``.

    ``model``: a catalog name or alias, a ``transformers`` config, or a loaded model (its real parameters
    are counted; ``dtype``/``device`` "auto" then follow the model). ``mode``: ``"inference"`` (one forward
    pass of ``batch_size x seq_len`` tokens with the KV cache), ``"lora"``, ``"qlora"`` (4-bit base) or
    ``"full"`` (training steps with AdamW). ``dtype`` "auto": float32 on the CPU, bfloat16 on CUDA GPUs with
    compute capability >= 8, float16 on older ones (QLoRA always computes in 16 bits). ``device`` "auto":
    CUDA when available. ``lora_r``/``lora_dropout``: the adapters' rank and input dropout.
    ``attn_implementation`` "eager" materializes the ``seq x seq`` attention scores. docs/memory-estimates.md
    gives every rule of thumb.
    """
    mode = normalized_choice("mode", mode, MODES)
    dtype = normalize_dtype(dtype)
    device = normalized_choice("device", device, DEVICES)
    attn_implementation = normalized_choice("attn_implementation", attn_implementation, ATTN_IMPLEMENTATIONS)
    batch_size = check_integer(batch_size, "batch_size")
    seq_len = check_integer(seq_len, "seq_len")
    lora_r = check_integer(lora_r, "lora_r")
    if not 0.0 <= float(lora_dropout) < 1.0:
        raise ValueError(f"lora_dropout must be in [0, 1), got {lora_dropout!r}")
    shape, model_dtype, model_device = resolve_model(model)
    device, dtype = _resolve_device_dtype(device, dtype, mode, model_dtype, model_device)
    act_bytes, training, cpu = _DTYPE_BYTES[dtype], mode != "inference", device == "cpu"
    materialized = _scores_materialized(shape, attn_implementation, device, training)
    if training:
        activations = _training_activations(
            shape, mode, batch_size, seq_len, act_bytes, materialized, lora_dropout, gradient_checkpointing, cpu
        )
    else:
        activations = _inference_activations(shape, batch_size, seq_len, act_bytes, materialized, cpu)
    estimate = MemoryEstimate(
        model=shape.label,
        mode=mode,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        seq_len=seq_len,
        params=shape.params,
        **_parameter_parts(shape, mode, dtype, lora_r),
        activations=int(activations),
        overhead=CUDA_CONTEXT_BYTES if device == "cuda" else CPU_BASELINE_BYTES + (CPU_TRAINING_BYTES if training else 0),
        notes=_notes(shape, mode, device, seq_len, gradient_checkpointing),
    )
    logger.debug("estimate_memory: %s", estimate.summary())
    return estimate


def _parameter_parts(shape: ModelShape, mode: str, dtype: str, lora_r: int) -> dict[str, int]:
    """Return the parts that follow from the parameters: trainable count, weights, gradients, optimizer bytes."""
    act_bytes = _DTYPE_BYTES[dtype]
    lora_params = lora_r * shape.lora_in_out if mode in ("lora", "qlora") else 0
    trainable = shape.params if mode == "full" else lora_params
    grad_bytes = act_bytes if mode == "full" else ADAPTER_BYTES
    master = MASTER_BYTES if mode == "full" and act_bytes < 4 else 0
    return {
        "trainable_params": trainable,
        "weights": int(_weight_bytes(shape, mode, dtype) + lora_params * ADAPTER_BYTES),
        "gradients": int(trainable * (grad_bytes + STEP_SCRATCH_BYTES)),
        "optimizer": int(trainable * (ADAM_BYTES + master)),
    }


def _notes(shape: ModelShape, mode: str, device: str, seq_len: int, gradient_checkpointing: bool) -> tuple[str, ...]:
    """Return the caveats of one estimate: a sequence past the context, QLoRA off CUDA, checkpointing on the CPU."""
    notes: list[str] = []
    if seq_len > shape.context:
        notes.append(f"seq_len {seq_len} is longer than the model's context of {shape.context} tokens")
    if mode == "qlora" and device != "cuda":
        notes.append("4-bit QLoRA needs a CUDA GPU with bitsandbytes; on the CPU this figure is a what-if")
    if gradient_checkpointing and device == "cpu" and mode != "inference":
        notes.append(
            "on the CPU, gradient checkpointing's recomputation fragments the heap: measured peaks ran about "
            "1.4-1.5x this estimate (docs/memory-estimates.md)"
        )
    return tuple(notes)


def _weight_bytes(shape: ModelShape, mode: str, dtype: str) -> float:
    """Return the bytes of the model's own weights: dtype size each, or NF4 linears + 16-bit rest for QLoRA."""
    if mode == "qlora":
        return shape.quantizable * QLORA_BYTES_PER_WEIGHT + (shape.params - shape.quantizable) * 2
    return shape.params * _DTYPE_BYTES[dtype]


def _scores_materialized(shape: ModelShape, attn_implementation: str, device: str, training: bool) -> bool:
    """True when the ``batch x heads x seq x seq`` attention scores exist in memory.

    Eager attention and BLOOM (ALiBi, eager only) always build them. sdpa's fused CPU kernel has no
    dropout, so training a model with attention dropout on the CPU falls back to the math kernel, which
    builds them too; flash/memory-efficient kernels on CUDA do not.
    """
    if attn_implementation == "eager" or shape.eager_only:
        return True
    return training and device == "cpu" and shape.attention_dropout > 0


def _training_activations(
    shape: ModelShape,
    mode: str,
    batch: int,
    seq: int,
    act_bytes: int,
    materialized: bool,
    lora_dropout: float,
    checkpointing: bool,
    cpu: bool,
) -> float:
    """Return the bytes the forward pass saves for the backward, plus the loss's logits, at the peak."""
    tokens = batch * seq
    h, q, kv = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    words = 2 * _NORM_WORDS[shape.norm] * h + (q + 2 * kv) + 2 * q + _MLP_SAVED[shape.mlp] * shape.intermediate
    per_layer = tokens * words * act_bytes
    if shape.hidden_dropout > 0:
        per_layer += 2 * tokens * h * MASK_BYTES  # after attention and after the MLP
    if materialized:
        scores = batch * shape.heads * seq * seq
        per_layer += scores * (act_bytes * (2 if shape.attention_dropout > 0 else 1))
        per_layer += scores * MASK_BYTES if shape.attention_dropout > 0 else 0
    if mode in ("lora", "qlora"):
        if lora_dropout > 0:  # each adapter's dropped-out input copy and its mask
            per_layer += tokens * shape.lora_inputs * (ADAPTER_BYTES + MASK_BYTES)
        elif act_bytes < ADAPTER_BYTES:  # the float32 copy of each adapted layer's 16-bit input
            per_layer += tokens * shape.lora_inputs * ADAPTER_BYTES
    if checkpointing:
        saved = shape.layers * tokens * h * act_bytes + per_layer
    else:
        saved = shape.layers * per_layer
    outside = 3 * tokens * h * act_bytes  # embedding output, final norm input and output
    if cpu:  # glibc keeps freed mid-sized blocks: the layers' share of peak RSS exceeds the live tensors
        saved *= CPU_LAYER_FACTOR
    return saved + outside + tokens * shape.vocab * LOSS_BYTES_PER_LOGIT


def _inference_activations(shape: ModelShape, batch: int, seq: int, act_bytes: int, materialized: bool, cpu: bool) -> float:
    """Return the bytes of a no-grad forward: KV cache + the larger of one layer's transients and the logits.

    On the CPU the layers' transients are still mapped when the logits are built (glibc keeps freed
    mid-sized blocks), so the two add up there, the transients times ``CPU_LAYER_FACTOR``.
    """
    tokens = batch * seq
    h, q, kv = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    kv_cache = 2 * shape.layers * tokens * kv * act_bytes
    attention = (q + 2 * kv) + 2 * q
    layer = tokens * (2 * h + max(attention, _MLP_TRANSIENT[shape.mlp] * shape.intermediate)) * act_bytes
    if materialized:
        layer += EAGER_SCORE_COPIES * batch * shape.heads * seq * seq * act_bytes
    logits = tokens * (shape.vocab + 2 * h) * act_bytes
    if cpu:
        return kv_cache + layer * CPU_LAYER_FACTOR + logits
    return kv_cache + max(layer, logits)
