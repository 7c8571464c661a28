"""Sweeps of the pipeline: tracked, resumable, failures recorded, bad sweeps rejected before any run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _experiment_results import fake_result

from colab_helpers.experiments.pipeline import Experiment
from colab_helpers.experiments.result import Compressed
from colab_helpers.experiments.runs_table import read_runs_table
from colab_helpers.experiments.sweep import Sweep, run_config, run_sweep

TINY = dict(dataset="embedded", fine_tuning_steps=2, eval_tokens=400, seq_len=32, importance_batches=1,
            micro_batch_size=2, max_new_tokens=3, ability_tasks=None)  # fmt: skip  (general ability: perplexity only)


def _fake_result(config):
    return fake_result(config, perplexity=10.0 + config.pruning.level)


def test_real_sweep_is_tracked_and_a_rerun_skips_done_runs(tmp_path: Path) -> None:
    pytest.importorskip("torch")  # real runs (a torch-less run is recorded as failed, not raised)
    experiment = Sweep(tmp_path, progress=False)
    runs = experiment.run(["random", "gradient"], [0.3], ["embedded-gpt2"], **TINY)
    assert list(runs["status"]) == ["done", "done"]
    assert (runs["pruned_parameters"] < runs["baseline_parameters"]).all()
    assert set(runs["strategy"]) == {"random", "gradient"}
    assert (runs[["baseline_general_ppl", "pruned_general_ppl", "fine_tuned_general_ppl"]] > 1).all().all()
    assert {"pruned_task_retention", "fine_tuned_task_retention", "recovered_share_in_domain"} <= set(runs.columns)
    for run_id in runs["run_id"]:
        assert (tmp_path / "runs" / run_id / "config.yaml").is_file()
        assert (tmp_path / "runs" / run_id / "result.json").is_file()
    started = time.perf_counter()
    again = experiment.run(["random", "gradient"], [0.3], ["embedded-gpt2"], **TINY)
    assert list(again["run_id"]) == list(runs["run_id"])
    assert time.perf_counter() - started < 5  # nothing re-ran (a run takes longer than that here)
    figure = experiment.plot_results()
    assert (tmp_path / "sweep.png").is_file() and len(figure.axes) >= 3
    html = experiment.report().read_text()
    assert "data:image/png;base64," in html and "gradient" in html


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(strategies=["random", "attention"]), "strategy must be one of .* got 'attention'"),
        (dict(models=["embedded-gpt2", "no-such-model-xyz"]), "unknown model 'no-such-model-xyz'"),
        (dict(pruning_levels=[0.3, 1.5]), r"pruning_level must be in \[0, 1\)"),
        (dict(pruning_levels=[]), "the sweep is empty"),
    ],
)
def test_bad_sweeps_are_rejected_before_any_run(tmp_path: Path, kwargs: dict, message: str) -> None:
    experiment = Sweep(tmp_path, progress=False)
    settings = dict(strategies=["random"], pruning_levels=[0.3], models=["embedded-gpt2"]) | kwargs
    with pytest.raises(ValueError, match=message):
        experiment.run(**settings, **TINY)
    assert not (tmp_path / "runs.csv").exists() or read_runs_table(tmp_path)[1] == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(strategies="random"), "strategies must be a list such as ['random', 'gradient'], got 'random' (str); "
                                    "for one value write strategies=['random']"),
        (dict(pruning_levels=0.3), "pruning_levels must be a list such as [0.1, 0.3], got 0.3 (float)"),
        (dict(models="embedded-gpt2"), "models must be a list such as ['embedded-gpt2'], got 'embedded-gpt2' (str)"),
    ],
)
def test_one_value_where_a_list_is_expected_says_so(tmp_path: Path, kwargs: dict, message: str) -> None:
    experiment = Sweep(tmp_path, progress=False)
    settings = dict(strategies=["random"], pruning_levels=[0.3], models=["embedded-gpt2"]) | kwargs
    with pytest.raises(TypeError, match=re.escape(message)):
        experiment.run(**settings, **TINY)
    assert not (tmp_path / "runs.csv").exists()


def test_levels_may_be_any_iterable_of_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Experiment, "run", lambda self, config, output_dir=None: _fake_result(config))
    runs = Sweep(tmp_path, progress=False).run(("random",), (level / 10 for level in (1, 2)), ["embedded-gpt2"])
    assert list(runs["pruning_level"]) == [0.1, 0.2] and runs.attrs["run_ids"] == list(runs["run_id"])


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def run(self, config, output_dir=None):
        if config.pruning.level == 0.3:
            raise RuntimeError("boom at 0.3")
        return _fake_result(config)

    monkeypatch.setattr(Experiment, "run", run)
    runs = Sweep(tmp_path, progress=False).run(["random"], [0.1, 0.3, 0.5], ["embedded-gpt2"])
    assert list(runs["status"]) == ["done", "failed", "done"]
    assert "boom at 0.3" in runs.loc[1, "error"]


def test_max_runtime_marks_the_rest_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def run(self, config, output_dir=None):
        time.sleep(0.2)
        return _fake_result(config)

    monkeypatch.setattr(Experiment, "run", run)
    experiment = Sweep(tmp_path, progress=False)
    runs = experiment.run(["random"], [0.1, 0.2, 0.3], ["embedded-gpt2"], max_runtime=0.1)
    assert list(runs["status"]) == ["done", "skipped", "skipped"]
    rerun = experiment.run(["random"], [0.1, 0.2, 0.3], ["embedded-gpt2"])  # no budget: finish the rest
    assert list(rerun["status"]) == ["done", "done", "done"] and len(rerun) == 3


def test_yaml_forms_run_and_track_extra_keys(tmp_path: Path) -> None:
    pytest.importorskip("torch")  # real runs (a torch-less run is recorded as failed, not raised)
    base = {"model": "embedded-gpt2", "strategy": "random", "pruning_level": 0.3, "notes": {"owner": "me"}, **TINY}
    single = run_config(base, root=tmp_path / "single")
    assert list(single["status"]) == ["done"] and single.loc[0, "notes.owner"] == "me"
    with pytest.raises(ValueError, match="unknown strategy|strategy must be one of"):
        run_sweep(base, {"name": "bad", "parameters": {"strategy": {"values": ["random", "attention"]}}}, root=tmp_path / "bad")
    assert not (tmp_path / "bad" / "runs.csv").exists()


KILLABLE_SWEEP = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from colab_helpers.experiments.pipeline import Experiment
    from colab_helpers.experiments.result import ExperimentResult, HeadsPruned, StageMetrics, Training
    from colab_helpers.experiments.sweep import Sweep

    def run(self, config, output_dir=None):
        marker = os.path.join(sys.argv[1], "executions.log")
        with open(marker, "a") as log:
            log.write(f"{config.pruning.strategy}-{config.pruning.level}\\n")
        time.sleep(0.15)
        stage = StageMetrics(10.0, 1, "", None, 1, 0.1, 0.1)
        return ExperimentResult(config.run_name(), config, stage, stage, stage, HeadsPruned([[1]], [[0.5]]),
                                Training("lora", 1, 0.1), None, 0.1, Path(output_dir))

    Experiment.run = run
    experiment = Sweep(sys.argv[1], progress=False)
    experiment.run(["random", "magnitude", "gradient"], [0.1, 0.3, 0.5], ["embedded-gpt2"])
    """
)


