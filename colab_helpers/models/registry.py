"""The model catalog: small causal LMs we know the shape of, so memory can be estimated before a download.

Each ``CatalogEntry`` holds the published config values of one model (layers, heads, widths, vocabulary,
context) and its exact parameter count. ``name`` is the Hugging Face Hub id that ``load_model`` loads; the
short ``alias`` (``"gpt2"``, ``"pythia-70m"``) works everywhere a name does. The two ``embedded-*`` models
ship inside the package and load offline.

``get_entry`` finds an entry by id or alias. :data:`EMBEDDED_MODELS` are the entries that ship in the package;
:mod:`.picking` lays the catalog out with memory estimates and picks the model that fits.

A hub id that is not catalogued still works with ``load_model`` and ``estimate_memory``: pass its
``transformers`` config (``AutoConfig.from_pretrained(id)``) or the loaded model to ``estimate_memory``.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

FAMILIES: tuple[str, ...] = ("gpt2", "opt", "gpt_neox", "llama", "qwen2", "bloom")

# Dropout probabilities each family's published configs use (GPT-2 and OPT train with dropout; the newer
# families do not). They matter for training memory: every dropout keeps a mask for the backward pass.
_FAMILY_DROPOUT: dict[str, dict[str, float]] = {
    "gpt2": {"attention": 0.1, "hidden": 0.1},
    "opt": {"attention": 0.0, "hidden": 0.1},
    "gpt_neox": {"attention": 0.0, "hidden": 0.0},
    "llama": {"attention": 0.0, "hidden": 0.0},
    "qwen2": {"attention": 0.0, "hidden": 0.0},
    "bloom": {"attention": 0.0, "hidden": 0.0},
}


@dataclass(frozen=True)
class CatalogEntry:
    """One catalogued causal LM: its published config values and what using it involves.

    ``params`` counts every parameter once (tied input/output embeddings once). ``heads`` are query heads,
    ``kv_heads`` key/value heads (fewer with grouped-query attention). ``context`` is the longest sequence
    the model was trained for. ``gated`` models need their licence accepted on the hub and ``HF_TOKEN`` set.
    ``embedded`` models ship inside this package and load offline. ``config_overrides`` are extra
    ``transformers`` config values (``(key, value)`` pairs) beyond the shape fields, used by ``to_config``.
    """

    name: str
    alias: str
    family: str
    params: int
    layers: int
    heads: int
    kv_heads: int
    hidden: int
    intermediate: int
    vocab: int
    context: int
    tied_embeddings: bool
    licence: str
    instruct: bool = False
    embedded: bool = False
    gated: bool = False
    description: str = ""
    config_overrides: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r} for {self.name!r}")
        for label in ("params", "layers", "heads", "kv_heads", "hidden", "intermediate", "vocab", "context"):
            if getattr(self, label) <= 0:
                raise ValueError(f"{label} must be > 0, got {getattr(self, label)} for {self.name!r}")
        if self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads}) for {self.name!r}")

    @property
    def head_dim(self) -> int:
        """Return the width of one attention head (``head_dim`` override, else hidden // heads)."""
        return int(dict(self.config_overrides).get("head_dim", self.hidden // self.heads))

    @property
    def params_label(self) -> str:
        """Return the parameter count as people say it: ``"124M"``, ``"1.1B"``."""
        return format_params(self.params)

    def dropout(self, kind: str) -> float:
        """Return the ``"attention"`` or ``"hidden"`` dropout probability this model trains with."""
        overrides = dict(self.config_overrides)
        keys = _DROPOUT_KEYS[self.family][kind]
        for key in keys:
            if key in overrides:
                return float(overrides[key])
        return _FAMILY_DROPOUT[self.family][kind]

    def to_config(self) -> PretrainedConfig:
        """Return a ``transformers`` config of this shape, for ``from_config`` (random weights, no download)."""
        from transformers import AutoConfig

        kwargs = _config_kwargs(self)
        kwargs.update(dict(self.config_overrides))
        return AutoConfig.for_model(self.family, **kwargs)


# transformers config keys that hold each family's dropout probabilities
_DROPOUT_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "gpt2": {"attention": ("attn_pdrop",), "hidden": ("resid_pdrop",)},
    "opt": {"attention": ("attention_dropout",), "hidden": ("dropout",)},
    "gpt_neox": {"attention": ("attention_dropout",), "hidden": ("hidden_dropout",)},
    "llama": {"attention": ("attention_dropout",), "hidden": ()},
    "qwen2": {"attention": ("attention_dropout",), "hidden": ()},
    "bloom": {"attention": ("attention_dropout",), "hidden": ("hidden_dropout",)},
}


def _config_kwargs(entry: CatalogEntry) -> dict[str, Any]:
    """Return the ``transformers`` config keyword arguments for ``entry``'s shape fields."""
    if entry.family == "gpt2":
        return dict(
            n_layer=entry.layers, n_head=entry.heads, n_embd=entry.hidden, n_inner=entry.intermediate,
            vocab_size=entry.vocab, n_positions=entry.context, tie_word_embeddings=entry.tied_embeddings,
        )  # fmt: skip
    if entry.family == "opt":
        return dict(
            num_hidden_layers=entry.layers, num_attention_heads=entry.heads, hidden_size=entry.hidden,
            ffn_dim=entry.intermediate, vocab_size=entry.vocab, max_position_embeddings=entry.context,
            word_embed_proj_dim=entry.hidden, tie_word_embeddings=entry.tied_embeddings,
        )  # fmt: skip
    if entry.family == "bloom":
        return dict(
            n_layer=entry.layers, n_head=entry.heads, hidden_size=entry.hidden, vocab_size=entry.vocab,
            tie_word_embeddings=entry.tied_embeddings,
        )  # fmt: skip
    kwargs: dict[str, Any] = dict(
        num_hidden_layers=entry.layers, num_attention_heads=entry.heads, hidden_size=entry.hidden,
        intermediate_size=entry.intermediate, vocab_size=entry.vocab, max_position_embeddings=entry.context,
        tie_word_embeddings=entry.tied_embeddings,
    )  # fmt: skip
    if entry.family in ("llama", "qwen2"):
        kwargs["num_key_value_heads"] = entry.kv_heads
    return kwargs


def format_params(count: int | float) -> str:
    """Return a parameter count the way people say it: ``"82M"``, ``"1.1B"``, ``"1.1M"``, ``"956K"``."""
    if count >= 1e9:
        return f"{count / 1e9:.1f}B"
    if count >= 1e7:
        return f"{count / 1e6:.0f}M"
    if count >= 1e6:
        return f"{count / 1e6:.1f}M"
    return f"{count / 1e3:.0f}K"


_MIT_OURS = "MIT (weights trained by this project; corpus public domain)"
_OPT = "OPT licence (non-commercial research use)"
_LLAMA_32 = "Llama 3.2 Community Licence (gated: accept it on the model page, then set HF_TOKEN)"

# Embedded models: the shapes scripts/build_embedded.py builds, as in colab_helpers/embedded/models/<name>/
# config.json (tests/test_models_registry_and_picking.py compares them with the shipped files).
_EMBEDDED: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        "embedded-gpt2", "embedded-gpt2", "gpt2", 1_088_256, 4, 4, 4, 128, 512, 2048, 256, True, _MIT_OURS,
        embedded=True, description="GPT-2 architecture, 4 layers x 4 heads, width 128; offline, in the package",
        config_overrides=(("resid_pdrop", 0.0), ("embd_pdrop", 0.0), ("attn_pdrop", 0.0), ("bos_token_id", 0),
                          ("eos_token_id", 0), ("pad_token_id", 0)),
    ),
    CatalogEntry(
        "embedded-llama", "embedded-llama", "llama", 955_520, 4, 8, 2, 128, 344, 2048, 256, True, _MIT_OURS,
        embedded=True, description="Llama architecture, 4 layers, 8 query / 2 key-value heads; offline, in the package",
        config_overrides=(("head_dim", 16), ("bos_token_id", 0), ("eos_token_id", 0), ("pad_token_id", 0)),
    ),
)  # fmt: skip

