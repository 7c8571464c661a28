"""Knowledge distillation and full fine-tuning: the loss, the settings, the teacher's checks, the disk cache, and
every guarantee of the guarded loop (NaN, out-of-memory, CUDA fallback, checkpoints and resume) with a teacher."""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import tempfile
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from _finetune_faults import (
    EVAL_TEXTS,
    TRAIN_TEXTS,
    CudaErrorAt,
    OutOfMemoryAbove,
    StepClock,
    all_finite,
    nan_base_weights,
    poison_loss,
    tiny_model,
    tokenizer,
    trainable,
)
from colab_helpers.errors import ColabHelpersWarning, CudaFallbackWarning
from colab_helpers.finetune import Callback, DistillConfig, FineTuneConfig, distill, fine_tune, latest_checkpoint
from colab_helpers.finetune.distill import TeacherTopK, distillation_loss, kd_positions


def config(tmp_path, name: str = "run", **changes) -> FineTuneConfig:
    base = dict(max_steps=6, micro_batch_size=2, seq_len=16, warmup_steps=1, eval_every=100, checkpoint_every=None,
                output_dir=str(tmp_path / name), learning_rate=1e-2, dropout=0.0, snapshot_every=2)  # fmt: skip
    return FineTuneConfig(**{**base, **changes})


@functools.lru_cache(maxsize=1)
def _trained_teacher() -> Any:
    """The tiny GPT-2 trained whole for 40 steps on the test text: a teacher that knows more than a fresh copy."""
    with tempfile.TemporaryDirectory() as folder:
        settings = dict(method="full", max_steps=40, micro_batch_size=4, seq_len=16, learning_rate=1e-2, warmup_steps=2,
                        checkpoint_every=None, output_dir=folder, restore_best=False)  # fmt: skip
        result = fine_tune(tiny_model(), tokenizer(), TRAIN_TEXTS, None, FineTuneConfig(**settings), live_plot=False,
                           progress=False)  # fmt: skip
    return result.model.eval()


def teacher() -> Any:
    return copy.deepcopy(_trained_teacher())


def run(student, teach, cfg, dcfg=None, *callbacks, eval_texts=None):
    return distill(student, teach, tokenizer(), TRAIN_TEXTS, eval_texts, cfg, dcfg, callbacks=callbacks,
                   live_plot=False, progress=False)  # fmt: skip


def kinds(result) -> list[str]:
    return [e["kind"] for e in result.events]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=atol) for k in a)


def losses(result, keys=("loss", "kd_loss", "lm_loss")) -> list[tuple[float, ...]]:
    return [tuple(row[k] for k in keys) for row in result.history]


def close_rows(a, b, tol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=tol, abs_tol=tol) for r, s in zip(a, b) for x, y in zip(r, s))


class CountForwards:
    """Count the teacher's forward passes (a hook: the teacher stays the same object, its fingerprint too)."""

    def __init__(self, model: Any, fail_at: int | None = None) -> None:
        self.calls = 0
        self.fail_at = fail_at
        model.register_forward_pre_hook(self._hook)

    def _hook(self, module: Any, args: Any) -> None:
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("the runtime disconnected while the cache was being computed")


# --- the loss ---------------------------------------------------------------------------------------------


def logits(*shape: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def reference_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float, mask: torch.Tensor) -> torch.Tensor:
    """T^2 * mean over the masked positions of KL(softmax(teacher / T) || softmax(student / T)), by torch's kl_div."""
    per_position = F.kl_div(F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
                            log_target=True, reduction="none").sum(-1)  # fmt: skip
    return per_position[mask].mean() * temperature**2


def top_k(teacher: torch.Tensor, k: int, temperature: float) -> TeacherTopK:
    found = teacher.topk(k, dim=-1)
    return TeacherTopK(found.values, found.indices, torch.logsumexp(teacher / temperature, dim=-1))


