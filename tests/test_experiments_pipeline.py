"""The prune-then-recover pipeline: its config, cheap evaluation, latency measured side by side, the typed result and
its tables."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest

from colab_helpers.evaluation.latency import LatencyReport, generation_latency, speedup
from colab_helpers.experiments import report
from colab_helpers.experiments.config import Compression, ExperimentConfig, HeadPruning
from colab_helpers.experiments.pipeline import Experiment
from colab_helpers.experiments.result import Compressed, ExperimentResult, HeadsPruned, recovered_share


def test_eval_stride_is_validated_and_smoke_stays_on_the_toy() -> None:
    with pytest.raises(ValueError, match=r"eval_stride must be an integer in \[1, seq_len=128\] or None, got 256"):
        ExperimentConfig(eval_stride=256)
    assert ExperimentConfig(eval_stride=64).eval_stride == 64
    assert ExperimentConfig(model="smollm2-135m-instruct").smoke().model == "embedded-gpt2"
    assert ExperimentConfig(model="embedded-llama").smoke().model == "embedded-llama"
    with pytest.raises(ValueError, match="latency_rounds must be a positive integer"):
        ExperimentConfig(latency_rounds=0)


def test_the_run_config_builds_the_fine_tuning_config_in_one_place(tmp_path: Path) -> None:
    config = ExperimentConfig(lora_r=8, lora_alpha=16, learning_rate=5e-4, fine_tuning_steps=80, seq_len=96,
                              micro_batch_size=2, dtype="fp32", seed=3)
    ft = config.finetune_config(tmp_path / "ft")
    assert (ft.r, ft.alpha, ft.learning_rate, ft.max_steps, ft.seq_len, ft.micro_batch_size, ft.dtype, ft.seed) == (
        8, 16, 5e-4, 80, 96, 2, "fp32", 3)
    assert (ft.eval_every, ft.checkpoint_every, ft.warmup_steps) == (10, 20, 8)  # FineTuneConfig.with_intervals
    assert ft.output_dir == str(tmp_path / "ft") and "recovery" in ft.plot_title
    assert "control" in config.finetune_config(tmp_path, control=True).plot_title
    by_epochs = ExperimentConfig(fine_tuning_epochs=1.0).finetune_config(tmp_path)
    assert by_epochs.epochs == 1.0 and by_epochs.eval_every == 25  # paced like a 200-step run
    budget = ExperimentConfig(fine_tuning_steps=400, fine_tuning_minutes=20.0)
    assert budget.finetune_config(tmp_path).max_minutes == budget.finetune_config(tmp_path, control=True).max_minutes == 20
    assert config.finetune_config(tmp_path).max_minutes is None


def test_smoke_means_the_same_everywhere() -> None:
    from colab_helpers import smoke

    config = ExperimentConfig(model="gpt2", dataset="wikitext-2-raw-v1", seq_len=256).smoke()
    assert (config.model, config.dataset, config.seq_len, config.eval_tokens, config.fine_tuning_steps) == (
        smoke.SMOKE_MODEL, smoke.SMOKE_DATASET, smoke.SMOKE_SEQ_LEN, smoke.SMOKE_EVAL_TOKENS, smoke.SMOKE_STEPS)
    assert smoke.smoke_model("embedded-llama") == "embedded-llama" and smoke.smoke_model("Qwen/Qwen2.5-0.5B") == "embedded-gpt2"


def test_latency_is_interleaved_and_uses_medians(tiny_gpt2: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_gpt2
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.pad_token = tokenizer.eos_token
    first, second = copy.deepcopy(model), copy.deepcopy(model)
    order: list[str] = []
    for name, each in (("a", first), ("b", second)):
        each.register_forward_pre_hook(lambda module, args, name=name: order.append(name) if not order or order[-1] != name else None)
    reports = generation_latency({"a": first, "b": second}, tokenizer, "The quick", new_tokens=3, rounds=3)
    assert order == ["a", "b"] * 4  # warm-up, then three interleaved rounds
    for report in reports.values():
        assert report.rounds == 3 and report.new_tokens == 3 and report.device == "cpu"
        assert report.wall_spread[0] <= report.ms_per_token <= report.wall_spread[1]
        assert report.cpu_ms_per_token > 0
    with pytest.raises(ValueError, match="at least one model"):
        generation_latency({}, tokenizer, "x")


def test_speedup_uses_cpu_time_on_the_cpu_and_wall_time_on_a_gpu() -> None:
    def report(wall: float, cpu: float, device: str) -> LatencyReport:
        return LatencyReport(wall, cpu, (wall, wall), 5, 16, 1, device)

    assert speedup(report(10, 20, "cpu"), report(20, 10, "cpu")) == pytest.approx(2.0)
    assert speedup(report(10, 20, "cuda:0"), report(20, 10, "cuda:0")) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Experiment, ExperimentResult]:
    experiment = Experiment(tmp_path_factory.mktemp("pipeline"), progress=False, live_plot=False)
    config = ExperimentConfig(model="embedded-llama", control=True, save_model=True).smoke()
    return experiment, experiment.run(config)


def test_every_stage_is_measured_with_latency_and_the_control(llama_run: tuple[Experiment, ExperimentResult]) -> None:
    _, result = llama_run
    for measured in result.stages.values():
        assert math.isfinite(measured.perplexity) and measured.eval_tokens > 0
        assert measured.latency_ms_per_token > 0 and measured.latency.cpu_ms_per_token > 0
        assert measured.latency.rounds == 2  # smoke: two interleaved rounds
    assert result.baseline.speedup == pytest.approx(1.0)
    assert result.pruned.parameters < result.baseline.parameters
    assert math.isfinite(result.control.perplexity) and isinstance(result.control.generation, str)
    assert isinstance(result.pruning, HeadsPruned) and result.pruning.removal is not None
    table = report.comparison_table(result)
    assert list(table.index) == ["baseline", "pruned", "fine-tuned", "control (unpruned, fine-tuned)"]
    assert {"in-domain ppl", "in-domain vs baseline", "parameters", "ms / token", "speed-up", "seconds"} <= set(table.columns)
    readout = report.recovery_table(result)["value"]
    assert "what pruning still costs" in readout["pruned + fine-tuned vs control"]
    assert set(report.generations_table(result).index) == {"baseline", "pruned", "fine-tuned", "control"}
    assert Path(result.model_dir, "pruning.json").is_file()


def test_general_ability_is_measured_at_every_stage(llama_run: tuple[Experiment, ExperimentResult]) -> None:
    from colab_helpers.evaluation.harness import is_lm_eval_available
    from colab_helpers.evaluation.tasks import PRESETS

    _, result = llama_run
    tasks = list(PRESETS["offline"]) if is_lm_eval_available() else []  # the smoke default: the offline tasks
    for stage in (*result.stages.values(), result.control):
        ability = stage.ability
        assert ability is not None and ability.in_domain_ppl == stage.perplexity  # one in-domain figure, not two
        assert set(ability.other_ppl) == {"gpl-3.0", "python-docs"} and math.isfinite(stage.general_ppl)
        assert list(ability.tasks) == tasks and all(score.n == 4 for score in ability.tasks.values())  # smoke: 4 items
    table = report.comparison_table(result)
    assert {"general ppl", "general vs baseline", "task retention", "reading"} <= set(table.columns)
    assert table.loc["baseline", "reading"] == "reference"
    assert set(table["reading"]) <= {"reference", "domain adaptation", "better", "worse", "about the same"}
    abilities = report.ability_comparison(result)
    assert list(abilities.index) == list(table.index) and "general ppl" in abilities.columns
    general = [stage.general_ppl for stage in result.stages.values()]
    assert result.recovered_share == recovered_share(*general)  # the headline share: on general text
    assert result.recovered_share_in_domain == recovered_share(*(s.perplexity for s in result.stages.values()))


def test_training_curves_of_run_and_control_are_both_drawn(llama_run: tuple[Experiment, ExperimentResult], tmp_path: Path) -> None:
    _, result = llama_run
    figure = report.plot_results([result], tmp_path / "results.png")
    stages_ax, curves = figure.axes
    labels = [line.get_label() for line in curves.lines]
    assert any(label.endswith("control train") for label in labels)
    assert any(label.endswith("train") and "control" not in label for label in labels)
    assert [tick.get_text() for tick in stages_ax.get_xticklabels()] == ["baseline", "pruned", "fine-tuned", "control"]
    low, _ = stages_ax.get_ylim()
    assert stages_ax.get_yscale() == "log" or low > 0.5 * result.baseline.perplexity  # not from 0
    assert (tmp_path / "results.png").stat().st_size > 0


def test_precision_settings_are_validated_before_any_work() -> None:
    with pytest.raises(ValueError, match="dtype must be 'auto', 'bf16', 'fp16' or 'fp32', got 'float8'"):
        ExperimentConfig(dtype="float8")
    with pytest.raises(ValueError, match=r"set remove_heads=False \(HeadPruning\(remove=False\)\) to gate"):
        ExperimentConfig(load_in_4bit=True)
    assert ExperimentConfig(load_in_4bit=True, pruning=HeadPruning(remove=False), dtype="bf16").dtype == "bf16"


def test_a_saved_run_reads_back_with_its_curves(llama_run: tuple[Experiment, ExperimentResult], tmp_path: Path) -> None:
    _, result = llama_run
    loaded = ExperimentResult.load(result.output_dir)
    assert loaded == result  # every figure, the config and the reports, as run
    assert loaded.fine_tuned.perplexity == pytest.approx(result.fine_tuned.perplexity)
    assert list(report.comparison_table(loaded).index)[-1] == "control (unpruned, fine-tuned)"
    curves = report.plot_results([loaded], tmp_path / "again.png").axes[1]
    assert len(curves.lines) >= 2  # the run's and the control's training curves came back from history.csv
    with pytest.raises(FileNotFoundError, match="no saved run at"):
        ExperimentResult.load(tmp_path / "nothing-here")


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        # a bare unknown name or a missing path is refused by ExperimentConfig (test_experiments_config.py); a hub
        # id passes it, and the hub (offline here) is what refuses it
        (dict(model="someone/no-such-model-xyz"), ConnectionError, "model 'someone/no-such-model-xyz'"),
        (dict(model="embedded-gpt2", dataset="no-such-dataset"), ValueError, "unknown dataset 'no-such-dataset'"),
    ],
)
def test_a_run_with_a_bad_model_or_dataset_creates_no_folder(
    tmp_path: Path, settings: dict[str, Any], error: type[Exception], message: str
) -> None:
    experiment = Experiment(tmp_path / "results", progress=False, live_plot=False)
    config = ExperimentConfig(**settings)
    with pytest.raises(error, match=message):
        experiment.run(config)
    with pytest.raises(error, match=message):
        experiment.run(config, output_dir=tmp_path / "out" / "run1")
    assert list((tmp_path / "results").iterdir()) == [] and not (tmp_path / "out").exists()


def test_an_output_dir_under_a_file_fails_before_the_model_loads(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    experiment = Experiment(tmp_path / "results", progress=False, live_plot=False)
    with pytest.raises(NotADirectoryError, match="is a file"):
        experiment.run(ExperimentConfig(model="embedded-gpt2").smoke(), output_dir=blocker / "run")
    assert experiment._models == {} and experiment._data == {}  # nothing was loaded
    with pytest.raises(TypeError, match="config must be an ExperimentConfig"):
        experiment.run({"model": "embedded-gpt2"})  # type: ignore[arg-type]


# --- compress to a parameter share, recover by distillation ------------------------------------------------------


@pytest.fixture(scope="module")
def compress_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Experiment, ExperimentResult]:
    experiment = Experiment(tmp_path_factory.mktemp("compress"), progress=False, live_plot=False)
    config = ExperimentConfig(model="embedded-gpt2", pruning=Compression(0.7), ability_tasks=None).smoke()
    return experiment, experiment.run(config)


def test_a_target_share_compresses_across_axes_and_every_stage_is_measured(
    compress_run: tuple[Experiment, ExperimentResult],
) -> None:
    import json

    _, result = compress_run
    assert isinstance(result.pruning, Compressed)
    report_ = result.pruning.report
    assert report_.target_params == 0.7 and report_.axes == ("heads", "mlp", "layers")
    # compress meets the target unless a floor stops it (a head per layer, round_to channels, one layer), and rounds
    # MLP sizes down: at most the rounded goal
    assert report_.params_after <= round(0.7 * report_.params_before)
    assert report_.params_before == result.baseline.parameters
    assert report_.params_after == result.pruned.parameters == result.fine_tuned.parameters
    assert sum(report_.removed_params.values()) == report_.params_before - report_.params_after
    assert result.pruning.heads_pruned == sum(report_.heads_before) - sum(report_.heads_after)
    assert report_.predicted_speedup >= 1 and report_.candidates
    for measured in result.stages.values():
        assert math.isfinite(measured.perplexity) and measured.latency_ms_per_token > 0 and measured.seconds >= 0
    assert result.training.recovery_method == "lora" and result.training.steps > 0
    assert result.name == "embedded-gpt2-keep70-heads+mlp+layers"
    saved = json.loads((result.output_dir / "result.json").read_text())
    assert saved["pruning"]["params_after"] == report_.params_after and saved["pruning"]["kept_share"] <= 0.7
    assert saved["config"]["target_params"] == 0.7 and saved["config"]["axes"] == ["heads", "mlp", "layers"]
    table = report.comparison_table(result)
    assert list(table.index) == ["baseline", "pruned", "fine-tuned"]
    assert table.loc["pruned", "parameters"] == report_.params_after
    assert "pruned + fine-tuned" in report.recovery_table(result).index
    assert all(stage.ability is not None and stage.ability.tasks == {} for stage in result.stages.values())
    assert "share of the general loss won back" in report.recovery_table(result).index  # layers removed: still measured


def test_the_calibration_batches_split_into_scoring_and_comparison(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib

    compress_module = importlib.import_module("colab_helpers.pruning.compress")  # the module, not the function
    calls: list[tuple[int, int | None, tuple[str, ...]]] = []
    real = compress_module.compress

    def spy(model: Any, batches: Any, target: float, axes: Any, *, eval_batches: Any = None, **options: Any) -> Any:
        calls.append((len(batches), None if eval_batches is None else len(eval_batches), tuple(axes)))
        return real(model, batches, target, axes, eval_batches=eval_batches, **options)

    monkeypatch.setattr(compress_module, "compress", spy)
    experiment = Experiment(tmp_path, progress=False, live_plot=False)
    for batches in (3, 1):
        config = ExperimentConfig(model="embedded-gpt2", pruning=Compression(0.8, axes=["mlp"]), seq_len=32,
                                  importance_batches=batches)  # fmt: skip
        model, tokenizer = experiment._model(config)
        _, pruning = experiment._compress(model, tokenizer, experiment._dataset("embedded"), config)
        assert pruning.report.removed_params["mlp"] > 0 and pruning.heads_pruned == 0
    assert calls == [(2, 1, ("mlp",)), (1, None, ("mlp",))]  # the first half scores; one batch does both


def test_distillation_recovers_from_the_unpruned_model_and_the_control_stays_lora(tmp_path: Path) -> None:
    pytest.importorskip("colab_helpers.finetune.distill")
    import torch

    experiment = Experiment(tmp_path, progress=False, live_plot=False)
    config = ExperimentConfig(model="embedded-gpt2", pruning=Compression(0.7), recovery_method="distill", control=True,
                              distill_temperature=3.0, distill_alpha=0.7, ability=False).smoke()  # fmt: skip
    original, _ = experiment._model(config)  # loads and caches the teacher: a copy to compare its weights with
    result = experiment.run(config)
    training = result.training
    assert training.recovery_method == "distill" and training.steps > 0
    assert training.distill["temperature"] == 3.0 and training.distill["alpha"] == 0.7
    assert {"kd_loss", "lm_loss"} <= set(report.training_history(result).columns)
    assert result.control_training.recovery_method == "lora"  # the control: LM loss, unpruned
    assert result.name.endswith("-distill")
    assert result.pruning.report.params_after <= round(0.7 * result.pruning.report.params_before)
    assert math.isfinite(result.fine_tuned.perplexity)
    teacher = experiment._models[experiment._model_key(config)][0]
    assert all(p.requires_grad for p in teacher.parameters()) == all(p.requires_grad for p in original.parameters())
    assert teacher.training == original.training  # lent as a frozen teacher, put back as it was
    for (name, kept), (_, before) in zip(teacher.named_parameters(), original.named_parameters()):
        assert torch.equal(kept, before), f"the teacher changed: {name}"


def test_head_pruning_by_level_may_recover_by_distillation(tmp_path: Path) -> None:
    pytest.importorskip("colab_helpers.finetune.distill")
    experiment = Experiment(tmp_path, progress=False, live_plot=False)
    result = experiment.run(ExperimentConfig(model="embedded-llama", recovery_method="distill", ability=False).smoke())
    assert isinstance(result.pruning, HeadsPruned) and result.pruning.heads_pruned > 0
    assert result.training.recovery_method == "distill" and result.name == "embedded-llama-gradient-30-distill"


def test_one_compression_recovered_two_ways_is_compressed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses
    import importlib

    compress_module = importlib.import_module("colab_helpers.pruning.compress")
    calls: list[float] = []
    real = compress_module.compress

    def spy(model: Any, batches: Any, target: float, *args: Any, **options: Any) -> Any:
        calls.append(target)
        return real(model, batches, target, *args, **options)

    monkeypatch.setattr(compress_module, "compress", spy)
    experiment = Experiment(tmp_path, progress=False, live_plot=False)
    config = ExperimentConfig(model="embedded-gpt2", pruning=Compression(0.8), control=False, ability=False).smoke()
    first = experiment.run(config)
    second = experiment.run(dataclasses.replace(config, recovery_method="distill"))
    assert calls == [0.8]
    assert second.pruning.report.params_after == first.pruning.report.params_after
    assert second.pruned.perplexity == pytest.approx(first.pruned.perplexity)
    assert first.pruned.weights_mb < first.baseline.weights_mb
    assert "weights MB" in report.comparison_table(first).columns


def test_distillation_from_top_k_logits_precomputed_to_disk(tmp_path: Path) -> None:
    """distill_top_k: the teacher's top-k logits go to <run>/finetune/teacher_cache before training; the result says so."""
    experiment = Experiment(tmp_path, progress=False, live_plot=False)
    config = ExperimentConfig(model="embedded-gpt2", pruning=Compression(0.8), recovery_method="distill",
                              distill_top_k=16, control=False, ability=False).smoke()  # fmt: skip
    result = experiment.run(config)
    settings = result.training.distill
    assert settings["top_k"] == 16 and settings["teacher_cache"].endswith("teacher_cache")
    assert Path(settings["teacher_cache"]).is_dir() and any(Path(settings["teacher_cache"]).iterdir())
    assert math.isfinite(result.fine_tuned.perplexity)
    with pytest.raises(ValueError, match="distill_top_k must be a positive integer or None, got 0"):
        ExperimentConfig(distill_top_k=0)


