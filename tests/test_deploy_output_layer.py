"""The output layer tuned for few rows: same logits, same weights (still tied), switched only where timed faster."""

from __future__ import annotations

import threading
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from colab_helpers import load_model  # noqa: E402
from colab_helpers.deploy import output_layer  # noqa: E402
from colab_helpers.deploy.engine import Engine, SamplingParams  # noqa: E402
from colab_helpers.deploy.output_layer import OutputLayerTiming, time_output_layer, tune_output_layer  # noqa: E402


def _timings_where(faster: set[int]) -> Any:
    """A stand-in for the timing: the transposed order is twice as fast for the row counts in ``faster``."""
    return lambda layer, rows, repeats=3: [OutputLayerTiming(n, 1.0, 0.5 if n in faster else 1.0) for n in rows]


@pytest.mark.parametrize("name", ["embedded-llama", "embedded-gpt2"])
def test_tuned_rows_give_the_same_logits_and_keep_the_weights(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = load_model(name, device="cpu")
    before = {key: value.clone() for key, value in model.state_dict().items()}
    ids = torch.randint(3, 200, (5, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        expected_last = model(input_ids=ids[:2]).logits[:, -1]
    monkeypatch.setattr(output_layer, "time_output_layer", _timings_where({2, 3}))
    timings = tune_output_layer(model, 4)
    layer = model.get_output_embeddings()
    assert [t.rows for t in timings if t.transposed_wins] == [2, 3]
    assert type(layer).__name__ == "RowTunedLinear" and isinstance(layer, torch.nn.Linear)
    assert layer._tuned_rows == frozenset({2, 3})
    with torch.no_grad():
        got = model(input_ids=ids).logits  # 35 rows: linear, as before
        got_last = model(input_ids=ids[:2], logits_to_keep=1).logits[:, -1]  # 2 rows: the transposed order
    assert torch.equal(got, expected)
    assert torch.allclose(got_last, expected_last, atol=1e-5 * float(expected_last.abs().max()))
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[key], value) for key, value in before.items())
    if model.config.tie_word_embeddings:
        assert layer.weight is model.get_input_embeddings().weight  # nothing copied, the tie kept


def test_nothing_changes_where_linear_is_as_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = load_model("embedded-llama", device="cpu")
    monkeypatch.setattr(output_layer, "time_output_layer", _timings_where(set()))
    assert len(tune_output_layer(model, 3)) == 3
    assert type(model.get_output_embeddings()) is torch.nn.Linear


def test_an_output_layer_that_is_not_a_plain_linear_is_left_alone() -> None:
    model, _ = load_model("embedded-llama", device="cpu")
    model.set_output_embeddings(torch.nn.Sequential(model.get_output_embeddings()))
    assert tune_output_layer(model, 4) == []
    assert type(model.get_output_embeddings()) is torch.nn.Sequential


def test_max_rows_is_checked_before_any_timing() -> None:
    model, _ = load_model("embedded-llama", device="cpu")
    with pytest.raises(ValueError, match=r"max_rows.*0.*e\.g\. 16"):
        tune_output_layer(model, 0)


def test_timing_measures_both_orders_for_each_row_count() -> None:
    layer = torch.nn.Linear(16, 64, bias=False)
    timings = time_output_layer(layer, [1, 4], repeats=1)
    assert [t.rows for t in timings] == [1, 4]
    assert all(t.linear_s > 0 and t.transposed_s > 0 for t in timings)


def test_the_engine_decodes_the_same_tokens_with_a_tuned_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = load_model("embedded-llama", device="cpu")
    prompts = [tokenizer(p).input_ids for p in ("Hello", "The quick brown fox", "a b c")]

    def answers() -> list[tuple[int, ...]]:
        engine = Engine(model, tokenizer, max_batch_size=4).start()
        threads, results = [], [()] * len(prompts)

        def ask(i: int) -> None:
            results[i] = engine.generate(prompts[i], SamplingParams(max_tokens=8, ignore_eos=True), timeout=60).token_ids

        for i in range(len(prompts)):
            threads.append(threading.Thread(target=ask, args=(i,)))
            threads[-1].start()
        for thread in threads:
            thread.join()
        engine.stop()
        return results

    plain = answers()
    monkeypatch.setattr(output_layer, "time_output_layer", _timings_where({1, 2, 3, 4}))
    tune_output_layer(model, 4)
    assert answers() == plain and all(len(a) == 8 for a in plain)