def test_the_kl_is_zero_when_the_student_is_the_teacher() -> None:
    z = logits(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    lm = torch.tensor(2.5)
    for teacher_side in (z.clone(), top_k(z, 4, 2.0), top_k(z, 4, 2.0)[:2]):
        result = distillation_loss(z, teacher_side, labels, temperature=2.0, alpha=0.3, lm_loss=lm)
        assert abs(result.kd.item()) < 1e-6
        assert math.isclose(result.loss.item(), 0.7 * 2.5, rel_tol=1e-6) and result.lm.item() == 2.5


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 4.0])
def test_the_kd_term_is_t_squared_times_the_kl_at_temperature_t(temperature) -> None:
    student, teacher_logits = logits(2, 6, 13, seed=1), logits(2, 6, 13, seed=2)
    labels = torch.randint(0, 13, (2, 6))
    result = distillation_loss(student, teacher_logits, labels, temperature=temperature, alpha=1.0)
    expected = reference_kl(student, teacher_logits, temperature, kd_positions(labels))
    assert torch.allclose(result.kd, expected, rtol=1e-5) and torch.allclose(result.loss, expected, rtol=1e-5)
    assert result.loss.dtype == torch.float32


def test_top_k_at_the_vocabulary_size_is_the_full_kl_and_below_it_a_lower_bound() -> None:
    student, teacher_logits = logits(3, 7, 17, seed=3), logits(3, 7, 17, seed=4)
    labels = torch.randint(0, 17, (3, 7))
    full = distillation_loss(student, teacher_logits, labels, temperature=2.0, alpha=1.0).kd
    assert torch.allclose(distillation_loss(student, top_k(teacher_logits, 17, 2.0), labels, alpha=1.0).kd, full, rtol=1e-5)
    assert torch.allclose(distillation_loss(student, top_k(teacher_logits, 17, 2.0)[:2], labels, alpha=1.0).kd, full,
                          rtol=1e-5)  # fmt: skip
    # k + 1 outcomes (the k tokens, "any other"): a coarser view of the same two distributions, so a smaller KL
    previous = 0.0
    for k in (1, 4, 8, 16):
        kd = distillation_loss(student, top_k(teacher_logits, k, 2.0), labels, temperature=2.0, alpha=1.0).kd.item()
        assert previous - 1e-6 <= kd <= full.item() + 1e-6
        previous = kd


def test_only_the_positions_the_lm_loss_scores_count() -> None:
    student, teacher_logits = logits(2, 6, 9, seed=5), logits(2, 6, 9, seed=6)
    labels = torch.tensor([[-100, -100, 3, 4, 5, -100], [1, 2, 3, 4, 5, 6]])
    positions = kd_positions(labels)
    assert positions.tolist() == [[False, True, True, True, False, False], [True] * 5 + [False]]
    result = distillation_loss(student, teacher_logits, labels, temperature=1.0, alpha=1.0)
    assert torch.allclose(result.kd, reference_kl(student, teacher_logits, 1.0, positions), rtol=1e-5)
    # whatever sits at a position that is not scored (padding, a prompt) changes nothing, NaN included
    changed = student.clone()
    changed[~positions] = float("nan")
    for teacher_side in (teacher_logits, top_k(teacher_logits, 3, 1.0)):
        a = distillation_loss(student, teacher_side, labels, temperature=1.0, alpha=1.0, lm_loss=torch.tensor(0.0))
        b = distillation_loss(changed, teacher_side, labels, temperature=1.0, alpha=1.0, lm_loss=torch.tensor(0.0))
        assert torch.equal(a.kd, b.kd)


def test_the_lm_part_is_the_models_own_loss_and_gradients_stay_finite() -> None:
    model = tiny_model()
    ids = torch.randint(0, len(tokenizer()), (2, 8))
    output = model(input_ids=ids, labels=ids)
    result = distillation_loss(output.logits, output.logits.detach(), ids, alpha=0.0)
    assert torch.allclose(result.lm, output.loss, rtol=1e-5) and torch.allclose(result.loss, output.loss, rtol=1e-5)
    # a teacher that rules tokens out (-inf logits) gives a finite loss and finite gradients
    teacher_logits = output.logits.detach().clone()
    teacher_logits[..., :50] = -math.inf
    student = output.logits.detach().clone().requires_grad_(True)
    for teacher_side in (teacher_logits, top_k(teacher_logits, 8, 2.0)):
        loss = distillation_loss(student, teacher_side, ids, alpha=0.5).loss
        (grad,) = torch.autograd.grad(loss, student)
        assert math.isfinite(loss.item()) and bool(torch.isfinite(grad).all())


# --- settings ---------------------------------------------------------------------------------------------


