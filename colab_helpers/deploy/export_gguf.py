"""The ``gguf`` export: one file llama.cpp loads, per-layer head counts and MLP widths included.

llama.cpp's ``llama`` graph reads one head count and one MLP width for all layers (``hparams.n_head()``); its
``deci`` architecture (DeciLM / Nemotron-NAS, the same Llama block) reads them per layer (``n_head(il)``,
``n_head_kv(il)``, ``n_ff(il)``) from array-valued keys. So a model whose layers differ is written as ``deci``, one
whose layers agree (unpruned, or only whole layers removed) as plain ``llama``. Written with the ``gguf`` package:
the hyper-parameters, the tokenizer (byte-level BPE, as llama.cpp's ``convert_hf_to_gguf.py`` writes it) and the
tensors, query and key rows permuted per layer by that layer's own head count into llama.cpp's rotary layout.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtime.files import atomic_path
from ..runtime.modules import parameter_count
from .export_hf import WrittenModel

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

logger = logging.getLogger(__name__)

GGUF_ARCHITECTURES = ("llama",)  # transformers model_type values this writer handles
# llama.cpp tensor names of a Llama decoder layer's weights (transformers name after "model.layers.N.")
_LAYER_TENSORS = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_MODEL_TENSORS = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
# llama.cpp picks its pre-tokenizer by name; convert_hf_to_gguf.py finds the name from the hash of how the tokenizer
# splits a fixed text (its chktxt, below). The few tokenizers of the models the suite prunes, copied from it:
_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4": "gpt-2",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
}
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 "
    "3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на "
    "Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make "
    "it, 'D you like some tea? We'Ve a'lL"
)


@dataclass(frozen=True)
class GgufLayout:
    """Per-layer shapes of a Llama-family model as llama.cpp reads them."""

    head_dim: int
    heads: tuple[int, ...]
    kv_heads: tuple[int, ...]
    mlp: tuple[int, ...]

    @property
    def uniform(self) -> bool:
        return len(set(self.heads)) == len(set(self.kv_heads)) == len(set(self.mlp)) == 1

    @property
    def architecture(self) -> str:
        return "llama" if self.uniform else "deci"


def gguf_layout(model: Any) -> GgufLayout:
    """Read ``model``'s per-layer head counts and MLP widths from its weights; ValueError when llama.cpp cannot
    take the model (an architecture other than Llama's, rotary scaling, biases, a layer without MLP channels)."""
    config = model.config
    if config.model_type not in GGUF_ARCHITECTURES:
        raise ValueError(f"cannot export a {config.model_type!r} model as GGUF: this writer handles "
                         f"{GGUF_ARCHITECTURES} (SmolLM2, Llama, TinyLlama ...); export it with format='hf' "
                         "instead")  # fmt: skip
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"cannot export rotary scaling {rope.get('rope_type')!r} as GGUF (not written by this "
                         "exporter); export with format='hf' instead")  # fmt: skip
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ValueError("cannot export a Llama model with attention or MLP biases as GGUF; use format='hf'")
    layers = model.model.layers
    head_dim = int(layers[0].self_attn.head_dim)
    layout = GgufLayout(
        head_dim=head_dim,
        heads=tuple(int(layer.self_attn.q_proj.out_features) // head_dim for layer in layers),
        kv_heads=tuple(int(layer.self_attn.k_proj.out_features) // head_dim for layer in layers),
        mlp=tuple(int(layer.mlp.up_proj.out_features) for layer in layers),
    )
    empty = [i for i, width in enumerate(layout.mlp) if width == 0]
    if empty:  # llama.cpp's deci graph skips a layer without MLP whole, its attention output included
        raise ValueError(f"layers {empty} keep no MLP channels, which llama.cpp cannot run (it skips such a layer "
                         "whole); compress with at least one channel per kept layer, or remove those "
                         "layers")  # fmt: skip
    return layout


def write_gguf(model: Any, tokenizer: Any, file: Path, *, quant: str = "f16") -> WrittenModel:
    """Write ``model`` and ``tokenizer`` to the GGUF ``file`` (``quant``: "f16" or "q8_0"), atomically."""
    import gguf

    if tokenizer is None:
        raise ValueError("a GGUF file carries its tokenizer: pass tokenizer=... (or export a folder with one)")
    if file.is_dir():
        raise ValueError(f"{str(file)!r} is a folder; pass a file path ending in .gguf")
    layout = gguf_layout(model)
    with atomic_path(file) as tmp:
        writer = gguf.GGUFWriter(str(tmp), layout.architecture)
        _add_hparams(writer, model.config, layout, quant)
        add_vocab(writer, tokenizer, int(model.config.vocab_size))
        _add_tensors(writer, model, layout, quant)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    logger.info("wrote %s GGUF (%s) to %s", layout.architecture, quant, file)
    return WrittenModel(file, parameter_count(model), str(model.config.model_type), not layout.uniform, False)


def _add_hparams(writer: Any, config: Any, layout: GgufLayout, quant: str) -> None:
    import gguf

    def per_layer(values: tuple[int, ...]) -> int | list[int]:
        return values[0] if layout.uniform else list(values)

    writer.add_name(Path(str(getattr(config, "_name_or_path", "") or "model")).name)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(len(layout.heads))
    writer.add_feed_forward_length(per_layer(layout.mlp))
    writer.add_head_count(per_layer(layout.heads))
    writer.add_head_count_kv(per_layer(layout.kv_heads))
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_key_length(layout.head_dim)  # else llama.cpp derives it as hidden size / heads of layer 0
    writer.add_value_length(layout.head_dim)
    writer.add_rope_dimension_count(layout.head_dim)
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "q8_0" else gguf.LlamaFileType.MOSTLY_F16)


def add_vocab(writer: Any, tokenizer: Any, vocab_size: int) -> None:
    """Write a byte-level BPE tokenizer (GPT-2 style, as SmolLM2 and Llama 3 have) the way llama.cpp reads it."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = json.loads(backend.to_str())["model"] if backend is not None else {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ValueError(f"cannot write a {model.get('type', type(tokenizer).__name__)!r} tokenizer "
                         f"{'with byte fallback ' if model.get('byte_fallback') else ''}to GGUF: this writer handles "
                         "byte-level BPE tokenizers (SmolLM2, Llama 3, GPT-2); export with format='hf' "
                         "instead")  # fmt: skip
    tokens, types = _token_list(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as folder:  # SpecialVocab reads merges and special tokens from files
        tokenizer.save_pretrained(folder)
        gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer)


def _token_list(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    import gguf

    reverse = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for index in range(vocab_size):
        if index not in reverse:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(reverse[index])
        if index in added:
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _pre_tokenizer(tokenizer: Any) -> str:
    digest = sha256(str(tokenizer.encode(_CHKTXT)).encode()).hexdigest()
    name = _PRE_TOKENIZERS.get(digest)
    if name is None:
        logger.warning("unknown pre-tokenizer (hash %s): llama.cpp will split text its default way, which may "
                       "tokenize some text differently; token ids given directly are unaffected", digest)  # fmt: skip
        return "default"
    return name


def _add_tensors(writer: Any, model: Any, layout: GgufLayout, quant: str) -> None:
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for name, tensor in model.state_dict().items():
        gguf_name = _gguf_name(name)
        if gguf_name is None:
            if not name.endswith("rotary_emb.inv_freq"):
                raise ValueError(f"tensor {name!r} has no place in llama.cpp's Llama layout; export with format='hf'")
            continue
        if gguf_name == "output.weight" and tied:
            continue  # llama.cpp reuses token_embd when the file has no output tensor
        data = tensor.detach().float().cpu()
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else None
        if layer is not None and gguf_name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = layout.heads[layer] if "attn_q" in gguf_name else layout.kv_heads[layer]
            data = _permute(data, heads)
        _add_tensor(writer, gguf_name, data.numpy(), quant)


def _gguf_name(name: str) -> str | None:
    stem, _, kind = name.rpartition(".")
    if stem in _MODEL_TENSORS:
        return f"{_MODEL_TENSORS[stem]}.{kind}"
    parts = stem.split(".")
    if len(parts) > 3 and parts[:2] == ["model", "layers"] and ".".join(parts[3:]) in _LAYER_TENSORS:
        return f"blk.{parts[2]}.{_LAYER_TENSORS['.'.join(parts[3:])]}.{kind}"
    return None


def _permute(weight: Any, heads: int) -> Any:
    """transformers rotates the two halves of each head; llama.cpp (rope type "norm") rotates adjacent pairs."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _add_tensor(writer: Any, name: str, data: np.ndarray, quant: str) -> None:
    import gguf
    import numpy as np

    if data.ndim == 1:
        writer.add_tensor(name, data.astype(np.float32))
    elif quant == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        quantized = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:  # f16, and q8_0's rows that do not split into blocks of 32 (as convert_hf_to_gguf.py does)
        writer.add_tensor(name, data.astype(np.float16))
