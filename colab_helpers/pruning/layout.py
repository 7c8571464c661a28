"""Where attention lives in each architecture, and how many heads each layer has.

One small table (``_SPECS``) says, per model type, where the attention module sits in a decoder layer and how its
projections are laid out; everything else in :mod:`colab_helpers.pruning` works from that table through one code
path. A row may hold only for some settings of the config (``when``): GPTBigCode and Falcon lay out their fused
projection differently with multi-query attention. Decoders missing from the table are found by name when their
attention has separate ``q_proj``/``k_proj``/``v_proj`` and one output projection. Anything that is not a causal
language model (a single layer, an encoder such as BERT, an encoder-decoder) is refused up front with its type named.

Head counts are read from the weights, not from the config: after physical removal each layer may have a
different number of heads while ``model.config`` keeps the original counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .surgery import in_features, out_features, weight_out_in

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

_FUSED_LAYOUTS = ("blocks", "interleaved", "grouped")


@dataclass(frozen=True)
class AttentionSpec:
    """One row of the table: where attention sits in a decoder layer and how its projections are laid out.

    ``attn`` is the dotted path from a decoder layer to the attention module, the projection names are relative
    to that module. Separate projections set ``q``, ``k``, ``v``; a fused one sets ``qkv`` and ``fused_layout``:
    ``"blocks"`` is ``[all q | all k | all v]`` (GPT-2 ``c_attn``, Phi-3, multi-query GPTBigCode and Falcon, whose
    k and v blocks hold one head), ``"interleaved"`` is ``[q k v]`` per head (GPT-NeoX, BLOOM), ``"grouped"`` is
    ``[q ... q k v]`` per key/value head (Falcon's new decoder architecture). ``alibi`` marks models passing per-head
    ALiBi slopes to attention as the ``alibi`` argument (BLOOM), which must be sliced to the kept heads after
    removal. ``when`` lists ``(config attribute, value)`` pairs the row needs; rows are tried in table order.
    """

    model_types: tuple[str, ...]
    attn: str
    out: str
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None
    fused_layout: str | None = None
    alibi: bool = False
    when: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        separate = (self.q, self.k, self.v)
        if self.qkv is None and None in separate:
            raise ValueError(f"{self.model_types}: set q, k and v, or qkv with fused_layout")
        if self.qkv is not None and self.fused_layout not in _FUSED_LAYOUTS:
            raise ValueError(
                f"{self.model_types}: fused_layout must be one of {_FUSED_LAYOUTS}, got {self.fused_layout!r}"
            )

    @property
    def fused(self) -> bool:
        """True when q, k and v come out of one projection."""
        return self.qkv is not None


def _separate(*model_types: str, attn: str = "self_attn", out: str = "o_proj") -> AttentionSpec:
    return AttentionSpec(model_types, attn=attn, out=out, q="q_proj", k="k_proj", v="v_proj")


# Read from each architecture's attention forward in transformers 5.x (models/*/modeling_*.py).
_SPECS: tuple[AttentionSpec, ...] = (
    AttentionSpec(("gpt2",), attn="attn", qkv="c_attn", fused_layout="blocks", out="c_proj"),
    _separate("opt", out="out_proj"),
    AttentionSpec(("gpt_neox",), attn="attention", qkv="query_key_value", fused_layout="interleaved", out="dense"),
    AttentionSpec(
        ("bloom",), attn="self_attention", qkv="query_key_value", fused_layout="interleaved", out="dense", alibi=True
    ),
    _separate("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3_text", "stablelm"),
    _separate("phi", out="dense"),
    _separate("gpt_neo", attn="attn.attention", out="out_proj"),
    _separate("gptj", attn="attn", out="out_proj"),
    AttentionSpec(("phi3",), attn="self_attn", qkv="qkv_proj", fused_layout="blocks", out="o_proj"),
    # Multi-query: q heads, then one k and one v head; otherwise [q k v] per head.
    AttentionSpec(
        ("gpt_bigcode",), attn="attn", qkv="c_attn", fused_layout="blocks", out="c_proj", when=(("multi_query", True),)
    ),
    AttentionSpec(("gpt_bigcode",), attn="attn", qkv="c_attn", fused_layout="interleaved", out="c_proj"),
    # Falcon: new decoder architecture (Falcon-40B) -> [q.. k v] per key/value group; else multi-query -> one k/v head;
    # else [q k v] per head. ``alibi`` configs (Falcon-RW) pass per-head slopes like BLOOM.
    AttentionSpec(
        ("falcon",), attn="self_attention", qkv="query_key_value", fused_layout="grouped", out="dense", alibi=True,
        when=(("new_decoder_architecture", True),),
    ),
    AttentionSpec(
        ("falcon",), attn="self_attention", qkv="query_key_value", fused_layout="blocks", out="dense", alibi=True,
        when=(("multi_query", True),),
    ),
    AttentionSpec(
        ("falcon",), attn="self_attention", qkv="query_key_value", fused_layout="interleaved", out="dense", alibi=True
    ),
)

# Name-based discovery for decoders not in the table: attention with these separate projections.
_DISCOVERY_OUT_NAMES = ("o_proj", "out_proj", "dense", "c_proj")


def supported_architectures() -> tuple[str, ...]:
    """Return the model types of the table (others may still work through name-based discovery)."""
    return tuple(dict.fromkeys(t for spec in _SPECS for t in spec.model_types))


def _unsupported(model: Any, why: str) -> NotImplementedError:
    arch = model_type_of(model)
    return NotImplementedError(
        f"cannot locate attention heads in architecture {arch!r} ({type(model).__name__}): {why}. Supported: "
        f"{', '.join(supported_architectures())}, and decoders whose attention has separate q_proj/k_proj/v_proj "
        f"and one of {'/'.join(_DISCOVERY_OUT_NAMES)} (found by name). For another layout add a row to "
        "colab_helpers.pruning.layout._SPECS."
    )


@dataclass(frozen=True)
class HeadLayout:
    """Per-layer head counts of a model: ``query_heads[i]`` and ``kv_heads[i]`` of decoder layer ``i``.

    ``max_heads`` is the width of every ``[layers, max_heads]`` score or mask tensor of this package; entries at or
    beyond ``query_heads[i]`` in row ``i`` stand for no head (NaN in scores, False in masks).
    """

    architecture: str
    query_heads: tuple[int, ...]
    kv_heads: tuple[int, ...]
    head_dim: int
    num_layers: int = field(init=False)
    max_heads: int = field(init=False)
    total_heads: int = field(init=False)

    def __post_init__(self) -> None:
        if len(self.query_heads) != len(self.kv_heads) or not self.query_heads:
            raise ValueError(
                f"query_heads and kv_heads need one entry per layer, got {self.query_heads} / {self.kv_heads}"
            )
        for q, kv in zip(self.query_heads, self.kv_heads):
            if q < 1 or kv < 1 or q % kv:
                raise ValueError(f"each layer needs q >= 1 query heads in kv >= 1 equal groups, got q={q}, kv={kv}")
        object.__setattr__(self, "num_layers", len(self.query_heads))
        object.__setattr__(self, "max_heads", max(self.query_heads))
        object.__setattr__(self, "total_heads", sum(self.query_heads))

    @property
    def groups(self) -> tuple[int, ...]:
        """Query heads per key/value head, per layer (1 without grouped-query attention)."""
        return tuple(q // kv for q, kv in zip(self.query_heads, self.kv_heads))

    def summary(self) -> str:
        """One line, e.g. ``llama: 4 layers, 32 query heads (8 per layer), 2 key/value heads per layer, head size 16``."""
        def per_layer(counts: tuple[int, ...]) -> str:
            return f"{counts[0]} per layer" if len(set(counts)) == 1 else f"{min(counts)}-{max(counts)} per layer"

        return (
            f"{self.architecture}: {self.num_layers} layers, {self.total_heads} query heads "
            f"({per_layer(self.query_heads)}), key/value heads {per_layer(self.kv_heads)}, head size {self.head_dim}"
        )

    def _repr_markdown_(self) -> str:
        return f"**Head layout** · {self.summary()}"


@dataclass
class AttentionSite:
    """One decoder layer's attention module, its table row and its current head counts (internal)."""

    index: int
    attn: nn.Module
    spec: AttentionSpec
    head_dim: int
    n_q: int
    n_kv: int

    def proj(self, name: str | None) -> nn.Module:
        """Return the projection called ``name`` (a dotted path below the attention module)."""
        assert name is not None
        return get_path(self.attn, name)

    @property
    def out_proj(self) -> nn.Module:
        return self.proj(self.spec.out)


def head_layout(model: nn.Module) -> HeadLayout:
    """Return the per-layer query/key-value head counts and head size of ``model``.

    Raises ``NotImplementedError`` naming the architecture and the supported list when attention cannot be found.
    """
    return layout_of(model, attention_sites(model))


def layout_of(model: nn.Module, sites: list[AttentionSite]) -> HeadLayout:
    """Return the :class:`HeadLayout` of already located attention sites."""
    return HeadLayout(
        architecture=model_type_of(model),
        query_heads=tuple(s.n_q for s in sites),
        kv_heads=tuple(s.n_kv for s in sites),
        head_dim=sites[0].head_dim,
    )


def attention_sites(model: nn.Module) -> list[AttentionSite]:
    """Locate every decoder layer's attention module and read its head counts from the weights.

    Raises ``TypeError`` naming the type when ``model`` is not a causal language model (not an ``nn.Module``, no
    ``config``, an encoder or an encoder-decoder), ``NotImplementedError`` when its attention cannot be located.
    """
    check_causal_lm(model)
    layers, spec = _decoder_layers(model)
    sites = []
    for index, layer in enumerate(layers):
        try:
            attn = get_path(layer, spec.attn)
        except AttributeError as exc:
            raise _unsupported(model, f"layer {index} has no attention module at {spec.attn!r}") from exc
        sites.append(_site(model, index, attn, spec))
    return sites


def _site(model: nn.Module, index: int, attn: nn.Module, spec: AttentionSpec) -> AttentionSite:
    head_dim = _head_dim(model, attn)
    q_dim = in_features(get_path(attn, spec.out))
    if q_dim % head_dim:
        raise _unsupported(
            model, f"layer {index}: output projection input {q_dim} is not a multiple of head size {head_dim}"
        )
    n_q = q_dim // head_dim
    if spec.fused:
        fused_out = out_features(get_path(attn, spec.qkv))  # type: ignore[arg-type]
        if spec.fused_layout == "interleaved":
            n_kv = fused_out // (3 * head_dim)
        else:  # blocks and grouped both hold n_q query heads and n_kv key and value heads
            n_kv = (fused_out - q_dim) // (2 * head_dim)
    else:
        n_kv = out_features(get_path(attn, spec.k)) // head_dim  # type: ignore[arg-type]
    if n_kv < 1 or n_q % n_kv:
        raise _unsupported(model, f"layer {index}: {n_q} query heads do not split into {n_kv} key/value groups")
    return AttentionSite(index=index, attn=attn, spec=spec, head_dim=head_dim, n_q=n_q, n_kv=n_kv)


def _type_name(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else kind.__qualname__


def check_causal_lm(model: Any) -> None:
    """Raise ``TypeError`` naming what ``model`` is when it cannot be a causal language model.

    Accepted: any ``nn.Module`` with a ``config`` (a transformers model, a peft wrapper, a test double); refused:
    other objects, bare layers without a config, encoders (BERT and other masked-LM models not configured as
    decoders) and encoder-decoders (T5, BART), whose attention is not a decoder's causal self-attention.
    """
    from torch import nn

    if not isinstance(model, nn.Module):
        hint = " (load_model returns (model, tokenizer): pass the model alone)" if isinstance(model, tuple) else ""
        raise TypeError(
            f"expected a causal language model (an nn.Module such as AutoModelForCausalLM.from_pretrained(...) "
            f"returns), got {_type_name(model)}{hint}"
        )
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(
            f"expected a causal language model, got {_type_name(model)}, which has no .config: pass the whole model "
            "(e.g. AutoModelForCausalLM.from_pretrained(...)), not one of its layers"
        )
    model_type = str(getattr(config, "model_type", "") or "")
    if getattr(config, "is_encoder_decoder", False) is True:
        raise TypeError(
            f"{_type_name(model)} (model type {model_type!r}) is an encoder-decoder model, not a causal language "
            "model; head pruning here works on decoder-only models (AutoModelForCausalLM)"
        )
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES as masked_lm
    except ImportError:  # pragma: no cover - transformers is a dependency
        masked_lm = {}
    if model_type in masked_lm and getattr(config, "is_decoder", False) is not True:
        raise TypeError(
            f"{_type_name(model)} (model type {model_type!r}) is an encoder (bidirectional attention), not a causal "
            "language model; head pruning here works on decoder-only models (AutoModelForCausalLM)"
        )


def model_type_of(model: Any) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "model_type", None) or type(model).__name__)


