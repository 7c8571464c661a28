"""What a model looks like to the memory estimate: its shape, however it was given (catalog name, transformers
config, or loaded model), and which modules LoRA adapts in each architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..runtime.modules import parameter_count
from .registry import CatalogEntry, get_entry

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PretrainedConfig

_RMSNORM_FAMILIES = frozenset({"llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3", "olmo2", "smollm3"})

LORA_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "bloom": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
}


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
class ModelShape:
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


def mlp_kind(activation: str | None, gated: bool, family: str) -> str:
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


def shape_from_entry(entry: CatalogEntry) -> ModelShape:
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
    return ModelShape(
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
        mlp=mlp_kind(activation, entry.family in ("llama", "qwen2"), entry.family),
        norm="rmsnorm" if entry.family in _RMSNORM_FAMILIES else "layernorm",
        attention_dropout=entry.dropout("attention"),
        hidden_dropout=entry.dropout("hidden"),
        eager_only=entry.family == "bloom",
    )


def config_value(config: Any, *names: str, default: Any = None) -> Any:
    """Return the first of ``names`` that ``config`` has and is not None, else ``default``."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


# config attributes naming each dropout, in the order the architectures' configs use them
_DROPOUT_KEYS = {
    "attention": ("attn_pdrop", "attention_dropout", "attention_probs_dropout_prob"),
    "hidden": ("resid_pdrop", "hidden_dropout", "dropout", "hidden_dropout_prob"),
}


def _config_dims(config: Any) -> dict[str, int]:
    """Return the ``ModelShape`` sizes a config states, whatever its architecture calls them."""
    heads = int(config_value(config, "num_attention_heads", "n_head"))
    hidden = int(config_value(config, "hidden_size", "n_embd", "d_model"))
    return {
        "layers": int(config_value(config, "num_hidden_layers", "n_layer", "num_layers")),
        "heads": heads,
        "kv_heads": int(config_value(config, "num_key_value_heads", default=heads)),
        "head_dim": int(config_value(config, "head_dim", default=hidden // heads)),
        "hidden": hidden,
        "intermediate": int(config_value(config, "intermediate_size", "ffn_dim", "n_inner", default=4 * hidden)),
        "vocab": int(config.vocab_size),
        "context": int(config_value(config, "max_position_embeddings", "n_positions", "seq_length", default=2048)),
    }


def _linear_counts(model: Any, family: str) -> tuple[int, int, int, bool]:
    """Walk ``model``'s linear layers; return ``(quantizable weights, LoRA in+out, LoRA inputs, gated MLP)``.

    The output head stays 16-bit and adapters are not the model: both are left out. LoRA adapts the family's
    ``LORA_TARGET_MODULES``, or for unknown families every linear layer inside a numbered block.
    """
    import torch
    from transformers.pytorch_utils import Conv1D

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
        if module is output or "lora_" in name:
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
    return int(quantizable), lora_in_out, lora_inputs, gated


def shape_from_module(model: Any, config: Any, label: str, params: int | None = None) -> ModelShape:
    """Return the shape of a built model (real or on the meta device) by walking its linear layers."""
    family = str(getattr(config, "model_type", "unknown"))
    dims = _config_dims(config)
    quantizable, lora_in_out, lora_inputs, gated = _linear_counts(model, family)
    if params is None:
        params = parameter_count(model, count_lora=False)
    activation = config_value(config, "hidden_act", "activation_function")
    return ModelShape(
        label=label,
        family=family,
        params=int(params),
        **dims,
        quantizable=quantizable,
        lora_in_out=lora_in_out,
        lora_inputs=lora_inputs // max(dims["layers"], 1),
        mlp=mlp_kind(activation if isinstance(activation, str) else None, gated, family),
        norm="rmsnorm" if family in _RMSNORM_FAMILIES else "layernorm",
        attention_dropout=float(config_value(config, *_DROPOUT_KEYS["attention"], default=0.0)),
        hidden_dropout=float(config_value(config, *_DROPOUT_KEYS["hidden"], default=0.0)),
        eager_only=family == "bloom",
    )


def shape_from_config(config: PretrainedConfig) -> ModelShape:
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
    return shape_from_module(model, config, label)


def is_loaded_model(model: Any) -> bool:
    """True for a torch module with a config (a transformers or peft model)."""
    return hasattr(model, "config") and hasattr(model, "named_parameters")


def resolve_model(model: Any) -> tuple[ModelShape, str | None, str | None]:
    """Return ``(shape, dtype of a loaded model or None, its device type or None)``."""
    if isinstance(model, (str, CatalogEntry)):
        return shape_from_entry(get_entry(model)), None, None
    if is_loaded_model(model):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        first = next(base.parameters(), None)
        dtype = str(first.dtype).removeprefix("torch.") if first is not None else None
        device = first.device.type if first is not None else None
        label = str(getattr(base.config, "name_or_path", "") or base.config.model_type)
        return shape_from_module(base, base.config, label), dtype, device
    if hasattr(model, "model_type") and hasattr(model, "to_dict"):
        return shape_from_config(model), None, None
    raise ValueError(
        f"model must be a catalog name (e.g. 'gpt2'), a transformers config or a loaded model, got "
        f"{type(model).__name__}: {model!r:.80}"
    )
