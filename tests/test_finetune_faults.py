"""Surviving failures: every fault is injected from outside, through hooks on the model, never into the trainer."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from _finetune_faults import (
    EVAL_TEXTS,
    TRAIN_TEXTS,
    CudaErrorAt,
    NanAdapter,
    NanBase,
    OutOfMemoryAbove,
    StepClock,
    all_finite,
    eval_loss_rises_after,
    poison_gradients,
    poison_loss,
    tiny_model,
    tokenizer,
    trainable,
)
from colab_helpers.errors import ColabHelpersWarning, CudaFallbackWarning
from colab_helpers.finetune import FineTuneConfig, LivePlotCallback, fine_tune, list_checkpoints


def config(tmp_path, **changes) -> FineTuneConfig:
    base = dict(max_steps=6, micro_batch_size=2, seq_len=16, warmup_steps=1, eval_every=100, checkpoint_every=None,
                output_dir=str(tmp_path / "run"), learning_rate=1e-2, dropout=0.0, snapshot_every=2)  # fmt: skip
    return FineTuneConfig(**{**base, **changes})


def run(model, cfg, *callbacks, eval_texts=None):
    return fine_tune(model, tokenizer(), TRAIN_TEXTS, eval_texts, cfg, callbacks=callbacks, live_plot=False, progress=False)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=atol) for k in a)


def kinds(result) -> list[str]:
    return [e["kind"] for e in result.events]


# --- non-finite loss and gradients ------------------------------------------------------------------------


def test_a_nan_loss_skips_the_step_without_touching_the_weights(tmp_path) -> None:
    clock = StepClock(keep_weights=True)
    model = tiny_model()
    poison_loss(model, clock, {3})
    plot = LivePlotCallback(tmp_path / "plot.png", min_interval=0)
    result = run(model, config(tmp_path), clock, plot)
    row = result.history[2]
    assert row["step"] == 3 and row["skipped"] and math.isnan(row["loss"])
    assert same(clock.weights[3], clock.weights[2])  # no optimizer update at the skipped step
    assert not same(clock.weights[4], clock.weights[3])  # and training goes on
    assert kinds(result) == ["nan_skip"] and result.events[0]["step"] == 3
    assert result.stopped_reason == "max_steps" and all_finite(result.model)
    assert (3, "NaN", "nan") in plot.plot.marks


def test_infinite_gradients_with_a_finite_loss_are_skipped_too(tmp_path) -> None:
    clock = StepClock(keep_weights=True)
    model = tiny_model()
    poison_gradients(model, clock, {2})
    result = run(model, config(tmp_path, max_steps=4), clock)
    row = result.history[1]
    assert row["skipped"] and math.isfinite(row["loss"]) and not math.isfinite(row["grad_norm"])
    assert same(clock.weights[2], clock.weights[1])
    assert "gradients" in result.events[0]["message"] and all_finite(result.model)


def test_a_nan_streak_rolls_back_and_halves_the_learning_rate(tmp_path) -> None:
    clean = run(tiny_model(), config(tmp_path / "clean", max_steps=10))
    clock = StepClock(keep_weights=True)
    model = tiny_model()
    poison_loss(model, clock, {4, 5, 6})
    result = run(model, config(tmp_path, max_steps=10, nan_skip_patience=3), clock)
    assert kinds(result) == ["nan_skip"] * 3 + ["rollback", "lr_halved"]
    rollback = result.events[3]
    assert rollback["step"] == 6 and rollback["to_step"] == 2  # snapshot every 2 good steps: steps 2, (4 skipped)
    # the step after the rollback starts from the snapshot: weights of step 2, not of step 3
    assert not same(clock.weights[3], clock.weights[2])
    for step in range(7, 11):
        assert math.isclose(result.history[step - 1]["lr"], 0.5 * clean.history[step - 1]["lr"])
    assert result.stopped_reason == "max_steps" and [r["step"] for r in result.history] == list(range(1, 11))
    assert all_finite(result.model)


def test_a_persistent_nan_halves_the_micro_batch_then_stops_keeping_the_good_state(tmp_path) -> None:
    clock = StepClock(keep_weights=True)
    model = tiny_model()
    poison_loss(model, clock, lambda step: step >= 4)
    cfg = config(tmp_path, max_steps=30, micro_batch_size=4, nan_skip_patience=2, max_rollbacks=2)
    with pytest.warns(ColabHelpersWarning, match="persisted after 2 rollback"):
        result = run(model, cfg, clock)
    assert kinds(result) == (
        ["nan_skip"] * 2 + ["rollback", "lr_halved"]
        + ["nan_skip"] * 2 + ["rollback", "lr_halved", "micro_batch_halved"]
        + ["nan_skip"] * 2 + ["stopped"]
    )  # fmt: skip
    assert result.stopped_reason == "non_finite" and result.steps == 9
    assert [r["micro_batch_size"] for r in result.history] == [4] * 7 + [2] * 2
    assert same(trainable(result.model), clock.weights[2])  # the last good snapshot is what is kept
    assert all_finite(result.model)
    assert list_checkpoints(tmp_path / "run" / "checkpoints")[-1].name == "checkpoint-9"


def failed_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ColabHelpersWarning)]


@pytest.mark.parametrize("fault", ["nan_loss", "nan_adapter", "nan_base"])
def test_a_run_where_every_step_is_non_finite_fails_and_saves_no_adapter(tmp_path, fault) -> None:
    clock = StepClock()
    model = tiny_model()  # weights NaN from the start are refused up front (test_finetune.py): they break later
    callbacks = [clock, {"nan_adapter": NanAdapter(), "nan_base": NanBase()}[fault]] if fault != "nan_loss" else [clock]
    if fault == "nan_loss":
        poison_loss(model, clock, lambda step: True)
    # max_steps < nan_skip_patience: the ladder never gets to stop this run, the end-of-run verdict must
    cfg = config(tmp_path, max_steps=2, checkpoint_every=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(model, cfg, *callbacks)
    [message] = failed_warnings(caught)
    assert message.startswith("fine-tuning failed at step 2") and "No adapter was saved" in message
    reason = {"nan_loss": "none of its 2 steps had a finite loss", "nan_adapter": "weights hold NaN or infinity (",
              "nan_base": "weights hold NaN or infinity (base_model.model.transformer.wte.weight)"}[fault]  # fmt: skip
    assert reason in message and reason in result.failure
    assert result.stopped_reason == "non_finite" and result.steps == 2 and kinds(result)[-1] == "failed"
    assert result.adapter_dir is None and not (tmp_path / "run" / "adapter").exists()
    assert "FAILED" in result.summary()
    with pytest.raises(RuntimeError, match="LoRA fine-tuning failed: .*holds no adapter"):
        result.raise_if_failed()  # what the pipeline and the spelling study call before measuring the model
    # no final checkpoint of the failed state (the one of step 1 is what checkpoint_every wrote on the way)
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["checkpoint-1"]
    summary = json.loads((tmp_path / "run" / "history.json").read_text())
    assert summary["stopped_reason"] == "non_finite" and summary["failure"] == result.failure


@pytest.mark.parametrize("fault", ["nan_adapter", "nan_base"])
def test_nan_weights_stop_at_the_first_rollback_instead_of_climbing_the_ladder(tmp_path, fault) -> None:
    model = tiny_model()
    callbacks = [NanAdapter()] if fault == "nan_adapter" else [NanBase()]
    cfg = config(tmp_path, max_steps=30, nan_skip_patience=2, max_rollbacks=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(model, cfg, *callbacks)
    assert len(failed_warnings(caught)) == 1
    assert kinds(result) == ["nan_skip", "nan_skip", "stopped", "failed"] and result.steps == 2
    assert "no rollback can help" in result.events[2]["message"]
    assert result.stopped_reason == "non_finite" and result.adapter_dir is None


def test_a_run_with_good_steps_then_nan_keeps_its_adapter_and_warns_once(tmp_path) -> None:
    clock = StepClock()
    model = tiny_model()
    poison_loss(model, clock, lambda step: step >= 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(model, config(tmp_path, max_steps=30, nan_skip_patience=2, max_rollbacks=1), clock)
    [message] = failed_warnings(caught)
    assert "persisted after 1 rollback" in message and "the adapter of step 2 is kept" in message
    assert result.stopped_reason == "non_finite" and result.failure is None
    assert result.adapter_dir is not None and (result.adapter_dir / "adapter_model.safetensors").is_file()


# --- out of memory ----------------------------------------------------------------------------------------


def test_out_of_memory_halves_the_micro_batch_and_retries_the_same_step(tmp_path) -> None:
    cfg = config(tmp_path, max_steps=4, micro_batch_size=8)
    clean = run(tiny_model(), config(tmp_path / "clean", max_steps=4, micro_batch_size=8))
    model = tiny_model()
    oom = OutOfMemoryAbove(model, limit=2)
    result = run(model, cfg)
    assert kinds(result) == ["oom_retry", "oom_retry"] and oom.raised == 2
    assert [e["micro_batch_size"] for e in result.events] == [4, 2] and result.events[0]["step"] == 1
    assert [r["step"] for r in result.history] == [1, 2, 3, 4]
    assert [r["micro_batch_size"] for r in result.history] == [2, 2, 2, 2]
    assert sum(oom.rows_seen) == 4 * 8  # every step still saw its 8 sequences
    for ours, reference in zip(result.history, clean.history):  # same effective batch: same losses
        assert math.isclose(ours["loss"], reference["loss"], rel_tol=1e-5)
    assert same(trainable(result.model), trainable(clean.model), atol=1e-4)


def test_out_of_memory_at_the_floor_is_a_clear_error_after_a_checkpoint(tmp_path) -> None:
    model = tiny_model()
    OutOfMemoryAbove(model, limit=0)
    with pytest.raises(RuntimeError, match=r"out of memory at micro_batch_size=1, the floor") as info:
        run(model, config(tmp_path, micro_batch_size=2))
    assert "resume=True" in str(info.value)
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["checkpoint-0"]


# --- other CUDA errors ------------------------------------------------------------------------------------


def test_a_cuda_error_checkpoints_warns_once_and_continues_without_losing_a_step(tmp_path) -> None:
    clean = run(tiny_model(), config(tmp_path / "clean"))
    clock = StepClock()
    model = tiny_model()
    fault = CudaErrorAt(model, clock, step=3)
    forwards: list[int] = []
    model.get_output_embeddings().register_forward_hook(lambda m, a, o: forwards.append(1) if m.training else None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(model, config(tmp_path), clock)
    fallback_warnings = [w for w in caught if issubclass(w.category, CudaFallbackWarning)]
    assert fault.raised == 1 and len(fallback_warnings) == 1
    assert "illegal memory access" in str(fallback_warnings[0].message)
    assert kinds(result) == ["cpu_fallback"] and result.events[0]["step"] == 3
    assert "checkpoint-2" in [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert [r["step"] for r in result.history] == list(range(1, 7)) and len(forwards) == 6
    assert all(r["device"] == "cpu" for r in result.history)
    assert same(trainable(result.model), trainable(clean.model), atol=1e-6)  # nothing lost, nothing repeated


def test_errors_that_are_not_cuda_failures_propagate_untouched(tmp_path) -> None:
    model = tiny_model()

    def hook(module, args):
        raise ValueError("a bug in the caller's hook")

    model.get_input_embeddings().register_forward_pre_hook(hook)
    with pytest.raises(ValueError, match="a bug in the caller's hook"):
        run(model, config(tmp_path))


# --- early stopping ---------------------------------------------------------------------------------------


def test_early_stopping_restores_the_best_adapter(tmp_path) -> None:
    clock = StepClock()
    model = tiny_model()
    eval_loss_rises_after(model, clock, step=4)
    cfg = config(tmp_path, max_steps=40, eval_every=2, eval_batches=2, early_stopping_patience=2)
    result = run(model, cfg, clock, eval_texts=EVAL_TEXTS)
    evals = {r["step"]: r["eval_loss"] for r in result.history if "eval_loss" in r}
    assert list(evals) == [2, 4, 6, 8] and evals[6] > evals[4] and evals[8] > evals[4]
    assert result.stopped_reason == "early_stopping" and result.steps == 8
    assert result.best_step == 4 and result.best_eval_loss == min(evals.values())
    assert kinds(result) == ["early_stop"]
    assert same(trainable(result.model), clock.eval_weights[result.best_step])
    assert not same(clock.eval_weights[8], clock.eval_weights[result.best_step])


def test_fp16_loss_scale_overflow_is_not_counted_as_divergence(tmp_path, monkeypatch) -> None:
    """The GradScaler path on the CPU: the precision choice is forced (a T4 is not at hand), the fault is a hook."""
    import colab_helpers.finetune.trainer as trainer

    monkeypatch.setattr(trainer, "resolve_precision", lambda dtype, device: (torch.bfloat16, True))
    clock = StepClock(keep_weights=True)
    model = tiny_model()
    poison_gradients(model, clock, {2})
    tuner = trainer.FineTuner(model, tokenizer(), TRAIN_TEXTS, config=config(tmp_path, nan_skip_patience=1),
                              callbacks=[clock], live_plot=False, progress=False)  # fmt: skip
    assert tuner._scaler is not None
    result = tuner.train()
    row = result.history[1]
    assert row["skipped"] and row["overflow"] and math.isfinite(row["loss"])
    assert same(clock.weights[2], clock.weights[1])  # no update at the overflow step
    assert result.events == [] and tuner._scaler.get_scale() == 2.0**15  # scale lowered, no rollback
    assert all_finite(result.model)
