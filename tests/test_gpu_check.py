"""scripts/gpu_check.sh on a CPU machine: it refuses without CUDA and writes nothing; its rehearsal runs the real driver.

The check itself runs on a GPU machine (docs/gpu-validation.md). What can be checked here: the shell scripts
parse, a machine without CUDA gets a clear message, a non-zero status and no half-written output, and the
rehearsal (``GPU_CHECK_REHEARSAL=1``: the embedded model at smoke size on the CPU) runs the pipeline with the
variant's ``ExperimentConfig.dtype`` and checks the model loaded and trained in it, so a change to the pipeline that
stops passing the dtype on (or that the driver can no longer read back) fails here rather than on the GPU machine.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [ROOT / "scripts" / "gpu_check.sh", ROOT / "scripts" / "gpu_prepare.sh"]


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_") and k != "OUT"}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    base.update(
        GPU_CHECK_PYTHON=sys.executable,
        GPU_CHECK_SITE=str(tmp_path / "site"),
        GPU_CHECK_STASH=str(tmp_path / "stash"),
        TMPDIR=str(tmp_path / "tmp"),
        OMP_NUM_THREADS="1",
        **env,
    )
    return subprocess.run(["bash", str(SCRIPTS[0]), *args], cwd=ROOT, env=base, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_script_parses(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert script.read_text().splitlines()[0] == "#!/usr/bin/env bash" and "set -euo pipefail" in script.read_text()


def test_without_cuda_it_stops_with_a_message_and_writes_nothing(tmp_path: Path) -> None:
    pytest.importorskip("torch")  # the script asks torch whether CUDA is there
    out = tmp_path / "out"
    out.mkdir()
    local = ROOT / "results" / "gpu_check"
    existed = local.exists()
    for env in ({"OUT": str(out)}, {}):  # into $OUT, and into results/gpu_check when OUT is unset
        result = _run([], tmp_path, CUDA_VISIBLE_DEVICES="", **env)
        assert result.returncode == 3, result.stdout + result.stderr
        assert "gpu_check: no CUDA:" in result.stderr and "sees no CUDA device" in result.stderr
        assert "nothing was run or written" in result.stderr
    assert list(out.iterdir()) == [] and list((tmp_path / "tmp").iterdir()) == []
    assert not (tmp_path / "site").exists() and not (tmp_path / "stash").exists()
    assert local.exists() == existed


def test_an_unknown_step_is_a_usage_error(tmp_path: Path) -> None:
    result = _run(["env", "benchmarks"], tmp_path)
    assert result.returncode == 2 and "unknown step 'benchmarks'; steps are: env tests pipeline" in result.stderr


def test_rehearsal_drives_the_pipeline_in_the_asked_precision(tmp_path: Path) -> None:
    pytest.importorskip("torch")  # the rehearsal runs the pipeline
    out = tmp_path / "out"
    cheaper = "fine_tuning_steps=2 eval_tokens=512 latency_rounds=1 importance_batches=1"  # over the smoke values
    result = _run(["pipeline"], tmp_path, OUT=str(out), GPU_CHECK_REHEARSAL="1", GPU_CHECK_VARIANTS="fp16 qlora",
                  GPU_CHECK_SET=cheaper)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.log"]  # work files stay out of $OUT
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["rehearsal"] is True and report["finished"] is True and report["verdict"] == "passed"
    fp16, qlora = report["variants"]["fp16"], report["variants"]["qlora"]
    assert qlora["status"] == "skipped" and qlora["reason"] == "QLoRA needs a CUDA GPU"
    assert fp16["status"] == "passed" and fp16["problems"] == []
    # the notebook's parameters cell was read, shrunk to smoke size on the embedded model, GPU_CHECK_SET over that
    config = fp16["config"]
    assert config["model"] == "embedded-llama" and fp16["config_source"]["notebook"].endswith("05_prune_and_finetune.py")
    assert (config["dtype"], config["load_in_4bit"], config["fine_tuning_steps"], config["control"]) == ("fp16", False, 2, True)
    assert fp16["config_source"]["variant_changes"] == {"dtype": "fp16", "load_in_4bit": False}
    # weights as asked, read from the model the experiment loaded
    assert [(set(load["parameter_dtypes"]), load["quantized"]) for load in fp16["loads"]] == [({"float16"}, False)]
    # training as asked, read from each fine-tuning's checkpoint: the pruned model's and the control's
    assert [run["run"] for run in fp16["fine_tunes"]] == ["fine_tuned", "control"]
    for run in fp16["fine_tunes"]:
        assert (run["steps"], run["dtype"], run["load_in_4bit"], run["autocast"]) == (2, "fp16", False, "torch.float16")
    perplexity = fp16["figures"]["perplexity"]
    assert set(perplexity) == {"baseline", "pruned", "fine_tuned", "control"}
    assert all(math.isfinite(value) for value in perplexity.values())
    assert "| fp16 | float16 / fp16 |" in (out / "gpu_check.log").read_text()


def test_rehearsal_runs_the_frontier_step_only_when_named(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("lm_eval")  # the frontier measures the offline tasks
    out = tmp_path / "out"
    result = _run(["frontier"], tmp_path, OUT=str(out), GPU_CHECK_REHEARSAL="1", GPU_CHECK_FRONTIER_MINUTES="1")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["verdict"] == "passed" and report["steps_asked"] == ["frontier"]
    log = (out / "gpu_check.log").read_text()
    assert "== frontier: passed" in log and "compress at 75%: after" in log  # the point was recovered and measured
    assert "== pipeline" not in log


def test_a_frontier_budget_that_is_not_whole_minutes_is_a_usage_error(tmp_path: Path) -> None:
    result = _run(["frontier"], tmp_path, GPU_CHECK_FRONTIER_MINUTES="1.5")
    assert result.returncode == 2 and "GPU_CHECK_FRONTIER_MINUTES must be a whole number of minutes >= 1, got '1.5'" in result.stderr
