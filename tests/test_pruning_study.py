"""Pruning studies (colab_helpers.pruning.study): renormalising raw scores, gated perplexity with a cache, level sweeps."""

from __future__ import annotations

import math
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("pandas")

from colab_helpers.evaluation.perplexity import perplexity  # noqa: E402
from colab_helpers.pruning import gate_heads, head_importance  # noqa: E402
from colab_helpers.pruning.importance import STRATEGIES, normalize_scores  # noqa: E402
from colab_helpers.pruning.study import GatedPerplexity, PruningStudyConfig, _split_texts, importance_by_strategy, level_sweep, renormalize, summarize_levels  # noqa: E402

TEXTS = [
    "the cat sat on the mat and looked at the door for a while.",
    "a dog ran in the park, then it sat under a tree in the shade.",
    "rain fell on the roof all night and the house was quiet.",
    "she read the letter twice before she put it back on the table.",
]


def test_renormalize_applies_one_method_to_every_strategy() -> None:
    raw = {name: [torch.rand(3, 4) * 10, torch.rand(3, 4)] for name in STRATEGIES}
    for method in ("none", "l2", "zscore"):
        normalised = renormalize(raw, method)
        for name, runs in normalised.items():
            assert len(runs) == 2
            for got, scores in zip(runs, raw[name], strict=True):
                assert torch.equal(got, normalize_scores(scores, method))
    l2 = renormalize({"mine": [torch.ones(2, 4)]}, "l2")["mine"][0]
    assert torch.allclose(l2, torch.full((2, 4), 0.5))
    with pytest.raises(ValueError, match="normalize must be one of .* got 'auto'"):
        renormalize(raw, "auto")
    with pytest.raises(ValueError, match="normalize must be one of .* got 'max'"):
        renormalize(raw, "max")


def test_split_texts_keeps_order_and_balances_length() -> None:
    texts = ["a" * 10, "b" * 10, "c" * 10, "d" * 10]
    assert _split_texts(texts, 2) == [["a" * 10, "b" * 10], ["c" * 10, "d" * 10]]
    assert _split_texts(texts, 1) == [texts]
    assert sum(_split_texts(["x" * 100, "y"], 2), []) == ["x" * 100, "y"]


