"""The task catalogue and the local lm-eval tasks: built deterministically and valid, and bad inputs refused."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import yaml

from colab_helpers.evaluation import harness, tasks
from colab_helpers.evaluation.harness import TaskScore, task_accuracy, wilson_interval
from colab_helpers.evaluation.tasks import (
    ANTONYMS,
    CAPITALS,
    CLOZE_CONTEXT_WORDS,
    PRESETS,
    TASKS,
    check_hub_tasks,
    resolve_tasks,
    write_local_tasks,
)


needs_lm_eval = pytest.mark.skipif(not harness.is_lm_eval_available(),
                                   reason='lm-eval is not installed: pip install "colab-helpers[eval]"')  # fmt: skip


def _read(folder: Path) -> dict[str, str]:
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.*")) if path.is_file()}


def test_local_tasks_are_built_the_same_every_time(tmp_path: Path) -> None:
    specs = resolve_tasks("offline")
    assert [spec.name for spec in specs] == ["cloze-gpl3", "cloze-pydoc", "capitals", "antonyms", "first-letter"]
    written = write_local_tasks(specs, tmp_path / "a", limit=30)
    assert written == dict.fromkeys(PRESETS["offline"], 30)
    write_local_tasks(specs, tmp_path / "b", limit=30)
    first, second = _read(tmp_path / "a"), _read(tmp_path / "b")
    assert len(first) == 10  # a JSONL and a YAML per task
    assert {name: text for name, text in first.items() if name.endswith(".jsonl")} == {
        name: text for name, text in second.items() if name.endswith(".jsonl")
    }
    write_local_tasks(specs[2:3], tmp_path / "c", limit=30, seed=1)
    assert _read(tmp_path / "c")["colab_capitals.jsonl"] != first["colab_capitals.jsonl"]  # the seed picks


def test_task_files_are_valid_lm_eval_configs_and_items(tmp_path: Path) -> None:
    write_local_tasks(resolve_tasks("offline"), tmp_path, limit=None)
    cloze = yaml.safe_load((tmp_path / "colab_cloze_pydoc.yaml").read_text())
    assert cloze["task"] == "colab_cloze_pydoc" and cloze["output_type"] == "loglikelihood"
    assert cloze["dataset_kwargs"]["data_files"]["test"] == str((tmp_path / "colab_cloze_pydoc.jsonl").resolve())
    assert cloze["doc_to_target"] == "{{' ' + target}}" and cloze["metric_list"][0]["metric"] == "acc"
    for name in ("colab_cloze_gpl3", "colab_cloze_pydoc"):
        items = [json.loads(line) for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert len(items) >= 100
        for item in items:
            assert item["target"].isalpha() and len(item["target"]) >= 3
            assert 8 <= len(item["context"].split()) <= CLOZE_CONTEXT_WORDS and "\n" not in item["context"]
    choice = yaml.safe_load((tmp_path / "colab_capitals.yaml").read_text())
    assert choice["output_type"] == "multiple_choice" and choice["doc_to_choice"] == "{{choices}}"
    capitals = [json.loads(line) for line in (tmp_path / "colab_capitals.jsonl").read_text().splitlines()]
    assert len(capitals) == len(CAPITALS) and capitals[0]["query"].startswith("The capital of ")
    truth = {f"The capital of {country} is": capital for country, capital in CAPITALS}
    for item in capitals:
        assert len(set(item["choices"])) == 4 and item["choices"][item["label"]] == truth[item["query"]]
    letters = [json.loads(line) for line in (tmp_path / "colab_first_letter.jsonl").read_text().splitlines()]
    for item in letters:
        word = item["query"].split("'")[1]
        assert item["choices"][item["label"]] == word[0] and all(len(choice) == 1 for choice in item["choices"])


def test_fact_tables_are_large_with_distinct_answers() -> None:
    for table in (CAPITALS, ANTONYMS):
        assert len(table) >= 50
        assert len({answer for _, answer in table}) == len(table)
        assert len({question for question, _ in table}) == len(table)


@needs_lm_eval
def test_hub_task_names_and_chance_levels_are_lm_evals() -> None:
    folder = resources.files("lm_eval").joinpath("tasks")
    configs = {}
    for sub in ("lambada", "hellaswag", "arc", "piqa", "winogrande", "tinyBenchmarks"):
        for path in Path(str(folder.joinpath(sub))).glob("*.yaml"):
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.startswith("task: "):
                    configs[line.split(": ", 1)[1].strip()] = path
    hub = [spec for spec in TASKS.values() if not spec.local]
    assert {spec.name for spec in hub} == set(PRESETS["standard"]) | set(PRESETS["tiny"])
    missing = [spec.name for spec in hub if spec.name not in configs]
    assert not missing, f"lm-eval has no task named {missing}"
    assert {spec.name: spec.chance for spec in hub if spec.name.startswith("tiny")} == {
        "tinyHellaswag": 0.25, "tinyArc": 0.25, "tinyWinogrande": 0.5}  # fmt: skip


def test_unknown_tasks_are_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown task 'capital'; choose a preset \['offline', 'standard', 'tiny'\] "
                                         r"or tasks from \['cloze-gpl3', .*'tinyWinogrande'\]"):  # fmt: skip
        resolve_tasks(["capitals", "capital"])
    with pytest.raises(ValueError, match="tasks must be a preset name or a list of task names, got 3"):
        resolve_tasks(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tasks is empty"):
        resolve_tasks([])
    assert [spec.name for spec in resolve_tasks("antonyms")] == ["antonyms"]


def test_hub_tasks_offline_give_one_error_naming_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from colab_helpers.runtime.hub import OFFLINE_ENV_VARS

    for name in OFFLINE_ENV_VARS:  # the Makefile sets several; this test sets one at a time
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match=r"tasks \['hellaswag', 'piqa'\] come from the Hugging Face Hub, which is "
                       r"unreachable here \(HF_HUB_OFFLINE is set\); use tasks='offline'.*with HF_HUB_OFFLINE unset"):
        check_hub_tasks(resolve_tasks(["capitals", "hellaswag", "piqa"]))
    check_hub_tasks(resolve_tasks("offline"))  # local tasks need no hub
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(tasks, "hub_reachable", lambda: False)
    with pytest.raises(ConnectionError, match="the Hugging Face Hub does not answer"):
        task_accuracy(None, None, "tiny")  # refused before lm-eval or the model is touched


def test_missing_packages_are_named_with_their_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "is_lm_eval_available", lambda: False)
    with pytest.raises(ImportError, match=r'lm-evaluation-harness \(lm_eval\).*pip install "colab-helpers\[eval\]"'):
        task_accuracy(None, None, "offline")


@needs_lm_eval
def test_tiny_tasks_name_the_package_of_their_metric(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tasks, "offline_by_env", lambda: None)
    monkeypatch.setattr(tasks, "hub_reachable", lambda: True)
    monkeypatch.setattr(harness.importlib.util, "find_spec", lambda name: None if name == "tinyBenchmarks" else 1)
    with pytest.raises(ImportError, match=r"task 'tinyHellaswag' needs tinyBenchmarks \(pip install git\+https://"):
        task_accuracy(None, None, "tiny")
    with pytest.raises(ValueError, match=r"limit=50 would cut \['tinyArc'\], whose estimate needs all 100 items"):
        task_accuracy(None, None, ["capitals", "tinyArc"], limit=50)


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match=r"limit must be a positive integer or None, got 0 \(int\); e.g. limit=100"):
        task_accuracy(None, None, "offline", limit=0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        task_accuracy(None, None, "offline", batch_size=0)


def test_wilson_interval_and_task_score() -> None:
    low, high = wilson_interval(0.5, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    low, high = wilson_interval(0.0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(1.0, 20)[1] == 1.0 and wilson_interval(0.3, 0) == (0.0, 1.0)
    score = TaskScore.measured(TASKS["capitals"], 0.7, 50)
    assert score.above_chance and score.chance == 0.25 and score.low < 0.7 < score.high
    assert not TaskScore.measured(TASKS["piqa"], 0.55, 50).above_chance  # 0.5 is inside the interval
    assert TaskScore.from_dict(json.loads(json.dumps(score.to_dict()))) == score
    assert "capitals: 0.700" in str(score) and "above chance" in str(score)