def text_config(model: Any) -> Any:
    """Return the text part of the model's config (the config itself for plain decoders)."""
    config = model.config
    getter = getattr(config, "get_text_config", None)
    if callable(getter):
        try:
            return getter()
        except TypeError:  # older signatures
            return config
    return config


def _num_layers(model: Any) -> int | None:
    config = text_config(model)
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _decoder_layers(model: nn.Module) -> tuple[list[nn.Module], AttentionSpec]:
    """Return the decoder layers and the table row that describes their attention."""
    _, layers, spec = decoder_layer_list(model)
    return list(layers), spec


def decoder_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList, AttentionSpec]:
    """Return ``(dotted path, ModuleList, attention row)`` of the decoder layers: the first ModuleList with one
    entry per hidden layer (``config.num_hidden_layers``) whose layers hold attention where the table says."""
    from torch import nn

    n = _num_layers(model)
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0 or (n is not None and len(module) != n):
            continue
        spec = _spec_for(model, module[0])
        if spec is not None:
            return path, module, spec
    raise _unsupported(model, f"no list of {n} decoder layers with a known attention module found")


def _spec_for(model: nn.Module, layer: nn.Module) -> AttentionSpec | None:
    """Return the table row for ``model`` if ``layer`` holds attention where it says, else one found by name."""
    model_type = model_type_of(model)
    config = text_config(model)
    for spec in _SPECS:
        if model_type in spec.model_types and all(getattr(config, k, None) == v for k, v in spec.when):
            try:
                get_path(layer, spec.attn)
            except AttributeError:
                return None
            return spec
    # Name-based discovery: the shallowest submodule with separate q/k/v and an output projection.
    for path, module in layer.named_modules():
        children = dict(module.named_children())
        if not {"q_proj", "k_proj", "v_proj"} <= children.keys():
            continue
        for out in _DISCOVERY_OUT_NAMES:
            if out in children:
                logger.debug("attention of %r found by name at %r (output projection %r)", model_type, path, out)
                return AttentionSpec((model_type,), attn=path, out=out, q="q_proj", k="k_proj", v="v_proj")
    return None