def test_gated_perplexity_parts_combine_and_masks_are_measured_once(tiny_gpt2: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_gpt2
    seen: list[dict[str, Any]] = []
    measure = GatedPerplexity(model, tokenizer, TEXTS, seq_len=16, stride=16, parts=2, on_result=seen.append)
    unpruned = measure()
    halves = [perplexity(model, tokenizer, g, seq_len=16, stride=16, progress=False) for g in (TEXTS[:2], TEXTS[2:])]
    assert unpruned["parts"] == pytest.approx([h.perplexity for h in halves])
    nll = sum(h.nll * h.tokens for h in halves) / sum(h.tokens for h in halves)
    assert unpruned["perplexity"] == pytest.approx(math.exp(nll))
    assert measure(torch.zeros(2, 2, dtype=torch.bool))["cached"]  # nothing pruned is the unpruned model
    mask = torch.tensor([[True, False], [False, False]])
    gated = measure(mask)
    with gate_heads(model, mask):
        direct = perplexity(model, tokenizer, TEXTS[:2], seq_len=16, stride=16, progress=False)
    assert gated["parts"][0] == pytest.approx(direct.perplexity) and gated["heads_pruned"] == 1
    assert measure(mask.clone())["cached"] and measure.measured == 2 and len(seen) == 2
    with pytest.raises(ValueError, match="parts must be in"):
        GatedPerplexity(model, tokenizer, TEXTS, parts=5)


def test_level_sweep_shares_a_measure_and_reports_parts(tiny_gpt2: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_gpt2
    raw = {"magnitude": [head_importance(model, None, "magnitude", normalize="none", progress=False)],
           "random": [head_importance(model, None, "random", seed=s, progress=False) for s in range(2)]}  # fmt: skip
    measure = GatedPerplexity(model, tokenizer, TEXTS, seq_len=16, stride=16, parts=2)
    table = level_sweep(model, tokenizer, TEXTS, raw, [0.0, 0.5], measure=measure, progress=False)
    assert list(table.columns) == ["strategy", "seed", "level", "heads_pruned", "perplexity", "perplexity_part1",
                                   "perplexity_part2"]  # fmt: skip
    assert len(table) == 6 and set(table.loc[table.level == 0.5, "heads_pruned"]) == {2}
    assert table.loc[table.level == 0, "perplexity"].nunique() == 1
    layer = level_sweep(model, tokenizer, TEXTS, raw, [0.5], scope="layer", measure=measure, progress=False)
    assert measure.measured <= 1 + 3 + 3  # unpruned + at most one pass per distinct mask
    assert set(layer["heads_pruned"]) == {2}


def test_summarize_levels_mean_or_median() -> None:
    import pandas as pd

    table = pd.DataFrame({"strategy": ["random"] * 3 + ["gradient"], "level": [0.3] * 4,
                          "perplexity": [100.0, 200.0, 1200.0, 90.0]})  # fmt: skip
    median = summarize_levels(table, stat="median")
    assert median.loc["random", "30%"] == "200.0 (100.0-1,200.0)" and median.loc["gradient", "30%"] == "90.0"
    assert summarize_levels(table).loc["random", "30%"].startswith("500.0 ± ")
    with pytest.raises(ValueError, match="stat must be 'mean' or 'median', got 'max'"):
        summarize_levels(table, stat="max")


def _batches(tokenizer: Any, count: int = 4) -> list[dict[str, Any]]:
    ids = tokenizer(" ".join(TEXTS * 2), return_tensors="pt")["input_ids"][0]
    width = ids.numel() // count
    return [{"input_ids": ids[i * width:(i + 1) * width].unsqueeze(0)} for i in range(count)]


def test_importance_by_strategy_repeats_only_what_varies(tiny_gpt2: tuple[Any, Any]) -> None:
    model, tokenizer = tiny_gpt2
    batches = _batches(tokenizer)
    scores = importance_by_strategy(model, batches, ["random", "magnitude", "gradient"], seeds=3, batches_per_seed=2,
                                    progress=False)
    assert [len(scores[name]) for name in ("random", "magnitude", "gradient")] == [3, 1, 3]  # magnitude: no data, no seed
    assert all(tuple(s.shape) == (2, 2) for runs in scores.values() for s in runs)
    assert not torch.equal(scores["random"][0], scores["random"][1])  # each seed its own draw
    assert not torch.equal(scores["gradient"][0], scores["gradient"][2])  # each seed its own sample of batches
    again = importance_by_strategy(model, batches, ["random"], seeds=3, progress=False)["random"]
    assert all(torch.equal(a, b) for a, b in zip(again, scores["random"], strict=True))  # seeded: reproducible
    whole = importance_by_strategy(model, batches, ["gradient"], seeds=3, progress=False)  # every batch: one run is enough
    assert len(whole["gradient"]) == 1
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        importance_by_strategy(model, batches, ["random"], seeds=0, progress=False)


def test_pruning_study_config_checks_and_shrinks() -> None:
    study = PruningStudyConfig(model="smollm2-135m-instruct", strategies=["magnitude", "gradient"], levels=[0.0, 0.5])
    assert study.strategies == ("magnitude", "gradient") and study.levels == (0.0, 0.5)
    assert study.evaluate == {"seq_len": 128, "max_tokens": 20000}
    smoke = study.smoke()
    assert (smoke.model, smoke.dataset, smoke.strategies, smoke.levels, smoke.seeds) == (
        "embedded-gpt2", "embedded", ("random", "gradient"), (0.0, 0.3), 2)
    assert smoke.evaluate == {"seq_len": 64, "max_tokens": 1500}
    for bad, message in (({"strategies": ["entropy", "grid"]}, "strategy must be one of .* got 'grid'"),
                         ({"strategies": []}, "strategies must name at least one"),
                         ({"levels": [0.1, 1.0]}, r"levels must be in \[0, 1\), got 1.0"),
                         ({"scope": "model"}, "scope must be one of global, layer, got 'model'"),
                         ({"seeds": 0}, "seeds must be a positive integer")):
        with pytest.raises(ValueError, match=message):
            PruningStudyConfig(**bad)
