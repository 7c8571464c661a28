"""Fine-tuning on a CUDA GPU: fp16 loss scaling, bf16, QLoRA 4-bit, unsloth, and a real move to the CPU.

Every test is marked ``gpu`` and skipped cleanly without CUDA (and without bitsandbytes / unsloth for theirs).
"""

from __future__ import annotations

import importlib.util
import math
import warnings

import pytest
import torch

from _finetune_faults import TRAIN_TEXTS, CudaErrorAt, StepClock, all_finite, tiny_model, tokenizer
from colab_helpers.errors import ColabHelpersWarning, CudaFallbackWarning
from colab_helpers.finetune import FineTuneConfig, FineTuner, fine_tune
from colab_helpers.finetune.lora import resolve_precision

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def config(tmp_path, **changes) -> FineTuneConfig:
    base = dict(max_steps=6, micro_batch_size=2, seq_len=16, warmup_steps=1, checkpoint_every=3,
                output_dir=str(tmp_path / "run"), learning_rate=1e-2)  # fmt: skip
    return FineTuneConfig(**{**base, **changes})


def test_auto_precision_follows_the_compute_capability() -> None:
    device = torch.device("cuda")
    major, _ = torch.cuda.get_device_capability(device)
    expected = (torch.bfloat16, False) if major >= 8 else (torch.float16, True)
    assert resolve_precision("auto", device) == expected


def test_fp16_trains_with_a_grad_scaler(tmp_path) -> None:
    model = tiny_model("llama").cuda()
    tuner = FineTuner(model, tokenizer(), TRAIN_TEXTS, config=config(tmp_path, dtype="fp16"), live_plot=False, progress=False)
    assert tuner._scaler is not None
    result = tuner.train()
    good = [r for r in result.history if not r["skipped"]]
    assert good and all(math.isfinite(r["loss"]) for r in good)
    assert not any(e["kind"] == "rollback" for e in result.events)  # overflow skips never count as NaN streaks
    assert all_finite(result.model) and result.device.startswith("cuda")


def test_bf16_autocast_trains(tmp_path) -> None:
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("bf16 needs compute capability >= 8")
    result = fine_tune(tiny_model("gpt2").cuda(), tokenizer(), TRAIN_TEXTS, config=config(tmp_path, dtype="bf16"),
                       live_plot=False, progress=False)  # fmt: skip
    assert result.steps == 6 and all_finite(result.model)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
def test_qlora_trains_a_4bit_model_without_warnings(tmp_path) -> None:
    from colab_helpers.models.loading import load_model

    tiny_model("llama").save_pretrained(tmp_path / "base")
    tokenizer().save_pretrained(tmp_path / "base")
    model, tok = load_model(str(tmp_path / "base"), load_in_4bit=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ColabHelpersWarning)
        tuner = FineTuner(model, tok, TRAIN_TEXTS, config=config(tmp_path, load_in_4bit=True), live_plot=False, progress=False)
    assert tuner.quantized
    result = tuner.train()
    assert result.steps == 6 and all(math.isfinite(p.float().sum().item()) for p in result.model.parameters() if p.requires_grad)


@pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="needs unsloth")
def test_unsloth_backend_on_llama_trains_or_says_why_not(tmp_path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fine_tune(tiny_model("llama").cuda(), tokenizer(), TRAIN_TEXTS,
                           config=config(tmp_path, backend="unsloth"), live_plot=False, progress=False)  # fmt: skip
    assert result.steps == 6 and all_finite(result.model)
    if result.backend != "unsloth":  # unsloth refused this model: one warning must say why
        assert any("unsloth could not attach" in str(w.message) for w in caught if issubclass(w.category, ColabHelpersWarning))


def test_a_cuda_error_moves_training_to_the_cpu(tmp_path) -> None:
    clock = StepClock()
    model = tiny_model("gpt2").cuda()
    CudaErrorAt(model, clock, step=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fine_tune(model, tokenizer(), TRAIN_TEXTS, config=config(tmp_path), callbacks=[clock],
                           live_plot=False, progress=False)  # fmt: skip
    assert len([w for w in caught if issubclass(w.category, CudaFallbackWarning)]) == 1
    assert [r["device"] for r in result.history] == ["cuda"] * 2 + ["cpu"] * 4
    assert all(p.device.type == "cpu" for p in result.model.parameters()) and all_finite(result.model)
    assert [r["step"] for r in result.history] == list(range(1, 7))
