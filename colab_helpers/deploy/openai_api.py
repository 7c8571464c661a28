"""OpenAI's request and response shapes for ``/v1/completions`` and ``/v1/chat/completions``: a request body checked
field by field before any work (errors name the field, in OpenAI's error shape), and the answers and stream chunks.

Fields we do not use (``user``, ``presence_penalty``, ``logprobs`` ...) are ignored, as OpenAI-compatible servers do;
``n`` other than 1 is refused. ``ignore_eos: true`` (vLLM's extension) decodes to ``max_tokens`` through end-of-text,
for load tests of fixed length. ``model`` may name anything: the server serves one model and answers with its name.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..checks import is_integer
from .engine import SamplingParams

ROLES = ("system", "user", "assistant", "tool", "developer")
MAX_STOPS = 4  # OpenAI's limit on stop strings


class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` and a message naming ``param``, the field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def body(self) -> dict[str, Any]:
        """OpenAI's error object: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


@dataclass(frozen=True)
class ParsedRequest:
    """A checked request: the prompt (text, token ids, or chat messages), how to decode it, whether to stream."""

    params: SamplingParams
    stream: bool
    model: str | None
    prompt: str | list[int] | None = None
    messages: tuple[dict[str, str], ...] = ()


def parse_body(raw: bytes, max_bytes: int) -> dict[str, Any]:
    """The JSON object in ``raw``; ApiError for a body too large, not UTF-8, not JSON, or not an object."""
    if len(raw) > max_bytes:
        raise ApiError(413, f"body has {len(raw)} bytes, more than the server's limit of {max_bytes}", "body")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"body is not valid UTF-8 ({exc.reason} at byte {exc.start}); send JSON encoded as UTF-8",
                       "body") from exc  # fmt: skip
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", "body") from exc
    if not isinstance(body, dict):
        raise ApiError(400, f"body must be a JSON object, got {type(body).__name__}", "body")
    return body


def parse_completion(body: dict[str, Any], max_tokens: int, default_max_tokens: int) -> ParsedRequest:
    """Check a ``/v1/completions`` body: ``prompt`` (text, or a list of token ids) and the common fields."""
    if "prompt" not in body:
        raise ApiError(400, "prompt is missing; send {\"prompt\": \"Once upon a time\", ...}", "prompt")
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # one prompt in a list, as some clients send it
    if isinstance(prompt, str):
        if not prompt:
            raise ApiError(400, "prompt is empty; send at least one character", "prompt")
    elif not (isinstance(prompt, list) and prompt and all(is_integer(i) and i >= 0 for i in prompt)):
        raise ApiError(400, f"prompt must be a non-empty string or a list of token ids, got {_shown(prompt)}; "
                       "one prompt per request", "prompt")  # fmt: skip
    return ParsedRequest(_params(body, max_tokens, default_max_tokens), _stream(body), _model(body), prompt=prompt)


def parse_chat(body: dict[str, Any], max_tokens: int, default_max_tokens: int) -> ParsedRequest:
    """Check a ``/v1/chat/completions`` body: ``messages`` (role and text content each) and the common fields."""
    messages = body.get("messages")
    if "messages" not in body:
        raise ApiError(400, "messages is missing; send {\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}",
                       "messages")  # fmt: skip
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, f"messages must be a non-empty list of messages, got {_shown(messages)}", "messages")
    checked = tuple(_message(m, f"messages[{i}]") for i, m in enumerate(messages))
    if "max_completion_tokens" in body and "max_tokens" not in body:
        body = {**body, "max_tokens": body["max_completion_tokens"]}
    return ParsedRequest(_params(body, max_tokens, default_max_tokens), _stream(body), _model(body), messages=checked)


def _message(message: Any, where: str) -> dict[str, str]:
    if not isinstance(message, dict):
        raise ApiError(400, f"{where} must be an object with role and content, got {_shown(message)}", where)
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise ApiError(400, f"{where}.role must be one of {ROLES}, got {_shown(role)}", f"{where}.role")
    if isinstance(content, list):  # content parts: keep the text ones
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise ApiError(400, f"{where}.content parts must be {{\"type\": \"text\", \"text\": ...}}; only text is "
                           "served", f"{where}.content")  # fmt: skip
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ApiError(400, f"{where}.content must be a string, got {_shown(content)}", f"{where}.content")
    return {"role": role, "content": content}