def test_distill_settings_have_defaults_and_help() -> None:
    config_ = DistillConfig()
    assert (config_.temperature, config_.alpha, config_.top_k, config_.teacher_cache) == (2.0, 0.5, None, None)
    assert all(text.strip() for text in DistillConfig.help().values())
    json.dumps(DistillConfig(top_k=8, teacher_cache="cache").to_dict())
    assert FineTuneConfig().method == "lora" and "full" in FineTuneConfig.help()["method"]


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"temperature": 0}, "temperature must be a finite number > 0, got 0; e.g. temperature=2.0"),
        ({"temperature": -1.0}, "temperature must be a finite number > 0, got -1.0"),
        ({"temperature": math.nan}, "temperature must be a finite number > 0, got nan"),
        ({"temperature": "2"}, "temperature must be a number > 0, got str '2' (write the number without quotes)"),
        ({"temperature": True}, "temperature must be a number > 0, got bool True"),
        ({"alpha": 1.5}, "alpha must be a finite number in [0, 1], got 1.5; e.g. alpha=0.5"),
        ({"alpha": -0.1}, "alpha must be a finite number in [0, 1], got -0.1"),
        ({"alpha": None}, "alpha must be a number in [0, 1], got NoneType None"),
        ({"top_k": 0}, "top_k must be an integer >= 1 or None, got 0; e.g. top_k=64"),
        ({"top_k": 2.5}, "top_k must be an integer >= 1 or None, got 2.5"),
        ({"top_k": True}, "top_k must be an integer >= 1 or None, got True"),
        ({"teacher_cache": "cache"}, "teacher_cache stores the teacher's top-k logits, and top_k is None: set top_k"),
        ({"teacher_cache": " ", "top_k": 8}, "teacher_cache is empty"),
        ({"teacher_cache": 5, "top_k": 8}, "teacher_cache must be a folder path or None, got 5"),
    ],
)
def test_bad_distill_settings_name_the_value_and_the_fix(changes, fragment) -> None:
    with pytest.raises(ValueError) as info:
        DistillConfig(**changes)
    assert fragment in str(info.value)


def test_numpy_numbers_are_taken_as_python_floats() -> None:
    import numpy as np

    config_ = DistillConfig(temperature=np.float32(1.5), alpha=np.float64(0.25))
    assert type(config_.temperature) is float and config_.alpha == 0.25
    json.dumps(config_.to_dict())


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"method": "qlora"}, "method must be one of ('lora', 'full'), got 'qlora'"),
        ({"method": "full", "load_in_4bit": True}, "4-bit weights cannot be trained: set load_in_4bit=False"),
        ({"method": "full", "backend": "unsloth"}, "backend='unsloth' trains LoRA adapters only: set backend='auto'"),
    ],
)
def test_bad_method_settings_name_the_fix(changes, fragment) -> None:
    with pytest.raises(ValueError) as info:
        FineTuneConfig(**changes)
    assert fragment in str(info.value)


# --- the teacher, checked before any work -----------------------------------------------------------------


def other_vocabulary_model(extra: int = 7) -> Any:
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64,
                                                       vocab_size=len(tokenizer()) + extra))  # fmt: skip


@pytest.mark.parametrize(
    ("make_teacher", "dcfg", "error", "fragment"),
    [
        (lambda student: student, None, ValueError, "the teacher is the student itself"),
        (lambda student: copy.copy(student), None, ValueError, "the teacher shares weights with the student"),
        (lambda student: other_vocabulary_model(), None, ValueError,
         f"the teacher scores {len(tokenizer()) + 7} tokens and the student {len(tokenizer())}"),
        (lambda student: teacher(), DistillConfig(top_k=1000), ValueError, "top_k=1000 is more than the vocabulary"),
        (lambda student: "gpt2", None, TypeError, "teacher must be a causal LM (a torch module), got str"),
        (lambda student: teacher(), {"alpha": 1}, TypeError, "distill_config must be a DistillConfig, got dict"),
    ],
)  # fmt: skip
def test_a_teacher_that_cannot_teach_is_refused_before_any_work(tmp_path, make_teacher, dcfg, error, fragment) -> None:
    student = tiny_model()
    with pytest.raises(error) as info:
        run(student, make_teacher(student), config(tmp_path), dcfg)
    assert fragment in str(info.value)
    if "itself" in fragment or "shares" in fragment:
        assert "copy.deepcopy(model)" in str(info.value)
    assert not (tmp_path / "run").exists()  # no folder, no adapter: nothing was touched
    assert not any("lora" in name for name, _ in student.named_modules())


