"""CUDA fallback: one predicate decides what counts as a CUDA failure; a failed call is retried once on the CPU.

Modelled on accelerate's ``utils/memory.py``: :func:`is_cuda_error` is the only place that decides, and everything
that is not a CUDA failure is re-raised untouched. :func:`cuda_fallback` wraps any function: on a CUDA failure it
frees memory, moves the model and the tensor arguments to the CPU, warns once, calls again and stays on the CPU.
:func:`safe_generate` generates text as asked, then greedy, then greedy on the CPU. After a device-side assert or
an illegal memory access the CUDA context is broken, nothing can be rescued in this process, and the error says
to restart the runtime. torch is never imported here at module level.
"""

from __future__ import annotations

import functools
import gc
import html
import inspect
import logging
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, overload

from ..errors import ColabHelpersWarning, CudaFallbackWarning
from .modules import model_device
from .secrets import redact

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# Texts torch, cuBLAS and cuDNN put in the message of a CUDA failure (checked on RuntimeError only).
_CUDA_ERROR_MARKERS: tuple[str, ...] = (
    "CUDA error",  # "CUDA error: device-side assert triggered", "CUDA error: misaligned address", ...
    "CUDA out of memory",
    "device-side assert triggered",
    "illegal memory access",  # also Triton's "Triton Error [CUDA]: an illegal memory access was encountered"
    "CUBLAS_STATUS_",
    "CUDNN_STATUS_",
    "cuDNN error",
    "HIP error",  # ROCm builds of torch report through torch.cuda too
    "HIP out of memory",
)
# NCCL errors are left out on purpose: they come from multi-process jobs, where retrying one call on the CPU
# cannot help.
_CUDA_OOM_MARKERS: tuple[str, ...] = (
    "CUDA out of memory",
    "HIP out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
)
# torch.multinomial on the CPU when the logits hold NaN/inf (fp16 overflow); on CUDA the same trouble is a
# device-side assert instead.
_SAMPLING_ERROR_MARKERS: tuple[str, ...] = ("probability tensor contains either `inf`, `nan` or element < 0",)
_SAMPLING_ONLY_KWARGS: tuple[str, ...] = ("temperature", "top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff")
_RESTART_HINT = (
    "the CUDA context is broken, so the model cannot even be copied to the CPU: restart the runtime "
    "(Colab: Runtime > Restart session), then run again (on the CPU if it fails again)"
)
_ASSERT_HINT = (
    "a device-side assert is usually an index out of range: a token id >= the vocabulary size, or a label "
    "outside the classes; run on the CPU once to get a readable error"
)


def _torch_if_imported() -> Any | None:
    """Return the ``torch`` module when it is already imported, else None (an exception cannot come from it)."""
    return sys.modules.get("torch")


def _cuda_error_types(*, oom_only: bool = False) -> tuple[type[BaseException], ...]:
    """Return the exception classes this torch uses for CUDA failures (empty when torch is not imported)."""
    torch = _torch_if_imported()
    if torch is None:
        return ()
    names = ("OutOfMemoryError",) if oom_only else ("OutOfMemoryError", "CudaError")
    found = [getattr(torch.cuda, name, None) for name in names]
    if not oom_only:
        found.append(getattr(torch, "AcceleratorError", None))  # torch >= 2.8 raises it for CUDA errors
    return tuple(t for t in found if isinstance(t, type) and issubclass(t, BaseException))


def _message(exc: BaseException) -> str:
    """Return the text of ``exc`` (its first argument when that is a string, else ``str(exc)``)."""
    if exc.args and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc)


def is_cuda_oom(exc: BaseException) -> bool:
    """True when ``exc`` is a CUDA out-of-memory failure (torch's ``OutOfMemoryError`` or cuBLAS/cuDNN ALLOC_FAILED)."""
    if not isinstance(exc, RuntimeError):
        return False
    if isinstance(exc, _cuda_error_types(oom_only=True)):
        return True
    message = _message(exc)
    return any(marker in message for marker in _CUDA_OOM_MARKERS)


def is_cuda_error(exc: BaseException) -> bool:
    """True when ``exc`` is a CUDA failure: out of memory, device-side assert, illegal access, cuBLAS/cuDNN errors.

    Decided by type (``torch.cuda.OutOfMemoryError``, ``torch.AcceleratorError`` where this torch has it) and
    by the texts torch writes into a ``RuntimeError``. Anything that is not a ``RuntimeError`` is False, and
    so are device-mismatch errors such as "Expected all tensors to be on the same device": those are bugs
    in the calling code, not failures of the GPU.
    """
    if not isinstance(exc, RuntimeError):
        return False
    if isinstance(exc, _cuda_error_types()):
        return True
    message = _message(exc)
    return any(marker in message for marker in _CUDA_ERROR_MARKERS)


