"""LoRA fine-tuning: settings, targets, backend and precision choice, input checks, and a real run end to end."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import warnings
from typing import Any

import pytest
import torch

from _finetune_faults import EVAL_TEXTS, TRAIN_TEXTS, all_finite, nan_base_weights, tiny_model, tokenizer
from colab_helpers.errors import ColabHelpersWarning
from colab_helpers.finetune import FineTuneConfig, FineTuner, fine_tune
from colab_helpers.finetune.lora import choose_backend, resolve_precision, resolve_targets


def small(tmp_path, **changes) -> FineTuneConfig:
    base = dict(max_steps=6, micro_batch_size=2, seq_len=16, warmup_steps=1, eval_every=3, eval_batches=2,
                checkpoint_every=3, output_dir=str(tmp_path / "run"), learning_rate=5e-3)  # fmt: skip
    return FineTuneConfig(**{**base, **changes})


# --- settings ---------------------------------------------------------------------------------------------


def test_every_setting_has_a_default_and_help() -> None:
    config = FineTuneConfig()
    helps = FineTuneConfig.help()
    for f in dataclasses.fields(FineTuneConfig):
        assert helps[f.name].strip(), f"{f.name} has no help text"
    assert (config.r, config.alpha, config.max_grad_norm, config.nan_skip_patience) == (16, 32, 1.0, 3)
    assert config.early_stopping_patience is None and config.resume is False and config.target_modules is None
    json.dumps(config.to_dict())


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"r": 0}, "r must be an integer >= 1, got 0"),
        ({"alpha": -1}, "alpha must be a finite number > 0, got -1"),
        ({"dropout": 1.0}, "dropout must be a finite number in [0, 1), got 1.0"),
        ({"learning_rate": 0}, "learning_rate must be a finite number > 0, got 0"),
        ({"max_steps": None, "epochs": None}, "set max_steps"),
        ({"epochs": -1.0}, "epochs must be a finite number > 0, got -1.0"),
        ({"micro_batch_size": 2, "min_micro_batch_size": 4}, "min_micro_batch_size (4) must be <= micro_batch_size (2)"),
        ({"seq_len": 1}, "seq_len must be an integer >= 2, got 1"),
        ({"max_grad_norm": 0}, "max_grad_norm must be a finite number > 0, got 0"),
        ({"dtype": "fp8"}, "dtype must be one of"),
        ({"backend": "deepspeed"}, "backend must be one of"),
        ({"target_modules": "q_proj"}, "target_modules must be a list"),
        ({"early_stopping_patience": 0}, "early_stopping_patience must be an integer >= 1, got 0"),
        ({"checkpoint_every": 0}, "checkpoint_every must be an integer >= 1, got 0"),
        ({"max_minutes": 0}, "max_minutes must be a finite number > 0, got 0"),
        ({"max_minutes": "10"}, "max_minutes must be a number > 0, got str '10' (write the number without quotes)"),
    ],
)
def test_bad_settings_name_the_value_and_the_fix(changes, fragment) -> None:
    with pytest.raises(ValueError) as info:
        FineTuneConfig(**changes)
    assert fragment in str(info.value)
    assert "e.g." in str(info.value) or "set " in str(info.value) or "lower" in str(info.value) or "'auto'" in str(info.value) or "list" in str(info.value)


FLOAT_FIELDS = {  # field -> (a good value, bad values besides the common ones)
    "alpha": (32, [0, -1]),
    "dropout": (0.05, [1.0, -0.1]),
    "learning_rate": (2e-4, [0, -1e-4]),
    "epochs": (1.0, [0, -1.0]),
    "weight_decay": (0.0, [-0.01]),
    "max_grad_norm": (1.0, [0, -1.0]),
    "plot_every_seconds": (10.0, [-1]),
}
COMMON_BAD = [math.inf, -math.inf, math.nan, "1e-4", "abc", True, None, [1.0]]


@pytest.mark.parametrize(
    ("name", "value"),
    [(name, value) for name, (_, bad) in FLOAT_FIELDS.items() for value in COMMON_BAD + bad
     if not (name == "epochs" and value is None)],  # epochs=None is valid: max_steps counts
    ids=repr,
)  # fmt: skip
def test_every_float_setting_refuses_bad_values_naming_field_value_and_example(name, value) -> None:
    with pytest.raises(ValueError) as info:
        FineTuneConfig(**{name: value})
    message = str(info.value)
    assert message.startswith(f"{name} must be a"), message
    assert f"got {type(value).__name__} {value!r}" in message or f"got {value!r};" in message, message
    assert f"e.g. {name}=" in message
    if isinstance(value, str):
        assert "without quotes" in message


def test_float_settings_take_numpy_scalars_as_python_floats() -> None:
    import numpy as np

    config = FineTuneConfig(alpha=np.float32(16), weight_decay=np.float64(0.01), epochs=np.float32(0.5))
    assert type(config.alpha) is float and config.alpha == 16.0 and type(config.epochs) is float
    json.dumps(config.to_dict())
    assert FineTuneConfig(alpha=16).alpha == 16  # a Python int stays as given (checkpoint fingerprints compare it)
    with pytest.raises(ValueError, match="warmup_ratio must be in"):
        FineTuneConfig().with_intervals(warmup_ratio=math.nan)


def test_smoke_is_a_tiny_valid_copy() -> None:
    config = FineTuneConfig(max_steps=1000, micro_batch_size=16, seq_len=512, output_dir="x", r=8)
    smoke = config.smoke()
    assert smoke.max_steps <= 10 and smoke.seq_len <= 64 and smoke.micro_batch_size <= 4
    assert smoke.r == 8 and smoke.output_dir == "x" and config.max_steps == 1000


# --- targets, precision, backend --------------------------------------------------------------------------


def test_default_targets_are_attention_and_mlp_of_each_architecture() -> None:
    gpt2, _ = resolve_targets(tiny_model("gpt2"), None)
    assert {t.rsplit(".", 1)[-1] for t in gpt2} == {"c_attn", "c_proj", "c_fc"}
    assert "transformer.h.0.attn.c_proj" in gpt2 and "transformer.h.0.mlp.c_proj" in gpt2
    llama, _ = resolve_targets(tiny_model("llama"), None)
    assert {t.rsplit(".", 1)[-1] for t in llama} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(llama) == 14 and not any("lm_head" in t for t in gpt2 + llama)


def test_unknown_target_module_lists_the_available_ones() -> None:
    with pytest.raises(ValueError) as info:
        resolve_targets(tiny_model("gpt2"), ["q_proj", "c_attn"])
    message = str(info.value)
    assert "['q_proj']" in message and "gpt2" in message and "c_attn" in message and "c_fc" in message


def test_precision_and_backend_on_the_cpu(caplog) -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == (None, False)
    assert resolve_precision("bf16", cpu) == (torch.bfloat16, False)
    with caplog.at_level(logging.INFO, logger="colab_helpers.finetune.lora"):
        assert choose_backend(FineTuneConfig(), tiny_model("llama"), cpu, gated=False) == "peft"
    assert any("not unsloth" in r.message and "CUDA" in r.message for r in caplog.records)
    with pytest.warns(ColabHelpersWarning, match="not unsloth"):
        assert choose_backend(FineTuneConfig(backend="unsloth"), tiny_model("llama"), cpu, gated=False) == "peft"


# --- inputs checked before training -----------------------------------------------------------------------


def test_empty_or_short_text_says_how_many_tokens_are_needed(tmp_path) -> None:
    config = small(tmp_path, micro_batch_size=4, seq_len=32)
    with pytest.raises(ValueError, match=r"needs 128 tokens"):
        FineTuner(tiny_model(), tokenizer(), ["", "   "], config=config, live_plot=False, progress=False)
    with pytest.raises(ValueError, match=r"has \d+ tokens, but one micro-batch of 4 x seq_len=32 needs 128"):
        FineTuner(tiny_model(), tokenizer(), ["a short text"], config=config, live_plot=False, progress=False)
    with pytest.raises(ValueError, match="early_stopping_patience needs eval_texts"):
        FineTuner(tiny_model(), tokenizer(), TRAIN_TEXTS, config=small(tmp_path, early_stopping_patience=2), progress=False)


@pytest.mark.parametrize(
    ("texts", "fragment"),
    [
        ([1, 2, 3], "train_texts holds int values where strings or (prompt, completion) pairs are expected "
                    "(train_texts[0] is 1 and 2 more)"),
        (["a text", None], "train_texts holds NoneType values where strings or (prompt, completion) pairs are "
                           "expected (train_texts[1] is None)"),
        ([b"bytes"], "holds bytes values"),
        (5, "train_texts must be a text, a list of texts or of (prompt, completion) pairs, got int 5"),
        (["a short text"], "has 10 tokens, but one micro-batch of 2 x seq_len=16 needs 32"),
    ],
)  # fmt: skip
def test_bad_training_data_says_what_it_holds_and_leaves_no_folder(tmp_path, texts, fragment) -> None:
    output_dir = tmp_path / "new" / "run"
    with pytest.raises(ValueError) as info:
        fine_tune(tiny_model(), tokenizer(), texts, config=small(tmp_path, output_dir=str(output_dir)), progress=False)
    assert fragment in str(info.value)
    assert not (tmp_path / "new").exists()  # nothing created for a run that never started


def test_bad_eval_data_leaves_no_folder_either(tmp_path) -> None:
    output_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=r"eval_texts holds int values .* \(eval_texts\[0\] is 7\)"):
        fine_tune(tiny_model(), tokenizer(), TRAIN_TEXTS, [7], small(tmp_path, output_dir=str(output_dir)), progress=False)
    assert not output_dir.exists()


def test_a_failure_attaching_lora_leaves_no_new_folder(tmp_path, monkeypatch) -> None:
    from colab_helpers.finetune import trainable

    def broken(*args, **kwargs):
        raise RuntimeError("peft could not wrap this model")

    monkeypatch.setattr(trainable, "attach_lora", broken)
    output_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="peft could not wrap"):
        fine_tune(tiny_model(), tokenizer(), TRAIN_TEXTS, config=small(tmp_path, output_dir=str(output_dir)), progress=False)
    assert not output_dir.exists()  # the folder this call made is gone; a folder that was there stays
    output_dir.mkdir()
    with pytest.raises(RuntimeError, match="peft could not wrap"):
        fine_tune(tiny_model(), tokenizer(), TRAIN_TEXTS, config=small(tmp_path, output_dir=str(output_dir)), progress=False)
    assert output_dir.is_dir()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_weights_already_non_finite_are_refused_before_any_folder_or_checkpoint(tmp_path, bad) -> None:
    """Such a model trained two skipped steps, wrote checkpoints and returned; now it is named before any file work."""
    model = tiny_model()
    name, param = list(model.named_parameters())[3]
    with torch.no_grad():
        param.view(-1)[5] = bad
    output_dir = tmp_path / "new" / "run"
    with pytest.raises(ValueError, match=rf"the model holds NaN or infinity in '{name}' \(the first such weight\) "
                                         r"before training, .*; load it again \(e.g. load_model\(name\)\)"):
        fine_tune(model, tokenizer(), TRAIN_TEXTS, config=small(tmp_path, output_dir=str(output_dir)), progress=False)
    assert not output_dir.exists() and not (tmp_path / "new").exists()
    assert not any("lora" in module for module, _ in model.named_modules())  # nothing was attached
    old = output_dir / "checkpoints" / "checkpoint-3"  # resume=False deletes old checkpoints: not for this model
    old.mkdir(parents=True)
    with pytest.raises(ValueError, match="NaN or infinity"):
        fine_tune(nan_base_weights(tiny_model()), tokenizer(), TRAIN_TEXTS,
                  config=small(tmp_path, output_dir=str(output_dir)), progress=False)  # fmt: skip
    assert [p.name for p in output_dir.rglob("*")] == ["checkpoints", "checkpoint-3"]


def test_unwritable_output_dir_fails_before_training(tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    model = tiny_model()
    with pytest.raises(PermissionError, match="not writable"):
        fine_tune(model, tokenizer(), TRAIN_TEXTS, config=small(tmp_path, output_dir=str(blocker / "run")), progress=False)
    assert not any("lora" in name for name, _ in model.named_modules())  # nothing was attached


def test_load_in_4bit_without_cuda_warns_once_and_trains(tmp_path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fine_tune(tiny_model(), tokenizer(), TRAIN_TEXTS, config=small(tmp_path, load_in_4bit=True, max_steps=2),
                           live_plot=False, progress=False)  # fmt: skip
    ours = [w for w in caught if issubclass(w.category, ColabHelpersWarning)]
    assert len(ours) == 1 and "load_in_4bit ignored" in str(ours[0].message)
    assert result.steps == 2


# --- a real run -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_training_lowers_the_loss_and_writes_everything(tmp_path, arch) -> None:
    from peft import PeftModel

    config = small(tmp_path, max_steps=12, eval_every=4, learning_rate=2e-2)
    result = fine_tune(tiny_model(arch), tokenizer(), TRAIN_TEXTS, EVAL_TEXTS, config, progress=False)
    steps = [row["step"] for row in result.history]
    assert steps == list(range(1, 13)) and result.stopped_reason == "max_steps"
    assert not any(row["skipped"] for row in result.history) and result.events == []
    losses = [row["loss"] for row in result.history]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    evals = [row for row in result.history if "eval_loss" in row]
    assert [row["step"] for row in evals] == [4, 8, 12]
    assert all(math.isclose(row["eval_ppl"], math.exp(row["eval_loss"])) for row in evals)
    assert result.best_eval_loss == min(row["eval_loss"] for row in evals)
    assert {"loss", "lr", "grad_norm", "micro_batch_size", "skipped", "device"} <= set(result.history[0])
    assert all_finite(result.model)
    # files: plot, final adapter (reloadable), history, newest checkpoint
    assert result.plot_path is not None and result.plot_path.read_bytes()[:4] == b"\x89PNG"
    assert result.checkpoint_dir is not None and result.checkpoint_dir.name == "checkpoint-12"
    summary = json.loads((result.output_dir / "history.json").read_text())
    assert [row["step"] for row in summary["history"]] == steps
    reloaded = PeftModel.from_pretrained(tiny_model(arch), result.adapter_dir).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, result.model(input_ids=ids).logits, atol=1e-5)
    assert len(result.history_frame()) == 12


def test_epochs_set_the_number_of_steps(tmp_path) -> None:
    config = small(tmp_path, epochs=1.0, micro_batch_size=4, gradient_accumulation_steps=2, checkpoint_every=None)
    tuner = FineTuner(tiny_model(), tokenizer(), TRAIN_TEXTS, config=config, live_plot=False, progress=False)
    sequences = len(tuner._blocks)
    assert tuner.max_steps == math.ceil(sequences / 8)
    result = tuner.train()
    assert result.steps == tuner.max_steps and [r["step"] for r in result.history] == list(range(1, tuner.max_steps + 1))


class StepSeconds:
    """A training clock that moves only when the model runs forward: ``seconds`` per forward pass."""

    def __init__(self, model: Any, seconds: float) -> None:
        self.now = 0.0
        model.register_forward_hook(lambda *_: self.tick(seconds))

    def tick(self, seconds: float) -> None:
        self.now += seconds

    def perf_counter(self) -> float:
        return self.now


def timed(monkeypatch, model: Any, seconds: float) -> None:
    import types

    import colab_helpers.finetune.state as state

    monkeypatch.setattr(state, "time", types.SimpleNamespace(perf_counter=StepSeconds(model, seconds).perf_counter))


def test_a_time_budget_ends_the_run_with_its_cosine_decay(tmp_path, monkeypatch) -> None:
    model = tiny_model()
    timed(monkeypatch, model, 6.0)  # one forward per step (no evaluation): 6 s a step, 10 steps in a minute
    seen_totals = []

    class Totals:
        def on_step_end(self, tuner, row):
            seen_totals.append(tuner.max_steps)

    config = small(tmp_path, max_steps=40, max_minutes=1.0, eval_every=100, checkpoint_every=None)
    result = fine_tune(model, tokenizer(), TRAIN_TEXTS, config=config, callbacks=[Totals()], live_plot=False,
                       progress=False)  # fmt: skip
    assert result.stopped_reason == "max_minutes" and result.steps == 10
    assert seen_totals == [10] * 10  # planned from the first step's pace, not the 40 asked for
    lrs = [row["lr"] for row in result.history]
    assert math.isclose(lrs[-1], 0.1 * config.learning_rate)  # the decay reached its floor as the budget ended
    assert all(a > b for a, b in zip(lrs[1:], lrs[2:]))  # and fell all along after the warm-up step
    assert result.adapter_dir is not None and result.failure is None


def test_a_budget_larger_than_the_run_changes_nothing(tmp_path, monkeypatch) -> None:
    model = tiny_model()
    timed(monkeypatch, model, 1.0)
    result = fine_tune(model, tokenizer(), TRAIN_TEXTS, config=small(tmp_path, max_minutes=5.0), live_plot=False,
                       progress=False)  # fmt: skip
    plain = fine_tune(tiny_model(), tokenizer(), TRAIN_TEXTS, config=small(tmp_path / "plain"), live_plot=False,
                      progress=False)  # fmt: skip
    assert result.stopped_reason == "max_steps" and result.steps == 6
    assert [row["lr"] for row in result.history] == [row["lr"] for row in plain.history]


def test_the_progress_bar_follows_a_replanned_total() -> None:
    import io

    from tqdm import tqdm

    from colab_helpers.finetune.callbacks import _set_total

    bar = tqdm(total=40, file=io.StringIO())
    bar.update(3)
    _set_total(bar, 10)
    assert (bar.total, bar.n) == (10, 3)
    bar.close()
    from tqdm.notebook import tqdm as notebook_tqdm  # a notebook's bar (ipywidgets): its widget's max is what is drawn

    widget_bar = notebook_tqdm(total=40)
    widget_bar.update(3)
    _set_total(widget_bar, 10)
    assert (widget_bar.total, widget_bar.container.children[1].max) == (10, 10)
    widget_bar.update(7)
    widget_bar.close()
    assert widget_bar.container.children[1].bar_style == "success"  # ended at its total: not drawn as a failure


def test_callbacks_see_every_step_and_eval(tmp_path) -> None:
    seen: dict[str, list[int]] = {"step": [], "eval": [], "begin": [], "end": []}

    class Recorder:  # any object with some of the hooks is a callback
        def on_train_begin(self, tuner):
            seen["begin"].append(tuner.step)

        def on_step_end(self, tuner, row):
            seen["step"].append(row["step"])

        def on_eval(self, tuner, row):
            seen["eval"].append(row["step"])

        def on_train_end(self, tuner, result):
            seen["end"].append(result.steps)

    fine_tune(tiny_model(), tokenizer(), TRAIN_TEXTS, EVAL_TEXTS, small(tmp_path), callbacks=[Recorder()],
              live_plot=False, progress=False)  # fmt: skip
    assert seen == {"step": [1, 2, 3, 4, 5, 6], "eval": [3, 6], "begin": [0], "end": [6]}


def test_the_model_is_wrapped_in_place_so_a_second_call_says_what_to_pass(tmp_path) -> None:
    model = tiny_model()
    result = fine_tune(model, tokenizer(), TRAIN_TEXTS, config=small(tmp_path, max_steps=2), live_plot=False, progress=False)
    with pytest.raises(ValueError, match="result.model"):
        fine_tune(model, tokenizer(), TRAIN_TEXTS, config=small(tmp_path, max_steps=2), live_plot=False, progress=False)
    # result.model keeps training its adapter, and resume=True continues the same run for more steps
    more = fine_tune(result.model, tokenizer(), TRAIN_TEXTS, config=small(tmp_path, max_steps=4, resume=True),
                     live_plot=False, progress=False)  # fmt: skip
    assert [r["step"] for r in more.history] == [1, 2, 3, 4] and more.history[:2] == result.history


def test_the_embedded_model_and_corpus_train_in_smoke_mode(tmp_path) -> None:
    from colab_helpers.evaluation.data import load_text_dataset
    from colab_helpers.models.loading import load_model

    model, tok = load_model("embedded-gpt2", device="cpu")
    data = load_text_dataset("embedded", max_chars=40_000)
    config = FineTuneConfig(output_dir=str(tmp_path / "run")).smoke()
    result = fine_tune(model, tok, data.train, data.validation, config, live_plot=False, progress=False)
    assert result.steps == config.max_steps and result.best_step is not None
    assert all(math.isfinite(r["loss"]) for r in result.history) and all_finite(result.model)
    assert 1 < result.best_eval_loss < math.log(len(tok))  # a trained model: far better than uniform


def test_importing_the_subpackage_stays_light() -> None:
    import subprocess
    import sys

    code = "import sys, colab_helpers.finetune; print(sorted({'torch', 'peft', 'transformers', 'matplotlib'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_gradient_norms_are_saved_at_checkpoints_and_plotted(tmp_path) -> None:
    from colab_helpers.finetune.gradients import load_gradient_norms, plot_gradient_norms

    config = small(tmp_path, save_gradients=True)
    fine_tune(tiny_model("gpt2"), tokenizer(), TRAIN_TEXTS, EVAL_TEXTS, config, live_plot=False, progress=False)
    norms = load_gradient_norms(tmp_path / "run")
    assert sorted(norms) == [3, 6]  # the checkpoint steps
    assert all(value > 0 and math.isfinite(value) for layer in norms.values() for value in layer.values())
    assert plot_gradient_norms(tmp_path / "run").axes


def test_a_model_without_a_loss_type_gets_one_quietly(tiny_gpt2: tuple[Any, Any]) -> None:
    """transformers logs "`loss_type=None` ... is unrecognized" (red in a notebook) for GPT-2; we name the loss."""
    import copy

    from colab_helpers.finetune.lora import attach_lora

    model = copy.deepcopy(tiny_gpt2[0])
    assert model.loss_type is None
    peft_model, backend = attach_lora(model, FineTuneConfig(), ["c_attn"], "peft", quantized=False)
    assert backend == "peft" and model.loss_type == "ForCausalLM"


@pytest.mark.parametrize("name", ["load_in_4bit", "restore_best", "save_gradients", "resume"])
@pytest.mark.parametrize("value", ["False", 0, None])
def test_switches_must_be_real_bools(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"{name} must be True or False, got {value!r}"):
        FineTuneConfig(**{name: value})
