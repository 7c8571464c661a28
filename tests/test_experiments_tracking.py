"""Run tracking: ids, config.yaml, runs.csv columns and statuses, concurrent and killed writers, gradients, mirrors."""

from __future__ import annotations

import math
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
import types
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from colab_helpers.errors import ColabHelpersWarning
from colab_helpers.experiments import runs_table, tracking
from colab_helpers.experiments.run_ids import config_hash, new_run_id
from colab_helpers.experiments.tracking import RunManager
from colab_helpers.finetune import gradients

REPO = Path(__file__).resolve().parents[1]
CONFIG: dict[str, Any] = {
    "model": {"name": "gpt2", "context_length": 128},
    "training": {"learning_rate": 0.0006, "batch_size": 8, "correct_bias": True, "scheduler": "cosine"},
    "run": {"name": "test", "checkpoint": None},
    "pruning": {"levels": [0.1, 0.3]},
}


@pytest.fixture
def manager(tmp_path: Path) -> RunManager:
    return RunManager(tmp_path / "results", record_environment=False)


def _python(code: str, *args: str, **popen: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, text=True, **popen
    )


# --- ids and config ------------------------------------------------------------------------------------


def test_run_ids_are_unique_and_sort_in_creation_order() -> None:
    ids = [new_run_id() for _ in range(300)]
    assert len(set(ids)) == len(ids)
    assert sorted(ids) == ids
    assert all(re.fullmatch(r"\d{8}-\d{6}-\d{3}-[0-9a-f]{6}", run_id) for run_id in ids)


def test_new_run_writes_config_yaml_and_a_running_row(manager: RunManager) -> None:
    config = {**CONFIG, "extra": {"tuple": (1, 2), "path": Path("/x/y")}}
    run = manager.new_run(config, sweep="s1")
    assert run.path == manager.root / "runs" / run.run_id == manager.run_dir(run.run_id)
    saved = yaml.safe_load((run.path / "config.yaml").read_text())
    assert saved == {**CONFIG, "extra": {"tuple": [1, 2], "path": "/x/y"}}
    row = manager.get(run.run_id)
    assert row["status"] == "running" and row["sweep"] == "s1" and row["started_at"].endswith("Z")
    assert row["version"] == tracking._package_version()
    assert row["training.learning_rate"] == 0.0006 and row["training.correct_bias"] is True
    assert row["pruning.levels"] == "[0.1, 0.3]"  # lists are JSON text in the table; config.yaml keeps them
    assert "run.checkpoint" not in row  # None is an empty cell


def test_columns_are_flattened_and_new_keys_become_columns(manager: RunManager) -> None:
    first = manager.new_run(CONFIG)
    second = manager.new_run({**CONFIG, "lora": {"rank": 8}, "status": "mine"})
    manager.update_metrics(first.run_id, {"final_valid_loss": 3.25, "eval": {"ppl": 25.8}})
    header = manager.csv_path.read_text().splitlines()[0].split(",")
    assert header[: len(runs_table.CORE_COLUMNS)] == list(runs_table.CORE_COLUMNS)
    expected = ("model.name", "training.learning_rate", "lora.rank", "config.status", "final_valid_loss", "eval.ppl")
    assert set(expected) <= set(header)
    frame = manager.runs()
    assert list(frame["run_id"]) == [first.run_id, second.run_id]
    assert frame["final_valid_loss"].isna().tolist() == [False, True]
    assert frame["lora.rank"].isna().tolist() == [True, False]
    assert manager.get(second.run_id)["config.status"] == "mine"
    with pytest.raises(ValueError, match="rename them"):
        manager.update_metrics(first.run_id, {"status": "nope"})
    with pytest.raises(KeyError, match="no run 'nope'"):
        manager.update_metrics("nope", {"x": 1})