def _is_sampling_error(exc: BaseException) -> bool:
    """True when ``exc`` is torch's complaint about NaN/inf probabilities while sampling."""
    return isinstance(exc, RuntimeError) and any(m in _message(exc) for m in _SAMPLING_ERROR_MARKERS)


def short_error(exc: BaseException, limit: int = 200) -> str:
    """Return ``exc`` as one short line for a log, a warning or an event: ``"Type: first line of the message"``,
    cut to ``limit`` characters, with secrets (tokens, keys) redacted."""
    first_line = _message(exc).strip().splitlines()[0] if _message(exc).strip() else ""
    text = redact(f"{type(exc).__name__}: {first_line}")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _free_cuda_memory() -> None:
    """Collect garbage and empty torch's CUDA cache; a broken CUDA context is logged, not raised."""
    gc.collect()
    torch = _torch_if_imported()
    if torch is None:
        return
    try:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except Exception as exc:  # the context may be dead after an assert; freeing is best effort
        logger.debug("empty_cache failed after a CUDA error: %s", short_error(exc))


class CudaFallbackError(RuntimeError):
    """A CUDA failure that could not be recovered on the CPU: the runtime must be restarted."""


def _to_cpu(value: Any) -> Any:
    """Return ``value`` with every tensor in it on the CPU: modules and BatchEncodings in place, containers copied."""
    torch = _torch_if_imported()
    if torch is None:
        return value
    if isinstance(value, torch.nn.Module):
        return value.to("cpu")
    if isinstance(value, torch.Tensor):
        return value.to("cpu")
    if hasattr(value, "to") and isinstance(getattr(value, "data", None), dict):
        return value.to("cpu")  # transformers' BatchEncoding: moves its tensors in place and returns itself
    if isinstance(value, Mapping):
        moved = {k: _to_cpu(v) for k, v in value.items()}
        try:
            return type(value)(moved)
        except TypeError:  # a mapping type that cannot be built from a dict (defaultdict, ...)
            return moved
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(_to_cpu(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _named_model(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], model_arg: str) -> Any:
    """Return the argument called ``model_arg`` (by keyword or by position in ``fn``'s signature), or None."""
    if model_arg in kwargs:
        return kwargs[model_arg]
    try:
        bound = inspect.signature(fn).bind_partial(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    return bound.arguments.get(model_arg)


def _move_call_to_cpu(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], model_arg: str
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Move the model (named, an ``nn.Module`` argument, or ``fn.__self__``) and all tensor arguments to the CPU.

    Returns the new ``(args, kwargs)``. Raises whatever moving raised (a dead CUDA context, a 4-bit model).
    """
    torch = _torch_if_imported()
    module_type = torch.nn.Module if torch is not None else ()
    model = _named_model(fn, args, kwargs, model_arg)
    owner = getattr(fn, "__self__", None)  # cuda_fallback(model.generate): the model is the bound instance
    if owner is not None and isinstance(owner, module_type):
        owner.to("cpu")
    if model is not None and not isinstance(model, module_type) and callable(getattr(model, "to", None)):
        model.to("cpu")  # a model-like object that is not an nn.Module; modules are moved with the arguments
    return tuple(_to_cpu(a) for a in args), {k: _to_cpu(v) for k, v in kwargs.items()}


def _unrecoverable(original: BaseException, move_error: BaseException) -> CudaFallbackError:
    """Build the error raised when the state cannot be moved off a failed GPU."""
    hint = f"; {_ASSERT_HINT}" if "device-side assert" in _message(original) else ""
    return CudaFallbackError(
        f"{short_error(original)} -- and moving to the CPU failed too ({short_error(move_error)}): {_RESTART_HINT}{hint}"
    )


@dataclass
class _FallbackState:
    """What one wrapped function remembers: whether it fell back to the CPU, and the errors that made it."""

    on_cpu: bool = False
    warned: bool = False
    errors: list[str] = field(default_factory=list)


@overload
def cuda_fallback(fn: F, *, model_arg: str = "model") -> F: ...


@overload
def cuda_fallback(fn: None = None, *, model_arg: str = "model") -> Callable[[F], F]: ...


def cuda_fallback(fn: Callable[..., Any] | None = None, *, model_arg: str = "model") -> Any:
    """Wrap ``fn`` so that a CUDA failure is retried once on the CPU; return the wrapped function.

    Use as ``@cuda_fallback``, ``@cuda_fallback(model_arg="net")``, or for one call
    ``cuda_fallback(model.generate)(**batch)``. On a CUDA failure (see :func:`is_cuda_error`) the wrapper
    frees memory, moves the model (the argument named ``model_arg``, any ``nn.Module`` argument, or the
    instance of a bound method) and every tensor, dict of tensors or ``BatchEncoding`` argument to the CPU,
    warns once with :class:`CudaFallbackWarning` and calls ``fn`` again. Later calls go straight to the
    CPU (their tensors are moved first), since the GPU is not trusted any more. Any other exception is
    re-raised untouched, and a failure of the retry propagates. Raises :class:`CudaFallbackError` when even
    moving to the CPU fails (a dead CUDA context): then the runtime must be restarted.

    The wrapper's ``cuda_fallback_state`` attribute tells whether it fell back (``.on_cpu``) and why (``.errors``).
    """
    if fn is None:
        return functools.partial(cuda_fallback, model_arg=model_arg)
    if not callable(fn):
        raise TypeError(f"cuda_fallback wraps a function, got {fn!r}; use @cuda_fallback or cuda_fallback(fn)")
    state = _FallbackState()
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if state.on_cpu:
            args, kwargs = _move_call_to_cpu(fn, args, kwargs, model_arg)
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not is_cuda_error(exc):
                raise
            original = exc
        _free_cuda_memory()
        try:
            args, kwargs = _move_call_to_cpu(fn, args, kwargs, model_arg)
        except Exception as move_error:
            raise _unrecoverable(original, move_error) from original
        state.on_cpu = True
        state.errors.append(short_error(original))
        if not state.warned:
            state.warned = True
            warnings.warn(
                f"{name} failed on CUDA ({short_error(original)}); continuing on the CPU (slower). "
                "Restart the runtime to use the GPU again.",
                CudaFallbackWarning,
                stacklevel=2,
            )
        logger.info("%s: retrying on the CPU after %s", name, short_error(original))
        return fn(*args, **kwargs)

    wrapper.cuda_fallback_state = state  # type: ignore[attr-defined]
    return wrapper


GenerationPath = Literal["as_asked", "greedy", "cpu"]


@dataclass
class GenerationResult:
    """Text generated by :func:`safe_generate` and how it was obtained.

    ``text`` is the continuation only (``full_text`` adds the prompt); ``path`` is ``"as_asked"``,
    ``"greedy"`` (sampling failed, greedy decoding worked) or ``"cpu"`` (the GPU failed, greedy on the CPU
    worked); ``errors`` holds one short line per failed attempt; ``seconds`` counts every attempt.
    """

    prompt: str
    text: str
    path: GenerationPath
    device: str
    new_tokens: int
    seconds: float
    errors: list[str] = field(default_factory=list)

    @property
    def full_text(self) -> str:
        """Return the prompt followed by the generated continuation."""
        return self.prompt + self.text

    def __str__(self) -> str:
        return self.full_text

    def _repr_html_(self) -> str:
        note = "" if self.path == "as_asked" else f" &middot; fallback: <b>{html.escape(self.path)}</b>"
        errors = "".join(f"<li><code>{html.escape(e)}</code></li>" for e in self.errors)
        return (
            '<div style="font-family:monospace;white-space:pre-wrap">'
            f'<span style="color:#888">{html.escape(self.prompt)}</span>{html.escape(self.text)}</div>'
            f'<div style="font-size:small;color:#666">{self.new_tokens} new tokens on {html.escape(self.device)} '
            f"in {self.seconds:.2f} s{note}</div>"
            + (f'<ul style="font-size:small;color:#a60">{errors}</ul>' if errors else "")
        )


def _generate_once(
    model: Any, tokenizer: Any, prompt: str, gen_kwargs: dict[str, Any]
) -> tuple[str, int, str]:
    """Generate once on the model's device; return ``(continuation, new token count, device)``."""
    device = model_device(model)
    encoded = tokenizer(prompt, return_tensors="pt")
    inputs = {k: v.to(device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}
    if "attention_mask" not in inputs:
        import torch

        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    output = model.generate(**inputs, **gen_kwargs)
    prompt_length = inputs["input_ids"].shape[1]
    new_ids = output[0, prompt_length:]
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    return text, int(new_ids.shape[0]), str(device)


def safe_generate(
    model: Any,
    tokenizer: Any,
    prompt: str,
    *,
    max_new_tokens: int = 40,
    do_sample: bool = True,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int | None = None,
    **kwargs: Any,
) -> GenerationResult:
    """Generate a continuation of ``prompt`` and return a :class:`GenerationResult`, falling back when it fails.

    Tries as asked; on a CUDA failure or a sampling error from NaN/inf logits (fp16 overflow) it retries
    with greedy decoding; if that fails with a CUDA error it moves the model to the CPU (in place: it stays
    there) and decodes greedily there. Each fallback warns once. Other errors propagate untouched; a model
    that cannot be moved off a broken GPU raises :class:`CudaFallbackError` saying to restart the runtime.
    Tokenizers without a pad token use the end-of-sequence token; the model is put in eval mode for the
    call and its previous mode restored. ``kwargs`` go to ``model.generate``.
    """
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt must be a non-empty string, got {prompt!r}; pass e.g. prompt='Once upon a time'")
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}; try max_new_tokens=40")
    if do_sample and not temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}; use do_sample=False for greedy")
    if do_sample and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}; try top_p=0.95")
    base = {"max_new_tokens": int(max_new_tokens), **kwargs}
    pad_token_id = getattr(tokenizer, "pad_token_id", None)
    if pad_token_id is None:
        pad_token_id = getattr(tokenizer, "eos_token_id", None)
    if pad_token_id is not None:
        base.setdefault("pad_token_id", pad_token_id)
    greedy = {k: v for k, v in base.items() if k not in _SAMPLING_ONLY_KWARGS} | {"do_sample": False}
    asked = base | ({"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else greedy)

    started = time.perf_counter()
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    try:
        if do_sample and seed is not None:
            import torch

            torch.manual_seed(seed)
        return _generate_with_fallbacks(_Attempts(model, tokenizer, prompt, started), asked, greedy, do_sample)
    finally:
        if was_training and hasattr(model, "train"):
            model.train(True)


@dataclass
class _Attempts:
    """The generation attempts of one ``safe_generate`` call: what they share and the errors so far."""

    model: Any
    tokenizer: Any
    prompt: str
    started: float
    errors: list[str] = field(default_factory=list)

    def result(self, gen_kwargs: dict[str, Any], path: GenerationPath) -> GenerationResult:
        """Generate with ``gen_kwargs`` and pack it as taken by ``path``."""
        return _result(self.prompt, _generate_once(self.model, self.tokenizer, self.prompt, gen_kwargs), path,
                       self.errors, self.started)  # fmt: skip

    def attempt(
        self, gen_kwargs: dict[str, Any], path: GenerationPath, recoverable: Callable[[BaseException], bool]
    ) -> GenerationResult | Exception:
        """Return the result, or the ``recoverable`` exception it failed with (recorded); anything else propagates."""
        try:
            return self.result(gen_kwargs, path)
        except Exception as exc:
            if not recoverable(exc):
                raise
            self.errors.append(f"{path}: {short_error(exc)}")
            return exc


def _generate_with_fallbacks(
    attempts: _Attempts, asked: dict[str, Any], greedy: dict[str, Any], do_sample: bool
) -> GenerationResult:
    """As asked; then greedy on the same device (pointless when greedy was what failed); then greedy on the CPU."""
    outcome = attempts.attempt(asked, "as_asked", lambda exc: is_cuda_error(exc) or _is_sampling_error(exc))
    if isinstance(outcome, GenerationResult):
        return outcome
    if do_sample:
        _warn_fallback(f"generation failed ({short_error(outcome)}); retrying with greedy decoding", outcome)
        _free_cuda_memory()
        outcome = attempts.attempt(greedy, "greedy", is_cuda_error)
        if isinstance(outcome, GenerationResult):
            return outcome
    elif not is_cuda_error(outcome):
        raise outcome
    _warn_fallback(f"generation failed on CUDA ({short_error(outcome)}); moving the model to the CPU", outcome)
    _free_cuda_memory()
    try:
        attempts.model.to("cpu")
    except Exception as move_error:
        raise _unrecoverable(outcome, move_error) from outcome
    return attempts.result(greedy, "cpu")


def _warn_fallback(message: str, cause: BaseException) -> None:
    """Emit one warning for one fallback step: :class:`CudaFallbackWarning` when CUDA failed."""
    category = CudaFallbackWarning if is_cuda_error(cause) else ColabHelpersWarning
    # safe_generate -> _generate_with_fallbacks -> here: the warning points at safe_generate's caller
    warnings.warn(f"safe_generate: {message}", category, stacklevel=4)


def _result(
    prompt: str, generated: tuple[str, int, str], path: GenerationPath, errors: list[str], started: float
) -> GenerationResult:
    """Pack one successful attempt into a :class:`GenerationResult`."""
    text, new_tokens, device = generated
    if path != "as_asked":
        logger.info("safe_generate succeeded by the %r path on %s after: %s", path, device, "; ".join(errors))
    return GenerationResult(
        prompt=prompt,
        text=text,
        path=path,
        device=device,
        new_tokens=new_tokens,
        seconds=time.perf_counter() - started,
        errors=list(errors),
    )