@pytest.mark.parametrize("broken", ["the student", "the teacher"])
def test_weights_already_non_finite_are_refused_before_any_work(tmp_path, broken) -> None:
    """distill shares the trainer's check (the student), and checks the teacher too: its NaN logits are NaN targets."""
    student, teach = tiny_model(), teacher()
    nan_base_weights(student if broken == "the student" else teach)
    first = next(name for name, _ in (student if broken == "the student" else teach).named_parameters())
    with pytest.raises(ValueError, match=rf"{broken} holds NaN or infinity in '{first}' \(the first such weight\) "
                                         r"before training, .*load it again"):
        run(student, teach, config(tmp_path))
    assert not (tmp_path / "run").exists()
    assert not any("lora" in name for name, _ in student.named_modules())


def test_a_teacher_cache_that_cannot_be_a_folder_is_refused_before_any_work(tmp_path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    dcfg = DistillConfig(top_k=8, teacher_cache=str(tmp_path / "a-file" / "cache"))
    with pytest.raises(NotADirectoryError, match=r"teacher_cache .*a-file' is a file; pass a folder path"):
        run(tiny_model(), teacher(), config(tmp_path), dcfg)
    assert not (tmp_path / "run").exists()


def test_the_teacher_is_frozen_while_it_teaches_and_handed_back_as_it_came(tmp_path) -> None:
    from colab_helpers.finetune.callbacks import Callback

    teach = teacher()
    before = {n: p.detach().clone() for n, p in teach.named_parameters()}
    teach.train()
    seen: list[tuple[bool, bool]] = []

    class Watch(Callback):
        def on_step_end(self, tuner: Any, row: dict[str, Any]) -> None:
            seen.append((teach.training, any(p.requires_grad for p in teach.parameters())))

    run(tiny_model(), teach, config(tmp_path, max_steps=3), None, Watch())
    assert seen and set(seen) == {(False, False)}  # eval mode, no gradients at every step
    assert teach.training and all(p.requires_grad for p in teach.parameters())  # as it came
    assert same({n: p.detach() for n, p in teach.named_parameters()}, before)


def test_a_teacher_on_another_device_is_moved_to_the_students_with_one_warning(tmp_path, monkeypatch, caplog) -> None:
    """One CPU here: the teacher *reports* another device, and the move is recorded."""
    import importlib

    distill_module = importlib.import_module("colab_helpers.finetune.distill")  # the attribute is the function

    teach = teacher()
    moved: list[Any] = []
    elsewhere = {"device": torch.device("meta")}

    def recording_to(device, *args, **kwargs):
        moved.append(torch.device(device))
        elsewhere["device"] = torch.device(device)
        return teach

    real = distill_module.model_device
    monkeypatch.setattr(distill_module, "model_device", lambda m: elsewhere["device"] if m is teach else real(m))
    teach.to = recording_to
    with caplog.at_level(logging.WARNING, logger="colab_helpers.finetune.distill"):
        result = run(tiny_model(), teach, config(tmp_path, max_steps=3))
    assert moved == [torch.device("cpu")]  # moved once, before its first forward
    [record] = [r for r in caplog.records if "teacher" in r.message]
    assert "the teacher is on meta and the student on cpu: moving the teacher to cpu" in record.message
    assert result.steps == 3


# --- training ---------------------------------------------------------------------------------------------


def test_distillation_brings_the_student_closer_to_the_teacher(tmp_path) -> None:
    from colab_helpers.evaluation.perplexity import tokenize_texts

    teach = teacher()
    ids = tokenize_texts(tokenizer(), TRAIN_TEXTS[:6])[: 16 * 40].view(-1, 16)

    def kl(model: Any) -> float:
        with torch.no_grad():
            return distillation_loss(model.eval()(ids).logits, teach(ids).logits, ids, temperature=1.0, alpha=1.0).kd.item()

    before = kl(tiny_model())
    dcfg = DistillConfig(alpha=1.0, temperature=1.0)
    lora = run(tiny_model(), teach, config(tmp_path, "lora", max_steps=20, micro_batch_size=4, learning_rate=2e-2), dcfg)
    full = run(tiny_model(), teach, config(tmp_path, "full", max_steps=20, micro_batch_size=4, method="full"), dcfg)
    assert kl(lora.model) < 0.98 * before and kl(full.model) < 0.25 * before
    for result in (lora, full):
        kd = [row["kd_loss"] for row in result.history]
        assert sum(kd[-3:]) < sum(kd[:3]) and all(math.isclose(r["loss"], r["kd_loss"], rel_tol=1e-6) for r in result.history)
        assert result.stopped_reason == "max_steps" and result.failure is None and all_finite(result.model)
    assert lora.adapter_dir is not None and lora.model_dir is None and lora.backend == "peft"
    assert full.adapter_dir is None and (full.model_dir / "config.json").is_file() and full.backend == "full"


def test_history_rows_carry_both_parts_and_eval_stays_the_lm_loss(tmp_path) -> None:
    from colab_helpers.finetune.blocks import eval_blocks

    cfg = config(tmp_path, eval_every=3, eval_batches=2, restore_best=False)  # the model of the last eval
    result = run(tiny_model(), teacher(), cfg, DistillConfig(alpha=0.3, top_k=32), eval_texts=EVAL_TEXTS)
    for row in result.history:
        assert math.isclose(row["loss"], 0.3 * row["kd_loss"] + 0.7 * row["lm_loss"], rel_tol=1e-5)
    summary = json.loads((tmp_path / "run" / "history.json").read_text())
    assert {"kd_loss", "lm_loss"} <= set(summary["history"][0]) and "kd_loss" in result.history_frame().columns
    blocks = eval_blocks(tokenizer(), EVAL_TEXTS, cfg)
    model = result.model.eval()
    with torch.no_grad():
        lm = sum(model(input_ids=c, labels=c).loss.item() * len(c) for c in blocks.split(2)) / len(blocks)
    assert math.isclose(result.history[-1]["eval_loss"], lm, rel_tol=1e-5)  # the student's LM loss, not the KD mix


def test_alpha_zero_is_plain_fine_tuning(tmp_path) -> None:
    plain = fine_tune(tiny_model(), tokenizer(), TRAIN_TEXTS, None, config(tmp_path, "plain"), live_plot=False, progress=False)
    result = run(tiny_model(), teacher(), config(tmp_path), DistillConfig(alpha=0.0))
    assert close_rows(losses(plain, ("loss",)), losses(result, ("loss",)), tol=1e-6)
    assert same(trainable(plain.model), trainable(result.model), atol=1e-6)
    assert all(row["kd_loss"] > 0 for row in result.history)  # measured all the same


# --- the disk cache ---------------------------------------------------------------------------------------


def test_the_teacher_cache_is_computed_once_atomically_and_read_afterwards(tmp_path) -> None:
    cache = tmp_path / "cache"
    dcfg = DistillConfig(top_k=16, teacher_cache=str(cache))
    first_teacher = teacher()
    first_count = CountForwards(first_teacher)
    first = run(tiny_model(), first_teacher, config(tmp_path, "first"), dcfg)
    assert first_count.calls > 0
    assert sorted(p.name for p in cache.iterdir()) == ["cache.json", "shard-00000.safetensors"]  # no temporaries
    manifest = json.loads((cache / "cache.json").read_text())
    assert manifest["fingerprint"]["top_k"] == 16 and manifest["shards"][0]["rows"] > 0
    second_teacher = teacher()
    second_count = CountForwards(second_teacher)
    second = run(tiny_model(), second_teacher, config(tmp_path, "second"), dcfg)
    assert second_count.calls == 0  # the teacher never ran
    assert losses(second) == losses(first) and same(trainable(second.model), trainable(first.model))
    # and the cache is what the teacher would have said: the same run without it
    live = run(tiny_model(), teacher(), config(tmp_path, "live"), DistillConfig(top_k=16))
    assert close_rows(losses(live), losses(first)) and same(trainable(live.model), trainable(first.model), atol=1e-5)


def test_a_cache_of_other_settings_or_data_is_computed_again_with_one_warning(tmp_path) -> None:
    cache = str(tmp_path / "cache")
    run(tiny_model(), teacher(), config(tmp_path), DistillConfig(top_k=16, teacher_cache=cache))
    for changes, difference in [({"top_k": 8}, "top_k: 16 vs 8"), ({"top_k": 8, "temperature": 1.0}, "temperature: 2.0 vs 1.0")]:
        teach = teacher()
        count = CountForwards(teach)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run(tiny_model(), teach, config(tmp_path, f"top{changes['top_k']}-{len(changes)}"),
                DistillConfig(teacher_cache=cache, **changes))  # fmt: skip
        [warning] = [w for w in caught if issubclass(w.category, ColabHelpersWarning) and "teacher_cache" in str(w.message)]
        message = str(warning.message)
        assert "was computed for another teacher or data" in message and difference in message and count.calls > 0
        assert warning.filename == __file__  # the line that called distill
    # other data: another hash of the sequences
    teach = teacher()
    with pytest.warns(ColabHelpersWarning, match=r"sequences\.sha256"):
        distill(tiny_model(), teach, tokenizer(), TRAIN_TEXTS[:12], None, config(tmp_path, "other-data"),
                DistillConfig(top_k=8, temperature=1.0, teacher_cache=cache), live_plot=False, progress=False)  # fmt: skip


def test_a_cache_build_that_dies_half_way_leaves_no_cache_and_is_built_again(tmp_path, monkeypatch) -> None:
    import colab_helpers.finetune.teacher_cache as teacher_cache

    monkeypatch.setattr(teacher_cache, "_SHARD_BYTES", 3 * 16 * (8 * 8 + 4))  # 3 sequences per shard
    cache = tmp_path / "cache"
    dcfg = DistillConfig(top_k=8, teacher_cache=str(cache))
    dying = teacher()
    CountForwards(dying, fail_at=4)  # micro-batches of 2: shard 0 is written, then the runtime dies
    with pytest.raises(RuntimeError, match="disconnected"):
        run(tiny_model(), dying, config(tmp_path), dcfg)
    assert "cache.json" not in [p.name for p in cache.iterdir()] and not any(p.name.startswith(".") for p in cache.iterdir())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(tiny_model(), teacher(), config(tmp_path), dcfg)  # no manifest: built again, quietly
    assert not [w for w in caught if "teacher_cache" in str(w.message)]
    manifest = json.loads((cache / "cache.json").read_text())
    assert len(manifest["shards"]) > 2 and sum(s["rows"] for s in manifest["shards"]) == manifest["fingerprint"]["sequences"]["shape"][0]
    reference = run(tiny_model(), teacher(), config(tmp_path, "reference"), DistillConfig(top_k=8))
    assert close_rows(losses(result), losses(reference))  # the shards read back in order
    # a shard cut short: named, and computed again
    shard = cache / manifest["shards"][1]["file"]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.warns(ColabHelpersWarning, match=r"is incomplete \(shard-00001\.safetensors has 100 bytes"):
        run(tiny_model(), teacher(), config(tmp_path, "third"), dcfg)


# --- failures: the guarded loop with a teacher ------------------------------------------------------------


def test_a_nan_streak_is_skipped_then_rolled_back(tmp_path) -> None:
    teach = teacher()
    clock = StepClock(keep_weights=True)
    student = tiny_model()
    poison_loss(student, clock, {4, 5, 6})
    result = run(student, teach, config(tmp_path, max_steps=10, nan_skip_patience=3), DistillConfig(top_k=16), clock)
    assert kinds(result) == ["nan_skip"] * 3 + ["rollback", "lr_halved"] and result.events[3]["to_step"] == 2
    for row in result.history:
        poisoned = row["step"] in (4, 5, 6)
        assert row["skipped"] == poisoned
        assert all(math.isnan(row[k]) == poisoned for k in ("loss", "kd_loss", "lm_loss"))
    assert same(clock.weights[4], clock.weights[3]) and all_finite(result.model)
    assert result.stopped_reason == "max_steps" and result.adapter_dir is not None


class TeacherOutOfMemoryAbove:
    """CUDA's out-of-memory error from the teacher's forward (it runs in eval mode) above ``limit`` rows."""

    def __init__(self, model: Any, limit: int) -> None:
        self.limit, self.raised = limit, 0
        model.get_input_embeddings().register_forward_pre_hook(self._hook)

    def _hook(self, module: Any, args: Any) -> None:
        if args[0].shape[0] > self.limit:
            self.raised += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; teacher)")