@pytest.mark.parametrize(
    "metrics",
    [
        {"lr": 99},  # a flat config key
        {"training": {"learning_rate": 0.1}},  # a nested one, flattened the same way
        {"training.learning_rate": 0.1},
        {"config.status": "x"},  # the column a config key named like a core column is stored under
        {"fine": 1.0, "lr": 99},  # one colliding key refuses the whole update: nothing half written
    ],
)
def test_a_metric_named_like_a_config_key_is_refused_and_nothing_is_written(
    manager: RunManager, metrics: dict[str, Any]
) -> None:
    run = manager.new_run({**CONFIG, "lr": 0.001, "status": "mine"})
    before = manager.csv_path.read_text()
    taken = sorted({"lr", "training.learning_rate", "config.status"} & set(runs_table.flatten(metrics)))
    with pytest.raises(ValueError, match=re.escape(f"metric name(s) {taken} are config keys of run {run.run_id!r}")):
        manager.update_metrics(run.run_id, metrics)
    assert manager.csv_path.read_text() == before
    assert manager.get(run.run_id)["lr"] == 0.001
    run.log(final_lr=99)  # named after what it measures: kept next to the config value
    assert (manager.get(run.run_id)["lr"], manager.get(run.run_id)["final_lr"]) == (0.001, 99)


def test_another_manager_checks_metrics_against_config_yaml(manager: RunManager) -> None:
    run = manager.new_run({"lr": 0.001})
    other = RunManager(manager.root, record_environment=False)  # e.g. a Ray worker: reads the run's config.yaml
    with pytest.raises(ValueError, match="config keys of run"):
        other.update_metrics(run.run_id, {"lr": 99})
    (run.path / "config.yaml").unlink()
    third = RunManager(manager.root, record_environment=False)
    with pytest.warns(ColabHelpersWarning, match="could not read the config of run"):
        third.update_metrics(run.run_id, {"loss": 1.0})
    assert manager.get(run.run_id)["loss"] == 1.0


def test_cells_keep_exact_and_non_finite_numbers() -> None:
    import numpy as np

    from colab_helpers.experiments.runs_table import format_value, parse_value

    cells = [format_value(v) for v in (np.float64(0.1), float("nan"), float("inf"), np.int64(3), None, (1, 2.5))]
    assert cells == ["0.1", "nan", "inf", "3", "", "[1, 2.5]"]  # numpy scalars as numbers, NaN kept (not None)
    assert parse_value("0.1") == 0.1 and math.isnan(parse_value("nan")) and parse_value("3") == 3
    assert config_hash({"a": np.float64(0.1)}) == config_hash({"a": 0.1})


