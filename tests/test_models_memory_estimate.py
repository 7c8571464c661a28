"""estimate_memory: the breakdown's logic, the three ways to name a model, bad input, and real measurements.

The measured cases run small random-weight models (16-29M parameters) in fresh processes, three at once,
and require the measured peak RSS within 15% of the estimate (docs/memory-estimates.md has the full table).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from colab_helpers.models import memory_estimate
from colab_helpers.models.registry import CATALOG, get_entry
from colab_helpers.models import shapes
from colab_helpers.models.memory_estimate import GB, MODES, MemoryEstimate, estimate_memory
from colab_helpers.models.peak_memory import measure_peak_memory, relative_error
from colab_helpers.models.shapes import lora_target_modules

CUDA16 = {"device": "cuda", "dtype": "float16"}
CPU32 = {"device": "cpu", "dtype": "float32"}

# (family, config kwargs, mode, batch, seq): the "quick" cases of benchmarks/memory_estimates.py
MEASURED_CASES: list[tuple[str, dict[str, Any], str, int, int]] = [
    ("gpt2", dict(n_layer=4, n_head=4, n_embd=256, vocab_size=50257, n_positions=512), "full", 4, 128),
    ("llama", dict(num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=2, hidden_size=256,
                   intermediate_size=688, vocab_size=32000, max_position_embeddings=512), "lora", 4, 128),
    ("gpt_neox", dict(num_hidden_layers=4, num_attention_heads=4, hidden_size=256, intermediate_size=1024,
                      vocab_size=50304, max_position_embeddings=512), "inference", 8, 256),
]  # fmt: skip


def config_of(family: str, **kwargs: Any) -> Any:
    """Return a transformers config of ``family`` with ``kwargs``."""
    from transformers import AutoConfig

    return AutoConfig.for_model(family, **kwargs)


def without_label(estimate: MemoryEstimate) -> dict[str, Any]:
    """Return the estimate's fields except the model label (names differ between a config and a catalog name)."""
    data = dataclasses.asdict(estimate)
    data.pop("model")
    return data


# --- the breakdown ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "pythia-410m", "qwen2.5-0.5b", "llama-3.2-1b", "bloom-560m"])
def test_qlora_lora_full_order(name: str) -> None:
    qlora, lora, full = (estimate_memory(name, mode, batch_size=4, seq_len=256, **CUDA16) for mode in ("qlora", "lora", "full"))
    assert qlora.weights < lora.weights
    assert qlora.total < lora.total < full.total
    assert full.trainable_params == full.params > 10 * lora.trainable_params > 0
    assert lora.trainable_params == qlora.trainable_params


@pytest.mark.parametrize("mode", MODES)
def test_monotone_in_batch_and_seq(mode: str) -> None:
    sizes = ((1, 128), (2, 128), (2, 256), (4, 256), (8, 512), (16, 1024))
    totals = [estimate_memory("smollm2-135m", mode, batch_size=b, seq_len=s, **CUDA16).total for b, s in sizes]
    assert totals == sorted(totals) and totals[-1] > totals[0]


def test_parts_follow_the_rules_of_thumb() -> None:
    params = get_entry("gpt2").params
    inference = estimate_memory("gpt2", "inference", batch_size=1, seq_len=128, **CPU32)
    assert inference.weights == 4 * params
    assert inference.gradients == inference.optimizer == 0
    assert inference.overhead == memory_estimate.CPU_BASELINE_BYTES
    full = estimate_memory("gpt2", "full", batch_size=1, seq_len=128, **CUDA16)
    assert full.weights == 2 * params
    assert full.optimizer == params * (memory_estimate.ADAM_BYTES + memory_estimate.MASTER_BYTES)  # 16-bit: master copy
    assert full.overhead == memory_estimate.CUDA_CONTEXT_BYTES
    assert full.total == full.weights + full.optimizer + full.overhead + max(full.activations, full.gradients)
    full32 = estimate_memory("gpt2", "full", batch_size=1, seq_len=128, **CPU32)
    assert full32.optimizer == params * memory_estimate.ADAM_BYTES
    qlora = estimate_memory("gpt2", "qlora", batch_size=1, seq_len=128, device="cuda")
    assert qlora.dtype in ("float16", "bfloat16")
    assert 0.5 * params < qlora.weights < 2 * params  # 4-bit blocks, 16-bit embeddings (39M of 124M)