@pytest.mark.parametrize("where", ["student", "teacher"])
def test_out_of_memory_halves_the_micro_batch_and_keeps_the_losses(tmp_path, where) -> None:
    clean = run(tiny_model(), teacher(), config(tmp_path, "clean", max_steps=4, micro_batch_size=8))
    student, teach = tiny_model(), teacher()
    oom = OutOfMemoryAbove(student, limit=2) if where == "student" else TeacherOutOfMemoryAbove(teach, limit=2)
    result = run(student, teach, config(tmp_path, max_steps=4, micro_batch_size=8))
    assert kinds(result) == ["oom_retry", "oom_retry"] and oom.raised == 2
    assert [r["micro_batch_size"] for r in result.history] == [2, 2, 2, 2]
    assert close_rows(losses(result), losses(clean))  # the same mean over the step's 8 sequences, all three parts
    assert same(trainable(result.model), trainable(clean.model), atol=1e-5)


def test_a_cuda_error_moves_student_and_teacher_to_the_cpu_and_loses_nothing(tmp_path) -> None:
    clean = run(tiny_model(), teacher(), config(tmp_path, "clean"))
    clock = StepClock()
    student, teach = tiny_model(), teacher()
    fault = CudaErrorAt(student, clock, step=3)
    moves: list[torch.device] = []
    original_to = teach.to

    def recording_to(*args, **kwargs):
        moves.append(torch.device(args[0]))
        return original_to(*args, **kwargs)

    teach.to = recording_to
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(student, teach, config(tmp_path), None, clock)
    assert fault.raised == 1 and len([w for w in caught if issubclass(w.category, CudaFallbackWarning)]) == 1
    assert kinds(result) == ["cpu_fallback"] and moves == [torch.device("cpu")]  # the teacher followed the student
    assert all(r["device"] == "cpu" for r in result.history) and [r["step"] for r in result.history] == list(range(1, 7))
    assert close_rows(losses(result), losses(clean), tol=1e-6)
    assert same(trainable(result.model), trainable(clean.model), atol=1e-6)


