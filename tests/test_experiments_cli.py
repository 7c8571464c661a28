"""``python -m colab_helpers``: the runs table (filters, sort, columns), and the sweep/run commands' wiring."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from colab_helpers.experiments.cli import main, parse_filter
from colab_helpers.experiments.tracking import RunManager

REPO = Path(__file__).resolve().parents[1]
LEVELS = {"a": 9, "b": 10, "c": 100, "d": 2}  # as text "10" < "9"; as numbers 2 < 9 < 10 < 100


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A results dir with 5 runs: four of sweep 's1' (model gpt2/opt) and one outside any sweep, failed."""
    manager = RunManager(tmp_path / "results", record_environment=False)
    for name, steps in LEVELS.items():
        model = "gpt2" if name in "ab" else "opt-125m"
        run = manager.new_run({"model": {"name": model}, "training": {"steps": steps}, "tag": name}, sweep="s1")
        manager.update_metrics(run.run_id, {"final_valid_loss": 5.0 - steps / 100})
        manager.finish(run.run_id)
    failed = manager.new_run({"model": {"name": "gpt2"}, "tag": "e"})
    manager.finish(failed.run_id, "failed", error="CUDA out of memory")
    return manager.root


def _runs(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> tuple[int, str, str]:
    code = main(["runs", "--root", str(root), *args])
    out, err = capsys.readouterr()
    return code, out, err


def _tags(out: str) -> list[str]:
    """The ``tag`` column of a printed table (the table is shown with ``--show tag``)."""
    return [line.strip() for line in out.splitlines()[1:]]


def test_runs_prints_every_run_without_the_long_columns(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    code, out, err = _runs(capsys, root)
    assert code == 0 and err == ""
    header = out.splitlines()[0].split()
    assert header[:3] == ["run_id", "sweep", "status"] and "final_valid_loss" in header
    assert "env" not in header and "config_hash" not in header  # hidden unless asked for by --show
    assert len(out.splitlines()) == 6 and "CUDA out of memory" in out


@pytest.mark.parametrize(
    ("filters", "tags"),
    [
        (["training.steps>9"], ["b", "c"]),  # numbers, not text: "10" > "9"
        (["training.steps<10"], ["a", "d"]),
        (["training.steps>=10", "training.steps<=100"], ["b", "c"]),
        (["training.steps=10.0"], ["b"]),
        (["training.steps!=10"], ["a", "c", "d", "e"]),
        (["model.name=gpt2"], ["a", "b", "e"]),
        (["model.name!=gpt2", "status=done"], ["c", "d"]),
        (["status=failed"], ["e"]),
        (["error="], ["a", "b", "c", "d"]),
        (["final_valid_loss<4.5"], ["c"]),
    ],
)
def test_filters(capsys: pytest.CaptureFixture[str], root: Path, filters: list[str], tags: list[str]) -> None:
    code, out, _ = _runs(capsys, root, "--filter", *filters, "--show", "tag")
    assert code == 0 and _tags(out) == tags


def test_filter_sweep_sort_limit_show_hide(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    code, out, _ = _runs(capsys, root, "--filter-sweep", "s1", "--sort-by", "training.steps", "--show", "tag")
    assert code == 0 and _tags(out) == ["d", "a", "b", "c"]  # 2 < 9 < 10 < 100, not text order
    _, out, _ = _runs(capsys, root, "--sort-by", "training.steps", "--descending", "--limit", "2", "--show", "tag")
    assert _tags(out) == ["c", "b"]
    _, out, _ = _runs(capsys, root, "--sort-by", "tag", "--descending", "--show", "tag")
    assert _tags(out) == ["e", "d", "c", "b", "a"]
    _, out, _ = _runs(capsys, root, "--sort-by", "training.steps", "--show", "tag", "training.steps")
    assert _tags(out)[-1].startswith("e")  # an empty cell sorts last
    _, out, _ = _runs(capsys, root, "--show", "tag", "env", "status", "--hide", "status", "--limit", "1")
    assert out.splitlines()[0].split() == ["tag", "env"]
    _, out, _ = _runs(capsys, root, "--hide", "run_id", "started_at", "ended_at")
    assert "run_id" not in out.splitlines()[0] and "status" in out.splitlines()[0]
    code, out, _ = _runs(capsys, root, "--filter", "status=running")
    assert code == 0 and out.strip() == "no runs match"


def test_list_columns(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    code, out, _ = _runs(capsys, root, "--list-columns")
    listed = {line.split()[0]: line.split()[1] for line in out.splitlines()}
    assert code == 0 and {"run_id", "env", "model.name", "training.steps", "final_valid_loss"} <= set(listed)
    assert listed["training.steps"] == "4/5" and listed["run_id"] == "5/5"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--filter", "training.step>3"], "--filter: unknown column 'training.step'; did you mean: training.steps"),
        (["--sort-by", "final_loss"], "--sort-by: unknown column 'final_loss'; did you mean: final_valid_loss"),
        (["--show", "modelname"], "--show: unknown column 'modelname'; did you mean: model.name"),
        (["--hide", "stats"], "--hide: unknown column 'stats'; did you mean: status"),
        (["--filter", "no operator"], "cannot read 'no operator'; write COLUMN=VALUE"),
    ],
)
def test_bad_columns_exit_2_with_near_matches(
    capsys: pytest.CaptureFixture[str], root: Path, args: list[str], message: str
) -> None:
    code, out, err = _runs(capsys, root, *args)
    assert code == 2 and out == "" and message in err and err.startswith("error: ")


def test_missing_or_broken_runs_csv_exit_2(capsys: pytest.CaptureFixture[str], root: Path, tmp_path: Path) -> None:
    code, _, err = _runs(capsys, tmp_path / "nowhere")
    assert code == 2 and "no runs table" in err
    csv_path = root / "runs.csv"
    csv_path.write_text(csv_path.read_text() + "x,y\n")
    code, _, err = _runs(capsys, root)
    assert code == 2 and f"{csv_path}, line 7: 2 fields" in err


def test_parse_filter_and_argument_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_filter("a.b>=3") == ("a.b", ">=", "3")
    assert parse_filter("note=x=y") == ("note", "=", "x=y")
    assert parse_filter("a==b") == ("a", "=", "b")
    for argv in ([], ["runs", "--limit", "-1"], ["sweep", "base.yaml"], ["run"], ["nope"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    capsys.readouterr()


# --- sweep and run ---------------------------------------------------------------------------------------------


@pytest.fixture
def yaml_files(tmp_path: Path) -> tuple[Path, Path]:
    base = tmp_path / "base.yaml"
    base.write_text("model: embedded-gpt2\npruning_level: 0.3\nnotes:\n  owner: me\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: levels\nparameters:\n  pruning_level: {values: [0.1, 0.5]}\n  lora_r: [4, 8]\n")
    return base, sweep


def test_sweep_dry_run_and_bad_yaml(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, yaml_files: tuple[Path, Path]
) -> None:
    base, sweep = yaml_files
    assert main(["sweep", str(base), str(sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "sweep 'levels' (grid): 4 runs" in out and "pruning_level" in out and "lora_r" in out
    broken = tmp_path / "broken.yaml"
    broken.write_text("parameters:\n  a: [1, 2\n")
    assert main(["sweep", str(base), str(broken), "--dry-run"]) == 2
    assert "broken.yaml: invalid YAML at line 3" in capsys.readouterr().err


def test_sweep_and_run_call_the_pipeline(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, yaml_files: tuple[Path, Path]
) -> None:
    from colab_helpers.experiments import sweep as sweep_module

    calls: list[tuple[str, Any, Any, str]] = []
    monkeypatch.setattr(sweep_module, "run_sweep", lambda base, sweep, root, max_runtime: calls.append(("sweep", base, sweep, root)) or "4 runs done")
    monkeypatch.setattr(sweep_module, "run_config", lambda config, root: calls.append(("run", config, None, root)))
    base, sweep = yaml_files
    assert main(["sweep", str(base), str(sweep), "--root", "out", "--max-runtime", "60"]) == 0
    assert main(["run", str(base)]) == 0
    assert capsys.readouterr().out.strip() == "4 runs done"
    (kind, config, sweep_config, root), (kind2, config2, _, root2) = calls
    assert kind == "sweep" and config == {"model": "embedded-gpt2", "pruning_level": 0.3, "notes": {"owner": "me"}}
    assert root == "out"
    assert sweep_config.name == "levels" and sweep_config.size == 4
    assert kind2 == "run" and config2 == config and root2 == "results"


def test_python_dash_m_runs(root: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "colab_helpers", "runs", "--root", str(root), "--filter", "tag=c", "--show", "tag"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0 and result.stdout.split() == ["tag", "c"]


def test_version_from_python_dash_m() -> None:
    from colab_helpers import __version__

    result = subprocess.run([sys.executable, "-m", "colab_helpers", "--version"], cwd=REPO, capture_output=True,
                            text=True, check=False)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == f"colab-helpers {__version__}"


def test_console_script_is_the_cli_main(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import tomllib

    from colab_helpers import __version__

    target = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]["colab-helpers"]
    module, _, name = target.partition(":")
    from colab_helpers.deploy.cli import main as package_main

    entry = getattr(importlib.import_module(module), name)
    assert entry is package_main  # the whole command line: the experiments' commands and the deployment ones
    with pytest.raises(SystemExit) as exited:
        entry(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"colab-helpers {__version__}"
    monkeypatch.setattr(sys, "argv", [str(Path("bin") / "colab-helpers"), "runs"])  # as the console script runs it
    with pytest.raises(SystemExit):
        entry(["--no-such-option"])
    assert capsys.readouterr().err.startswith("usage: colab-helpers ")


def test_table_cuts_long_cells_and_rounds_floats(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    manager = RunManager(root, record_environment=False)
    run = manager.new_run({"tag": "long"})
    manager.update_metrics(run.run_id, {"final_valid_loss": 1 / 3})
    manager.finish(run.run_id, "failed", error="x" * 300)
    code, out, _ = _runs(capsys, root, "--filter", "tag=long", "--show", "error", "final_valid_loss")
    header, line = out.splitlines()
    assert code == 0 and line.split() == ["x" * 57 + "...", "0.333333"]
    assert header.index("final_valid_loss") + len("final_valid_loss") == len(line)  # numbers right-aligned


# --- filters without a value, failed runs, dry runs checked like real sweeps -------------------------------------


@pytest.mark.parametrize("condition", ["training.steps>", "training.steps<", "training.steps>=", "training.steps<= "])
def test_an_order_filter_without_a_value_is_an_error_naming_it(
    capsys: pytest.CaptureFixture[str], root: Path, condition: str
) -> None:
    code, out, err = _runs(capsys, root, "--filter", condition, "--show", "tag")
    assert code == 2 and out == ""
    assert f"--filter: {condition!r} has nothing to compare with" in err and "training.steps=" in err
    code, out, _ = _runs(capsys, root, "--filter", "training.steps=", "--show", "tag")  # '=' with nothing: empty cells
    assert code == 0 and _tags(out) == ["e"]
    code, out, _ = _runs(capsys, root, "--filter", "training.steps!=", "--show", "tag")
    assert code == 0 and _tags(out) == ["a", "b", "c", "d"]


def _fail_at(level: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the pipeline fail for ``level`` and return a tiny fake result for the others (no model is run)."""
    from _experiment_results import fake_result

    from colab_helpers.experiments.pipeline import Experiment

    def run(self: Any, config: Any, output_dir: Any = None) -> Any:
        if config.pruning.level == level:
            raise RuntimeError(f"boom at {level}")
        return fake_result(config, recovered=None)

    monkeypatch.setattr(Experiment, "run", run)


def test_run_exits_1_and_names_error_txt_when_its_run_failed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, yaml_files: tuple[Path, Path]
) -> None:
    base, _ = yaml_files
    _fail_at(0.3, monkeypatch)
    results = tmp_path / "results"
    assert main(["run", str(base), "--root", str(results)]) == 1
    err = capsys.readouterr().err
    (run_dir,) = (results / "runs").iterdir()
    assert f"error: run {run_dir.name} failed: RuntimeError: boom at 0.3" in err
    assert f"the full error is in {run_dir / 'error.txt'}" in err and (run_dir / "error.txt").is_file()
    assert "1 of 1 run(s) failed" in err
    _fail_at(-1.0, monkeypatch)  # fixed: the rerun restarts the failed run and succeeds
    assert main(["run", str(base), "--root", str(results)]) == 0
    assert "error" not in capsys.readouterr().err


def test_sweep_exits_1_when_one_of_its_runs_failed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, yaml_files: tuple[Path, Path]
) -> None:
    base, sweep = yaml_files
    _fail_at(0.5, monkeypatch)
    assert main(["sweep", str(base), str(sweep), "--root", str(tmp_path / "results")]) == 1
    err = capsys.readouterr().err
    assert err.count("boom at 0.5") == 2 and "2 of 4 run(s) failed" in err  # lora_r 4 and 8 at level 0.5


@pytest.mark.parametrize(
    ("base_text", "sweep_text", "message"),
    [
        ("model:\n  name: gpt2\n", "parameters:\n  pruning_level: [0.1]\n", "model must be a string, got {'name': 'gpt2'}"),
        ("model: embedded-gpt2\n", "parameters:\n  pruning_level: [0.1, 1.5]\n", r"run config #1: pruning_level must be in [0, 1)"),
        ("model: embedded-gpt2\n", "parameters:\n  fine_tuning_steps: [10, 2.5]\n", "fine_tuning_steps must be an integer"),
        ("model: no-such-model-xyz\n", "parameters:\n  seed: [0]\n", "unknown model 'no-such-model-xyz'"),
        ("model: embedded-gpt2\nrecovered_share: 1\n", "parameters:\n  seed: [0]\n", "['recovered_share'] are metric names"),
    ],
)
def test_dry_run_rejects_what_the_real_sweep_rejects(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, base_text: str, sweep_text: str, message: str
) -> None:
    from colab_helpers.experiments.sweep import run_sweep

    base, sweep = tmp_path / "base.yaml", tmp_path / "sweep.yaml"
    base.write_text(base_text)
    sweep.write_text(sweep_text)
    assert main(["sweep", str(base), str(sweep), "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and message in err and err.startswith("error: ")
    with pytest.raises(ValueError) as info:  # the real sweep: the same verdict, before any folder
        run_sweep(str(base), str(sweep), root=tmp_path / "results")
    assert message in str(info.value) and not (tmp_path / "results").exists()


# --- --target-params, --axes, --recovery, --recovery-text, --fine-tuning-method, --fine-tuning-minutes -----------


def test_run_settings_parse_only_when_given() -> None:
    from colab_helpers.experiments.cli import build_parser, settings_from

    args = build_parser().parse_args(["run", "c.yaml", "--target-params", "0.7", "--axes", "heads, mlp", "--recovery", "distill"])
    assert settings_from(args) == {"target_params": 0.7, "axes": ["heads", "mlp"], "recovery_method": "distill"}
    assert settings_from(build_parser().parse_args(["run", "c.yaml"])) == {}
    args = build_parser().parse_args(["sweep", "b.yaml", "s.yaml", "--target-params", "none", "--dry-run"])
    assert settings_from(args) == {"target_params": None}
    args = build_parser().parse_args(["run", "c.yaml", "--recovery-text", "mix", "--fine-tuning-method", "full"])
    assert settings_from(args) == {"recovery_text": "mix", "fine_tuning_method": "full"}
    args = build_parser().parse_args(["run", "c.yaml", "--fine-tuning-minutes", "12.5"])
    assert settings_from(args) == {"fine_tuning_minutes": 12.5}


@pytest.mark.parametrize(
    "argv",
    [["run", "c.yaml", "--target-params", "most"], ["run", "c.yaml", "--recovery", "kd"], ["run", "c.yaml", "--target-params"],
     ["run", "c.yaml", "--recovery-text", "web"], ["run", "c.yaml", "--fine-tuning-method", "qlora"],
     ["run", "c.yaml", "--fine-tuning-minutes", "ten"]],
)
def test_bad_run_settings_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    capsys.readouterr()


def test_run_settings_reach_the_pipeline_and_the_dry_run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, yaml_files: tuple[Path, Path]
) -> None:
    from colab_helpers.experiments import sweep as sweep_module

    calls: list[Any] = []
    monkeypatch.setattr(sweep_module, "run_config", lambda config, root: calls.append(config))
    monkeypatch.setattr(sweep_module, "run_sweep", lambda base, sweep, root, max_runtime: calls.append(base))
    base, sweep = yaml_files
    settings = ["--target-params", "0.6", "--axes", "mlp,layers", "--recovery", "distill"]
    assert main(["run", str(base), *settings]) == 0
    assert main(["sweep", str(base), str(sweep), *settings]) == 0
    for config in calls:
        assert config["target_params"] == 0.6 and config["axes"] == ["mlp", "layers"]
        assert config["recovery_method"] == "distill" and config["notes"] == {"owner": "me"}
    assert main(["sweep", str(base), str(sweep), "--dry-run", *settings]) == 0
    out = capsys.readouterr().out
    assert "4 runs" in out and 'every run: target_params=0.6, axes=["mlp", "layers"], recovery_method=distill' in out


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["--axes", "heads,neurons"], "axes must be a non-empty list of distinct names from ['heads', 'mlp', 'layers'], "
                                      "got ['heads', 'neurons'] ('neurons' is not an axis)"),
        (["--target-params", "1.5"], "target_params must be the share of parameters to keep, in (0, 1]"),
        (["--target-params", "0.5", "--axes", ","], "(it is empty)"),
        (["--fine-tuning-minutes", "0"], "fine_tuning_minutes must be > 0, got 0.0; e.g. 10"),
    ],
)
def test_bad_run_settings_are_refused_by_the_config_check(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, yaml_files: tuple[Path, Path], settings: list[str], message: str
) -> None:
    base, sweep = yaml_files
    assert main(["sweep", str(base), str(sweep), "--dry-run", *settings]) == 2
    assert message in capsys.readouterr().err
    assert main(["run", str(base), "--root", str(tmp_path / "results"), *settings]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "results").exists()


def test_a_setting_the_sweep_varies_cannot_also_be_given(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    base, sweep = tmp_path / "base.yaml", tmp_path / "sweep.yaml"
    base.write_text("model: embedded-gpt2\n")
    sweep.write_text("parameters:\n  target_params: [0.5, 0.75]\n  axes: [[heads, mlp], [layers]]\n")
    assert main(["sweep", str(base), str(sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 runs" in out and '["heads", "mlp"]' in out
    assert main(["sweep", str(base), str(sweep), "--dry-run", "--axes", "heads"]) == 2
    assert "--axes sets axes, which the sweep varies; drop --axes or the sweep parameter" in capsys.readouterr().err