def test_sigkilled_sweep_completes_every_run_exactly_once_after_reruns(tmp_path: Path) -> None:
    script = tmp_path / "sweep.py"
    script.write_text(KILLABLE_SWEEP)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "executions.log"
    # Kill once a given number of runs has started, plus a delay that lands mid-run, mid-write or between runs.
    for started_runs, delay in ((1, 0.05), (4, 0.16), (7, 0.1)):
        process = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env)
        deadline = time.monotonic() + 60
        while (not log.exists() or len(log.read_text().split()) < started_runs) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        read_runs_table(tmp_path)  # runs.csv parses after every kill
    assert len(log.read_text().split()) >= 7  # the kills really interrupted a sweep in progress
    subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, check=True, timeout=120)
    _, rows = read_runs_table(tmp_path / "runs.csv")
    keys = [(row["strategy"], row["pruning_level"]) for row in rows]
    assert len(rows) == 9 and len(set(keys)) == 9  # no run lost or duplicated
    assert {row["status"] for row in rows} == {"done"}


def test_ray_backend_records_into_the_same_runs_table(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="ray[tune] is a dev requirement; install with make install")
    experiment = Sweep(tmp_path, progress=False)
    runs = experiment.run(["random", "magnitude"], [0.3], ["embedded-gpt2"], backend="ray", **TINY)
    assert sorted(runs["strategy"]) == ["magnitude", "random"]
    assert list(runs["status"]) == ["done", "done"]
    assert (runs["fine_tuned_perplexity"] > 0).all()
    again = experiment.run(["random", "magnitude"], [0.3], ["embedded-gpt2"], backend="ray", **TINY)
    assert list(again["run_id"]) == list(runs["run_id"])  # done runs are skipped on Ray too