def test_the_cpu_fallback_turns_a_half_precision_teacher_to_fp32(tmp_path) -> None:
    clock = StepClock()
    student, teach = tiny_model(), teacher().to(torch.bfloat16)
    CudaErrorAt(student, clock, step=2)
    with pytest.warns(CudaFallbackWarning):
        result = run(student, teach, config(tmp_path, max_steps=3), None, clock)
    assert all(p.dtype == torch.float32 for p in teach.parameters()) and result.steps == 3


class StopButton(Callback):  # Colab's stop button: KeyboardInterrupt wherever the code is
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, tuner, row):
        if row["step"] == self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("cached", [False, True], ids=["live_teacher", "teacher_cache"])
def test_an_interrupted_distillation_resumes_exactly(tmp_path, cached) -> None:
    dcfg = DistillConfig(top_k=16, teacher_cache=str(tmp_path / "cache") if cached else None)
    reference = run(tiny_model(), teacher(), config(tmp_path, "reference", max_steps=8, eval_every=4),
                    dcfg, eval_texts=EVAL_TEXTS)  # fmt: skip
    cfg = config(tmp_path, max_steps=8, eval_every=4)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_model(), teacher(), cfg, dcfg, StopButton(5), eval_texts=EVAL_TEXTS)
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "checkpoint-5"
    teach = teacher()
    count = CountForwards(teach)
    resumed = run(tiny_model(), teach, FineTuneConfig(**{**cfg.to_dict(), "resume": True}), dcfg, eval_texts=EVAL_TEXTS)
    assert [e["kind"] for e in resumed.events] == ["resumed"] and resumed.events[0]["step"] == 5
    assert close_rows(losses(resumed, ("loss", "kd_loss", "lm_loss", "lr")), losses(reference, ("loss", "kd_loss", "lm_loss", "lr")),
                      tol=1e-6)  # fmt: skip
    assert resumed.best_step == reference.best_step and math.isclose(resumed.best_eval_loss, reference.best_eval_loss, rel_tol=1e-6)
    assert same(trainable(resumed.model), trainable(reference.model), atol=1e-6)
    if cached:
        assert count.calls == 0


