"""General ability: task accuracy through a real lm-eval run, evaluate_ability end to end on the embedded Llama, the
table's readings on constructed results, and SmolLM2 above chance."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest

from colab_helpers.evaluation import (
    AbilityConfig,
    AbilityResult,
    TaskScore,
    ability_reading,
    ability_retention,
    ability_table,
    evaluate_ability,
    load_text_dataset,
    other_domain_text,
    perplexity,
    task_accuracy,
)
from colab_helpers.evaluation.harness import is_lm_eval_available
from colab_helpers.evaluation.tasks import TASKS
from colab_helpers.smoke import SMOKE_TASK_ITEMS

needs_lm_eval = pytest.mark.skipif(not is_lm_eval_available(),
                                   reason='lm-eval is not installed: pip install "colab-helpers[eval]"')  # fmt: skip


@pytest.fixture(scope="module")
def llama() -> tuple[Any, Any]:
    from colab_helpers import load_model

    return load_model("embedded-llama", device="cpu")


@needs_lm_eval
def test_task_accuracy_runs_lm_eval_on_the_model_in_memory(llama: tuple[Any, Any]) -> None:
    model, tokenizer = llama
    model.train()  # lm-eval puts it in eval mode: the mode must come back
    pad = tokenizer.pad_token_id
    try:
        scores = task_accuracy(model, tokenizer, "offline", limit=6, batch_size=8, progress=False)
        assert model.training
    finally:
        model.eval()
    assert list(scores) == ["cloze-gpl3", "cloze-pydoc", "capitals", "antonyms", "first-letter"]
    for name, score in scores.items():
        assert isinstance(score, TaskScore) and score.task == name and score.n == 6
        assert 0.0 <= score.low <= score.accuracy <= score.high <= 1.0
        assert score.chance == TASKS[name].chance and (score.accuracy * 6) == pytest.approx(round(score.accuracy * 6))
    assert tokenizer.pad_token_id == pad  # the caller's tokenizer is not changed


@needs_lm_eval
def test_task_accuracy_takes_a_pruned_model(llama: tuple[Any, Any]) -> None:
    import torch

    from colab_helpers.pruning import head_layout, remove_heads, remove_layers

    model, tokenizer = copy.deepcopy(llama[0]), llama[1]
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[0, :4] = True  # layers of different head counts, and one layer fewer
    remove_heads(model, mask)
    remove_layers(model, [1])
    assert head_layout(model).query_heads == (4, 8, 8)
    scores = task_accuracy(model, tokenizer, ["capitals", "cloze-pydoc"], limit=3, progress=False)
    assert [score.n for score in scores.values()] == [3, 3]


@needs_lm_eval
def test_evaluate_ability_end_to_end(llama: tuple[Any, Any]) -> None:
    model, tokenizer = llama
    config = AbilityConfig(tokens=256, seq_len=64, tasks=["capitals", "cloze-gpl3"], limit=4, batch_size=8)
    result = evaluate_ability(model, tokenizer, in_domain=load_text_dataset("embedded"), config=config, progress=False)
    assert set(result.other_ppl) == {"gpl-3.0", "python-docs"} and list(result.tasks) == ["capitals", "cloze-gpl3"]
    assert result.in_domain_ppl is not None and result.in_domain_ppl > 1 and result.seconds > 0
    assert all(score.n == 4 for score in result.tasks.values())
    assert result.general_ppl == pytest.approx(math.sqrt(result.other_ppl["gpl-3.0"] * result.other_ppl["python-docs"]))
    # the same tokens as perplexity() itself scores in non-overlapping blocks: figures compare across models
    direct = perplexity(model, tokenizer, other_domain_text("gpl-3.0"), seq_len=64, stride=64, max_tokens=256,
                        progress=False)  # fmt: skip
    assert result.other_ppl["gpl-3.0"] == pytest.approx(direct.perplexity)
    assert AbilityResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    ppl_only = evaluate_ability(model, tokenizer, in_domain="Some held-out text of the training domain. " * 20,
                                config=AbilityConfig(tokens=128, seq_len=64, tasks=None), progress=False)  # fmt: skip
    assert ppl_only.tasks == {} and ppl_only.in_domain_ppl is not None


def test_ability_config_refuses_bad_values() -> None:
    with pytest.raises(ValueError, match=r"unknown text 'wiki' in other_texts; choose from \['gpl-3.0', 'python-d"):
        AbilityConfig(other_texts=("gpl-3.0", "wiki"))
    with pytest.raises(ValueError, match="other_texts must be a list of text names, got 'gpl-3.0'"):
        AbilityConfig(other_texts="gpl-3.0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"tokens must be an integer >= 128, got 100 \(int\); at least one block"):
        AbilityConfig(tokens=100)
    with pytest.raises(ValueError, match=r"unknown task 'hella'; choose a preset"):
        AbilityConfig(tasks=["hella"])
    with pytest.raises(ValueError, match="limit must be a positive integer or None, got 0"):
        AbilityConfig(limit=0)
    assert AbilityConfig(tasks=["capitals"]).tasks == ("capitals",)
    smoke = AbilityConfig().smoke()
    assert smoke.tokens <= 1500 and smoke.seq_len <= 64 and smoke.limit == SMOKE_TASK_ITEMS
    assert set(AbilityConfig.help()) == set(AbilityConfig().to_dict())


def test_in_domain_of_the_wrong_kind_is_refused(llama: tuple[Any, Any]) -> None:
    with pytest.raises(ValueError, match="in_domain must be a text, a list of texts or a TextDataset"):
        evaluate_ability(*llama, in_domain=42, config=AbilityConfig(tasks=None))  # type: ignore[arg-type]


def _result(in_domain: float | None, general: float, accuracies: dict[str, float], n: int = 100) -> AbilityResult:
    tasks = {name: TaskScore.measured(TASKS[name], accuracy, n) for name, accuracy in accuracies.items()}
    return AbilityResult(in_domain, {"gpl-3.0": general, "python-docs": general}, tasks, 1.0)


REFERENCE = {"capitals": 0.9, "antonyms": 0.8, "first-letter": 0.27}  # first-letter at chance: not ranked


def test_retention_counts_only_tasks_the_reference_is_above_chance_on() -> None:
    reference = _result(20.0, 40.0, REFERENCE)
    pruned = _result(25.0, 60.0, {"capitals": 0.45, "antonyms": 0.4, "first-letter": 0.9})
    assert ability_retention(pruned, reference) == pytest.approx(0.5)  # first-letter's 0.9 does not count
    assert math.isnan(ability_retention(pruned, _result(20.0, 40.0, {"first-letter": 0.27})))


def test_ability_table_tells_domain_adaptation_from_a_better_model() -> None:
    results = {
        "unpruned": _result(20.0, 40.0, REFERENCE),
        "recovered on the corpus": _result(15.0, 56.0, {"capitals": 0.7, "antonyms": 0.6, "first-letter": 0.25}),
        "better": _result(19.0, 38.0, {"capitals": 0.92, "antonyms": 0.8, "first-letter": 0.3}),
        "lower ppl, fewer facts": _result(20.0, 38.0, {"capitals": 0.6, "antonyms": 0.5, "first-letter": 0.3}),
        "pruned": _result(30.0, 70.0, {"capitals": 0.5, "antonyms": 0.4, "first-letter": 0.25}),
        "same": _result(20.1, 40.3, REFERENCE),
    }
    table = ability_table(results, reference="unpruned")
    assert list(table.index) == list(results)
    assert table["reading"].to_dict() == {
        "unpruned": "reference", "recovered on the corpus": "domain adaptation", "better": "better",
        "lower ppl, fewer facts": "worse", "pruned": "worse", "same": "about the same"}  # fmt: skip
    assert table.loc["recovered on the corpus", "general vs reference"] == pytest.approx(1.4)
    assert table.loc["pruned", "general ppl"] == pytest.approx(70.0) and table.loc["pruned", "ppl gpl-3.0"] == 70.0
    assert table.loc["unpruned", "capitals"] == "0.90 ±0.06"  # accuracy and half its 95% interval
    assert "first-letter (not ranked)" in table.columns and "first-letter" not in table.columns
    assert table.loc["better", "task retention"] == pytest.approx((0.92 + 0.8) / (0.9 + 0.8))
    with pytest.raises(ValueError, match=r"reference 'base' is not among the results \['unpruned', "):
        ability_table(results, reference="base")


def test_reading_without_in_domain_or_tasks_rests_on_general_perplexity() -> None:
    reference = _result(None, 40.0, {})
    assert ability_reading(_result(None, 30.0, {}), reference) == "better"
    assert ability_reading(_result(None, 45.0, {}), reference) == "worse"
    assert ability_reading(_result(None, 40.5, {}), reference) == "about the same"


@needs_lm_eval
@pytest.mark.real_model
def test_smollm2_knows_capitals(real_model: tuple[Any, Any]) -> None:
    model, tokenizer = real_model
    scores = task_accuracy(model, tokenizer, ["capitals"], limit=40, progress=False)
    assert scores["capitals"].n == 40 and scores["capitals"].above_chance, scores["capitals"]
    assert scores["capitals"].accuracy >= 0.8
