"""Perplexity: sliding windows score every token once, padding never changes the answer."""

from __future__ import annotations

import math

import pytest
import torch

from colab_helpers.evaluation.perplexity import _windows, lm_batches, perplexity, tokenize_texts

TEXT = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "A hacker is a person who enjoys exploring the details of programmable systems.",
    "Perplexity measures how surprised a language model is by held-out text.",
] * 4


@pytest.fixture(scope="module")
def model_and_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel(config).eval(), tokenizer


def test_windows_score_every_token_once() -> None:
    for n, seq_len, stride in [(10, 4, 2), (100, 16, 16), (7, 8, 3), (33, 8, 5)]:
        windows = list(_windows(n, seq_len, stride))
        assert sum(scored for _, _, scored in windows) == n
        assert all(end - start <= seq_len and scored <= end - start for start, end, scored in windows)
        assert windows[-1][1] == n


def test_single_window_matches_the_models_own_loss(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    ids = tokenize_texts(tokenizer, TEXT[1])
    with torch.no_grad():
        expected = model(input_ids=ids[None], labels=ids[None]).loss.item()
    result = perplexity(model, tokenizer, TEXT[1], seq_len=64, progress=False)
    assert result.tokens == ids.numel() - 1
    assert math.isclose(result.nll, expected, rel_tol=1e-5)
    assert math.isclose(result.perplexity, math.exp(expected), rel_tol=1e-5)


def test_batching_and_padding_do_not_change_perplexity(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    one = perplexity(model, tokenizer, TEXT, seq_len=32, stride=12, batch_size=1, progress=False)
    many = perplexity(model, tokenizer, TEXT, seq_len=32, stride=12, batch_size=5, progress=False)
    assert one.tokens == many.tokens
    assert math.isclose(one.perplexity, many.perplexity, rel_tol=1e-4)


def test_random_model_is_near_uniform(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    result = perplexity(model, tokenizer, TEXT, seq_len=32, progress=False)
    assert 0.5 * len(tokenizer) < result.perplexity < 2 * len(tokenizer)


def test_bad_input_is_a_clear_error(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="no text"):
        perplexity(model, tokenizer, ["", "  "], progress=False)
    with pytest.raises(ValueError, match="stride"):
        perplexity(model, tokenizer, TEXT, seq_len=8, stride=9, progress=False)


def test_lm_batches_shapes_and_errors(model_and_tokenizer) -> None:
    _, tokenizer = model_and_tokenizer
    ids = tokenize_texts(tokenizer, TEXT)
    batches = lm_batches(ids, seq_len=16, batch_size=3, max_batches=2)
    assert len(batches) == 2 and batches[0]["input_ids"].shape == (3, 16)
    assert torch.equal(batches[0]["input_ids"][0], ids[:16])
    with pytest.raises(ValueError, match="fewer than one block"):
        lm_batches(ids[:5], seq_len=16, batch_size=2)


# --- token ids are checked before the model runs -----------------------------------------------------------------


class _NoForward(torch.nn.Module):
    """Wraps a model; fails the test if it is ever called (the checks must come first)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.config = model, model.config

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.inner.get_input_embeddings()

    def forward(self, *args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("the model ran before the input was checked")


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (torch.tensor([], dtype=torch.long), r"texts \(token ids\) is empty"),
        (torch.tensor([1.0, 2.0, 3.0]), r"must hold integer token ids, got dtype torch.float32; convert with .*\.long\(\)"),
        (torch.tensor([1, 2, 10_000]), r"holds id 10000, outside the model's vocabulary of \d+ ids .* not the model's own"),
        (torch.tensor([1, -5, 2]), r"holds a negative id \(-5\)"),
    ],
)
def test_bad_token_ids_are_a_value_error_before_the_model_runs(model_and_tokenizer, ids, message: str) -> None:
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match=message):
        perplexity(_NoForward(model), tokenizer, ids, seq_len=16, progress=False)


@pytest.mark.parametrize(("seq_len", "shown"), [(1, r"1 \(int\)"), (0, r"0 \(int\)"), (16.0, r"16.0 \(float\)")])
def test_a_window_shorter_than_two_tokens_is_refused_before_the_model_runs(model_and_tokenizer, seq_len, shown) -> None:
    """seq_len=1 was a ZeroDivisionError after the whole text ran (nothing to predict in a 1-token window)."""
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match=rf"seq_len must be an integer >= 2, got {shown}; a perplexity window needs "
                                         r"at least 2 tokens .* pass e.g. seq_len=128, or None"):  # fmt: skip
        perplexity(_NoForward(model), tokenizer, TEXT, seq_len=seq_len, progress=False)


def test_token_ids_and_texts_give_the_same_perplexity(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    ids = tokenize_texts(tokenizer, TEXT)
    by_text = perplexity(model, tokenizer, TEXT, seq_len=32, progress=False)
    by_ids = perplexity(model, tokenizer, ids, seq_len=32, progress=False)
    assert by_ids.tokens == by_text.tokens and math.isclose(by_ids.nll, by_text.nll, rel_tol=1e-6)


def test_a_tokenizer_larger_than_the_model_is_caught(model_and_tokenizer) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tokenizer = model_and_tokenizer
    small = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=64, n_embd=16, n_layer=1, n_head=2)).eval()
    with pytest.raises(ValueError, match=r"the tokenized texts holds id \d+, outside the model's vocabulary of 50 ids"):
        perplexity(_NoForward(small), tokenizer, TEXT, seq_len=16, progress=False)


def test_texts_that_are_not_strings_say_so(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match=r"texts must be a string or a list of strings, got \[1, 2\] \(list\)"):
        perplexity(model, tokenizer, [[1, 2]], progress=False)


@pytest.mark.parametrize(
    ("ids", "kwargs", "message"),
    [
        (torch.tensor([], dtype=torch.long), {}, r"token_ids is empty"),
        (torch.arange(64).float(), {}, r"must hold integer token ids, got dtype torch.float32"),
        (torch.arange(64), {"vocab_size": 50}, r"holds id 63, outside the model's vocabulary of 50 ids"),
        ([1, 2, 3], {}, r"token_ids must be a torch tensor of token ids, got list"),
        (torch.arange(64), {"seq_len": 16.0}, r"seq_len must be an integer >= 2, got 16.0 \(float\)"),
        (torch.arange(64), {"max_batches": 0}, r"max_batches must be a positive integer or None, got 0"),
    ],
)
def test_lm_batches_checks_its_ids(ids, kwargs: dict, message: str) -> None:
    settings = {"seq_len": 16, "batch_size": 2} | kwargs
    with pytest.raises(ValueError, match=message):
        lm_batches(ids, **settings)
    assert len(lm_batches(torch.arange(64), seq_len=16, batch_size=2, vocab_size=64)) == 2
