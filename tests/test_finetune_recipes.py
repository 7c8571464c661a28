"""The recovery recipes: teacher correction (a tuned, frozen copy; the teacher untouched) and iterative compression
(the target reached in rounds, distillation between, the step budget split)."""

from __future__ import annotations

import math

import pytest
import torch

from _finetune_faults import TRAIN_TEXTS, tiny_model, tokenizer
from colab_helpers.finetune import DistillConfig, FineTuneConfig
from colab_helpers.finetune.recipes import compress_iteratively, correct_teacher, round_targets


def _config(tmp_path, **changes) -> FineTuneConfig:
    base = dict(max_steps=4, micro_batch_size=2, seq_len=16, warmup_steps=1, eval_every=100, checkpoint_every=None,
                output_dir=str(tmp_path / "run"), learning_rate=1e-2, dropout=0.0)  # fmt: skip
    return FineTuneConfig(**{**base, **changes})


def _batches() -> list[dict[str, torch.Tensor]]:
    ids = tokenizer()(" ".join(TRAIN_TEXTS), return_tensors="pt").input_ids[0]
    rows = ids[: 4 * 16].view(4, 16)
    return [{"input_ids": rows[i : i + 2], "attention_mask": torch.ones_like(rows[i : i + 2])} for i in (0, 2)]


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_round_targets_keep_the_same_share_each_round_and_multiply_to_the_target() -> None:
    shares = round_targets(0.75, 2)
    assert shares[0] == pytest.approx(shares[1]) and math.prod(shares) == pytest.approx(0.75)
    assert round_targets(0.5, 1) == [0.5]
    with pytest.raises(ValueError, match="rounds"):
        round_targets(0.75, 0)
    with pytest.raises(ValueError, match="target_params"):
        round_targets(1.5, 2)


def test_correct_teacher_returns_a_tuned_frozen_copy_and_leaves_the_teacher_alone(tmp_path) -> None:
    teacher = tiny_model("llama")
    before = {name: p.detach().clone() for name, p in teacher.named_parameters()}
    corrected = correct_teacher(teacher, tokenizer(), TRAIN_TEXTS, _config(tmp_path), live_plot=False, progress=False)
    assert corrected is not teacher and not hasattr(corrected, "peft_config")  # the adapter is merged
    assert all(torch.equal(p, before[name]) for name, p in teacher.named_parameters())
    changed = [name for name, p in corrected.named_parameters() if not torch.equal(p, before[name])]
    assert changed and not any(p.requires_grad for p in corrected.parameters()) and not corrected.training


def test_compress_iteratively_reaches_the_target_in_rounds_with_half_the_steps_each(tmp_path) -> None:
    model, teacher = tiny_model("llama"), tiny_model("llama")
    full = _params(model)
    result = compress_iteratively(model, teacher, tokenizer(), _batches(), 0.8, TRAIN_TEXTS,
                                  _config(tmp_path, method="full", learning_rate=1e-3),
                                  DistillConfig(temperature=1.0, alpha=1.0), rounds=2,
                                  compress_options={"progress": False, "round_to": 1}, live_plot=False,
                                  progress=False)  # fmt: skip
    assert len(result.reports) == len(result.trainings) == 2
    assert [t.steps for t in result.trainings] == [2, 2] and result.seconds > 0
    assert _params(result.model) / full == pytest.approx(0.8, abs=0.05)
    assert result.reports[1].params_before == result.reports[0].params_after  # round 2 starts where round 1 ended


def test_compress_iteratively_splits_a_time_budget_between_its_rounds(tmp_path, monkeypatch) -> None:
    import colab_helpers.finetune.recipes as recipes

    budgets = []

    def recording(model, teacher, tokenizer, texts, eval_texts, config, *args, **kwargs):
        budgets.append(config.max_minutes)
        return real(model, teacher, tokenizer, texts, eval_texts, config, *args, **kwargs)

    real = recipes.distill
    monkeypatch.setattr(recipes, "distill", recording)
    compress_iteratively(tiny_model("llama"), tiny_model("llama"), tokenizer(), _batches(), 0.8, TRAIN_TEXTS,
                         _config(tmp_path, max_minutes=3.0), rounds=3,
                         compress_options={"progress": False, "round_to": 1}, live_plot=False, progress=False)  # fmt: skip
    assert budgets == [1.0, 1.0, 1.0]


def test_compress_iteratively_refuses_fewer_steps_than_rounds_before_any_work(tmp_path) -> None:
    model = tiny_model("llama")
    before = _params(model)
    with pytest.raises(ValueError, match="max_steps"):
        compress_iteratively(model, tiny_model("llama"), tokenizer(), _batches(), 0.8, TRAIN_TEXTS,
                             _config(tmp_path, max_steps=1), rounds=2)  # fmt: skip
    assert _params(model) == before
