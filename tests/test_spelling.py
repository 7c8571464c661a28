"""Spelling study: answer normalisation, statistics, batched evaluation, run configs, the tracked sweep, analysis."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch

from colab_helpers import spelling as ss
from colab_helpers.errors import OfflineFallbackWarning
from colab_helpers.spelling import data as sp
from colab_helpers.spelling.questions import TASKS


@pytest.fixture(scope="module")
def embedded() -> tuple[Any, Any]:
    from colab_helpers.models.loading import load_model

    return load_model("embedded-gpt2")


@pytest.fixture(scope="module")
def tiny_data(embedded: tuple[Any, Any]) -> Any:
    return sp.build_datasets(embedded[1], train_size=24, validation_size=6, test_size=6, max_length=6)


# --- normalisation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "text", "expected"),
    [
        ("spelling", " a p p l e", "a p p l e"),
        ("spelling", "A-P-P-L-E", "a p p l e"),
        ("spelling", "a, p, p, l, e.", "a p p l e"),
        ("spelling", "'a p p l e'\nQ: Spell 'pear'.", "a p p l e"),
        ("spelling", "The letters are: a p p l e", "a p p l e"),
        ("spelling", "**a-p-p-l-e**", "a p p l e"),
        ("spelling", "apple", "apple"),  # not spelled out: never equal to a spelling
        ("position", "p", "p"),
        ("position", " 'P'", "p"),
        ("position", "p.", "p"),
        ("position", "the letter p", "p"),
        ("position", "The 3rd letter of 'apple' is p.", "p"),
        ("position", 'The letter is "p"', "p"),
        ("position", "Answer: p", "p"),
        ("position", "pp", "pp"),
        ("count", "2", "2"),
        ("count", " two", "2"),
        ("count", "Twice.", "2"),
        ("count", "once", "1"),
        ("count", "zero", "0"),
        ("count", "The letter 'p' appears 2 times in 'apple'.", "2"),
        ("count", " 3.\nQ: How many", "3"),
        ("count", "many", "many"),
    ],
)
def test_normalize_answer(task: str, text: str, expected: str) -> None:
    assert ss.normalize_answer(text, task) == expected


def test_the_article_a_is_not_the_letter_a() -> None:
    # SmolLM2-135M-Instruct's: "is a noun" once counted as the answer "a" to "What is the 3rd letter of 'peals'?"
    assert not ss.is_correct("The word 'peals' is a noun, and the third letter is a letter.", "a", "position")
    assert not ss.is_correct("The 8th letter of the alphabet is a classic example", "a", "position")
    for answer in ("The 3rd letter is a.", "The 3rd letter is 'a' in apple", "The letter a is the 3rd letter",
                   "It is a", "The letter is a"):  # fmt: skip
        assert ss.is_correct(answer, "a", "position"), answer
    assert ss.normalize_answer("The letter is b here", "position") == "b"  # only "a" is an article


def test_is_correct_ignores_separators_but_not_letters() -> None:
    assert ss.is_correct("A, P, P, L, E", "a-p-p-l-e", "spelling")
    assert not ss.is_correct("a p l e", "a p p l e", "spelling")
    assert ss.is_correct("two", "2", "count") and not ss.is_correct("3", "2", "count")
    with pytest.raises(ValueError, match="unknown task"):
        ss.normalize_answer("p", "letters")


# --- statistics -------------------------------------------------------------------------------------------


def test_bootstrap_ci_sanity() -> None:
    assert ss.bootstrap_ci([1.0] * 20) == (1.0, 1.0)
    low, high = ss.bootstrap_ci([1.0, 0.0] * 50, seed=1)
    assert 0.35 < low < 0.5 < high < 0.65
    wide = ss.bootstrap_ci([1.0, 0.0] * 5, seed=1)
    assert wide[1] - wide[0] > high - low  # fewer examples, wider interval
    assert ss.bootstrap_ci([1.0, 0.0] * 50, seed=1) == (low, high)  # seeded
    assert all(math.isnan(v) for v in ss.bootstrap_ci([]))
    scores = ss.accuracy_with_ci([True, True, False, True])
    assert scores["accuracy"] == 0.75 and scores["n"] == 4 and scores["ci_low"] <= 0.75 <= scores["ci_high"]
    with pytest.raises(ValueError, match="n_boot"):
        ss.bootstrap_ci([1.0], n_boot=0)


def test_paired_difference_ci() -> None:
    ours, theirs = [1, 1, 0, 1, 0, 1, 1, 0] * 5, [0, 1, 0, 1, 0, 1, 0, 0] * 5  # 2 of every 8 questions gained
    gain = ss.paired_difference_ci(ours, theirs, n_boot=500, seed=1)
    assert gain["difference"] == pytest.approx(0.25) and gain["n"] == 40
    assert 0 < gain["ci_low"] < 0.25 < gain["ci_high"] < 0.5
    unpaired = ss.bootstrap_ci(ours, n_boot=500, seed=1)[1] - ss.bootstrap_ci(ours, n_boot=500, seed=2)[0]
    assert gain["ci_high"] - gain["ci_low"] < unpaired  # pairing: narrower than two separate intervals
    same = ss.paired_difference_ci([1, 0, 1], [1, 0, 1])
    assert (same["difference"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="pair up"):
        ss.paired_difference_ci([1, 0], [1])


def test_paired_gains_match_questions_by_task_and_word() -> None:
    import pandas as pd

    reference = pd.DataFrame({"task": ["spelling"] * 4 + ["count"] * 2, "word": ["a", "b", "c", "d", "a", "b"],
                              "correct": [False, False, True, False, True, True]})  # fmt: skip
    run = reference.iloc[::-1].assign(correct=[True, False, True, True, True, False])  # another order: matched by key
    gains = ss.paired_gains(run, reference, n_boot=200)
    assert list(gains.index) == ["spelling", "count"]  # tasks in the study's order
    assert gains.loc["spelling", "accuracy"] == 0.75 and gains.loc["spelling", "reference_accuracy"] == 0.25
    assert gains.loc["spelling", "gain"] == pytest.approx(0.5) and gains.loc["count", "gain"] == pytest.approx(-0.5)
    assert gains.loc["spelling", "ci_low"] <= 0.5 <= gains.loc["spelling", "ci_high"] and gains.loc["count", "n"] == 2
    with pytest.raises(ValueError, match="answered by one run only"):
        ss.paired_gains(run.iloc[1:], reference)
    with pytest.raises(ValueError, match="several answers"):
        ss.paired_gains(pd.concat([run, run.iloc[:1]]), reference)


def test_guess_baselines_score_answers_that_need_no_letter_skill(tmp_path: Any) -> None:
    rows = [{"task": "position", "word": "apple", "answer": "a"}, {"task": "position", "word": "apple", "answer": "p"},
            {"task": "count", "word": "apple", "answer": "2"}, {"task": "count", "word": "kiwi", "answer": "0"},
            {"task": "count", "word": "pear", "answer": "0"},
            {"task": "spelling", "word": "pear", "answer": "p e a r"}]  # fmt: skip
    guesses = ss.guess_baselines(rows, n_boot=100)
    assert list(guesses.index) == ["position", "count"]  # no guess for spelling: an unspelled word never matches
    assert guesses.loc["position", "accuracy"] == 0.5 and guesses.loc["position", "guess"] == "the word's first letter"
    assert guesses.loc["count", "accuracy"] == pytest.approx(2 / 3) and guesses.loc["count", "guess"] == "always '0'"
    models = {"untouched": {"spelling_accuracy": 0.0, "spelling_ci_low": 0.0, "spelling_ci_high": 0.0,
                            "position_accuracy": 0.2, "position_ci_low": 0.1, "position_ci_high": 0.3,
                            "count_accuracy": 0.1, "count_ci_low": 0.0, "count_ci_high": 0.2},
              "a run": {"spelling_accuracy": 0.5}}  # fmt: skip  (missing intervals: a bar without error bars)
    figure = ss.plot_task_accuracies(models, guesses, path=tmp_path / "accuracies.png")
    assert len(figure.axes) == 3 and (tmp_path / "accuracies.png").stat().st_size > 1000


def test_correlations_against_hand_computed_values() -> None:
    # x = 1..4, y = 1,3,2,4: deviations (-1.5,-.5,.5,1.5) and (-1.5,.5,-.5,1.5); sum of products 4, squares 5 and 5
    assert ss.pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert ss.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties: ranks of (1,2,2,3) are (1,2.5,2.5,4); against 1..4 that is 4.5 / sqrt(4.5 * 5)
    assert list(ss.rank([1, 2, 2, 3])) == [1.0, 2.5, 2.5, 4.0]
    assert ss.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert ss.spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # monotone, not linear
    assert ss.pearson([1, 2, 3, 4], [1, 4, 9, 16]) < 1.0
    assert math.isnan(ss.pearson([1, 1, 1], [1, 2, 3])) and math.isnan(ss.pearson([1], [2]))
    result = ss.correlation_with_ci([1, 2, 3, 4, 5, 6], [2, 1, 4, 3, 6, 5], n_boot=500)
    assert result["n"] == 6 and result["ci_low"] <= result["r"] <= result["ci_high"] <= 1.0
    few = ss.correlation_with_ci([1, 2], [2, 1])
    assert few["r"] == pytest.approx(-1.0) and math.isnan(few["ci_low"])


def test_transfer_metrics() -> None:
    scores = {"spelling_accuracy": 0.6, "position_accuracy": 0.3, "count_accuracy": 0.2}
    baseline = {"spelling_accuracy": 0.2, "position_accuracy": 0.1, "count_accuracy": 0.2}
    control = {"spelling_accuracy": 0.59, "position_accuracy": 0.1, "count_accuracy": 0.1}
    out = ss.transfer_metrics(scores, baseline, control)
    assert out["spelling_gain"] == pytest.approx(0.4) and out["position_gain"] == pytest.approx(0.2)
    assert out["position_transfer_ratio"] == pytest.approx(0.5) and out["count_transfer_ratio"] == pytest.approx(0.0)
    assert out["count_gain_vs_control"] == pytest.approx(0.1)
    assert out["position_transfer_ratio_vs_control"] is None  # spelling gain over the control: 0.01, ~0
    assert "position_gain_vs_control" not in ss.transfer_metrics(scores, baseline, None)


# --- generation and evaluation ----------------------------------------------------------------------------


def test_batched_generation_matches_one_at_a_time(embedded: tuple[Any, Any], tiny_data: Any) -> None:
    model, tokenizer = embedded
    prompts = tiny_data["test"]["prompt"][:10]
    batched = ss.generate_answers(model, tokenizer, prompts, max_new_tokens=6, batch_size=10)
    single = ss.generate_answers(model, tokenizer, prompts, max_new_tokens=6, batch_size=1)
    assert batched == single and len(batched) == 10 and all(isinstance(a, str) for a in batched)
    assert tokenizer.padding_side == "left" and not model.training  # restored


def test_evaluate_scores_by_generation(embedded: tuple[Any, Any], tiny_data: Any, monkeypatch: Any) -> None:
    model, tokenizer = embedded
    evaluation = ss.evaluate(model, tokenizer, tiny_data["test"], n_boot=100)
    assert set(evaluation.scores) == set(TASKS) and len(evaluation.predictions) == 18
    for score in evaluation.scores.values():
        assert 0 <= score["ci_low"] <= score["accuracy"] <= score["ci_high"] <= 1 and score["n"] == 6
    # a model that answers every question right, in its own words, scores 1.0 everywhere
    rows = {row["prompt"]: row for row in tiny_data["test"]}
    styles = {"spelling": lambda a: " " + a.replace(" ", ", ").upper(), "position": lambda a: f" The letter {a}.",
              "count": lambda a: f" {['zero', 'one', 'two', 'three', 'four'][int(a)]}\nQ: next"}  # fmt: skip
    monkeypatch.setattr(ss, "generate_answers", lambda m, t, prompts, **kw: [
        styles[rows[p]["task"]](rows[p]["answer"]) for p in prompts])  # fmt: skip
    perfect = ss.evaluate(model, tokenizer, tiny_data["test"], n_boot=100)
    assert {task: s["accuracy"] for task, s in perfect.scores.items()} == {t: 1.0 for t in TASKS}
    assert perfect.metrics()["transfer_accuracy"] == 1.0


def test_the_token_budget_leaves_room_to_restate_the_question(embedded: tuple[Any, Any], tiny_data: Any,
                                                               monkeypatch: Any) -> None:  # fmt: skip
    model, tokenizer = embedded
    questions, answers = ["How many times does 'p' appear in 'apple'?"], ["2"]
    asked = len(tokenizer(" " + questions[0], add_special_tokens=False)["input_ids"])
    said = len(tokenizer(" 2", add_special_tokens=False)["input_ids"])
    assert ss.answer_budget(tokenizer, answers) == 16  # the minimum
    assert ss.answer_budget(tokenizer, answers, minimum=1, questions=questions) == asked + said + 4
    with pytest.raises(ValueError, match="pair up"):
        ss.answer_budget(tokenizer, answers, questions=questions * 2)
    budgets: dict[bool, list[int]] = {True: [], False: []}
    for restate in (True, False):
        monkeypatch.setattr(ss, "generate_answers", lambda m, t, prompts, max_new_tokens, **kw: budgets[restate].append(
            max_new_tokens) or [""] * len(prompts))  # fmt: skip
        ss.evaluate(model, tokenizer, tiny_data["test"], n_boot=10, min_new_tokens=1, restate=restate)
    for (task, restated), plain in zip(zip(TASKS, budgets[True], strict=True), budgets[False], strict=True):
        rows = [row for row in tiny_data["test"] if row["task"] == task]
        assert plain == ss.answer_budget(tokenizer, [r["answer"] for r in rows], minimum=1)
        assert restated == ss.answer_budget(tokenizer, [r["answer"] for r in rows], minimum=1,
                                            questions=[r["question"] for r in rows]) > plain  # fmt: skip


@pytest.mark.real_model
def test_batched_generation_on_the_real_llama_model(real_model: tuple[Any, Any]) -> None:
    """SmolLM2 (Llama, chat template, pad = EOS): left-padded batches answer as one prompt at a time."""
    model, tokenizer = real_model
    data = sp.build_datasets(tokenizer, train_size=2, validation_size=2, test_size=2, max_length=8)
    prompts = list(data["test"]["prompt"])  # 6 prompts of different lengths: padding is exercised
    assert prompts[0].startswith("<|im_start|>") and prompts[0].endswith("<|im_start|>assistant\n")  # chat template
    assert len({len(tokenizer(p)["input_ids"]) for p in prompts}) > 1
    batched = ss.generate_answers(model, tokenizer, prompts, max_new_tokens=6, batch_size=6)
    single = ss.generate_answers(model, tokenizer, prompts, max_new_tokens=6, batch_size=1)
    assert batched == single and all(answer.strip() for answer in batched)


# --- run configs ------------------------------------------------------------------------------------------


def test_default_sweep_covers_the_search_space() -> None:
    sweep = ss.default_sweep(num_runs=6)
    assert sweep.search == "random" and sweep.size == 6
    assert {k: v["values"] for k, v in sweep.parameters.items()} == ss.SEARCH_SPACE
    configs = ss.check_sweep(ss.base_config("m"), sweep)
    assert len(configs) == 6 and all(c["lora"]["r"] in (4, 8, 16, 32) for c in configs)
    assert ss.default_sweep(smoke=True).size == 2
    settings = ss.finetune_config(configs[0], "/tmp/x")
    assert settings.r == configs[0]["lora"]["r"] and settings.micro_batch_size == configs[0]["training"]["batch_size"]
    assert settings.early_stopping_patience == 4 and settings.resume


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("training.learning_rate", "2e-4", "must be a number > 0, got '2e-4' \\(str\\).*without quotes"),
        ("lora.r", 8.0, "lora.r must be an integer >= 1, got 8.0"),
        ("training.batch_size", True, "training.batch_size must be an integer"),
        ("training.backend", "tpu", "one of"),
        ("lora.rank", 8, "unknown setting 'lora.rank'.*did you mean 'lora.r'"),
    ],
)
def test_a_sweep_value_of_the_wrong_type_fails_before_training(key: str, value: Any, match: str) -> None:
    sweep = {"name": "bad", "search": "random", "num_runs": 1, "parameters": {key: {"values": [4, value]}}}
    with pytest.raises(ValueError, match=match):
        ss.check_sweep(ss.base_config("m"), sweep)


# --- the tracked sweep -------------------------------------------------------------------------------------


def test_sweep_records_runs_and_skips_done_ones(embedded: tuple[Any, Any], tiny_data: Any, tmp_path: Any,
                                               monkeypatch: Any) -> None:  # fmt: skip
    import colab_helpers.finetune as finetune
    from colab_helpers.experiments.runs_table import read_runs

    calls = []
    real = finetune.fine_tune
    monkeypatch.setattr(finetune, "fine_tune", lambda *a, **k: calls.append(1) or real(*a, **k))
    model, tokenizer = embedded
    study = ss.SpellingStudy(model, tokenizer, tiny_data, tmp_path, model_name="embedded-gpt2", n_boot=50,
                             progress=False, live_plot=False)  # fmt: skip
    before = [p.detach().clone() for p in model.parameters()]
    base = ss.base_config("embedded-gpt2", smoke=True)
    base["training"].update(max_steps=3, seq_len=32)
    runs = study.run_sweep(ss.default_sweep(smoke=True), base)
    assert list(runs["status"]) == ["done", "done"] and sorted(runs["lora.r"]) == [4, 8]
    for column in ("spelling_accuracy", "position_ci_low", "count_ci_high", "transfer_accuracy", "position_gain",
                   "count_gain_vs_control", "train_steps", "baseline_run_id", "control_run_id"):  # fmt: skip
        assert column in runs and runs[column].notna().all(), column
    assert "position_transfer_ratio" in runs  # None (empty) when the spelling gain is ~0
    assert len(calls) == 3  # two runs and one control (both runs train 3 steps)
    references = study.references()
    assert sorted(references["kind"]) == ["baseline", "control"] and (references["status"] == "done").all()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # runs train copies
    assert len(read_runs(tmp_path)) == 4  # runs.csv holds the sweep and its references
    gains = study.gains(runs["run_id"][0], runs["baseline_run_id"][0])  # paired, on the same test questions
    assert list(gains.index) == list(TASKS) and (gains["n"] == 6).all()
    assert gains.loc["position", "gain"] == pytest.approx(runs["position_gain"][0])
    # a rerun finds every run done: nothing is trained again
    again = study.run_sweep(ss.default_sweep(smoke=True), base)
    assert len(calls) == 3 and list(again["run_id"]) == list(runs["run_id"])
    # a sweep value of the wrong type fails before anything runs
    with pytest.raises(ValueError, match="lora.r must be an integer"):
        study.run_sweep({"name": "bad", "parameters": {"lora.r": ["4"]}}, base)
    assert len(read_runs(tmp_path)) == 4 and len(calls) == 3


def test_past_max_runtime_runs_are_recorded_skipped(embedded: tuple[Any, Any], tiny_data: Any, tmp_path: Any) -> None:
    model, tokenizer = embedded
    study = ss.SpellingStudy(model, tokenizer, tiny_data, tmp_path, model_name="embedded-gpt2", n_boot=20,
                             control="none", progress=False, live_plot=False)  # fmt: skip
    runs = study.run_sweep(ss.default_sweep(smoke=True), ss.base_config("embedded-gpt2", smoke=True), max_runtime=0.0)
    assert list(runs["status"]) == ["skipped", "skipped"] and runs["error"].str.contains("max_runtime").all()
    assert list(study.references()["kind"]) == ["baseline"]  # measured once, before the first run


def test_small_models_run_single_threaded_on_the_cpu(embedded: tuple[Any, Any]) -> None:
    torch.set_num_threads(2)
    try:
        with ss.small_model_threads(embedded[0]):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with ss.small_model_threads(embedded[0], max_parameters=1000):  # "large": left alone
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_load_study_model_falls_back_to_the_embedded_model() -> None:
    with pytest.warns(OfflineFallbackWarning, match="embedded offline model"):
        model, tokenizer, name = ss.load_study_model("no-such-org/no-such-model")
    assert name == "embedded-gpt2" and tokenizer.padding_side == "left"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ss.load_study_model("anything", smoke=True)[2] == "embedded-gpt2"


# --- analysis ---------------------------------------------------------------------------------------------


def fake_runs() -> Any:
    import pandas as pd

    rows = []
    for i, (r, lr) in enumerate([(4, 1e-4), (8, 1e-4), (4, 1e-3), (8, 1e-3), (16, 1e-3)]):
        spelling = 0.2 * i
        row = {"run_id": f"run{i}", "status": "done", "lora.r": r, "training.learning_rate": lr,
               "spelling_accuracy": spelling, "position_accuracy": [0.1, 0.3, 0.2, 0.4, 0.5][i],
               "count_accuracy": 0.3, "transfer_accuracy": ([0.1, 0.3, 0.2, 0.4, 0.5][i] + 0.3) / 2}  # fmt: skip
        for task in TASKS:
            row[f"{task}_ci_low"], row[f"{task}_ci_high"] = row[f"{task}_accuracy"] - 0.05, row[f"{task}_accuracy"] + 0.05
        rows.append(row)
    rows.append({"run_id": "failed", "status": "failed", "lora.r": 32})
    return pd.DataFrame(rows)


def test_analysis_tables(tmp_path: Any) -> None:
    baseline = {"spelling_accuracy": 0.1, "position_accuracy": 0.1, "count_accuracy": 0.2, "spelling_ci_low": 0.0,
                "spelling_ci_high": 0.2, "position_ci_low": 0.0, "position_ci_high": 0.2, "count_ci_low": 0.1,
                "count_ci_high": 0.3}  # fmt: skip
    analysis = ss.analyze(fake_runs(), baseline=baseline, n_boot=200)
    assert len(analysis.runs) == 5  # the failed run is left out
    position = analysis.correlations.set_index("y").loc["position_accuracy"]
    assert position["pearson"] == pytest.approx(ss.pearson([0, 0.2, 0.4, 0.6, 0.8], [0.1, 0.3, 0.2, 0.4, 0.5]))
    assert position["spearman"] == pytest.approx(0.9)  # ranks 1..5 vs 1,3,2,4,5: 1 - 6*2/(5*24)
    assert math.isnan(analysis.correlations.set_index("y").loc["count_accuracy", "pearson"])  # constant
    effects = analysis.effects.set_index(["parameter", "value"])
    assert effects.loc[("lora.r", 8), "runs"] == 2
    assert effects.loc[("lora.r", 8), "mean_position_accuracy"] == pytest.approx(0.35)
    assert analysis.top["run_id"].iloc[0] == "run4" and list(analysis.importance["parameter"])[0] in ("lora.r", "training.learning_rate")
    written = analysis.save(tmp_path)
    page = written["report"].read_text()
    assert page.count("data:image/png;base64,") == 2 and "Correlations across runs" in page
    summary = written["summary"].read_text()
    assert "| untouched (baseline) | 0.100 [0.000, 0.200]" in summary and "Top configurations" in summary
    assert "| run4 | 16 | 0.001 | 0.800 | 0.500 |" in summary  # settings as written, metrics to 3 places
    assert written["scatter"].stat().st_size > 1000