def test_history_of_a_run_is_read_from_its_file(tmp_path: Path) -> None:
    experiment = Experiment(tmp_path, progress=False, live_plot=False)
    result = experiment.run(ExperimentConfig(model="embedded-gpt2", pruning=Compression(0.8), control=False,
                                             ability=False).smoke())  # fmt: skip
    history = report.training_history(result)
    assert "loss" in history.columns and len(history) == result.training.steps
    with pytest.raises(ValueError, match="has no training history"):
        report.training_history(result, control=True)  # no control ran


# --- recovery text, full fine-tuning, general ability --------------------------------------------------------------


def test_mixed_recovery_text_sampled_from_the_teacher_trains_every_weight(tmp_path: Path) -> None:
    """No teacher text is shipped for the toy: recovery samples it from the unpruned model (a few texts in smoke
    mode), once; recovery and the control train on the same text, every weight, with no adapter to merge."""
    experiment = Experiment(tmp_path, progress=False, live_plot=False)
    config = ExperimentConfig(model="embedded-gpt2", recovery_text="mix", fine_tuning_method="full", learning_rate=1e-4,
                              control=True, ability_tasks=None).smoke()  # fmt: skip
    result = experiment.run(config)
    assert config.recovery_samples == 4 and result.name == "embedded-gpt2-gradient-30-full-mix"
    (texts,) = experiment._texts.values()  # sampled once, for recovery and the control
    assert 0 < len(texts) <= 2 * config.recovery_samples and result.training.texts == len(texts)
    data = experiment._dataset("embedded")
    assert texts[1] in data.train and texts[0] not in data.train  # generated, then a dataset paragraph, in turn
    for training in (result.training, result.control_training):
        assert (training.fine_tuning_method, training.recovery_text, training.backend) == ("full", "mix", "full")
    assert Path(result.output_dir, "finetune", "model").is_dir()  # the whole model, not an adapter
    for stage in (*result.stages.values(), result.control):
        assert stage.ability is not None and stage.ability.tasks == {} and math.isfinite(stage.general_ppl)
    assert "reading" in report.comparison_table(result).columns


def test_without_lm_eval_abilities_fall_back_to_other_domain_perplexity(monkeypatch: pytest.MonkeyPatch) -> None:
    from colab_helpers.errors import ColabHelpersWarning
    from colab_helpers.evaluation import harness
    from colab_helpers.experiments import pipeline

    monkeypatch.setattr(harness, "is_lm_eval_available", lambda: False)
    with pytest.warns(ColabHelpersWarning, match=r"needs lm-evaluation-harness, which is not installed"):
        config = pipeline._with_available_tasks(ExperimentConfig())
    assert config.ability and config.ability_tasks is None
    off = ExperimentConfig(ability=False)
    assert pipeline._with_available_tasks(off) is off
