"""How much memory will this model need? A peak-memory estimate for inference, LoRA, QLoRA and full training.

``estimate_memory(model, mode, batch_size=..., seq_len=...)`` returns a ``MemoryEstimate``: the bytes for
weights, gradients, optimizer state, activations and a fixed overhead, and their total. ``model`` is a
catalog name (``"gpt2"``, ``"Qwen/Qwen2.5-0.5B"``), a ``transformers`` config, or a loaded model.

How each part is counted (the rules of thumb, checked against measured peaks in docs/memory-estimates.md):

- **weights**: parameters x bytes of the dtype (float32 4, float16/bfloat16 2). QLoRA: the linear layers
  of the blocks in 4-bit NF4, 0.5 byte per weight plus one float32 absmax per 64-weight block (0.0625 B);
  embeddings, the output head, norms and biases stay 16-bit. LoRA/QLoRA add the adapters in float32.
- **trainable parameters**: full: all. LoRA/QLoRA: ``r x (in + out)`` for every attention and MLP
  projection (``LORA_TARGET_MODULES``).
- **gradients**: one per trainable parameter, float32 for adapters, the weight dtype for full training,
  plus the float32 scratch tensor AdamW's foreach step builds (``sqrt(exp_avg_sq)``).
- **optimizer**: AdamW keeps two float32 moments (8 B per trainable parameter); full training in a 16-bit
  dtype also keeps a float32 master copy (4 B): 16 B per parameter in all, the usual mixed-precision figure.
- **activations**, training: what the forward pass saves for the backward, per layer and token in the
  compute dtype: both norms' inputs and outputs (LayerNorm 2 x hidden each, RMSNorm 3 x hidden),
  queries/keys/values, the attention output twice (kernel output and its contiguous copy) and the MLP
  tensors its activation function keeps (``_MLP_SAVED``: ReLU 1, GELU 2, GPT-2's Python "gelu_new" 5,
  gated SiLU 4 x intermediate); one byte per element for each dropout mask; attention scores
  ``batch x heads x seq^2`` when they are materialized (eager attention, BLOOM, or sdpa with attention
  dropout on the CPU, whose fused kernel has no dropout); LoRA dropout keeps one more copy of each adapted
  layer's input, and 16-bit training casts that input to float32 for the adapter. Plus the logits: the
  loss works on float32 logits and its backward holds three ``batch x seq x vocab`` float32 tensors at
  once (12 B per element); with a 50K-150K vocabulary this dominates short, small models. Gradient
  checkpointing keeps only each layer's input plus one layer's saved tensors.
- **activations**, inference (a forward pass under ``no_grad`` with the KV cache on): the KV cache
  (2 x layers x tokens x kv_heads x head_dim), plus the larger of one layer's transient tensors and the
  logits (``batch x seq x vocab`` in the compute dtype).
  On the CPU, glibc's allocator keeps freed mid-sized blocks mapped, so peak RSS exceeds the live tensors:
  the per-layer activations count ``CPU_LAYER_FACTOR`` (1.6) times (measured; the big logits tensors are
  mapped and unmapped whole and count once), and at inference the layers' transients and the logits add
  up instead of taking turns.
- **overhead**: on CUDA the context and cuBLAS workspaces (``CUDA_CONTEXT_BYTES``); on the CPU the
  resident memory of a Python process that imported torch and transformers and built a model object
  (``CPU_BASELINE_BYTES``, + ``CPU_TRAINING_BYTES`` when training), measured with
  ``benchmarks/memory_estimates.py``.

``total = weights + optimizer + overhead + max(activations, gradients)``: the backward pass frees saved
activations as it produces gradients, so the two never peak together. The estimate is the peak of one
process doing only this work, loading excluded (``from_pretrained`` can hold a second copy of the largest
tensor for a moment). Allocator caching on CUDA (what nvidia-smi shows as reserved) commonly adds 5-20 %
on top, which is why ``pick_model`` plans with a safety factor.
``measure_peak_memory`` runs a case for real in a fresh process to check an estimate.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..runtime.modules import parameter_count
from .registry import CatalogEntry, get_entry

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("inference", "lora", "qlora", "full")
DTYPES: tuple[str, ...] = ("auto", "float32", "float16", "bfloat16")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
ATTN_IMPLEMENTATIONS: tuple[str, ...] = ("sdpa", "eager", "flash_attention_2")
GB = 1024**3
MB = 1024**2

# --- rules of thumb (see the module docstring; calibrated in docs/memory-estimates.md) ------------------
CUDA_CONTEXT_BYTES = 512 * MB  # CUDA context + cuBLAS/cuDNN handles: 0.4-0.6 GB on T4..H100, outside torch's allocator
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
_RMSNORM_FAMILIES = frozenset({"llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3", "olmo2", "smollm3"})

LORA_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "bloom": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
}

_DTYPE_ALIASES = {
    "auto": "auto", "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16",
}  # fmt: skip
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def lora_target_modules(family: str) -> list[str]:
    """Return the module names LoRA adapts for a ``transformers`` model type: the attention and MLP projections.

    Unknown model types raise ``ValueError``; pass ``target_modules="all-linear"`` to peft for those.
    """
    if family not in LORA_TARGET_MODULES:
        raise ValueError(
            f"no LoRA target list for model type {family!r}; known: {sorted(LORA_TARGET_MODULES)}; "
            "use peft's target_modules='all-linear' for other architectures"
        )
    return list(LORA_TARGET_MODULES[family])


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


# --- the model's shape ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    """What the estimate needs to know about a model, however it was given.

    ``quantizable``: weights of the linear layers a 4-bit load quantizes (all but the output head).
    ``lora_in_out``: sum of ``in + out`` features over the LoRA target modules (adapters = r x this).
    ``lora_inputs``: per layer, sum of the target modules' input widths. ``mlp``: a ``_MLP_SAVED`` key.
    """

    label: str
    family: str
    params: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    context: int
    quantizable: int
    lora_in_out: int
    lora_inputs: int
    mlp: str
    norm: str
    attention_dropout: float
    hidden_dropout: float
    eager_only: bool


def _mlp_kind(activation: str | None, gated: bool, family: str) -> str:
    """Return the ``_MLP_SAVED`` key for an activation function name."""
    if family == "bloom":
        return "bloom_gelu"
    name = (activation or "gelu").lower()
    if gated:
        return "silu_gated" if name in ("silu", "swish") else "gelu_gated"
    if name == "relu":
        return "relu"
    if name == "gelu_new":
        return "gelu_new"
    return "gelu"


def _shape_from_entry(entry: CatalogEntry) -> _Shape:
    """Return the shape of a catalog entry from its published numbers (no torch needed)."""
    h, i, layers = entry.hidden, entry.intermediate, entry.layers
    q, kv = entry.heads * entry.head_dim, entry.kv_heads * entry.head_dim
    overrides = dict(entry.config_overrides)
    extra_quantizable = 0
    if entry.family in ("llama", "qwen2"):
        per_layer_weights = h * q + 2 * h * kv + q * h + 3 * h * i
        in_out = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
        inputs = 5 * h + q + i
    elif entry.family == "opt":
        per_layer_weights = 4 * h * h + 2 * h * i
        in_out = 4 * 2 * h + 2 * (h + i)
        inputs = 5 * h + i
        projection = int(overrides.get("word_embed_proj_dim", h))
        if projection != h:  # project_in / project_out between the narrow embeddings and the blocks
            extra_quantizable = 2 * projection * h
    else:  # gpt2, gpt_neox, bloom: fused qkv (h -> 3h), output (h -> h), MLP up and down
        per_layer_weights = 4 * h * h + 2 * h * i
        in_out = (h + 3 * h) + 2 * h + 2 * (h + i)
        inputs = 3 * h + i
    activation = {"gpt2": "gelu_new", "opt": "relu", "gpt_neox": "gelu", "llama": "silu", "qwen2": "silu"}.get(entry.family)
    return _Shape(
        label=entry.alias,
        family=entry.family,
        params=entry.params,
        layers=layers,
        heads=entry.heads,
        kv_heads=entry.kv_heads,
        head_dim=entry.head_dim,
        hidden=h,
        intermediate=i,
        vocab=entry.vocab,
        context=entry.context,
        quantizable=layers * per_layer_weights + extra_quantizable,
        lora_in_out=layers * in_out,
        lora_inputs=inputs,
        mlp=_mlp_kind(activation, entry.family in ("llama", "qwen2"), entry.family),
        norm="rmsnorm" if entry.family in _RMSNORM_FAMILIES else "layernorm",
        attention_dropout=entry.dropout("attention"),
        hidden_dropout=entry.dropout("hidden"),
        eager_only=entry.family == "bloom",
    )


def _config_value(config: Any, *names: str, default: Any = None) -> Any:
    """Return the first of ``names`` that ``config`` has and is not None, else ``default``."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _shape_from_module(model: Any, config: Any, label: str, params: int | None = None) -> _Shape:
    """Return the shape of a built model (real or on the meta device) by walking its linear layers."""
    import torch
    from transformers.pytorch_utils import Conv1D

    family = str(getattr(config, "model_type", "unknown"))
    layers = int(_config_value(config, "num_hidden_layers", "n_layer", "num_layers"))
    heads = int(_config_value(config, "num_attention_heads", "n_head"))
    hidden = int(_config_value(config, "hidden_size", "n_embd", "d_model"))
    kv_heads = int(_config_value(config, "num_key_value_heads", default=heads))
    head_dim = int(_config_value(config, "head_dim", default=hidden // heads))
    intermediate = int(_config_value(config, "intermediate_size", "ffn_dim", "n_inner", default=4 * hidden))
    context = int(_config_value(config, "max_position_embeddings", "n_positions", "seq_length", default=2048))
    targets = LORA_TARGET_MODULES.get(family)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    quantizable = lora_in_out = lora_inputs = 0
    gated = False
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            fan_in, fan_out = module.in_features, module.out_features
        elif isinstance(module, Conv1D):
            fan_in, fan_out = module.weight.shape
        else:
            continue
        if module is output or "lora_" in name:  # the output head stays 16-bit; adapters are not the model
            continue
        parts = name.split(".")
        if parts[-1] == "base_layer":  # a layer peft wrapped: its name is the wrapper's
            parts = parts[:-1]
        leaf = parts[-1]
        gated = gated or leaf in ("gate_proj", "gate_up_proj", "w1")
        quantizable += module.weight.numel()
        adapted = leaf in targets if targets is not None else any(part.isdigit() for part in parts)
        if adapted:
            lora_in_out += int(fan_in) + int(fan_out)
            lora_inputs += int(fan_in)
    if params is None:
        params = parameter_count(model, count_lora=False)
    dropout_keys = {
        "attention": ("attn_pdrop", "attention_dropout", "attention_probs_dropout_prob"),
        "hidden": ("resid_pdrop", "hidden_dropout", "dropout", "hidden_dropout_prob"),
    }
    activation = _config_value(config, "hidden_act", "activation_function")
    return _Shape(
        label=label,
        family=family,
        params=int(params),
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        hidden=hidden,
        intermediate=intermediate,
        vocab=int(config.vocab_size),
        context=context,
        quantizable=int(quantizable),
        lora_in_out=lora_in_out,
        lora_inputs=lora_inputs // max(layers, 1),
        mlp=_mlp_kind(activation if isinstance(activation, str) else None, gated, family),
        norm="rmsnorm" if family in _RMSNORM_FAMILIES else "layernorm",
        attention_dropout=float(_config_value(config, *dropout_keys["attention"], default=0.0)),
        hidden_dropout=float(_config_value(config, *dropout_keys["hidden"], default=0.0)),
        eager_only=family == "bloom",
    )


def _shape_from_config(config: PretrainedConfig) -> _Shape:
    """Return the shape of the model ``config`` describes, built on the meta device (no memory, exact counts)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError) as error:
        raise ValueError(
            f"cannot build a causal LM from this {type(config).__name__} ({error}); estimate_memory needs a "
            "decoder-only (causal LM) config"
        ) from error
    label = str(getattr(config, "name_or_path", "") or config.model_type)
    return _shape_from_module(model, config, label)


def _is_loaded_model(model: Any) -> bool:
    """True for a torch module with a config (a transformers or peft model)."""
    return hasattr(model, "config") and hasattr(model, "named_parameters")


def _resolve_model(model: Any) -> tuple[_Shape, str | None, str | None]:
    """Return ``(shape, dtype of a loaded model or None, its device type or None)``."""
    if isinstance(model, (str, CatalogEntry)):
        return _shape_from_entry(get_entry(model)), None, None
    if _is_loaded_model(model):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        first = next(base.parameters(), None)
        dtype = str(first.dtype).removeprefix("torch.") if first is not None else None
        device = first.device.type if first is not None else None
        label = str(getattr(base.config, "name_or_path", "") or base.config.model_type)
        return _shape_from_module(base, base.config, label), dtype, device
    if hasattr(model, "model_type") and hasattr(model, "to_dict"):
        return _shape_from_config(model), None, None
    raise ValueError(
        f"model must be a catalog name (e.g. 'gpt2'), a transformers config or a loaded model, got "
        f"{type(model).__name__}: {model!r:.80}"
    )


# --- arguments -----------------------------------------------------------------------------------------


def _check_choice(label: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return ``value`` lower-cased if it is one of ``choices``, else raise ValueError naming both."""
    key = value.strip().lower() if isinstance(value, str) else value
    if key not in choices:
        raise ValueError(f"{label} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return key


def _check_positive_int(label: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 1, else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{label} must be an integer >= 1, got {value!r}")
    return value


def _normalize_dtype(dtype: Any) -> str:
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
    ``attn_implementation`` "eager" materializes the ``seq x seq`` attention scores. See the module
    docstring for every rule of thumb.
    """
    mode = _check_choice("mode", mode, MODES)
    dtype = _normalize_dtype(dtype)
    device = _check_choice("device", device, DEVICES)
    attn_implementation = _check_choice("attn_implementation", attn_implementation, ATTN_IMPLEMENTATIONS)
    batch_size = _check_positive_int("batch_size", batch_size)
    seq_len = _check_positive_int("seq_len", seq_len)
    lora_r = _check_positive_int("lora_r", lora_r)
    if not 0.0 <= float(lora_dropout) < 1.0:
        raise ValueError(f"lora_dropout must be in [0, 1), got {lora_dropout!r}")
    shape, model_dtype, model_device = _resolve_model(model)
    device, dtype = _resolve_device_dtype(device, dtype, mode, model_dtype, model_device)
    act_bytes = _DTYPE_BYTES[dtype]
    training = mode != "inference"
    notes: list[str] = []
    if seq_len > shape.context:
        notes.append(f"seq_len {seq_len} is longer than the model's context of {shape.context} tokens")
    if mode == "qlora" and device != "cuda":
        notes.append("4-bit QLoRA needs a CUDA GPU with bitsandbytes; on the CPU this figure is a what-if")
    if gradient_checkpointing and device == "cpu" and training:
        notes.append(
            "on the CPU, gradient checkpointing's recomputation fragments the heap: measured peaks ran about "
            "1.4-1.5x this estimate (docs/memory-estimates.md)"
        )

    lora_params = lora_r * shape.lora_in_out if mode in ("lora", "qlora") else 0
    trainable = shape.params if mode == "full" else lora_params
    weights = _weight_bytes(shape, mode, dtype) + lora_params * ADAPTER_BYTES
    grad_bytes = act_bytes if mode == "full" else ADAPTER_BYTES
    gradients = trainable * (grad_bytes + STEP_SCRATCH_BYTES)
    optimizer = trainable * (ADAM_BYTES + (MASTER_BYTES if mode == "full" and act_bytes < 4 else 0))
    materialized = _scores_materialized(shape, attn_implementation, device, training)
    cpu = device == "cpu"
    if training:
        activations = _training_activations(
            shape, mode, batch_size, seq_len, act_bytes, materialized, lora_dropout, gradient_checkpointing, cpu
        )
    else:
        activations = _inference_activations(shape, batch_size, seq_len, act_bytes, materialized, cpu)
    if device == "cuda":
        overhead = CUDA_CONTEXT_BYTES
    else:
        overhead = CPU_BASELINE_BYTES + (CPU_TRAINING_BYTES if training else 0)
    estimate = MemoryEstimate(
        model=shape.label,
        mode=mode,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        seq_len=seq_len,
        params=shape.params,
        trainable_params=trainable,
        weights=int(weights),
        gradients=int(gradients),
        optimizer=int(optimizer),
        activations=int(activations),
        overhead=int(overhead),
        notes=tuple(notes),
    )
    logger.debug("estimate_memory: %s", estimate.summary())
    return estimate


def _weight_bytes(shape: _Shape, mode: str, dtype: str) -> float:
    """Return the bytes of the model's own weights: dtype size each, or NF4 linears + 16-bit rest for QLoRA."""
    if mode == "qlora":
        return shape.quantizable * QLORA_BYTES_PER_WEIGHT + (shape.params - shape.quantizable) * 2
    return shape.params * _DTYPE_BYTES[dtype]


def _scores_materialized(shape: _Shape, attn_implementation: str, device: str, training: bool) -> bool:
    """True when the ``batch x heads x seq x seq`` attention scores exist in memory.

    Eager attention and BLOOM (ALiBi, eager only) always build them. sdpa's fused CPU kernel has no
    dropout, so training a model with attention dropout on the CPU falls back to the math kernel, which
    builds them too; flash/memory-efficient kernels on CUDA do not.
    """
    if attn_implementation == "eager" or shape.eager_only:
        return True
    return training and device == "cpu" and shape.attention_dropout > 0


def _training_activations(
    shape: _Shape,
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


def _inference_activations(shape: _Shape, batch: int, seq: int, act_bytes: int, materialized: bool, cpu: bool) -> float:
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


# --- measuring a case for real --------------------------------------------------------------------------

_CHILD = r"""
import json, resource, sys
spec = json.loads(sys.stdin.read())
import torch
from transformers import AutoConfig, AutoModelForCausalLM
if spec["mode"] in ("lora", "qlora"):
    from peft import LoraConfig, get_peft_model
def _hwm():
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return None
# ru_maxrss is inherited through fork + exec: a child of a large process would report the parent's size. On Linux,
# reset this process's own peak (clear_refs 5) and read VmHWM instead.
try:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    _own = _hwm() is not None
except OSError:
    _own = False
def peak():
    return _hwm() if _own else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
result = {"after_imports": peak()}
torch.manual_seed(0)
config = dict(spec["config"])
config = AutoConfig.for_model(config.pop("model_type"), **config)
dtype = getattr(torch, spec["dtype"])
cuda = spec["device"] == "cuda"
if cuda:
    torch.zeros(1, device="cuda")
    free, total = torch.cuda.mem_get_info()
    context = total - free - torch.cuda.memory_reserved()
model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=spec["attn_implementation"])
model.to(spec["device"])
result["after_build"] = peak()
ids = torch.randint(0, config.vocab_size, (spec["batch_size"], spec["seq_len"]), device=spec["device"])
if cuda:
    torch.cuda.reset_peak_memory_stats()
if spec["mode"] == "inference":
    model.eval()
    with torch.no_grad():
        for _ in range(spec["steps"]):
            model(ids)
else:
    if spec["mode"] == "lora":
        lora = LoraConfig(r=spec["lora_r"], lora_alpha=2 * spec["lora_r"], lora_dropout=spec["lora_dropout"],
                          target_modules=spec["targets"], fan_in_fan_out=config.model_type == "gpt2",
                          task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    if spec["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for _ in range(spec["steps"]):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del loss
if cuda:
    torch.cuda.synchronize()
    result["cuda_peak"] = torch.cuda.max_memory_allocated() + context
    result["cuda_context"] = context
result["peak"] = peak()
print("RESULT " + json.dumps(result))
"""


def measure_peak_memory(
    config: PretrainedConfig | str,
    mode: str = "inference",
    *,
    batch_size: int = 1,
    seq_len: int = 512,
    dtype: str = "float32",
    device: str = "cpu",
    lora_r: int = 16,
    lora_dropout: float = 0.0,
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
    steps: int = 2,
    timeout: float = 600.0,
) -> dict[str, int]:
    """Run one case for real in a fresh Python process and return its measured memory in bytes.

    The child builds a random-weight model from ``config`` (a transformers config or a catalog name: no
    download), then runs ``steps`` forward passes under ``no_grad`` (inference) or training steps with
    AdamW (``full``; ``lora`` with peft adapters on ``LORA_TARGET_MODULES``). Returned keys: ``peak``
    (the child's peak resident memory, ``ru_maxrss``), ``after_imports`` and ``after_build``; on CUDA also
    ``cuda_peak`` (``max_memory_allocated`` + the context) and ``cuda_context``. QLoRA is not measured
    here (it needs a quantized checkpoint). ``full`` in a 16-bit dtype trains the 16-bit parameters
    directly (no float32 master copy), so compare it with ``estimate_memory`` in float32 only.
    """
    mode = _check_choice("mode", mode, ("inference", "lora", "full"))
    device = _check_choice("device", device, ("cpu", "cuda"))
    dtype = _normalize_dtype(dtype)
    if dtype == "auto":
        raise ValueError("measure_peak_memory needs an explicit dtype: 'float32', 'float16' or 'bfloat16'")
    if isinstance(config, (str, CatalogEntry)):
        config = get_entry(config).to_config()
    family = str(config.model_type)
    attn_implementation = _check_choice("attn_implementation", attn_implementation, ATTN_IMPLEMENTATIONS)
    if family == "bloom":  # transformers refuses sdpa for BLOOM (ALiBi): it always runs eager attention
        attn_implementation = "eager"
    spec = {
        "config": config.to_dict(),
        "mode": mode,
        "batch_size": _check_positive_int("batch_size", batch_size),
        "seq_len": _check_positive_int("seq_len", seq_len),
        "dtype": dtype,
        "device": device,
        "lora_r": _check_positive_int("lora_r", lora_r),
        "lora_dropout": float(lora_dropout),
        "targets": lora_target_modules(family) if mode == "lora" else None,
        "attn_implementation": attn_implementation,
        "gradient_checkpointing": bool(gradient_checkpointing),
        "steps": _check_positive_int("steps", steps),
    }
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    logger.debug("measuring %s %s %dx%d (%s, %s) in a fresh process", family, mode, batch_size, seq_len, dtype, device)
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith("RESULT "):
            return {key: int(value) for key, value in json.loads(line[len("RESULT ") :]).items()}
    tail = (completed.stderr or completed.stdout)[-2000:]
    raise RuntimeError(f"memory measurement failed (exit code {completed.returncode}): {tail}")


def relative_error(measured: float, estimated: float) -> float:
    """Return ``measured / estimated - 1``: positive when the estimate was too low."""
    if estimated <= 0 or not math.isfinite(estimated):
        raise ValueError(f"estimated must be a positive finite number of bytes, got {estimated!r}")
    return measured / estimated - 1
