"""Checkpoints: atomic, never resumed from half-written, and a run killed with SIGKILL resumes without a gap."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

from _finetune_faults import TRAIN_TEXTS, all_finite, tiny_model, tokenizer, trainable
from colab_helpers.errors import ColabHelpersWarning
from colab_helpers.finetune import FineTuneConfig, fine_tune, latest_checkpoint, list_checkpoints
from colab_helpers.finetune import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]


def config(output_dir: Path, **changes) -> FineTuneConfig:
    base = dict(max_steps=8, micro_batch_size=2, seq_len=16, warmup_steps=1, checkpoint_every=2,
                output_dir=str(output_dir), learning_rate=1e-2)  # fmt: skip
    return FineTuneConfig(**{**base, **changes})


def run(model, cfg):
    return fine_tune(model, tokenizer(), TRAIN_TEXTS, None, cfg, live_plot=False, progress=False)


def _write(directory: Path, step: int, keep: int = 2) -> Path:
    writers = {"weights.bin": lambda path: path.write_bytes(bytes(range(step % 200)) * 10)}
    return ckpt.write_checkpoint(directory, step, writers, {"step": step}, keep=keep)


# --- the checkpoint files ---------------------------------------------------------------------------------


def test_checkpoints_are_complete_pointed_to_and_pruned(tmp_path) -> None:
    for step in (1, 2, 3):
        path = _write(tmp_path, step)
        assert ckpt.is_complete(path) and ckpt.read_state(path) == {"step": step}
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-3"
    assert latest_checkpoint(tmp_path).name == "checkpoint-3"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporaries left behind
    _write(tmp_path, 3)  # rewriting a step replaces it whole
    assert ckpt.is_complete(tmp_path / "checkpoint-3")


def test_a_half_written_checkpoint_is_never_picked(tmp_path) -> None:
    _write(tmp_path, 4)
    good = _write(tmp_path, 6)
    # killed before the manifest: files there, no manifest, and the pointer (wrongly) names it
    partial = tmp_path / "checkpoint-9"
    partial.mkdir()
    (partial / "weights.bin").write_bytes(b"12")
    (tmp_path / "latest").write_text("checkpoint-9\n")
    # a manifest whose file was cut short
    truncated = tmp_path / "checkpoint-8"
    (truncated).mkdir()
    (truncated / "weights.bin").write_bytes(b"123")
    (truncated / "manifest.json").write_text(json.dumps({"format": 1, "step": 8, "files": {"weights.bin": 999}}))
    # a temporary directory of an interrupted write
    tmp = tmp_path / ".tmp-checkpoint-10-abc"
    tmp.mkdir()
    (tmp / "weights.bin").write_bytes(b"x")
    assert not ckpt.is_complete(partial) and not ckpt.is_complete(truncated)
    assert latest_checkpoint(tmp_path) == good
    assert ckpt.remove_stale(tmp_path) == [tmp] and not tmp.exists()


def ours(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ColabHelpersWarning)]


def aside(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "checkpoints").glob("unreadable-*"))


def test_resume_skips_a_broken_newest_checkpoint(tmp_path) -> None:
    first = run(tiny_model(), config(tmp_path))
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["checkpoint-6", "checkpoint-8"]
    # fake a newer checkpoint killed mid-write: a copy of checkpoint-8 with one file cut short
    broken = tmp_path / "checkpoints" / "checkpoint-9"
    shutil.copytree(tmp_path / "checkpoints" / "checkpoint-8", broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps({**manifest, "step": 9}))
    with open(broken / "adapter_model.safetensors", "r+b") as handle:
        handle.truncate(10)
    (tmp_path / "checkpoints" / "latest").write_text("checkpoint-9\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(tiny_model(), config(tmp_path, max_steps=10, resume=True))
    [message] = ours(caught)
    assert "checkpoint-9: adapter_model.safetensors has 10 bytes" in message and "resuming from checkpoint-8" in message
    assert [e["message"] for e in result.events if e["kind"] == "resumed"] == ["resumed from checkpoint-8"]
    assert [r["step"] for r in result.history] == list(range(1, 11))
    assert result.history[:8] == first.history
    # the broken one was moved aside, not overwritten by the new checkpoint-9
    [folder] = aside(tmp_path)
    assert (folder / "checkpoint-9" / "adapter_model.safetensors").stat().st_size == 10


def test_a_corrupt_newest_adapter_falls_back_to_the_previous_checkpoint_with_one_warning(tmp_path) -> None:
    first = run(tiny_model(), config(tmp_path))
    newest = tmp_path / "checkpoints" / "checkpoint-8"
    adapter = newest / "adapter_model.safetensors"
    size = adapter.stat().st_size
    adapter.write_bytes(b"\xff" * size)  # same size, so the manifest still matches: only reading finds it
    assert ckpt.is_complete(newest)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(tiny_model(), config(tmp_path, resume=True))
    [message] = ours(caught)
    assert [w.filename for w in caught if issubclass(w.category, ColabHelpersWarning)] == [__file__]  # the caller's line
    assert str(tmp_path / "checkpoints") in message
    assert "checkpoint-8: adapter_model.safetensors cannot be read" in message and "resuming from checkpoint-6" in message
    assert [e["message"] for e in result.events if e["kind"] == "resumed"] == ["resumed from checkpoint-6"]
    # steps 7 and 8 again, exactly as the first time (the clock aside)
    assert [(r["step"], r["loss"]) for r in result.history] == [(r["step"], r["loss"]) for r in first.history]
    [folder] = aside(tmp_path)
    assert (folder / "checkpoint-8" / "adapter_model.safetensors").read_bytes() == b"\xff" * size


def test_resume_with_no_readable_checkpoint_moves_them_aside_and_starts_over(tmp_path) -> None:
    run(tiny_model(), config(tmp_path))
    damaged = {}
    for name in ("checkpoint-6", "checkpoint-8"):
        state = tmp_path / "checkpoints" / name / "state.json"
        state.write_bytes(b"{" + b" " * (state.stat().st_size - 1))  # not JSON, same size
        damaged[name] = state.read_bytes()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(tiny_model(), config(tmp_path, max_steps=4, resume=True))
    [message] = ours(caught)
    assert f"2 checkpoint(s) in {tmp_path / 'checkpoints'} could not be read" in message
    assert "checkpoint-8: state.json cannot be read (JSONDecodeError" in message and "checkpoint-6: state.json" in message
    assert "starting from step 0" in message and "nothing deleted" in message
    assert [r["step"] for r in result.history] == [1, 2, 3, 4] and result.events == []
    [folder] = aside(tmp_path)
    assert str(folder) in message
    assert {name: (folder / name / "state.json").read_bytes() for name in damaged} == damaged  # untouched
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["checkpoint-2", "checkpoint-4"]
    # a later resume=False clears the run's checkpoints, not what was set aside
    with pytest.warns(ColabHelpersWarning, match="deleted 2 old checkpoint"):
        run(tiny_model(), config(tmp_path, max_steps=2))
    assert aside(tmp_path) == [folder]


@pytest.mark.parametrize("damage", ["manifest", "state_step", "optimizer"])
def test_each_kind_of_damage_is_named(tmp_path, damage) -> None:
    run(tiny_model(), config(tmp_path, max_steps=4))
    newest = tmp_path / "checkpoints" / "checkpoint-4"
    if damage == "manifest":
        (newest / "manifest.json").unlink()
        expected = "checkpoint-4: no manifest.json"
    elif damage == "state_step":  # a state.json copied in from another checkpoint, padded to the listed size
        state = json.loads((newest / "state.json").read_text())
        text = json.dumps({**state, "step": 3})
        text += " " * ((newest / "state.json").stat().st_size - len(text))
        (newest / "state.json").write_text(text)
        expected = "checkpoint-4: state.json is of step 3"
    else:
        optimizer = newest / "optimizer.pt"
        optimizer.write_bytes(b"\0" * optimizer.stat().st_size)
        expected = "checkpoint-4: optimizer.pt cannot be read"
    with pytest.warns(ColabHelpersWarning, match=expected) as caught:
        result = run(tiny_model(), config(tmp_path, max_steps=4, resume=True))
    assert len(ours(caught)) == 1
    assert result.events[0]["message"] == "resumed from checkpoint-2" and result.steps == 4


def test_a_checkpoint_with_a_nan_adapter_is_refused_naming_it(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    run(tiny_model(), config(tmp_path))
    newest = tmp_path / "checkpoints" / "checkpoint-8"
    tensors = load_file(newest / "adapter_model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(newest / "adapter_model.safetensors"))
    assert ckpt.is_complete(newest)  # same size: the manifest cannot tell
    model = tiny_model()
    with pytest.raises(ValueError) as info:
        run(model, config(tmp_path, max_steps=10, resume=True))
    message = str(info.value)
    assert f"cannot resume from {newest}" in message and "NaN" in message and name in message
    assert "Move checkpoint-8 out of" in message and "resume=False" in message
    assert not any("lora" in n for n, _ in model.named_modules())  # refused before the model was touched
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["checkpoint-6", "checkpoint-8"]
    assert aside(tmp_path) == []  # nothing moved on an error


# --- resuming ---------------------------------------------------------------------------------------------


_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import torch
    from transformers import AutoModelForCausalLM
    from _finetune_faults import TRAIN_TEXTS, tokenizer
    from colab_helpers.finetune import Callback, FineTuneConfig, fine_tune

    class Slow(Callback):  # after step 10, slow down so the test can kill the run in the middle
        def on_step_end(self, tuner, row):
            if row["step"] > 10:
                time.sleep(0.2)

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    config = FineTuneConfig(**__import__("json").loads(sys.argv[2]))
    fine_tune(model, tokenizer(), TRAIN_TEXTS, None, config, callbacks=[Slow()], live_plot=False, progress=False)
    """
)


