"""export: pruned models as transformers folders (loaded where colab_helpers cannot be imported) and as GGUF."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from colab_helpers import load_model  # noqa: E402
from colab_helpers.deploy.cli import main as cli_main  # noqa: E402
from colab_helpers.deploy.export import ExportResult, export_model  # noqa: E402
from colab_helpers.deploy.export_gguf import gguf_layout  # noqa: E402
from colab_helpers.pruning import compress, save_pruned  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gguf_check import llama_cpp_available, llama_cpp_logits  # noqa: E402
from test_pruning_compress import CONFIGS, GQA, batches, build  # noqa: E402

HF_ARCHS = ("llama", "gpt2", "opt", "qwen2")
# python without the repository on its path and with colab_helpers unimportable: what a user without it has
ISOLATED = "import sys; sys.modules['colab_helpers'] = None\n"


def compressed(name: str) -> Any:
    model = build(name) if name != "qwen2" else _qwen2()
    compress(model, batches(), 0.6, progress=False)
    return model


def _qwen2() -> Any:
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(transformers.Qwen2Config(**GQA)).eval()


def logits(model: Any, ids: dict[str, Any]) -> Any:
    with torch.no_grad():
        return model(**ids).logits


def run_isolated(code: str, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-I", "-c", ISOLATED + code], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


def test_pruned_hf_exports_load_without_colab_helpers_with_equal_logits(tmp_path: Path) -> None:
    ids = batches(1, seed=5)[0]
    torch.save(ids, tmp_path / "ids.pt")
    expected = {}
    for name in HF_ARCHS:
        model = compressed(name)
        result = export_model(model, tmp_path / name)
        assert result.pruned and result.remote_code and result.format == "hf" and result.bytes > 0
        assert (tmp_path / name / "modeling_pruned.py").is_file()
        config = json.loads((tmp_path / name / "config.json").read_text())
        # no architectures: `transformers serve` would build getattr(transformers, architectures[0]), not auto_map's
        assert "auto_map" in config and config["architectures"] is None
        expected[name] = (logits(model, ids), result.parameters)
    run_isolated(
        "import torch\nfrom transformers import AutoModelForCausalLM\n"
        f"ids = torch.load('ids.pt')\nfor name in {HF_ARCHS!r}:\n"
        "    model = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=True).eval()\n"
        "    with torch.no_grad():\n        torch.save(model(**ids).logits, name + '.pt')\n"
        "    torch.save(sum(p.numel() for p in model.parameters()), name + '.n')\n",
        tmp_path,
    )
    for name, (want, parameters) in expected.items():
        got = torch.load(tmp_path / f"{name}.pt")
        assert (got - want).abs().max() <= 1e-4 * want.abs().max(), name
        assert torch.load(tmp_path / f"{name}.n") == parameters, name  # removed weights stay removed


def test_unpruned_model_exports_as_a_plain_folder(tmp_path: Path) -> None:
    model = build("llama")
    result = export_model(model, tmp_path / "plain")
    assert not result.pruned and not result.remote_code
    assert not (tmp_path / "plain" / "modeling_pruned.py").exists()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "plain").eval()
    ids = batches(1)[0]
    assert torch.allclose(logits(reloaded, ids), logits(model, ids), atol=1e-5)


def test_cli_exports_a_save_pruned_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, tokenizer = load_model("embedded-llama", device="cpu")
    compress(model, _text_batches(tokenizer), 0.7, progress=False)
    save_pruned(model, tokenizer, tmp_path / "pruned")
    assert cli_main(["export", str(tmp_path / "pruned"), str(tmp_path / "hf"), "--format", "hf"]) == 0
    assert "trust_remote_code=True" in capsys.readouterr().out
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    assert cli_main(["export", str(tmp_path / "pruned"), str(tmp_path / "gguf"), "--format", "gguf",
                     "--quant", "q8_0"]) == 0  # fmt: skip
    assert (tmp_path / "gguf" / "model-q8_0.gguf").is_file()


def _text_batches(tokenizer: Any) -> list[dict[str, Any]]:
    from colab_helpers.evaluation import load_text_dataset, tokenize_texts

    ids = tokenize_texts(tokenizer, load_text_dataset("embedded").train, max_tokens=8 * 32)[: 8 * 32].view(8, 32)
    return [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in ids.split(4)]


@pytest.fixture(scope="module")
def toy_llama() -> tuple[Any, Any, Any]:
    """The embedded Llama (byte-level BPE tokenizer) unpruned and compressed to 70%."""
    model, tokenizer = load_model("embedded-llama", device="cpu")
    small = copy.deepcopy(model)
    compress(small, _text_batches(tokenizer), 0.7, progress=False)
    return model, small, tokenizer


def _field(reader: Any, key: str) -> Any:
    field = reader.fields[key]
    values = [field.parts[i].tolist() for i in field.data]
    if field.types and field.types[0] == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode()
    return [v[0] for v in values] if len(values) > 1 or field.types[0] == gguf.GGUFValueType.ARRAY else values[0][0]


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_gguf_holds_per_layer_shapes_and_unpermutes_to_the_weights(toy_llama: Any, quant: str, tmp_path: Path) -> None:
    _, model, tokenizer = toy_llama
    layout = gguf_layout(model)
    assert not layout.uniform  # compress left layers of different widths
    result = export_model(model, tmp_path / "m.gguf", format="gguf", quant=quant, tokenizer=tokenizer)
    assert result.path == str(tmp_path / "m.gguf") and result.quant == quant and result.pruned
    reader = gguf.GGUFReader(result.path)
    assert _field(reader, "general.architecture") == "deci"
    assert _field(reader, "deci.attention.head_count") == list(layout.heads)
    assert _field(reader, "deci.attention.head_count_kv") == list(layout.kv_heads)
    assert _field(reader, "deci.feed_forward_length") == list(layout.mlp)
    assert _field(reader, "deci.block_count") == len(model.model.layers)
    assert _field(reader, "deci.attention.key_length") == layout.head_dim
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == model.config.vocab_size
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    for i, layer in enumerate(model.model.layers):
        q = tensors[f"blk.{i}.attn_q.weight"]
        assert list(q.shape) == [model.config.hidden_size, layer.self_attn.q_proj.out_features]  # GGUF: [in, out]
        assert list(tensors[f"blk.{i}.ffn_down.weight"].shape) == [layout.mlp[i], model.config.hidden_size]
        if quant == "f16":  # llama.cpp's rotary layout, undone, gives back the weights
            heads, rows = layout.heads[i], q.shape[1]
            data = torch.from_numpy(q.data.astype("float32")).reshape(heads, rows // heads // 2, 2, -1)
            restored = data.swapaxes(1, 2).reshape(rows, -1)
            assert torch.allclose(restored, layer.self_attn.q_proj.weight.half().float())


def test_gguf_of_an_unpruned_model_is_plain_llama(toy_llama: Any, tmp_path: Path) -> None:
    model, _, tokenizer = toy_llama
    result = export_model(model, tmp_path, format="gguf", tokenizer=tokenizer)
    assert Path(result.path).name == "model-f16.gguf" and not result.pruned
    reader = gguf.GGUFReader(result.path)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.attention.head_count") == model.config.num_attention_heads


def test_what_cannot_be_exported_is_refused_with_the_reason(toy_llama: Any, tmp_path: Path) -> None:
    model, _, tokenizer = toy_llama
    with pytest.raises(ValueError, match="format must be one of .* got 'onnx'"):
        export_model(model, tmp_path / "x", format="onnx")
    with pytest.raises(ValueError, match="quant must be one of .* got 'q4'"):
        export_model(model, tmp_path / "x", format="gguf", quant="q4")
    with pytest.raises(ValueError, match="'gpt2' model as GGUF"):
        export_model(build("gpt2"), tmp_path / "x", format="gguf", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="pass tokenizer"):
        export_model(model, tmp_path / "x.gguf", format="gguf")
    with pytest.raises(ValueError, match="pruned 'phi3' model"):
        export_model(compressed("phi3"), tmp_path / "x")
    with pytest.raises(TypeError, match="source must be"):
        export_model(42, tmp_path / "x")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a model folder"):
        export_model(model, tmp_path / "notes", tokenizer=tokenizer)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="the model's own folder"):
        export_model(str(tmp_path / "notes"), tmp_path / "notes")
    assert not list(tmp_path.glob("x*"))  # nothing half-written


def test_export_result_round_trips() -> None:
    result = ExportResult("m.gguf", "gguf", "q8_0", 10, 5, "llama", True, False)
    assert ExportResult.from_dict(result.to_dict()) == result
    with pytest.raises(ValueError, match="format must be one of"):
        ExportResult("m", "onnx", None, 1, 1, "llama", False, False)


@pytest.mark.skipif(not llama_cpp_available(), reason="llama.cpp is not built: run `make llama-cpp` (minutes)")
def test_llama_cpp_runs_the_pruned_gguf_like_the_model_in_memory(toy_llama: Any, tmp_path: Path) -> None:
    _, model, tokenizer = toy_llama
    result = export_model(model, tmp_path / "m.gguf", format="gguf", tokenizer=tokenizer)
    rows = _text_batches(tokenizer)[0]["input_ids"][:2].tolist()
    got = llama_cpp_logits(result.path, rows)
    for row, theirs in zip(rows, got):
        ours = logits(model, {"input_ids": torch.tensor([row])})[0].numpy()
        assert (ours.argmax(-1) == theirs.argmax(-1)).mean() >= 0.95
        assert abs(ours - theirs).max() <= 0.05 * abs(ours).max()  # f16 weights