def test_a_distillation_checkpoint_resumes_only_with_the_same_objective(tmp_path) -> None:
    run(tiny_model(), teacher(), config(tmp_path, max_steps=2), DistillConfig(alpha=0.5))
    with pytest.raises(ValueError, match=r"config\.distill\.alpha: 0\.5 vs 0\.9") as info:
        run(tiny_model(), teacher(), config(tmp_path, max_steps=4, resume=True), DistillConfig(alpha=0.9))
    assert "new output_dir" in str(info.value)
    with pytest.raises(ValueError, match="teacher: "):  # plain fine-tuning cannot continue a distillation
        fine_tune(tiny_model(), tokenizer(), TRAIN_TEXTS, None, config(tmp_path, max_steps=4, resume=True),
                  live_plot=False, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"teacher\.parameter_shapes"):  # nor another teacher
        run(tiny_model(), tiny_model("llama"), config(tmp_path, max_steps=4, resume=True), DistillConfig(alpha=0.5))


# --- full fine-tuning (method="full") -------------------------------------------------------------------


def test_full_fine_tuning_trains_every_weight_and_saves_the_whole_model(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = fine_tune(model, tokenizer(), TRAIN_TEXTS, EVAL_TEXTS, config(tmp_path, method="full", eval_every=3),
                       live_plot=False, progress=False)  # fmt: skip
    assert result.model is model and result.backend == "full" and not any("lora" in n for n, _ in model.named_modules())
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert sorted(changed) == sorted(before)  # every weight (embeddings, norms, biases) trained
    assert result.adapter_dir is None and not (tmp_path / "run" / "adapter").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(result.model_dir).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits, atol=1e-5)
    assert (result.model_dir / "tokenizer_config.json").is_file()
    assert json.loads((tmp_path / "run" / "history.json").read_text())["model_dir"] == str(result.model_dir)