# Hub models: values from each model's published config.json; params counted from a model built from it.
_HUB: tuple[CatalogEntry, ...] = (
    CatalogEntry("distilbert/distilgpt2", "distilgpt2", "gpt2", 81_912_576, 6, 12, 12, 768, 3072, 50257, 1024, True, "Apache-2.0",
                 description="GPT-2 distilled to 6 layers"),
    CatalogEntry("openai-community/gpt2", "gpt2", "gpt2", 124_439_808, 12, 12, 12, 768, 3072, 50257, 1024, True, "MIT",
                 description="OpenAI GPT-2 small"),
    CatalogEntry("openai-community/gpt2-medium", "gpt2-medium", "gpt2", 354_823_168, 24, 16, 16, 1024, 4096, 50257, 1024, True, "MIT",
                 description="OpenAI GPT-2 medium"),
    CatalogEntry("facebook/opt-125m", "opt-125m", "opt", 125_239_296, 12, 12, 12, 768, 3072, 50272, 2048, True, _OPT,
                 description="Meta OPT 125M"),
    CatalogEntry("facebook/opt-350m", "opt-350m", "opt", 331_196_416, 24, 16, 16, 1024, 4096, 50272, 2048, True, _OPT,
                 description="Meta OPT 350M (post-norm, 512-wide embeddings projected to 1024)",
                 config_overrides=(("word_embed_proj_dim", 512), ("do_layer_norm_before", False))),
    CatalogEntry("facebook/opt-1.3b", "opt-1.3b", "opt", 1_315_758_080, 24, 32, 32, 2048, 8192, 50272, 2048, True, _OPT,
                 description="Meta OPT 1.3B"),
    CatalogEntry("EleutherAI/pythia-70m", "pythia-70m", "gpt_neox", 70_426_624, 6, 8, 8, 512, 2048, 50304, 2048, False, "Apache-2.0",
                 description="EleutherAI Pythia 70M (GPT-NeoX, trained on the Pile)"),
    CatalogEntry("EleutherAI/pythia-160m", "pythia-160m", "gpt_neox", 162_322_944, 12, 12, 12, 768, 3072, 50304, 2048, False, "Apache-2.0",
                 description="EleutherAI Pythia 160M"),
    CatalogEntry("EleutherAI/pythia-410m", "pythia-410m", "gpt_neox", 405_334_016, 24, 16, 16, 1024, 4096, 50304, 2048, False, "Apache-2.0",
                 description="EleutherAI Pythia 410M"),
    CatalogEntry("EleutherAI/pythia-1b", "pythia-1b", "gpt_neox", 1_011_781_632, 16, 8, 8, 2048, 8192, 50304, 2048, False, "Apache-2.0",
                 description="EleutherAI Pythia 1B"),
    CatalogEntry("HuggingFaceTB/SmolLM2-135M", "smollm2-135m", "llama", 134_515_008, 30, 9, 3, 576, 1536, 49152, 8192, True, "Apache-2.0",
                 description="Hugging Face SmolLM2 135M (Llama architecture, GQA)"),
    CatalogEntry("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct", "llama", 134_515_008, 30, 9, 3, 576, 1536, 49152, 8192, True,
                 "Apache-2.0", instruct=True, description="SmolLM2 135M, instruction-tuned"),
    CatalogEntry("HuggingFaceTB/SmolLM2-360M", "smollm2-360m", "llama", 361_821_120, 32, 15, 5, 960, 2560, 49152, 8192, True, "Apache-2.0",
                 description="Hugging Face SmolLM2 360M (Llama architecture, GQA)"),
    CatalogEntry("HuggingFaceTB/SmolLM2-360M-Instruct", "smollm2-360m-instruct", "llama", 361_821_120, 32, 15, 5, 960, 2560, 49152, 8192, True,
                 "Apache-2.0", instruct=True, description="SmolLM2 360M, instruction-tuned"),
    CatalogEntry("Qwen/Qwen2.5-0.5B", "qwen2.5-0.5b", "qwen2", 494_032_768, 24, 14, 2, 896, 4864, 151936, 32768, True, "Apache-2.0",
                 description="Alibaba Qwen2.5 0.5B (GQA, 152K vocabulary)"),
    CatalogEntry("Qwen/Qwen2.5-0.5B-Instruct", "qwen2.5-0.5b-instruct", "qwen2", 494_032_768, 24, 14, 2, 896, 4864, 151936, 32768, True,
                 "Apache-2.0", instruct=True, description="Qwen2.5 0.5B, instruction-tuned"),
    CatalogEntry("Qwen/Qwen2.5-1.5B", "qwen2.5-1.5b", "qwen2", 1_543_714_304, 28, 12, 2, 1536, 8960, 151936, 32768, True, "Apache-2.0",
                 description="Alibaba Qwen2.5 1.5B (GQA, 152K vocabulary)"),
    CatalogEntry("Qwen/Qwen2.5-1.5B-Instruct", "qwen2.5-1.5b-instruct", "qwen2", 1_543_714_304, 28, 12, 2, 1536, 8960, 151936, 32768, True,
                 "Apache-2.0", instruct=True, description="Qwen2.5 1.5B, instruction-tuned"),
    CatalogEntry("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "tinyllama-1.1b-chat", "llama", 1_100_048_384, 22, 32, 4, 2048, 5632, 32000, 2048, False,
                 "Apache-2.0", instruct=True, description="TinyLlama 1.1B chat (Llama 2 architecture, GQA)"),
    CatalogEntry("meta-llama/Llama-3.2-1B", "llama-3.2-1b", "llama", 1_235_814_400, 16, 32, 8, 2048, 8192, 128256, 131072, True, _LLAMA_32,
                 gated=True, description="Meta Llama 3.2 1B (gated on the hub; 128K vocabulary)"),
    CatalogEntry("bigscience/bloom-560m", "bloom-560m", "bloom", 559_214_592, 24, 16, 16, 1024, 4096, 250880, 2048, True,
                 "BigScience RAIL 1.0 (use restrictions)", description="BigScience BLOOM 560M (ALiBi, 251K vocabulary)"),
)  # fmt: skip