def test_status_transitions_and_redacted_error(manager: RunManager, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secretvalue123")
    run = manager.new_run(CONFIG)
    with pytest.raises(ValueError, match="status must be one of"):
        manager.finish(run.run_id, status="finished")
    manager.finish(run.run_id, status="failed", error=RuntimeError("bad token hf_secretvalue123 " + "x" * 2000))
    row = manager.get(run.run_id)
    assert row["status"] == "failed" and row["duration_s"] >= 0 and row["ended_at"] >= row["started_at"]
    assert row["error"].startswith("RuntimeError: bad token ***") and len(row["error"]) <= tracking.MAX_ERROR_CHARS
    assert "hf_secretvalue123" not in manager.csv_path.read_text()
    assert "***" in (run.path / "error.txt").read_text()
    with pytest.raises(ValueError, match="already 'failed'.*run_id="):
        manager.finish(run.run_id)
    manager.update_metrics(run.run_id, {"late_eval": 1.5})  # metrics may come after the end

    again = manager.new_run(CONFIG, run_id=run.run_id)  # resume: the row starts afresh
    row = manager.get(again.run_id)
    assert row["status"] == "running" and row["error"] is None and "late_eval" not in row
    assert not (run.path / "error.txt").exists()
    manager.finish(run.run_id, status="skipped")
    assert manager.get(run.run_id)["status"] == "skipped"
    assert len(manager.runs()) == 1


def test_run_context_manager_records_done_and_failed(manager: RunManager) -> None:
    with manager.new_run(CONFIG) as run:
        run.log(loss=1.0)
    assert manager.get(run.run_id)["status"] == "done"
    with pytest.raises(ZeroDivisionError):
        with manager.new_run(CONFIG) as failing:
            1 / 0  # noqa: B018
    assert manager.get(failing.run_id)["error"].startswith("ZeroDivisionError")
    with manager.new_run(CONFIG) as skipped:
        skipped.finish("skipped")
    assert skipped.status == "skipped"


def test_find_returns_the_run_to_resume(manager: RunManager) -> None:
    assert manager.find(CONFIG, "s") is None
    failed = manager.new_run(CONFIG, sweep="s")
    manager.finish(failed.run_id, "failed", error="oom")
    assert manager.find(dict(reversed(list(CONFIG.items()))), "s") == failed.run_id  # key order is irrelevant
    assert manager.find(CONFIG, None) is None and manager.find(CONFIG, "other") is None
    assert manager.find({**CONFIG, "seed": 1}, "s") is None
    done = manager.new_run(CONFIG, sweep="s")
    manager.finish(done.run_id)
    later = manager.new_run(CONFIG, sweep="s")  # a later running one does not hide the done one
    assert manager.find(CONFIG, "s") == done.run_id != later.run_id


def test_start_or_skip_starts_a_new_config(manager: RunManager) -> None:
    started = manager.start_or_skip(CONFIG, sweep="s")
    assert not started.skipped and started.row is None and started.run is not None
    assert started.run_id == started.run.run_id and started.run.status == "running"
    assert manager.find(CONFIG, "s") == started.run_id


def test_start_or_skip_skips_a_done_run_with_its_metrics(manager: RunManager) -> None:
    with manager.new_run(CONFIG, sweep="s") as run:
        run.log(loss=0.25)
    again = manager.start_or_skip(dict(reversed(list(CONFIG.items()))), sweep="s")
    assert again.skipped and again.run is None and again.run_id == run.run_id
    assert again.row is not None and again.row["loss"] == 0.25 and again.row["status"] == "done"
    assert len(manager.runs()) == 1  # nothing new was started
    other = manager.start_or_skip(CONFIG, sweep="other")  # another sweep is another run
    assert not other.skipped and other.run_id != run.run_id


@pytest.mark.parametrize("status", ["running", "failed"])
def test_start_or_skip_restarts_an_unfinished_run_under_its_id(manager: RunManager, status: str) -> None:
    first = manager.new_run(CONFIG, sweep="s")
    first.log(loss=9.0)
    if status == "failed":
        first.finish("failed", error="oom")
    again = manager.start_or_skip(CONFIG, sweep="s")
    assert not again.skipped and again.run_id == first.run_id
    row = manager.get(first.run_id)
    assert row["status"] == "running" and row["error"] is None and "loss" not in row and len(manager.runs()) == 1


def test_bad_run_ids_and_unwritable_root(tmp_path: Path, manager: RunManager) -> None:
    for bad in ("../escape", "", "a/b", ".hidden"):
        with pytest.raises(ValueError, match="run_id must be"):
            manager.new_run(CONFIG, run_id=bad)
    with pytest.raises(KeyError, match="no run directory"):
        manager.run_dir("20200101-000000-000-abcdef")
    (tmp_path / "file").write_text("x")
    with pytest.raises(PermissionError, match="not writable"):
        RunManager(tmp_path / "file" / "results")
    with pytest.raises(ValueError, match="mirror must be one of"):
        RunManager(tmp_path / "r", mirror="mlflow")


def test_environment_summary_is_recorded_and_its_failure_tolerated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import colab_helpers.runtime.environment as environment

    fake = types.SimpleNamespace(summary=lambda: "colab (interactive) | cuda: Tesla T4")
    monkeypatch.setattr(environment, "detect_environment", lambda check_hub=True: fake)
    monkeypatch.setattr(tracking, "_env_summary", None)
    manager = RunManager(tmp_path)
    assert manager.get(manager.new_run(CONFIG).run_id)["env"] == "colab (interactive) | cuda: Tesla T4"

    def broken(check_hub: bool = True) -> None:
        raise RuntimeError("no probe")

    monkeypatch.setattr(environment, "detect_environment", broken)
    monkeypatch.setattr(tracking, "_env_summary", None)
    assert manager.get(manager.new_run(CONFIG).run_id)["env"] is None


# --- the CSV under stress -----------------------------------------------------------------------------------


WRITER = """
import pathlib, sys, time
from colab_helpers.experiments.tracking import RunManager
root, index, shared = sys.argv[1], int(sys.argv[2]), sys.argv[3]
manager = RunManager(root, record_environment=False)
run = manager.new_run({"worker": index}, sweep="concurrency")
(pathlib.Path(root) / f"ready-{index}").touch()
deadline = time.time() + 30
while len(list(pathlib.Path(root).glob("ready-*"))) < 4:  # all four start updating together
    if time.time() > deadline:
        sys.exit("the other writers never got ready")
    time.sleep(0.002)
for step in range(25):
    manager.update_metrics(run.run_id, {f"m{step}": step})
    manager.update_metrics(shared, {f"w{index}_m{step}": step})
"""


def test_concurrent_writers_lose_no_update(manager: RunManager) -> None:
    shared = manager.new_run({"shared": True}).run_id
    workers = [_python(WRITER, str(manager.root), str(i), shared) for i in range(4)]
    assert [worker.wait(timeout=60) for worker in workers] == [0, 0, 0, 0]

    frame = manager.runs()  # parses
    assert len(frame) == 5 and frame["run_id"].is_unique
    shared_row = manager.get(shared)
    assert all(shared_row[f"w{i}_m{step}"] == step for i in range(4) for step in range(25))
    for run_id in frame.loc[frame["sweep"] == "concurrency", "run_id"]:
        row = manager.get(run_id)
        assert [row[f"m{step}"] for step in range(25)] == list(range(25))


LOOPER = """
import sys
from colab_helpers.experiments.tracking import RunManager
manager = RunManager(sys.argv[1], record_environment=False)
counter = int(sys.argv[2])
print("ready", flush=True)
while True:
    counter += 1
    run = manager.new_run({"n": counter, "text": "a, \\"quoted\\"\\nvalue"})
    manager.update_metrics(run.run_id, {"counter": counter, f"key{counter % 40}": counter * 0.5})
"""


def test_a_killed_writer_never_leaves_a_corrupt_csv(manager: RunManager) -> None:
    rng = random.Random(0)
    counter, rows = 0, 0
    for _ in range(4):
        looper = _python(LOOPER, str(manager.root), str(counter), stdout=subprocess.PIPE)
        assert looper.stdout is not None and looper.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.3))
        looper.send_signal(signal.SIGKILL)
        looper.wait(timeout=10)
        frame = manager.runs()  # never raises: the file is always a complete version
        assert len(frame) >= rows and frame["run_id"].is_unique
        rows = len(frame)
        counter = int(frame["n"].max()) if rows else counter
    assert rows > 0
    manager.update_metrics(frame["run_id"].iloc[-1], {"after": 1})  # stale temp files are cleaned up
    assert not list(manager.root.glob(".runs.csv.*.tmp"))