def _params(body: dict[str, Any], cap: int, default_max_tokens: int) -> SamplingParams:
    """The decoding settings of ``body``, each field checked on its own so that the error names it."""
    max_tokens = body.get("max_tokens")
    max_tokens = min(default_max_tokens, cap) if max_tokens is None else max_tokens
    if not is_integer(max_tokens) or not 1 <= max_tokens <= cap:
        raise ApiError(400, f"max_tokens must be an integer in [1, {cap}] (this server's --max-tokens), got "
                       f"{_shown(max_tokens)}", "max_tokens")  # fmt: skip
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)  # OpenAI's default; 0 is greedy
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise ApiError(400, "top_p must be in (0, 1], got 0; use temperature 0 for greedy decoding", "top_p")
    seed = body.get("seed")
    if seed is not None and not (is_integer(seed) and seed >= 0):
        raise ApiError(400, f"seed must be a non-negative integer, got {_shown(seed)}", "seed")
    n = body.get("n", 1)
    if n != 1 or isinstance(n, bool):
        raise ApiError(400, f"n must be 1 (one answer per request), got {_shown(n)}", "n")
    ignore_eos = body.get("ignore_eos", False)  # vLLM's extension: fixed-length answers for load tests
    if not isinstance(ignore_eos, bool):
        raise ApiError(400, f"ignore_eos must be true or false, got {_shown(ignore_eos)}", "ignore_eos")
    return SamplingParams(int(max_tokens), float(temperature), float(top_p), seed, _stops(body.get("stop")), ignore_eos)


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError(400, f"{name} must be a number in [{low:g}, {high:g}], got {_shown(value)}", name)
    return float(value)


def _stops(stop: Any) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise ApiError(400, f"stop must be a non-empty string or a list of up to {MAX_STOPS}, got {_shown(stop)}",
                       "stop")  # fmt: skip
    return tuple(stops)


def _stream(body: dict[str, Any]) -> bool:
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false, got {_shown(stream)}", "stream")
    return stream


def _model(body: dict[str, Any]) -> str | None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, f"model must be a string, got {_shown(model)}", "model")
    return model


def _shown(value: Any) -> str:
    """``value`` as given, cut short (a message never echoes a whole prompt), with its JSON type."""
    text = json.dumps(value)[:60] if _jsonable(value) else repr(value)[:60]
    return f"{text} ({type(value).__name__})"


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def new_id(chat: bool) -> str:
    """A fresh answer id: ``chatcmpl-...`` or ``cmpl-...``."""
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


def answer(chat: bool, answer_id: str, model: str, text: str, finish: str, tokens: tuple[int, int]) -> dict[str, Any]:
    """The whole (non-streamed) answer: ``text_completion`` or ``chat.completion``."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice |= {"text": text, "logprobs": None}
    return {"id": answer_id, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": usage(*tokens)}  # fmt: skip


def chunk(chat: bool, answer_id: str, model: str, text: str | None, finish: str | None = None,
          tokens: tuple[int, int] | None = None) -> str:  # fmt: skip
    """One server-sent event of a streamed answer (``data: {...}``); the last one has ``finish_reason`` and usage.

    A chat stream's first chunk (``text=None``) carries the role, as OpenAI's does."""
    if chat:
        delta = {"role": "assistant", "content": ""} if text is None else {"content": text} if text else {}
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    event: dict[str, Any] = {"id": answer_id, "object": "chat.completion.chunk" if chat else "text_completion",
                             "created": int(time.time()), "model": model, "choices": [choice]}  # fmt: skip
    if tokens is not None:
        event["usage"] = usage(*tokens)
    return f"data: {json.dumps(event)}\n\n"


DONE = "data: [DONE]\n\n"


def chat_prompt_ids(tokenizer: Any, messages: tuple[dict[str, str], ...]) -> list[int]:
    """The prompt of a chat: the tokenizer's chat template with the assistant's turn opened; a tokenizer without a
    template (the embedded toys) gets ``role: content`` lines and ``assistant:``."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return list(tokenizer(text)["input_ids"])
