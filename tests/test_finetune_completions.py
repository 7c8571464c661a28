"""Prompt -> completion training: labels masked exactly, the loss is the completion-only mean, it trains, it resumes."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from _finetune_faults import OutOfMemoryAbove, tiny_model, tokenizer, trainable
from colab_helpers.errors import ColabHelpersWarning
from colab_helpers.finetune import Callback, FineTuneConfig, fine_tune
from colab_helpers.finetune.completions import IGNORE_INDEX, as_pairs, tokenize_pairs

WORDS = ["fox", "dog", "cat", "sun", "model", "laptop", "heads", "lora", "colab", "gpu", "save", "nan"]
PAIRS = [(f"Q: Spell '{word}'.\nA:", " " + " ".join(word)) for word in WORDS]  # completions of 3 to 6 letters


def config(tmp_path: Any, **changes: Any) -> FineTuneConfig:
    base = dict(max_steps=6, micro_batch_size=2, seq_len=32, warmup_steps=1, eval_every=100, checkpoint_every=None,
                output_dir=str(tmp_path / "run"), learning_rate=1e-2, dropout=0.0, r=4, alpha=8)  # fmt: skip
    return FineTuneConfig(**{**base, **changes})


def run(model: Any, cfg: FineTuneConfig, train: Any = PAIRS, eval_data: Any = None, *callbacks: Any) -> Any:
    return fine_tune(model, tokenizer(), train, eval_data, cfg, callbacks=callbacks, live_plot=False, progress=False)


def ids(text: str) -> list[int]:
    return tokenizer()(text, add_special_tokens=False)["input_ids"]


def nll(model: Any, pairs: Sequence[tuple[str, str]], *, part: str = "completion") -> tuple[float, int]:
    """Return (summed negative log-likelihood, tokens) of the ``part`` tokens, one unpadded example at a time."""
    total, count = 0.0, 0
    eos = tokenizer().eos_token_id
    for prompt, completion in pairs:
        p, c = ids(prompt), ids(completion) + [eos]
        tokens = torch.tensor([p + c])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=tokens).logits[0].float(), dim=-1)
        positions = range(max(len(p), 1), len(p) + len(c)) if part == "completion" else range(1, len(p))
        for t in positions:
            total -= logp[t - 1, tokens[0, t]].item()
            count += 1
    return total, count


def completion_loss(model: Any, pairs: Sequence[tuple[str, str]]) -> float:
    """Return the mean loss over every completion token of ``pairs``, computed by hand."""
    total, count = nll(model, pairs)
    return total / count


# --- the data -----------------------------------------------------------------------------------------------


def test_masking_puts_ignore_exactly_on_prompt_and_padding() -> None:
    eos = tokenizer().eos_token_id
    batch = tokenize_pairs(tokenizer(), PAIRS[:5], seq_len=64, what="train_texts")
    width = batch.shape[1]
    lengths = []
    for row, (prompt, completion) in enumerate(PAIRS[:5]):
        p, c = ids(prompt), ids(completion) + [eos]
        n = len(p) + len(c)
        lengths.append(n)
        assert batch.input_ids[row, :n].tolist() == p + c
        assert batch.attention_mask[row].tolist() == [1] * n + [0] * (width - n)
        assert batch.labels[row].tolist() == [IGNORE_INDEX] * len(p) + c + [IGNORE_INDEX] * (width - n)
    assert width == max(lengths) and len(set(lengths)) > 1  # padded to the longest: some rows have padding
    assert batch.targets == sum(len(ids(c)) + 1 for _, c in PAIRS[:5])
    # micro-batches keep the rows and drop the padding no row of theirs needs
    micro = batch.split(2)
    assert [len(m) for m in micro] == [2, 2, 1] and [m.shape[1] for m in micro] == [
        max(lengths[0:2]), max(lengths[2:4]), lengths[4]]  # fmt: skip
    assert sum(m.targets for m in micro) == batch.targets
    assert batch[1::2].input_ids.tolist() == batch.input_ids[1::2].tolist()  # rank sharding, as for plain blocks


def test_long_examples_are_cut_and_those_without_a_completion_token_left_out() -> None:
    prompt = ids(PAIRS[0][0])
    pairs = [PAIRS[0], ("x " * 40, " a"), PAIRS[1]]
    seq_len = len(prompt) + 2  # the first keeps 2 of its completion tokens; the long prompt keeps none
    with pytest.warns(ColabHelpersWarning, match="1 of 3 examples of train_texts have no completion token"):
        batch = tokenize_pairs(tokenizer(), pairs, seq_len=seq_len, what="train_texts")
    assert len(batch) == 2 and batch.shape[1] <= seq_len
    assert batch.labels[0].tolist() == [IGNORE_INDEX] * len(prompt) + ids(PAIRS[0][1])[:2]
    with pytest.raises(ValueError, match="no example of eval_texts has a completion token within seq_len=4"):
        tokenize_pairs(tokenizer(), [("x " * 40, " a")], seq_len=4, what="eval_texts")


def test_pairs_come_as_tuples_lists_or_dicts_and_mistakes_are_named() -> None:
    assert as_pairs(PAIRS[:2], "train_texts") == PAIRS[:2]
    assert as_pairs([list(p) for p in PAIRS[:2]], "train_texts") == PAIRS[:2]
    assert as_pairs([{"prompt": p, "completion": c, "task": "x"} for p, c in PAIRS[:2]], "t") == PAIRS[:2]
    assert as_pairs(["plain text", "more"], "train_texts") is None and as_pairs("text", "train_texts") is None
    with pytest.raises(ValueError, match=r"train_texts\[1\] is str .* pass only pairs"):
        as_pairs([PAIRS[0], "a text"], "train_texts")
    with pytest.raises(ValueError, match=r"eval_texts\[0\] has keys \['answer', 'prompt'\].*'completion'"):
        as_pairs([{"prompt": "Q", "answer": "A"}], "eval_texts")
    with pytest.raises(ValueError, match=r"train_texts\[0\] has 3 items"):
        as_pairs([("a", "b", "c")], "train_texts")
    with pytest.raises(ValueError, match=r"train_texts\[0\] is \(str, int\)"):
        as_pairs([("Q: 2+2?", 4)], "train_texts")


# --- the loss -----------------------------------------------------------------------------------------------


def test_the_loss_is_the_completion_only_mean_computed_by_hand(tmp_path) -> None:
    base = tiny_model()
    train, held_out = PAIRS[:4], PAIRS[4:10]
    # one step over all 4 examples in 2 micro-batches of unequal completion length; LoRA starts as a no-op
    # (B = 0), so the step's loss is the base model's; a learning rate of 1e-9 leaves the eval at step 1 the same
    cfg = config(tmp_path, max_steps=1, gradient_accumulation_steps=2, learning_rate=1e-9, eval_every=1, eval_batches=3)
    result = run(tiny_model(), cfg, train, held_out)
    expected = completion_loss(base, train)
    assert result.history[0]["loss"] == pytest.approx(expected, rel=1e-5)
    assert result.history[0]["eval_loss"] == pytest.approx(completion_loss(base, held_out), rel=1e-5)
    # and it is neither the mean of per-example means nor a loss that includes the prompt
    per_example = sum(completion_loss(base, [pair]) for pair in train) / len(train)
    prompt_sum, prompt_count = nll(base, train, part="prompt")
    completion_sum, completion_count = nll(base, train)
    whole = (prompt_sum + completion_sum) / (prompt_count + completion_count)
    assert abs(per_example - expected) > 1e-3 and abs(whole - expected) > 1e-3


def test_a_short_run_lowers_the_completion_loss_not_the_prompt_loss(tmp_path) -> None:
    model = tiny_model()
    before, prompt_before = completion_loss(model, PAIRS), nll(model, PAIRS, part="prompt")
    result = run(model, config(tmp_path, max_steps=40, micro_batch_size=4, r=8, alpha=16), PAIRS, PAIRS[:8])
    after, prompt_after = completion_loss(result.model, PAIRS), nll(result.model, PAIRS, part="prompt")
    prompt_change = abs(prompt_after[0] / prompt_after[1] - prompt_before[0] / prompt_before[1])
    # a random 2-layer model learns slowly, but only where the loss looks: the prompt's tokens barely move
    assert after < before - 0.25 and prompt_change < (before - after) / 4, (before, after, prompt_change)
    assert result.final_loss < result.history[0]["loss"] - 0.25
    # the one evaluation (at the end, padded micro-batches of 2) agrees with the hand-computed loss
    assert result.best_eval_loss == pytest.approx(completion_loss(result.model, PAIRS[:8]), rel=1e-5)


def test_out_of_memory_halving_keeps_the_step_loss(tmp_path) -> None:
    clean = run(tiny_model(), config(tmp_path / "clean", max_steps=3, micro_batch_size=8))
    model = tiny_model()
    oom = OutOfMemoryAbove(model, limit=2)
    result = run(model, config(tmp_path, max_steps=3, micro_batch_size=8))
    assert oom.raised == 2 and [r["micro_batch_size"] for r in result.history] == [2, 2, 2]  # 8 -> 4 -> 2
    for ours, reference in zip(result.history, clean.history, strict=True):  # weighted by completion tokens
        assert math.isclose(ours["loss"], reference["loss"], rel_tol=1e-5)


# --- checkpoints --------------------------------------------------------------------------------------------


def test_an_interrupted_run_on_pairs_resumes_exactly(tmp_path) -> None:
    class StopButton(Callback):
        def on_step_end(self, tuner: Any, row: dict[str, Any]) -> None:
            if row["step"] == 3:
                raise KeyboardInterrupt

    reference = run(tiny_model(), config(tmp_path / "reference", eval_every=2), PAIRS, PAIRS[:4])
    with pytest.raises(KeyboardInterrupt):
        run(tiny_model(), config(tmp_path, eval_every=2), PAIRS, PAIRS[:4], StopButton())
    resumed = run(tiny_model(), config(tmp_path, eval_every=2, resume=True), PAIRS, PAIRS[:4])
    assert [r["step"] for r in resumed.history] == list(range(1, 7)) and resumed.events[0]["kind"] == "resumed"
    for ours, theirs in zip(resumed.history, reference.history, strict=True):
        assert math.isclose(ours["loss"], theirs["loss"], rel_tol=1e-5)
        assert ("eval_loss" in ours) == ("eval_loss" in theirs)
    assert resumed.best_eval_loss == pytest.approx(reference.best_eval_loss, rel=1e-5)
    ours, theirs = trainable(resumed.model), trainable(reference.model)
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-5) for k in ours)


def test_a_plain_text_checkpoint_does_not_resume_on_pairs(tmp_path) -> None:
    texts = [f"{p} {c}" for p, c in PAIRS] * 4
    run(tiny_model(), config(tmp_path, max_steps=2, checkpoint_every=1), texts)
    with pytest.raises(ValueError, match="data: None vs 'completions'.*new output_dir"):
        run(tiny_model(), config(tmp_path, max_steps=4, resume=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # resuming on the same plain texts still works, without a warning
        again = run(tiny_model(), config(tmp_path, max_steps=4, resume=True), texts)
    assert [r["step"] for r in again.history] == [1, 2, 3, 4]


# --- the spelling study trains on pairs ---------------------------------------------------------------------


def test_the_spelling_study_trains_runs_on_pairs_and_the_control_on_text(tmp_path, monkeypatch) -> None:
    import colab_helpers.finetune as finetune
    from colab_helpers import spelling as ss
    from colab_helpers.models.loading import load_model
    from colab_helpers.spelling import data as sp

    model, tok = load_model("embedded-gpt2")
    data = sp.build_datasets(tok, train_size=8, validation_size=3, test_size=3, max_length=5)
    pairs = ss.completion_pairs(data["train"])
    assert [p + c for p, c in pairs] == data["train"]["text"] and all(c.strip() for _, c in pairs)
    seen = []
    real = finetune.fine_tune
    monkeypatch.setattr(finetune, "fine_tune", lambda m, t, train, evals, *a, **k: seen.append((train, evals)) or real(
        m, t, train, evals, *a, **k))  # fmt: skip
    study = ss.SpellingStudy(model, tok, data, tmp_path, n_boot=20, control="per_run", progress=False, live_plot=False)
    base = ss.base_config("embedded-gpt2", smoke=True)
    base["training"].update(max_steps=2, evaluations=1)
    study.run_one(base, sweep="pairs")
    (control_train, control_eval), (run_train, run_eval) = seen
    assert isinstance(control_train[0], str) and control_eval is None  # the control: plain text, no evaluation
    assert run_train == pairs and all(isinstance(p, tuple) for p in run_eval)
    assert study.runs("pairs")["status"].tolist() == ["done"]
    plain = {**base, "training": {**base["training"], "completion_only": False}}
    study.run_one(plain, sweep="pairs")  # the same control (it is plain text either way), a run on texts
    assert len(seen) == 3 and seen[2] == (study.train_texts, study.eval_texts)
    with pytest.raises(ValueError, match="completion_only must be true or false, got 'true'.*without quotes"):
        ss.check_run_config({**base, "training": {**base["training"], "completion_only": "true"}})
