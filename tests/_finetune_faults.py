"""Helpers of the fine-tuning tests: tiny offline models, and faults injected from outside through module hooks.

Faults never reach into the trainer: they are forward / backward hooks on the model (registered before
``fine_tune`` wraps it) that poison the output, the gradients, or raise the errors CUDA would raise. Which step
is running is learnt through the public callback API (:class:`StepClock`).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch

from colab_helpers.finetune import Callback

SENTENCES = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.",
    "Small language models run on a laptop and in a Colab notebook without a GPU.",
    "Pruning attention heads makes a model smaller; LoRA helps it recover its perplexity.",
    "A hacker is a person who enjoys exploring the details of programmable systems.",
    "Checkpoints written atomically survive a runtime that disconnects in the middle of a save.",
    "Gradients that turn into NaN must never reach the optimizer, or the weights are lost.",
]
TRAIN_TEXTS = [" ".join(SENTENCES[i:] + SENTENCES[:i]) for i in range(len(SENTENCES))] * 4
EVAL_TEXTS = [" ".join(reversed(SENTENCES))] * 3


@functools.lru_cache(maxsize=1)
def tokenizer() -> Any:
    """Return a 300-token byte-level BPE tokenizer trained on :data:`SENTENCES` (EOS = pad = <|endoftext|>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(SENTENCES, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


@functools.lru_cache(maxsize=None)
def _base_model(arch: str, dropout: float) -> Any:
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    vocab = len(tokenizer())
    eos = tokenizer().eos_token_id
    torch.manual_seed(0)
    if arch == "gpt2":
        config = GPT2Config(
            n_layer=2, n_head=2, n_embd=32, n_positions=128, vocab_size=vocab, bos_token_id=eos, eos_token_id=eos,
            resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout,
        )  # fmt: skip
    elif arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=128, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        )  # fmt: skip
    else:
        raise ValueError(arch)
    return AutoModelForCausalLM.from_config(config).eval()


def tiny_model(arch: str = "gpt2", *, dropout: float = 0.0) -> Any:
    """Return a fresh copy of a tiny random model (2 layers, width 32); ``dropout=0`` makes training deterministic."""
    return copy.deepcopy(_base_model(arch, dropout))


def output_head(model: Any) -> torch.nn.Module:
    return model.get_output_embeddings()


def trainable(model: Any) -> dict[str, torch.Tensor]:
    """Return a copy of the trainable (LoRA) parameters by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def all_finite(model: Any) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


class StepClock(Callback):
    """Knows the step being run (public callbacks only) and keeps copies of the LoRA weights after each step."""

    def __init__(self, keep_weights: bool = False) -> None:
        self.current = 1
        self.keep_weights = keep_weights
        self.weights: dict[int, dict[str, torch.Tensor]] = {}
        self.eval_weights: dict[int, dict[str, torch.Tensor]] = {}
        self.rows: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    def on_train_begin(self, tuner: Any) -> None:
        self.current = tuner.step + 1

    def on_step_end(self, tuner: Any, row: dict[str, Any]) -> None:
        self.rows.append(dict(row))
        if self.keep_weights:
            self.weights[row["step"]] = trainable(tuner.model)
        self.current = row["step"] + 1

    def on_eval(self, tuner: Any, row: dict[str, Any]) -> None:
        self.eval_weights[row["step"]] = trainable(tuner.model)

    def on_event(self, tuner: Any, event: dict[str, Any]) -> None:
        self.events.append(dict(event))


def poison_loss(model: Any, clock: StepClock, steps: Any) -> Any:
    """Make the logits NaN (so the loss is NaN) while training at the steps in ``steps`` (a set or a predicate)."""
    hit = steps if callable(steps) else steps.__contains__

    def hook(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        if module.training and hit(clock.current):
            return output * float("nan")
        return None

    return output_head(model).register_forward_hook(hook)


def poison_gradients(model: Any, clock: StepClock, steps: Any) -> Any:
    """Make the gradients flowing back out of the output head infinite at ``steps`` (the loss stays finite)."""
    hit = steps if callable(steps) else steps.__contains__

    def hook(module: Any, grad_input: Any, grad_output: Any) -> Any:
        if hit(clock.current):
            return tuple(g * float("inf") if g is not None else None for g in grad_input)
        return None

    return output_head(model).register_full_backward_hook(hook)


class OutOfMemoryAbove:
    """Raise CUDA's out-of-memory error from the input embeddings whenever a training batch has more than ``limit`` rows."""

    def __init__(self, model: Any, limit: int) -> None:
        self.limit = limit
        self.raised = 0
        self.rows_seen: list[int] = []
        self.handle = model.get_input_embeddings().register_forward_pre_hook(self._hook)

    def _hook(self, module: Any, args: Any) -> None:
        batch = args[0].shape[0]
        if module.training and batch > self.limit:
            self.raised += 1
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 14.75 GiB total capacity; batch {batch})"
            )
        if module.training:
            self.rows_seen.append(batch)


class CudaErrorAt:
    """Raise "CUDA error: an illegal memory access" once, in the forward pass of step ``step``."""

    def __init__(self, model: Any, clock: StepClock, step: int, message: str | None = None) -> None:
        self.clock, self.step, self.raised = clock, step, 0
        self.message = message or "CUDA error: an illegal memory access was encountered"
        self.handle = model.get_input_embeddings().register_forward_pre_hook(self._hook)

    def _hook(self, module: Any, args: Any) -> None:
        if module.training and self.clock.current == self.step and self.raised == 0:
            self.raised += 1
            raise RuntimeError(self.message)


def eval_loss_rises_after(model: Any, clock: StepClock, step: int, scale: float = 3.0) -> Any:
    """From step ``step`` on, add growing fixed noise to the logits in eval mode: eval loss rises, training is untouched."""
    generator = torch.Generator().manual_seed(1)
    noise: dict[str, torch.Tensor] = {}

    def hook(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        done = clock.current - 1  # evaluations run after the step's on_step_end
        if module.training or done <= step:
            return None
        if "n" not in noise or noise["n"].shape[-1] != output.shape[-1]:
            noise["n"] = torch.randn(output.shape[-1], generator=generator)
        return output + (done - step) * scale * noise["n"].to(output.dtype)

    return output_head(model).register_forward_hook(hook)


class NanAdapter(Callback):
    """Fill the LoRA weights with NaN when training begins (before the first rollback snapshot is taken)."""

    def on_train_begin(self, tuner: Any) -> None:
        with torch.no_grad():
            for param in tuner.model.parameters():
                if param.requires_grad:
                    param.fill_(float("nan"))


class NanBase(Callback):
    """Fill the frozen base weights with NaN when training begins: broken after the set-up, which refuses a model
    whose weights are NaN already, so that the guard's end-of-run verdict is what must name them."""

    def on_train_begin(self, tuner: Any) -> None:
        with torch.no_grad():
            for param in tuner.model.parameters():
                if not param.requires_grad:
                    param.fill_(float("nan"))


def nan_base_weights(model: Any) -> Any:
    """Fill every weight of ``model`` with NaN (a broken download or a bad merge); return the model."""
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(float("nan"))
    return model
