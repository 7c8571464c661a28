"""CUDA fallback: the predicate, the retrying decorator and safe_generate's as_asked -> greedy -> cpu paths.

CUDA failures are simulated with the exact texts torch, cuBLAS and the CUDA runtime put in their errors, raised
from a real tiny GPT-2's ``generate`` (patched to fail on its first calls) or from a wrapped function.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

from colab_helpers.errors import ColabHelpersWarning, CudaFallbackWarning
from colab_helpers.runtime.cuda_fallback import CudaFallbackError, GenerationResult, cuda_fallback, is_cuda_error, is_cuda_oom, safe_generate

# Real texts, as torch 2.x prints them.
DEVICE_ASSERT = (
    "CUDA error: device-side assert triggered\n"
    "CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might "
    "be incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
    "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n"
)
OOM = (
    "CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 14.75 GiB total capacity; 13.90 GiB already "
    "allocated; 3.06 MiB free; 14.12 GiB reserved in total by PyTorch) If reserved memory is >> allocated memory "
    "try setting max_split_size_mb to avoid fragmentation.  See documentation for Memory Management and "
    "PYTORCH_CUDA_ALLOC_CONF"
)
CUBLAS_EXEC = (
    "CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, opb, m, n, k, &alpha, "
    "a, lda, b, ldb, &beta, c, ldc)`"
)
CUBLAS_ALLOC = "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
ILLEGAL = (
    "CUDA error: an illegal memory access was encountered\n"
    "CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might "
    "be incorrect."
)
CUDNN = "cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"
SAMPLING = "probability tensor contains either `inf`, `nan` or element < 0"
SHAPES = "mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"
DEVICE_MISMATCH = (
    "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu! "
    "(when checking argument for argument index in method wrapper_CUDA__index_select)"
)
CPU_OOM = "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to allocate 8 GB"


@pytest.mark.parametrize(
    ("exc", "cuda", "oom"),
    [
        (RuntimeError(DEVICE_ASSERT), True, False),
        (RuntimeError(OOM), True, True),
        (torch.cuda.OutOfMemoryError(OOM), True, True),
        (torch.cuda.OutOfMemoryError("out of memory"), True, True),  # decided by type
        (RuntimeError(CUBLAS_EXEC), True, False),
        (RuntimeError(CUBLAS_ALLOC), True, True),
        (RuntimeError(ILLEGAL), True, False),
        (RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered"), True, False),
        (RuntimeError(CUDNN), True, False),
        (RuntimeError("CUDA error: misaligned address"), True, False),
        (torch.AcceleratorError("CUDA error: unspecified launch failure"), True, False),
        (ValueError(DEVICE_ASSERT), False, False),  # not a RuntimeError: never a CUDA failure
        (KeyError("CUDA error"), False, False),
        (TypeError(OOM), False, False),
        (RuntimeError(SHAPES), False, False),
        (RuntimeError(DEVICE_MISMATCH), False, False),  # a bug in the calling code, not a GPU failure
        (RuntimeError(SAMPLING), False, False),
        (RuntimeError(CPU_OOM), False, False),
        (RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1296, unhandled cuda error"), False, False),
        (RuntimeError(), False, False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_predicates(exc: BaseException, cuda: bool, oom: bool) -> None:
    assert is_cuda_error(exc) is cuda
    assert is_cuda_oom(exc) is oom


def test_predicate_needs_no_torch() -> None:
    code = (
        "import sys; from colab_helpers.runtime.cuda_fallback import is_cuda_error as f\n"
        f"print(f(RuntimeError({DEVICE_ASSERT!r})), f(ValueError('CUDA error')), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False", "False"]


# ---------------------------------------------------------------------------------------------- cuda_fallback


class _Spy(torch.nn.Linear):
    """A tiny module that records the devices it is moved to."""

    def __init__(self) -> None:
        super().__init__(2, 2)
        self.moved_to: list[str] = []

    def to(self, *args: Any, **kwargs: Any) -> _Spy:
        self.moved_to.append(str(args[0]) if args else str(kwargs.get("device")))
        return super().to(*args, **kwargs)


def _fail_first(n: int, error: BaseException, record: list[tuple[Any, ...]]) -> Callable[..., Any]:
    """Return a function that raises ``error`` on its first ``n`` calls, records its arguments, then returns 'ok'."""

    def fn(batch: Any, model: Any = None, *, extra: Any = None) -> str:
        record.append((batch, model, extra))
        if len(record) <= n:
            raise error
        return "ok"

    return fn


def _recorded(*categories: type[Warning]) -> Callable[[list[warnings.WarningMessage]], list[str]]:
    return lambda caught: [str(w.message) for w in caught if issubclass(w.category, categories)]


def test_cuda_fallback_moves_everything_to_cpu_and_warns_once() -> None:
    from transformers import BatchEncoding

    calls: list[tuple[Any, ...]] = []
    wrapped = cuda_fallback(_fail_first(1, RuntimeError(DEVICE_ASSERT), calls))
    model = _Spy()
    batch = BatchEncoding({"input_ids": torch.ones(1, 3, dtype=torch.long)})
    extra = {"labels": torch.zeros(3), "nested": [torch.ones(1), (torch.ones(2), "text")]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert wrapped(batch, model, extra=extra) == "ok"
        assert wrapped(batch, model, extra=extra) == "ok"  # already fell back: straight to the CPU
    messages = _recorded(CudaFallbackWarning)(caught)
    assert len(messages) == 1
    assert "device-side assert triggered" in messages[0] and "continuing on the CPU" in messages[0]
    assert len(calls) == 3  # failed once, retried once, then one plain call
    assert model.moved_to[:1] == ["cpu"]
    retried_batch, retried_model, retried_extra = calls[1]
    assert retried_model is model and isinstance(retried_batch, BatchEncoding)
    assert retried_extra["nested"][1][1] == "text" and isinstance(retried_extra["nested"][1], tuple)
    assert retried_extra["labels"].device.type == "cpu"
    state = wrapped.cuda_fallback_state
    assert state.on_cpu and state.errors == ["RuntimeError: CUDA error: device-side assert triggered"]


@pytest.mark.parametrize("error", [ValueError("bad value"), KeyError("input_ids"), RuntimeError(SHAPES)])
def test_cuda_fallback_reraises_other_errors_untouched(error: BaseException) -> None:
    calls: list[tuple[Any, ...]] = []
    wrapped = cuda_fallback(_fail_first(5, error, calls))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning would fail the test
        with pytest.raises(type(error)) as raised:
            wrapped(torch.ones(1), _Spy())
    assert raised.value is error
    assert len(calls) == 1
    assert not wrapped.cuda_fallback_state.on_cpu


def test_cuda_fallback_retry_failure_propagates() -> None:
    calls: list[tuple[Any, ...]] = []
    wrapped = cuda_fallback(_fail_first(2, RuntimeError(OOM), calls))
    with pytest.warns(CudaFallbackWarning, match="out of memory"), pytest.raises(RuntimeError, match="out of memory"):
        wrapped(torch.ones(1))
    assert len(calls) == 2  # one retry, not a loop


def test_cuda_fallback_finds_model_by_name_or_bound_method() -> None:
    calls: list[tuple[Any, ...]] = []

    @cuda_fallback(model_arg="net")
    def step(x: torch.Tensor, net: torch.nn.Module) -> torch.Tensor:
        calls.append((x, net))
        if len(calls) == 1:
            raise RuntimeError(CUBLAS_EXEC)
        return net(x)

    net = _Spy()
    with pytest.warns(CudaFallbackWarning, match="CUBLAS_STATUS_EXECUTION_FAILED"):
        assert step(torch.ones(1, 2), net).shape == (1, 2)
    assert net.moved_to == ["cpu"]

    class Flaky(_Spy):
        failures = 1

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.failures:
                self.failures -= 1
                raise RuntimeError(ILLEGAL)
            return super().forward(x)

    owner = Flaky()
    with pytest.warns(CudaFallbackWarning, match="illegal memory access"):
        assert cuda_fallback(owner.forward)(torch.ones(1, 2)).shape == (1, 2)  # the model is the bound instance
    assert owner.moved_to == ["cpu"]


def test_cuda_fallback_dead_context_says_restart() -> None:
    # A meta tensor cannot be copied to the CPU, just like a tensor on a GPU whose context a device-side
    # assert has broken.
    calls: list[tuple[Any, ...]] = []
    wrapped = cuda_fallback(_fail_first(1, RuntimeError(DEVICE_ASSERT), calls))
    with pytest.raises(CudaFallbackError, match="restart the runtime") as raised:
        wrapped(torch.empty(2, device="meta"))
    assert "token id >= the vocabulary size" in str(raised.value)
    assert isinstance(raised.value.__cause__, RuntimeError) and DEVICE_ASSERT in str(raised.value.__cause__)
    assert len(calls) == 1


def test_cuda_fallback_rejects_non_callables() -> None:
    with pytest.raises(TypeError, match="wraps a function"):
        cuda_fallback(42)  # type: ignore[call-overload]


# ---------------------------------------------------------------------------------------------- safe_generate


def _patch_generate(
    monkeypatch: pytest.MonkeyPatch, model: Any, errors: list[BaseException]
) -> list[dict[str, Any]]:
    """Make ``model.generate`` raise ``errors`` in turn on its first calls; return the list of call kwargs."""
    real = model.generate
    calls: list[dict[str, Any]] = []

    def generate(**kwargs: Any) -> Any:
        calls.append(kwargs)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return real(**kwargs)

    monkeypatch.setattr(model, "generate", generate)
    return calls


@pytest.fixture
def model_and_tokenizer(tiny_gpt2: tuple[Any, Any]) -> tuple[Any, Any]:
    """A private copy of the tiny GPT-2 (tests move it, patch it, switch its mode) and the shared tokenizer."""
    model, tokenizer = tiny_gpt2
    return copy.deepcopy(model), tokenizer


def test_safe_generate_as_asked(model_and_tokenizer: tuple[Any, Any]) -> None:
    model, tokenizer = model_and_tokenizer
    with warnings.catch_warnings():
        warnings.simplefilter("error", ColabHelpersWarning)
        first = safe_generate(model, tokenizer, "Hello world", max_new_tokens=8, seed=1)
        again = safe_generate(model, tokenizer, "Hello world", max_new_tokens=8, seed=1)
    assert isinstance(first, GenerationResult)
    assert first.path == "as_asked" and first.errors == [] and first.device == "cpu"
    assert 1 <= first.new_tokens <= 8
    assert first.text == again.text  # the seed makes sampling reproducible
    assert str(first) == first.full_text == "Hello world" + first.text
    assert "Hello world" in first._repr_html_() and "fallback" not in first._repr_html_()


def test_safe_generate_greedy_after_cuda_error(
    model_and_tokenizer: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = model_and_tokenizer
    calls = _patch_generate(monkeypatch, model, [RuntimeError(DEVICE_ASSERT)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = safe_generate(model, tokenizer, "The quick", max_new_tokens=5)
    assert result.path == "greedy"
    assert result.errors == ["as_asked: RuntimeError: CUDA error: device-side assert triggered"]
    assert len(_recorded(ColabHelpersWarning)(caught)) == 1
    assert len(_recorded(CudaFallbackWarning)(caught)) == 1
    assert calls[0]["do_sample"] is True and calls[0]["temperature"] == 0.8
    assert calls[1]["do_sample"] is False and "temperature" not in calls[1] and "top_p" not in calls[1]
    assert "fallback: <b>greedy</b>" in result._repr_html_()


def test_safe_generate_greedy_after_real_nan_logits(model_and_tokenizer: tuple[Any, Any]) -> None:
    # NaN weights make torch.multinomial itself raise on the CPU; greedy decoding still returns tokens.
    model, tokenizer = model_and_tokenizer
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = safe_generate(model, tokenizer, "Hello", max_new_tokens=4)
    assert result.path == "greedy"
    assert "probability tensor contains" in result.errors[0]
    messages = _recorded(ColabHelpersWarning)(caught)
    assert len(messages) == 1 and "greedy" in messages[0]
    assert not _recorded(CudaFallbackWarning)(caught)  # a numerical failure, not a CUDA one


def test_safe_generate_cpu_after_two_cuda_errors(
    model_and_tokenizer: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = model_and_tokenizer
    calls = _patch_generate(monkeypatch, model, [torch.cuda.OutOfMemoryError(OOM), RuntimeError(CUBLAS_EXEC)])
    moved: list[Any] = []
    real_to = model.to
    monkeypatch.setattr(model, "to", lambda *a, **k: (moved.append(a), real_to(*a, **k))[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = safe_generate(model, tokenizer, "Hello world", max_new_tokens=5, top_k=20)
    assert result.path == "cpu" and result.device == "cpu"
    assert [e.split(":")[0] for e in result.errors] == ["as_asked", "greedy"]
    assert "OutOfMemoryError: CUDA out of memory" in result.errors[0]
    messages = _recorded(CudaFallbackWarning)(caught)
    assert len(messages) == 2 and "greedy" in messages[0] and "CPU" in messages[1]
    assert moved == [("cpu",)]
    assert len(calls) == 3 and calls[0]["top_k"] == 20 and "top_k" not in calls[2]
    assert calls[2]["input_ids"].device.type == "cpu"


def test_safe_generate_greedy_cuda_error_goes_straight_to_cpu(
    model_and_tokenizer: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = model_and_tokenizer
    calls = _patch_generate(monkeypatch, model, [RuntimeError(ILLEGAL)])
    with pytest.warns(CudaFallbackWarning) as caught:
        result = safe_generate(model, tokenizer, "Hello", do_sample=False, max_new_tokens=3)
    assert result.path == "cpu" and len(calls) == 2 and len(caught) == 1


@pytest.mark.parametrize("error", [ValueError("bad generation config"), KeyError("x"), RuntimeError(SHAPES)])
def test_safe_generate_other_errors_propagate(
    model_and_tokenizer: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    model, tokenizer = model_and_tokenizer
    calls = _patch_generate(monkeypatch, model, [error])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ColabHelpersWarning)
        with pytest.raises(type(error)) as raised:
            safe_generate(model, tokenizer, "Hello")
    assert raised.value is error and len(calls) == 1


def test_safe_generate_non_cuda_error_after_fallback_propagates(
    model_and_tokenizer: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = model_and_tokenizer
    _patch_generate(monkeypatch, model, [RuntimeError(SAMPLING), RuntimeError(SHAPES)])
    with pytest.warns(ColabHelpersWarning), pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        safe_generate(model, tokenizer, "Hello")


def test_safe_generate_unmovable_model_says_restart(
    model_and_tokenizer: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = model_and_tokenizer
    _patch_generate(monkeypatch, model, [RuntimeError(DEVICE_ASSERT), RuntimeError(DEVICE_ASSERT)])

    def dead_context(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(DEVICE_ASSERT)

    monkeypatch.setattr(model, "to", dead_context)
    with pytest.warns(CudaFallbackWarning), pytest.raises(CudaFallbackError, match="restart the runtime"):
        safe_generate(model, tokenizer, "Hello")


def test_safe_generate_pads_with_eos_and_restores_train_mode(
    model_and_tokenizer: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer = model_and_tokenizer
    assert tokenizer.pad_token_id is None
    model.train()
    calls = _patch_generate(monkeypatch, model, [])
    safe_generate(model, tokenizer, "Hello", max_new_tokens=2)
    assert calls[0]["pad_token_id"] == tokenizer.eos_token_id
    assert calls[0]["attention_mask"].shape == calls[0]["input_ids"].shape
    assert model.training  # put back in train mode after generating in eval mode


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompt": ""}, "non-empty string"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"temperature": 0.0}, "do_sample=False"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ],
)
def test_safe_generate_rejects_bad_settings(
    model_and_tokenizer: tuple[Any, Any], kwargs: dict[str, Any], match: str
) -> None:
    model, tokenizer = model_and_tokenizer
    prompt = kwargs.pop("prompt", "Hello")
    with pytest.raises(ValueError, match=match):
        safe_generate(model, tokenizer, prompt, **kwargs)


@pytest.mark.gpu
def test_safe_generate_really_moves_off_the_gpu(
    model_and_tokenizer: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    model, tokenizer = model_and_tokenizer
    model.to("cuda")
    _patch_generate(monkeypatch, model, [torch.cuda.OutOfMemoryError(OOM), torch.cuda.OutOfMemoryError(OOM)])
    with pytest.warns(CudaFallbackWarning):
        result = safe_generate(model, tokenizer, "Hello", max_new_tokens=3)
    assert result.path == "cpu" and next(model.parameters()).device.type == "cpu"


@pytest.mark.gpu
def test_cuda_fallback_really_moves_off_the_gpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    net = torch.nn.Linear(2, 2).cuda()
    seen: list[str] = []

    @cuda_fallback
    def forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        seen.append(x.device.type)
        if len(seen) == 1:
            raise torch.cuda.OutOfMemoryError(OOM)
        return model(x)

    with pytest.warns(CudaFallbackWarning):
        out = forward(net, {"x": torch.ones(1, 2, device="cuda")}["x"])
    assert seen == ["cuda", "cpu"] and out.device.type == "cpu" and next(net.parameters()).device.type == "cpu"