def test_logits_dominate_big_vocabularies() -> None:
    """The loss keeps three float32 batch x seq x vocab tensors: with Qwen's 152K vocabulary, more than the weights."""
    estimate = estimate_memory("qwen2.5-0.5b", "lora", batch_size=4, seq_len=512, **CUDA16)
    logits = 4 * 512 * get_entry("qwen2.5-0.5b").vocab * memory_estimate.LOSS_BYTES_PER_LOGIT
    assert estimate.activations > logits > 3 * estimate.weights
    config = get_entry("qwen2.5-0.5b").to_config()
    config.vocab_size = 32000  # same layers, a Llama-2-sized vocabulary
    same_layers_small_vocab = estimate_memory(config, "lora", batch_size=4, seq_len=512, **CUDA16)
    assert estimate.activations - same_layers_small_vocab.activations == pytest.approx(
        4 * 512 * (151936 - 32000) * memory_estimate.LOSS_BYTES_PER_LOGIT, rel=0.01
    )
    doubled = estimate_memory("qwen2.5-0.5b", "lora", batch_size=8, seq_len=512, **CUDA16)
    assert doubled.activations == pytest.approx(2 * estimate.activations, rel=0.01)


def test_eager_attention_and_checkpointing_move_activations_the_right_way() -> None:
    sdpa = estimate_memory("smollm2-135m", "lora", batch_size=2, seq_len=1024, **CUDA16)
    eager = estimate_memory("smollm2-135m", "lora", batch_size=2, seq_len=1024, attn_implementation="eager", **CUDA16)
    checkpointed = estimate_memory("smollm2-135m", "lora", batch_size=2, seq_len=1024, gradient_checkpointing=True, **CUDA16)
    assert checkpointed.activations < sdpa.activations < eager.activations
    dropout = estimate_memory("smollm2-135m", "lora", batch_size=2, seq_len=1024, lora_dropout=0.1, **CUDA16)
    assert dropout.activations > sdpa.activations


@pytest.mark.parametrize("name", ["gpt2", "opt-350m", "pythia-160m", "smollm2-135m", "qwen2.5-0.5b", "bloom-560m"])
def test_catalog_name_and_its_config_give_the_same_estimate(name: str) -> None:
    config = get_entry(name).to_config()
    for mode in MODES:
        by_name = estimate_memory(name, mode, batch_size=2, seq_len=64, **CUDA16)
        by_config = estimate_memory(config, mode, batch_size=2, seq_len=64, **CUDA16)
        assert without_label(by_name) == without_label(by_config), mode


def test_every_catalog_shape_matches_a_model_built_from_its_config() -> None:
    for entry in CATALOG.values():
        assert shapes.shape_from_entry(entry) == dataclasses.replace(
            shapes.shape_from_config(entry.to_config()), label=entry.alias
        ), entry.name


@pytest.mark.parametrize("name", ["embedded-gpt2", "embedded-llama"])
def test_a_loaded_model_counts_its_real_parameters(name: str) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(get_entry(name).to_config())
    assert sum(p.numel() for p in model.parameters()) == get_entry(name).params
    for mode in MODES:
        loaded = estimate_memory(model, mode, batch_size=2, seq_len=64)  # dtype and device follow the model
        assert loaded.dtype == "float32" or mode == "qlora"
        assert without_label(loaded) == without_label(estimate_memory(name, mode, batch_size=2, seq_len=64, device="cpu", dtype=loaded.dtype))


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # raised inside peft
@pytest.mark.parametrize("name", ["embedded-gpt2", "embedded-llama"])
def test_lora_trainable_count_matches_peft(name: str) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = get_entry(name).to_config()
    model = AutoModelForCausalLM.from_config(config)
    lora = LoraConfig(r=8, target_modules=lora_target_modules(config.model_type), fan_in_fan_out=config.model_type == "gpt2")
    peft_model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert estimate_memory(name, "lora", lora_r=8, **CPU32).trainable_params == trainable
    # a peft-wrapped model is estimated from its base model, adapters not counted as weights twice
    assert estimate_memory(peft_model, "lora", lora_r=8).params == get_entry(name).params


def test_auto_dtype_and_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory_estimate, "_cuda_available", lambda: False)
    assert (estimate_memory("gpt2").device, estimate_memory("gpt2").dtype) == ("cpu", "float32")
    monkeypatch.setattr(memory_estimate, "_cuda_available", lambda: True)
    monkeypatch.setattr(memory_estimate, "_cuda_bf16", lambda: False)  # a T4
    assert (estimate_memory("gpt2").device, estimate_memory("gpt2").dtype) == ("cuda", "float16")
    monkeypatch.setattr(memory_estimate, "_cuda_bf16", lambda: True)
    assert estimate_memory("gpt2").dtype == "bfloat16"