def get_path(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        if part:
            module = getattr(module, part)
    return module


def _head_dim(model: nn.Module, attn: nn.Module) -> int:
    for name in ("head_dim", "head_size", "attention_head_size"):
        value = getattr(attn, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    config = text_config(model)
    value = getattr(config, "head_dim", None)
    if isinstance(value, int) and value > 0:
        return value
    hidden = getattr(config, "hidden_size", None)
    heads = getattr(config, "num_attention_heads", None)
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        return hidden // heads
    raise _unsupported(model, "head size not found on the attention module or the config")


def fused_blocks(layout: str, n_q: int, n_kv: int) -> tuple[list[int], list[int], list[int]]:
    """Return where each query, key and value head sits in a fused projection, in ``head_dim``-row blocks.

    ``blocks``: ``[q_0 .. q_n | k_0 .. | v_0 ..]``; ``interleaved``: ``[q_h k_h v_h]`` per head (n_q == n_kv);
    ``grouped``: ``[q .. q k_g v_g]`` per key/value head g, its query heads first.
    """
    if layout == "blocks":
        return list(range(n_q)), [n_q + g for g in range(n_kv)], [n_q + n_kv + g for g in range(n_kv)]
    if layout == "interleaved":
        return [3 * h for h in range(n_q)], [3 * h + 1 for h in range(n_kv)], [3 * h + 2 for h in range(n_kv)]
    group = n_q // n_kv
    q = [(h // group) * (group + 2) + h % group for h in range(n_q)]
    return q, [g * (group + 2) + group for g in range(n_kv)], [g * (group + 2) + group + 1 for g in range(n_kv)]


def qkv_weights(site: AttentionSite) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the q, k, v weights of ``site`` as ``[heads, head_dim, in]`` tensors."""
    hd, spec = site.head_dim, site.spec
    if not spec.fused:
        q, k, v = (weight_out_in(site.proj(n)) for n in (spec.q, spec.k, spec.v))
        return q.reshape(site.n_q, hd, -1), k.reshape(site.n_kv, hd, -1), v.reshape(site.n_kv, hd, -1)
    w = weight_out_in(site.proj(spec.qkv))
    per_block = w.reshape(-1, hd, w.shape[-1])
    q, k, v = fused_blocks(spec.fused_layout or "", site.n_q, site.n_kv)
    return per_block[q], per_block[k], per_block[v]


def o_weight(site: AttentionSite) -> torch.Tensor:
    """Return the output projection weight of ``site`` as ``[out, heads, head_dim]``."""
    w = weight_out_in(site.out_proj)
    return w.reshape(w.shape[0], site.n_q, site.head_dim)


def validate_mask(mask: Any, layout: HeadLayout, *, name: str = "mask") -> torch.Tensor:
    """Return ``mask`` as a CPU bool tensor after checking its shape, dtype and that it names existing heads."""
    import torch

    expected = (layout.num_layers, layout.max_heads)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != expected:
        found = (
            f"{type(mask).__name__} of dtype {mask.dtype} and shape {tuple(mask.shape)}"
            if isinstance(mask, torch.Tensor)
            else type(mask).__name__
        )
        raise ValueError(
            f"{name} must be a torch.bool tensor of shape {expected} ([layers, max_heads], True = prune), got "
            f"{found}; build one with select_heads(scores, level) or torch.zeros({expected[0]}, {expected[1]}, "
            "dtype=torch.bool)"
        )
    mask = mask.detach().to("cpu")
    for layer, n in enumerate(layout.query_heads):
        beyond = mask[layer, n:].nonzero().flatten().tolist()
        if beyond:
            raise ValueError(
                f"{name}[{layer}, {n + beyond[0]}] is True but layer {layer} has only {n} heads; "
                "entries past a layer's heads must be False"
            )
    return mask