def test_an_interrupted_full_fine_tuning_resumes_exactly(tmp_path) -> None:
    reference = fine_tune(tiny_model(), tokenizer(), TRAIN_TEXTS, None, config(tmp_path, "reference", method="full"),
                          live_plot=False, progress=False)  # fmt: skip
    cfg = config(tmp_path, method="full")
    with pytest.raises(KeyboardInterrupt):
        fine_tune(tiny_model(), tokenizer(), TRAIN_TEXTS, None, cfg, callbacks=[StopButton(3)], live_plot=False,
                  progress=False)  # fmt: skip
    resumed = fine_tune(tiny_model(), tokenizer(), TRAIN_TEXTS, None, FineTuneConfig(**{**cfg.to_dict(), "resume": True}),
                        live_plot=False, progress=False)  # fmt: skip
    assert resumed.events[0]["kind"] == "resumed" and close_rows(losses(resumed, ("loss",)), losses(reference, ("loss",)), 1e-6)
    assert same(trainable(resumed.model), trainable(reference.model), atol=1e-6)
    # a LoRA checkpoint is not a full one, nor the other way round
    with pytest.raises(ValueError, match=r"config\.method: 'full' vs None"):
        fine_tune(tiny_model(), tokenizer(), TRAIN_TEXTS, None, config(tmp_path, resume=True), live_plot=False, progress=False)


def test_full_fine_tuning_refuses_a_model_with_an_adapter(tmp_path) -> None:
    lora = fine_tune(tiny_model(), tokenizer(), TRAIN_TEXTS, None, config(tmp_path, "lora", max_steps=1), live_plot=False,
                     progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"carries a LoRA adapter: fold it in first \(model = merge_adapter\(model\)\)"):
        fine_tune(lora.model, tokenizer(), TRAIN_TEXTS, None, config(tmp_path, method="full"), live_plot=False, progress=False)
    with pytest.raises(ValueError, match=r"cannot train float16 weights \(transformer\.wte\.weight, .*dtype='float32'"):
        fine_tune(tiny_model().half(), tokenizer(), TRAIN_TEXTS, None, config(tmp_path, method="full"), live_plot=False,
                  progress=False)  # fmt: skip
    assert not (tmp_path / "run").exists()