def test_a_killed_run_resumes_with_every_step_exactly_once(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    base = tmp_path / "base"
    tiny_model().save_pretrained(base)
    settings = dict(max_steps=30, micro_batch_size=2, seq_len=16, warmup_steps=1, checkpoint_every=5,
                    output_dir=str(tmp_path / "run"), learning_rate=1e-2, dropout=0.1)  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    child = subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, str(base), json.dumps(settings)], env=env, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            newest = latest_checkpoint(tmp_path / "run" / "checkpoints")
            if newest is not None and ckpt.checkpoint_step(newest) >= 10:
                break
            time.sleep(0.05)
        assert child.poll() is None, f"the run ended before it could be killed: {child.stderr.read().decode()[-2000:]}"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    killed_at = ckpt.checkpoint_step(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert 10 <= killed_at < 30 and not (tmp_path / "run" / "history.json").exists()

    model = AutoModelForCausalLM.from_pretrained(base)
    resumed = run(model, FineTuneConfig(**{**settings, "resume": True}))
    assert [r["step"] for r in resumed.history] == list(range(1, 31))
    assert [e["kind"] for e in resumed.events] == ["resumed"] and resumed.events[0]["step"] == killed_at
    assert all_finite(resumed.model)
    # the same run without the kill: data order, dropout RNG and optimizer state all continued exactly
    reference = run(AutoModelForCausalLM.from_pretrained(base), FineTuneConfig(**{**settings, "output_dir": str(tmp_path / "ref")}))
    assert all(abs(a["loss"] - b["loss"]) < 1e-5 for a, b in zip(resumed.history, reference.history))
    ours, theirs = trainable(resumed.model), trainable(reference.model)
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-5) for k in ours)