def test_a_hand_broken_csv_is_a_clear_error_and_never_overwritten(manager: RunManager) -> None:
    run = manager.new_run(CONFIG)
    good = manager.csv_path.read_text()
    lines = good.splitlines()
    broken = "\n".join([lines[0], lines[1], lines[1].replace(run.run_id, "other") + ",extra"]) + "\n"
    manager.csv_path.write_text(broken)
    for action in (lambda: manager.runs(), lambda: manager.update_metrics(run.run_id, {"x": 1}),
                   lambda: manager.new_run(CONFIG), lambda: manager.get(run.run_id)):
        with pytest.raises(ValueError, match=rf"{re.escape(str(manager.csv_path))}, line 3: .* fields"):
            action()
    assert manager.csv_path.read_text() == broken
    assert len(list((manager.root / "runs").iterdir())) == 1  # the refused new_run left no directory

    manager.csv_path.write_text(lines[0] + '\n"unterminated,a,b\n')
    with pytest.raises(ValueError, match="line 2"):
        manager.runs()
    manager.csv_path.write_text(good.replace("run_id,", "id,", 1))
    with pytest.raises(ValueError, match="no 'run_id' column"):
        manager.get(run.run_id)


# --- gradients ---------------------------------------------------------------------------------------------


def _model_with_gradients() -> Any:
    import torch

    torch.manual_seed(0)
    model = torch.nn.ModuleDict(
        {"embed": torch.nn.Linear(4, 8), "h": torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(3)])}
    )
    frozen = torch.nn.Linear(8, 1)
    hidden = model["embed"](torch.randn(5, 4))
    for layer in model["h"]:
        hidden = torch.tanh(layer(hidden))
    frozen(hidden).sum().backward()
    return model


