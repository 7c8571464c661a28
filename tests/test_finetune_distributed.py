"""One LoRA run on two CPU processes under ``accelerate launch`` (gloo): in sync, sharded, rank 0 writes, faults agreed.

Each launch starts two Python processes that import transformers (about 10-20 s on a shared 2-core machine), so
the file launches twice: a fresh 10-step run (module fixture), then a resume of it to step 14 with a NaN and an
out-of-memory error injected on rank 1 only. ``accelerate launch --cpu --num_processes 2`` would start a single
process in accelerate 1.15 (several CPU processes need mpirun), so the launch uses ``--multi_gpu`` with CUDA
hidden, which runs ``torch.distributed.run``; our loop then picks the gloo backend.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "scripts" / "finetune_ddp_example.py"
COMMON = ["--cpu", "--dropout", "0", "--steps", "10", "--micro-batch-size", "2", "--seq-len", "32", "--max-chars", "20000"]

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this torch build has no gloo backend",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(script: Path, args: list[str], home: Path, *, path: tuple[Path, ...] = ()) -> None:
    """Run ``script`` on 2 CPU processes through ``accelerate launch`` in ``home``; fail with its output if it fails."""
    launcher = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env.update(
        OMP_NUM_THREADS="1",  # 2 processes on 2 shared cores
        CUDA_VISIBLE_DEVICES="",  # CPU processes even on a GPU machine (one GPU cannot hold two nccl ranks)
        HF_HOME=str(home),  # no accelerate config file is read: everything is on the command line
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), *map(str, path), env.get("PYTHONPATH", "")]),
        TQDM_DISABLE="1",
    )
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), str(script), *args,
    ]  # fmt: skip
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300, cwd=home)
    assert done.returncode == 0, f"launch failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def _example() -> Any:
    spec = importlib.util.spec_from_file_location("finetune_ddp_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _same_but_rank(ranks: list[dict[str, Any]]) -> None:
    """Assert both ranks reported the same (NaN losses included: compared as JSON text)."""
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    zero, one = (json.dumps({k: v for k, v in r.items() if k != "rank"}, sort_keys=True) for r in ranks)
    assert one == zero


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Launch the example for 10 steps on 2 CPU processes; yield (its output dir, its report)."""
    home = tmp_path_factory.mktemp("ddp")
    _launch(EXAMPLE, [*COMMON, "--output-dir", str(home / "run")], home)
    yield home / "run", json.loads((home / "run" / "ddp_report.json").read_text())


@pytest.mark.usefixtures("_one_thread")
def test_two_processes_train_one_run_in_sync(ddp_run, tmp_path) -> None:
    run, report = ddp_run
    assert report["world_size"] == 2 and report["steps"] == 10 and report["stopped_reason"] == "max_steps"
    assert math.isfinite(report["final_loss"])
    ranks = report["ranks"]
    _same_but_rank(ranks)  # same LoRA weights (SHA-256), losses, evaluations and events on both ranks
    assert ranks[0]["steps"] == 10 and len(ranks[0]["losses"]) == 10 and ranks[0]["events"] == []
    assert all(math.isfinite(loss) for loss in ranks[0]["losses"])
    # rank 0 wrote each file once, atomically: two complete checkpoints, no half-written ones, one adapter
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["checkpoint-10", "checkpoint-5", "latest"]
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and (run / "training.png").is_file()
    history = json.loads((run / "history.json").read_text())
    assert history["world_size"] == 2 and len(history["history"]) == 10
    # sharding and gradient averaging are exact: one process with 2 x 2 accumulation sees the same sequences per step
    single = _example().main([*COMMON, "--gradient-accumulation-steps", "2", "--no-plot", "--output-dir", str(tmp_path / "one")])
    assert single["world_size"] == 1 and single["ranks"][0]["world_size"] == 1
    assert ranks[0]["losses"] == pytest.approx(single["ranks"][0]["losses"], rel=1e-4)
    assert ranks[0]["eval_losses"] == pytest.approx(single["ranks"][0]["eval_losses"], rel=1e-4)


_FAULTY_WORKER = """
import importlib.util, json, os, sys
from pathlib import Path

import torch

import colab_helpers.finetune as finetune
import colab_helpers.models.loading as models
from colab_helpers.finetune import checkpoint, export
from _finetune_faults import StepClock, poison_loss

rank = int(os.environ["RANK"])
clock = StepClock()  # the step being run, through the public callbacks
writes = {"checkpoints": [], "adapters": 0}


def out_of_memory_at_13(module, args):
    if module.training and clock.current == 13 and args[0].shape[0] > 1:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected on rank 1)")


def load_model(*args, _load=models.load_model, **kwargs):
    model, tokenizer = _load(*args, **kwargs)
    if rank == 1:  # faults on one rank only: the other must follow in lockstep
        poison_loss(model, clock, {12})
        model.get_input_embeddings().register_forward_pre_hook(out_of_memory_at_13)
    return model, tokenizer


def write_checkpoint(directory, step, *args, _write=checkpoint.write_checkpoint, **kwargs):
    writes["checkpoints"].append(step)
    return _write(directory, step, *args, **kwargs)


def save_adapter(*args, _save=export.save_adapter, **kwargs):
    writes["adapters"] += 1
    return _save(*args, **kwargs)


def fine_tune(*args, callbacks=(), _fine_tune=finetune.fine_tune, **kwargs):
    return _fine_tune(*args, callbacks=[clock, *callbacks], **kwargs)


models.load_model, checkpoint.write_checkpoint, export.save_adapter = load_model, write_checkpoint, save_adapter
finetune.fine_tune = fine_tune
spec = importlib.util.spec_from_file_location("example", sys.argv[1])
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)
example.main(sys.argv[2:])
Path(f"writes-{rank}.json").write_text(json.dumps(writes))
"""


def test_resume_and_faults_on_one_rank_stay_in_lockstep(ddp_run, tmp_path) -> None:
    """Resume the 10-step run to 14 steps; rank 1 alone sees a NaN loss at step 12 and out-of-memory at step 13."""
    run, _ = ddp_run
    resumed = tmp_path / "run"
    shutil.copytree(run, resumed)
    worker = tmp_path / "faulty_worker.py"
    worker.write_text(textwrap.dedent(_FAULTY_WORKER))
    args = [str(EXAMPLE), *COMMON, "--steps", "14", "--resume", "--no-plot", "--output-dir", str(resumed)]
    _launch(worker, args, tmp_path, path=(Path(__file__).parent,))  # the worker imports tests/_finetune_faults
    report = json.loads((resumed / "ddp_report.json").read_text())
    ranks = report["ranks"]
    _same_but_rank(ranks)  # both ranks skipped step 12, halved the micro-batch at 13, and hold the same weights
    assert report["steps"] == 14 and ranks[0]["micro_batch_size"] == 1
    assert ranks[0]["events"] == [[10, "resumed"], [12, "nan_skip"], [13, "oom_retry"]]
    assert math.isnan(ranks[0]["losses"][11]) and all(math.isfinite(x) for i, x in enumerate(ranks[0]["losses"]) if i != 11)
    # rank 0 alone wrote the final checkpoint and the adapter
    writes = [json.loads((tmp_path / f"writes-{rank}.json").read_text()) for rank in (0, 1)]
    assert writes == [{"checkpoints": [14], "adapters": 1}, {"checkpoints": [], "adapters": 0}]
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir()) == ["checkpoint-10", "checkpoint-14", "latest"]