def test_resuming_a_finished_run_changes_nothing(tmp_path) -> None:
    first = run(tiny_model(), config(tmp_path))
    again = run(tiny_model(), config(tmp_path, resume=True))
    assert again.stopped_reason == "resumed_finished" and again.steps == 8
    assert again.history == first.history
    ours, theirs = trainable(again.model), trainable(first.model)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_resume_with_another_config_or_model_names_both_and_the_fix(tmp_path) -> None:
    run(tiny_model(), config(tmp_path, max_steps=2))
    with pytest.raises(ValueError) as info:
        run(tiny_model(), config(tmp_path, max_steps=2, learning_rate=5e-3, resume=True))
    message = str(info.value)
    assert "learning_rate: 0.01 vs 0.005" in message and "new output_dir" in message and "resume=False" in message
    llama = tiny_model("llama")
    with pytest.raises(ValueError, match="model_type: 'gpt2' vs 'llama'"):
        run(llama, config(tmp_path, max_steps=2, resume=True))
    assert not any("lora" in name for name, _ in llama.named_modules())  # checked before the model was touched


def test_resume_false_starts_over_and_says_so(tmp_path) -> None:
    run(tiny_model(), config(tmp_path, max_steps=4))
    with pytest.warns(ColabHelpersWarning, match="deleted 2 old checkpoint"):
        result = run(tiny_model(), config(tmp_path, max_steps=2))
    assert [r["step"] for r in result.history] == [1, 2]
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["checkpoint-2"]


def test_resume_true_without_checkpoints_starts_from_step_zero(tmp_path) -> None:
    result = run(tiny_model(), config(tmp_path, max_steps=2, resume=True))
    assert [r["step"] for r in result.history] == [1, 2] and result.events == []


def test_an_interrupt_checkpoints_the_last_finished_step(tmp_path) -> None:
    from colab_helpers.finetune import Callback

    class StopButton(Callback):  # Colab's stop button raises KeyboardInterrupt wherever the code is
        def on_step_end(self, tuner, row):
            if row["step"] == 3:
                raise KeyboardInterrupt

    cfg = config(tmp_path, checkpoint_every=None)
    with pytest.raises(KeyboardInterrupt):
        fine_tune(tiny_model(), tokenizer(), TRAIN_TEXTS, None, cfg, callbacks=[StopButton()], live_plot=True, progress=False)
    assert latest_checkpoint(tmp_path / "checkpoints").name == "checkpoint-3"
    assert (tmp_path / "training.png").is_file()  # the live plot was saved on the way out
    result = run(tiny_model(), config(tmp_path, checkpoint_every=None, resume=True))
    assert [r["step"] for r in result.history] == list(range(1, 9))