def test_gradients_are_saved_and_plotted(manager: RunManager) -> None:
    from matplotlib.figure import Figure

    run = manager.new_run(CONFIG)
    model = _model_with_gradients()
    norms_file = run.save_gradients(model, step=10)
    full_file = manager.save_gradients(run.run_id, model, step=20, full=True)
    assert norms_file.name == "step_00000010.safetensors" and full_file.parent == run.path / "gradients"
    norms = gradients.load_gradient_norms(run.path)
    assert list(norms) == [10, 20]
    assert list(norms[10]) == ["embed", "h.0", "h.1", "h.2"]
    for layer, value in norms[10].items():  # norms only or full tensors: the same layer norms
        assert value == pytest.approx(norms[20][layer], rel=1e-5) and value > 0
    figure = gradients.plot_gradient_norms(run.path)
    assert isinstance(figure, Figure) and len(figure.axes) == 2
    assert len(figure.axes[1].get_lines()) == 4
    with pytest.raises(ValueError, match="backward"):
        import torch

        manager.save_gradients(run.run_id, torch.nn.Linear(2, 2), step=1)
    with pytest.raises(FileNotFoundError, match="save_gradients"):
        gradients.plot_gradient_norms(manager.new_run(CONFIG).path)


# --- mirrors -------------------------------------------------------------------------------------------------


def test_missing_mirror_packages_warn_once_and_tracking_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    for mirror, message in (("wandb", "wandb package"), ("tensorboard", "tensorboard package")):
        with pytest.warns(ColabHelpersWarning, match=message) as caught:
            manager = RunManager(tmp_path / mirror, mirror=mirror, record_environment=False)
            run = manager.new_run(CONFIG)
            run.log(loss=1.0)
            run.finish()
        assert len(caught) == 1 and manager.mirror is None
        assert manager.get(run.run_id)["loss"] == 1.0


class _FakeWandbRun:
    def __init__(self, calls: list[tuple[str, Any]], fail: bool) -> None:
        self.calls, self.fail = calls, fail

    def log(self, metrics: dict[str, Any]) -> None:
        if self.fail:
            raise ConnectionError("wandb is down")
        self.calls.append(("log", metrics))

    def finish(self, exit_code: int = 0) -> None:
        self.calls.append(("finish", exit_code))


def _fake_wandb(calls: list[tuple[str, Any]], fail: bool = False) -> types.ModuleType:
    module = types.ModuleType("wandb")

    def init(**kwargs: Any) -> _FakeWandbRun:
        calls.append(("init", kwargs))
        return _FakeWandbRun(calls, fail)

    module.init = init  # type: ignore[attr-defined]
    return module


def test_wandb_mirror_needs_the_key_and_never_records_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []
    monkeypatch.setitem(sys.modules, "wandb", _fake_wandb(calls))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.warns(ColabHelpersWarning, match="WANDB_API_KEY"):
        assert RunManager(tmp_path / "nokey", mirror="wandb").mirror is None

    key = "wandb-key-0123456789abcdef"
    monkeypatch.setenv("WANDB_API_KEY", key)
    manager = RunManager(tmp_path / "ok", mirror="wandb", record_environment=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about on the positive path
        run = manager.new_run({**CONFIG, "note": f"uses {key}"}, sweep="s")
        run.log(loss=2.0)
        run.finish()
    assert [name for name, _ in calls] == ["init", "log", "finish"]
    init = calls[0][1]
    assert init["name"] == run.run_id and init["group"] == "s" and init["config"]["note"] == "uses ***"
    assert calls[1][1] == {"loss": 2.0} and calls[2][1] == 0
    for path in (manager.csv_path, run.path / "config.yaml"):
        assert key not in path.read_text()


def test_a_failing_mirror_warns_once_and_is_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []
    monkeypatch.setitem(sys.modules, "wandb", _fake_wandb(calls, fail=True))
    monkeypatch.setenv("WANDB_API_KEY", "wandb-key-0123456789abcdef")
    manager = RunManager(tmp_path, mirror="wandb", record_environment=False)
    run = manager.new_run(CONFIG)
    with pytest.warns(ColabHelpersWarning, match="wandb is down") as caught:
        run.log(loss=1.0)
        run.log(loss=0.5)
        run.finish()
    assert len(caught) == 1 and manager.mirror is None
    assert manager.get(run.run_id)["loss"] == 0.5 and manager.get(run.run_id)["status"] == "done"


def test_tracking_import_stays_light() -> None:
    code = "import sys, colab_helpers.experiments.tracking, colab_helpers.experiments.sweep_config, colab_helpers.experiments.cli; " \
           "print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_a_file_system_without_locks_warns_once_and_still_writes(
    manager: RunManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import fcntl

    def no_lock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_lock)
    with pytest.warns(ColabHelpersWarning, match="file locking is not available") as caught:
        run = manager.new_run(CONFIG)
        run.log(loss=1.0)
    assert len(caught) == 1 and manager.get(run.run_id)["loss"] == 1.0