def test_dtype_aliases_and_torch_dtypes_agree() -> None:
    torch = pytest.importorskip("torch")
    expected = estimate_memory("gpt2", "lora", device="cuda", dtype="bfloat16")
    assert estimate_memory("gpt2", "lora", device="cuda", dtype="bf16") == expected
    assert estimate_memory("gpt2", "lora", device="cuda", dtype=torch.bfloat16) == expected


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "train"}, "mode must be one of 'inference', 'lora', 'qlora', 'full', got 'train'"),
        ({"dtype": "int8"}, "dtype must be one of .* got 'int8'"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
        ({"batch_size": True}, "batch_size must be an integer >= 1, got True"),
        ({"seq_len": 12.5}, "seq_len must be an integer >= 1, got 12.5"),
        ({"device": "tpu"}, "device must be one of .* got 'tpu'"),
        ({"attn_implementation": "flex"}, "attn_implementation must be one of"),
        ({"lora_dropout": 1.0}, r"lora_dropout must be in \[0, 1\), got 1.0"),
    ],
)
def test_bad_input_names_the_value_and_the_choices(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        estimate_memory("gpt2", **kwargs)


def test_bad_model_arguments() -> None:
    with pytest.raises(ValueError, match="catalog name .* transformers config or a loaded model"):
        estimate_memory(42)
    with pytest.raises(ValueError, match="not in the model catalog"):
        estimate_memory("gpt-5")


def test_notes_display_and_serialization() -> None:
    estimate = estimate_memory("gpt2", "qlora", batch_size=2, seq_len=2048, device="cpu")
    assert any("longer than the model's context of 1024" in note for note in estimate.notes)
    assert any("CUDA GPU" in note for note in estimate.notes)
    data = estimate.to_dict()
    assert data["total"] == estimate.total and data["total_gb"] == round(estimate.total / GB, 3)
    assert estimate.summary().startswith("gpt2 qlora (float16, cpu, 2 x 2048): ~")
    assert "max(activations" in estimate.summary()
    html = estimate._repr_html_()
    assert "<table>" in html and "longer than the model&#x27;s context" in html


def test_relative_error() -> None:
    assert relative_error(110, 100) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="estimated must be a positive"):
        relative_error(1, 0)


# --- measured --------------------------------------------------------------------------------------


def _measure(case: tuple[Any, str, int, int]) -> tuple[str, int, int]:
    """Return ``(label, estimated bytes, measured peak bytes)`` for one case."""
    config, mode, batch, seq = case
    family = config.model_type
    estimate = estimate_memory(config, mode, batch_size=batch, seq_len=seq, **CPU32)
    measured = measure_peak_memory(config, mode, batch_size=batch, seq_len=seq, dtype="float32", device="cpu")
    return f"{family} {mode} {batch}x{seq}", estimate.total, measured["peak"]


def test_measured_peak_is_within_15_percent_of_the_estimate() -> None:
    """Three small cases, each in a fresh process (run at once): peak RSS vs the CPU float32 estimate."""
    cases = [(config_of(family, **kwargs), mode, batch, seq) for family, kwargs, mode, batch, seq in MEASURED_CASES]
    with ThreadPoolExecutor(len(cases)) as pool:  # configs built first: transformers' lazy imports are not thread-safe
        results = list(pool.map(_measure, cases))
    for label, estimated, measured in results:
        assert abs(relative_error(measured, estimated)) <= 0.15, f"{label}: measured {measured / GB:.2f} GB, estimated {estimated / GB:.2f} GB"


def test_measure_rejects_what_it_cannot_run() -> None:
    with pytest.raises(ValueError, match="mode must be one of 'inference', 'lora', 'full'"):
        measure_peak_memory("embedded-gpt2", "qlora")
    with pytest.raises(ValueError, match="explicit dtype"):
        measure_peak_memory("embedded-gpt2", dtype="auto")


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("name", "mode", "dtype", "batch", "seq"),
    [
        ("gpt2", "inference", "float16", 8, 512),
        ("smollm2-135m", "lora", "bfloat16", 8, 512),
        ("pythia-160m", "full", "float32", 4, 512),
    ],
)
def test_cuda_estimate_matches_max_memory_allocated(name: str, mode: str, dtype: str, batch: int, seq: int) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if dtype == "bfloat16" and torch.cuda.get_device_capability()[0] < 8:
        dtype = "float16"
    estimate = estimate_memory(name, mode, batch_size=batch, seq_len=seq, dtype=dtype, device="cuda")
    measured = measure_peak_memory(name, mode, batch_size=batch, seq_len=seq, dtype=dtype, device="cuda")
    error = relative_error(measured["cuda_peak"], estimate.total)
    assert abs(error) <= 0.15, f"{name} {mode}: measured {measured['cuda_peak'] / GB:.2f} GB, estimated {estimate.total_gb:.2f} GB"