CATALOG: dict[str, CatalogEntry] = {entry.name: entry for entry in (*_EMBEDDED, *_HUB)}
EMBEDDED_MODELS: dict[str, CatalogEntry] = {entry.name: entry for entry in _EMBEDDED}  # in colab_helpers/embedded/models
_BY_KEY: dict[str, CatalogEntry] = {
    **{entry.name.split("/")[-1].lower(): entry for entry in CATALOG.values()},  # "SmolLM2-135M" without its org
    **{entry.name.lower(): entry for entry in CATALOG.values()},
    **{entry.alias.lower(): entry for entry in CATALOG.values()},
}


def catalog_names(*, embedded: bool | None = None, instruct: bool | None = None) -> list[str]:
    """Return catalog hub ids, smallest first; ``embedded``/``instruct`` True or False keep only those."""
    entries = [
        entry
        for entry in CATALOG.values()
        if (embedded is None or entry.embedded == embedded) and (instruct is None or entry.instruct == instruct)
    ]
    return [entry.name for entry in sorted(entries, key=lambda entry: entry.params)]


def catalog_keys() -> list[str]:
    """Return every lowercase name :func:`get_entry` finds an entry by: hub ids, ids without their owner, aliases."""
    return list(_BY_KEY)


def get_entry(name: str | CatalogEntry) -> CatalogEntry:
    """Return the catalog entry for a hub id or alias (case-insensitive); unknown names raise ``ValueError``.

    The error lists the closest catalogued names and says how to use a hub id that is not catalogued.
    """
    if isinstance(name, CatalogEntry):
        return name
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string such as 'gpt2', got {name!r}")
    key = name.strip().lower()
    entry = _BY_KEY.get(key)
    if entry is not None:
        return entry
    near = difflib.get_close_matches(key, list(_BY_KEY), n=4, cutoff=0.5)
    suggestions = sorted({_BY_KEY[match].alias for match in near})
    hint = f"did you mean {', '.join(map(repr, suggestions))}? " if suggestions else ""
    raise ValueError(
        f"{name!r} is not in the model catalog; {hint}catalogued names: {', '.join(sorted(e.alias for e in CATALOG.values()))}. "
        "Any other hub id still loads with load_model(id); to estimate its memory pass its config "
        "(transformers.AutoConfig.from_pretrained(id)) or the loaded model to estimate_memory"
    )