def test_cli_sweep_and_runs_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("torch")  # real runs (a torch-less run is recorded as failed, not raised)
    import yaml

    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"model": "embedded-gpt2", "strategy": "random", **TINY}))
    (tmp_path / "sweep.yaml").write_text(
        "name: levels\nsearch: grid\nparameters:\n  pruning_level: {values: [0.25, 0.5]}\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    root = tmp_path / "results"
    command = [sys.executable, "-m", "colab_helpers"]
    subprocess.run([*command, "sweep", str(tmp_path / "base.yaml"), str(tmp_path / "sweep.yaml"), "--root", str(root)],
                   env=env, check=True, timeout=300, capture_output=True)  # fmt: skip
    listing = subprocess.run(
        [*command, "runs", "--root", str(root), "--filter-sweep", "levels", "--filter", "pruning_level>0.3",
         "--show", "pruning_level", "status", "fine_tuned_perplexity"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    lines = [line for line in listing.splitlines() if line.strip()]
    assert "pruning_level" in lines[0] and "fine_tuned_perplexity" in lines[0]
    assert any("0.5" in line and "done" in line for line in lines[1:])
    assert not any("0.25" in line for line in lines[1:])


def test_extra_keys_named_like_a_metric_are_refused_before_any_run(tmp_path: Path) -> None:
    from colab_helpers.experiments.config import ExperimentConfig

    experiment = Sweep(tmp_path, progress=False)
    with pytest.raises(ValueError, match=re.escape("config key(s) ['recovered_share'] are metric names")):
        experiment.run_configs([ExperimentConfig(model="embedded-gpt2")], extras=[{"recovered_share": "full"}])
    with pytest.raises(ValueError, match="one mapping per config"):
        experiment.run_configs([ExperimentConfig(model="embedded-gpt2")], extras=[])
    with pytest.raises(ValueError, match=re.escape("['baseline_perplexity'] are metric names")):
        run_config({"model": "embedded-gpt2", "baseline_perplexity": 3}, root=tmp_path / "single")
    assert not (tmp_path / "runs.csv").exists() and not (tmp_path / "single").exists()


# --- sweeps over target_params, axes and recovery_method ---------------------------------------------------------


def test_a_sweep_over_two_targets_plans_two_runs_and_lists_of_axes_are_values() -> None:
    from colab_helpers.experiments.sweep import plan_sweep

    base = {"model": "embedded-gpt2", "recovery_method": "distill"}
    sweep, pairs = plan_sweep(base, {"name": "targets", "parameters": {"target_params": {"values": [0.5, 0.75]}}})
    assert sweep.size == 2 and [config.pruning.target_params for config, _ in pairs] == [0.5, 0.75]
    assert len({config.run_name() for config, _ in pairs}) == 2 and all(c.recovery_method == "distill" for c, _ in pairs)
    grid = {"parameters": {"target_params": [0.5, 0.75], "axes": {"values": [["heads", "mlp"], ["layers"]]}}}
    _, pairs = plan_sweep({"model": "embedded-gpt2"}, grid)
    assert [(c.pruning.target_params, c.pruning.axes) for c, _ in pairs] == [
        (0.5, ("heads", "mlp")), (0.5, ("layers",)), (0.75, ("heads", "mlp")), (0.75, ("layers",))]
    assert len({config.run_name() for config, _ in pairs}) == 4
    drawn = {"search": "random", "num_runs": 3, "seed": 1, "parameters": {
        "target_params": {"distribution": "uniform", "min": 0.4, "max": 0.9},
        "axes": {"values": [["heads"], ["mlp", "layers"], ["heads", "mlp", "layers"]]}}}  # fmt: skip
    _, pairs = plan_sweep({"model": "embedded-gpt2"}, drawn)
    assert len(pairs) == 3
    for config, _ in pairs:
        assert 0.4 <= config.pruning.target_params <= 0.9
        assert config.pruning.axes in {("heads",), ("mlp", "layers"), ("heads", "mlp", "layers")}


def test_a_sweep_varies_recovery_text_method_and_ability_tasks() -> None:
    from colab_helpers.experiments.sweep import plan_sweep

    grid = {"parameters": {"recovery_text": ["dataset", "mix"], "fine_tuning_method": ["lora", "full"],
                           "ability_tasks": {"values": ["capitals,antonyms", None]}}}  # fmt: skip
    _, pairs = plan_sweep({"model": "embedded-gpt2", "learning_rate": 1e-4}, grid)
    assert len(pairs) == 8 and len({config.run_name() for config, _ in pairs}) == 4  # ability settings share a name
    assert {(c.recovery_text, c.fine_tuning_method) for c, _ in pairs} == {
        ("dataset", "lora"), ("dataset", "full"), ("mix", "lora"), ("mix", "full")}  # fmt: skip
    assert {c.ability_tasks for c, _ in pairs} == {"capitals,antonyms", None}
    with pytest.raises(ValueError, match="recovery_text must be one of"):
        plan_sweep({"model": "embedded-gpt2"}, {"parameters": {"recovery_text": ["dataset", "web"]}})


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"target_params": [0.5, 0]}, "run config #1: target_params must be the share of parameters to keep, in (0, 1]"),
        ({"target_params": [0.5, "x"]}, "run config #1: target_params must be a finite number or None, got 'x' (str)"),
        ({"axes": ["heads", "mlp"]}, "axes must be a list of names, got 'heads' (str) (one name is a list of one: "
                                     "['heads']; a sweep lists lists: {values: [[a, b], [a]]})"),
        ({"axes": [["heads", "heads"]]}, "'heads' appears twice"),
        ({"recovery_method": ["lora", "kd"]}, "run config #1: recovery_method must be 'lora'"),
    ],
)
def test_bad_compression_sweeps_are_refused_before_any_run(tmp_path: Path, parameters: dict, message: str) -> None:
    from colab_helpers.experiments.sweep import plan_sweep

    with pytest.raises(ValueError, match=re.escape(message)):
        plan_sweep({"model": "embedded-gpt2"}, {"parameters": parameters})
    with pytest.raises(ValueError, match=re.escape(message)):
        run_sweep({"model": "embedded-gpt2"}, {"parameters": parameters}, root=tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_compression_metrics_reach_runs_csv_and_settings_never_clash_with_metrics(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from colab_helpers.experiments.config import CONFIG_KEYS, Compression, ExperimentConfig
    from colab_helpers.experiments.sweep import METRIC_NAMES, run_metrics
    from colab_helpers.pruning.reports import CompressReport

    assert not set(CONFIG_KEYS) & set(METRIC_NAMES)  # they share a runs.csv row
    report = CompressReport(
        architecture="gpt2", target_params=0.7, axes=("heads", "layers"), params_before=100, params_after=70,
        removed_params={"heads": 10, "layers": 20}, shares={}, heads_before=(2, 2, 2), heads_after=(1, 0, 2),
        mlp_before=(8, 8, 8), mlp_after=(8, 0, 8), removed_layers=(1,), kept_layers=(0, 2), flops_before=3.0,
        flops_after=2.0, seq_len=64, loss_before=5.0, loss_after=5.1, candidates=(), seconds=1.0,
    )  # fmt: skip

    def run(self, config, output_dir=None):
        return dataclasses.replace(fake_result(config), pruning=Compressed(report))

    monkeypatch.setattr(Experiment, "run", run)
    configs = [ExperimentConfig(model="embedded-gpt2", pruning=Compression(t, axes=["heads", "layers"])) for t in (0.5, 0.7)]
    runs = Sweep(tmp_path, progress=False).run_configs(configs, sweep="targets")
    assert list(runs["target_params"]) == [0.5, 0.7] and list(runs["predicted_speedup"]) == [1.5, 1.5]
    assert list(runs["layers_removed"]) == [1, 1] and list(runs["axes"]) == ['["heads", "layers"]'] * 2
    again = Sweep(tmp_path, progress=False).run_configs(configs, sweep="targets")
    assert list(again["run_id"]) == list(runs["run_id"])  # axes as a list hash the same: done runs are skipped
    assert "predicted_speedup" not in run_metrics(fake_result(configs[0]))  # head runs: no compress metrics
