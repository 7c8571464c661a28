"""The batching engine behind the server: one background thread owns the model and decodes every running request
together, one token per step, with one batched KV cache.

Each step admits waiting requests up to ``max_batch_size``, prefills each new one alone (no padding, so its first
token is exactly what ``generate`` gives), merges its cache into the running batch by left-padding the shorter
side, decodes one token for every running sequence, streams text out through each request's sink and retires the
finished ones (the cache's all-padding columns are dropped then). Every tensor op runs in this thread only.

Why not transformers' own continuous batching (``generate_batch`` / ``ContinuousBatchingManager``): its paged KV
cache is sized from the config's single ``num_key_value_heads``, so a model with per-layer head counts (what
``remove_heads`` / ``compress`` make) fails at its first step (transformers 5.25, CPU: ``RuntimeError:
index_copy_(): Source/destination tensor must have same slice shapes. Destination slice shape: 2 8 ... source slice
shape: 1 8``). A DynamicCache holds one tensor per layer, of whatever head count that layer has.
"""

from __future__ import annotations

import collections
import inspect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..checks import check_integer, check_number, check_positive_integer, is_integer

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

FINISH_REASONS = ("stop", "length", "error")


class QueueFullError(RuntimeError):
    """The waiting queue holds ``max_queue`` requests: the server answers 429 (try again later)."""


class EngineStoppedError(RuntimeError):
    """The engine stopped admitting requests (shutting down): the server answers 503."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded: greedy when ``temperature`` is 0, else sampled (seeded when ``seed`` is set)."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # decode to max_tokens through end-of-text (fixed-length load tests, as vLLM offers)

    def __post_init__(self) -> None:
        check_positive_integer(self.max_tokens, "max_tokens", fix="e.g. max_tokens=64")
        check_number(self.temperature, "temperature", low=0, high=2, low_inclusive=True, high_inclusive=True,
                     fix="0 is greedy, 0.7 a usual sampling temperature")  # fmt: skip
        check_number(self.top_p, "top_p", low=0, high=1, high_inclusive=True, fix="e.g. top_p=0.9, or 1 for all tokens")
        if self.seed is not None:
            check_integer(self.seed, "seed", least=0, fix="a non-negative integer, or leave it out")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a tuple of non-empty strings, got {self.stop!r}")
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be True or False, got {self.ignore_eos!r}")


@dataclass(frozen=True)
class Event:
    """What a request's sink receives: a piece of text, then one last event with ``finish_reason`` set."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Completion:
    """The whole answer to one request (:meth:`Engine.generate`)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    token_ids: tuple[int, ...] = ()


@dataclass(eq=False)
class Ticket:
    """One submitted request; ``cancel()`` retires it at the next step (a client that went away)."""

    prompt_ids: tuple[int, ...]
    params: SamplingParams
    sink: Callable[[Event], None]
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    generated: list[int] = field(default_factory=list)
    sent: int = 0  # characters of the answer already sent
    produced: int = 0  # tokens decoded, an end-of-text token included (what usage.completion_tokens counts)
    generator: Any = None  # torch.Generator of a seeded sampled request

    def cancel(self) -> None:
        """Stop decoding this request; its sink gets no more events."""
        self.cancelled = True


class _Batch:
    """The running sequences and their one left-padded KV cache (``[rows, heads, columns, head_dim]`` per layer)."""

    def __init__(self) -> None:
        self.tickets: list[Ticket] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # [rows, columns]: 1 where a column holds a real token of that row
        self.next_ids: list[int] = []  # the token each row feeds at the next step
        self.positions: list[int] = []  # real tokens each row has in the cache

    def add(self, tickets: list[Ticket], cache: Any, mask: torch.Tensor, next_ids: list[int]) -> None:
        """Merge prefilled sequences (their left-padded cache and mask) into the batch."""
        import torch

        from .growing_cache import grow_in_place

        if self.cache is None:  # the batch's cache from now on: appended in place at every decoding step
            self.cache, self.mask = grow_in_place(cache), mask
        else:
            columns = max(self.mask.shape[1], mask.shape[1])
            for mine, theirs in zip(_layers(self.cache), _layers(cache), strict=True):
                mine.keys = torch.cat([_pad_left(mine.keys, columns), _pad_left(theirs.keys, columns)])
                mine.values = torch.cat([_pad_left(mine.values, columns), _pad_left(theirs.values, columns)])
            self.mask = torch.cat([_pad_left(self.mask, columns), _pad_left(mask, columns)])
        self.tickets += tickets
        self.next_ids += next_ids
        self.positions += [int(row.sum()) for row in mask]

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows``."""
        if not rows:
            self.__init__()
            return
        self.mask = _select_rows(self.cache, self.mask, rows)
        self.tickets = [self.tickets[r] for r in rows]
        self.next_ids = [self.next_ids[r] for r in rows]
        self.positions = [self.positions[r] for r in rows]


def _select_rows(cache: Any, mask: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    """Keep ``rows`` of ``cache`` (in place) and of ``mask``, dropping the columns that are padding in every kept
    row; return the new mask."""
    import torch

    index = torch.tensor(list(rows), device=mask.device)
    mask = mask[index]
    first = int(mask.any(dim=0).nonzero()[0])
    for layer in _layers(cache):
        layer.keys, layer.values = layer.keys[index, :, first:], layer.values[index, :, first:]
    return mask[:, first:]


def _layers(cache: Any) -> list[Any]:
    """The layers of a DynamicCache; a cache of another kind (sliding window, static) cannot be re-batched here."""
    layers = getattr(cache, "layers", None)
    if layers is None or any(getattr(layer, "is_sliding", False) or not hasattr(layer, "keys") for layer in layers):
        raise NotImplementedError(
            f"the batching engine re-batches a plain DynamicCache; this model returned {type(cache).__name__} with "
            "sliding-window or static layers, which it does not serve yet; use `transformers serve` for this model"
        )
    return layers


def _cache_device(cache: Any) -> torch.device:
    return _layers(cache)[0].keys.device


def _pad_left(tensor: torch.Tensor, columns: int) -> torch.Tensor:
    """``tensor`` with zeros added on the left of its sequence axis (dim 2 of keys / values, dim 1 of a mask)."""
    import torch.nn.functional as F

    axis = 2 if tensor.dim() == 4 else 1
    missing = columns - tensor.shape[axis]
    if missing == 0:
        return tensor
    pad = [0, 0, missing, 0] if axis == 2 else [missing, 0]
    return F.pad(tensor, pad)


def context_length(model: Any) -> int:
    """The longest sequence ``model`` reads (``max_position_embeddings`` or ``n_positions``); 2048 when unsaid."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if is_integer(value) and value > 0:
            return int(value)
    return 2048


class Engine:
    """Serve ``model`` to many requests at once: :meth:`submit` queues a request, a background thread decodes.

    ``max_queue`` bounds the requests waiting to be admitted (past it :meth:`submit` raises QueueFullError);
    ``max_batch_size`` the sequences decoded together. Listeners added with :meth:`add_step_listener` get the batch
    size of every decode step (the server's histogram).
    """

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_size: int = 16, max_queue: int = 64) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size = check_positive_integer(max_batch_size, "max_batch_size", fix="e.g. max_batch_size=8")
        self.max_queue = check_positive_integer(max_queue, "max_queue", fix="e.g. max_queue=64")
        self.context_length = context_length(model)
        self.eos_ids = _eos_ids(model, tokenizer)
        parameters = inspect.signature(model.forward).parameters
        # ``cache`` since transformers 5.25; ``past_key_values`` before, and in modeling code shipped in a folder
        self._cache_keyword = "cache" if "cache" in parameters else "past_key_values"
        self._last_logits = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}  # prefill: last row only
        self._pad_id = tokenizer.pad_token_id if is_integer(tokenizer.pad_token_id) else min(self.eos_ids, default=0)
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._batch = _Batch()
        self._wake = threading.Condition()
        self._resumed = threading.Event()
        self._resumed.set()
        self._accepting = True
        self._listeners: list[Callable[[int], None]] = []
        self._thread: threading.Thread | None = None

    @property
    def queue_depth(self) -> int:
        """Requests waiting to be admitted."""
        return len(self._waiting)

    @property
    def active_sequences(self) -> int:
        """Sequences in the running batch."""
        return len(self._batch.tickets)

    @property
    def accepting(self) -> bool:
        """False once :meth:`stop` was called."""
        return self._accepting

    def add_step_listener(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(batch_size)`` after every decode step (in the engine's thread: keep it quick)."""
        self._listeners.append(listener)

    def start(self) -> Engine:
        """Start the decoding thread; return self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="colab-helpers-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> bool:
        """Stop admitting; with ``drain`` finish every queued and running request first. True when the thread ended."""
        with self._wake:
            self._accepting = False
            if not drain:
                for ticket in [*self._waiting, *self._batch.tickets]:
                    ticket.cancel()
            self._wake.notify_all()
        self.resume()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def pause(self) -> None:
        """Hold every request where it is (queued or running) until :meth:`resume`."""
        self._resumed.clear()

    def resume(self) -> None:
        """Carry on after :meth:`pause`."""
        self._resumed.set()

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams, sink: Callable[[Event], None]) -> Ticket:
        """Queue a request; ``sink`` gets its events from the engine's thread. Raises QueueFullError when the queue
        holds ``max_queue`` requests, EngineStoppedError after :meth:`stop`, ValueError for a prompt that does not fit."""
        ids = tuple(int(i) for i in prompt_ids)
        if not ids or len(ids) >= self.context_length:
            raise ValueError(f"the prompt has {len(ids)} tokens; the model reads at most {self.context_length} "
                             f"(prompt and answer together): send between 1 and {self.context_length - 1}")  # fmt: skip
        ticket = Ticket(ids, params, sink)
        with self._wake:
            if not self._accepting:
                raise EngineStoppedError("the server is shutting down and admits no new requests")
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} requests are waiting (max_queue={self.max_queue})")
            self._waiting.append(ticket)
            self._wake.notify_all()
        return ticket

    def generate(self, prompt_ids: Sequence[int], params: SamplingParams | None = None,
                 timeout: float | None = None) -> Completion:  # fmt: skip
        """Submit a request and wait for its whole answer (the engine must be started)."""
        done = threading.Event()
        parts: list[Event] = []

        def sink(event: Event) -> None:
            parts.append(event)
            if event.finish_reason is not None:
                done.set()

        ticket = self.submit(prompt_ids, params or SamplingParams(), sink)
        if not done.wait(timeout):
            ticket.cancel()
            raise TimeoutError(f"no answer within {timeout} s")
        last = parts[-1]
        if last.error:
            raise RuntimeError(last.error)
        return Completion("".join(p.text for p in parts), last.finish_reason, last.prompt_tokens,
                          last.completion_tokens, tuple(ticket.generated))  # fmt: skip

    # -- the engine's thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while self._wait_for_work():
                self._resumed.wait()
                try:
                    self._admit()
                    if self._batch.tickets:
                        self._decode()
                except Exception as exc:  # noqa: BLE001 - one failed step ends its requests, never the server
                    logger.exception("decoding step failed; ending the requests it held")
                    self._fail_all(f"{type(exc).__name__}: {exc}")

    def _wait_for_work(self) -> bool:
        """Block until there is something to do; False when stopped and nothing is left."""
        with self._wake:
            while not self._waiting and not self._batch.tickets:
                if not self._accepting:
                    return False
                self._wake.wait()
            return True

    def _admit(self) -> None:
        """Prefill waiting requests, together, while the batch has room."""
        if any(t.cancelled for t in self._batch.tickets):
            self._batch.keep([r for r, t in enumerate(self._batch.tickets) if not t.cancelled])
        new: list[Ticket] = []
        with self._wake:
            while self._waiting and len(self._batch.tickets) + len(new) < self.max_batch_size:
                ticket = self._waiting.popleft()
                if not ticket.cancelled:
                    new.append(ticket)
        if new:
            self._prefill(new)

    def _prefill(self, tickets: list[Ticket]) -> None:
        """Run the prompts of ``tickets`` together (left-padded), pick each first token, add the unfinished ones."""
        import torch

        device, width = self.model.device, max(len(t.prompt_ids) for t in tickets)
        ids = torch.full((len(tickets), width), self._pad_id, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for row, ticket in enumerate(tickets):
            ids[row, width - len(ticket.prompt_ids):] = torch.tensor(ticket.prompt_ids, device=device)
            mask[row, width - len(ticket.prompt_ids):] = 1
            if ticket.params.seed is not None:
                ticket.generator = torch.Generator(device=device).manual_seed(ticket.params.seed)
        try:
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                             use_cache=True, **self._last_logits)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - these requests fail, the batch goes on
            logger.exception("prefill failed")
            for ticket in tickets:
                self._send(ticket, Event(finish_reason="error", error=f"{type(exc).__name__}: {exc}"))
            return
        cache, keep, next_ids = _cache_of(out), [], []
        for layer in _layers(cache):  # padding columns hold what the pad token computed: zeros instead
            layer.keys = torch.where(mask[:, None, :, None].bool(), layer.keys, 0)
            layer.values = torch.where(mask[:, None, :, None].bool(), layer.values, 0)
        tokens = self._pick_all(out.logits[:, -1], tickets)
        for row, ticket in enumerate(tickets):
            token = tokens[row]
            if self._advance(ticket, token, len(ticket.prompt_ids) + 1):
                keep.append(row)
                next_ids.append(token)
        if keep:
            self._batch.add([tickets[r] for r in keep], cache, _select_rows(cache, mask, keep), next_ids)

    def _decode(self) -> None:
        """One token for every running sequence."""
        import torch

        batch = self._batch
        device = batch.mask.device
        ids = torch.tensor(batch.next_ids, device=device).unsqueeze(1)
        mask = torch.cat([batch.mask, torch.ones(len(ids), 1, dtype=batch.mask.dtype, device=device)], dim=1)
        positions = torch.tensor(batch.positions, device=device).unsqueeze(1)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **{self._cache_keyword: batch.cache})  # fmt: skip
        batch.cache, batch.mask = _cache_of(out), mask
        keep = []
        tokens = self._pick_all(out.logits[:, -1], batch.tickets)
        for row, ticket in enumerate(batch.tickets):
            token = tokens[row]
            batch.positions[row] += 1
            batch.next_ids[row] = token
            if not ticket.cancelled and self._advance(ticket, token, batch.positions[row] + 1):
                keep.append(row)
        for listener in self._listeners:
            listener(len(batch.tickets))
        if len(keep) < len(batch.tickets):  # re-index the cache only when a sequence left
            batch.keep(keep)

    def _pick_all(self, logits: torch.Tensor, tickets: Sequence[Ticket]) -> list[int]:
        """The next token of every row of ``logits`` (``[rows, vocab]``): one argmax for the whole batch (one op and
        one host sync per step, not one per row), then a sample for the rows that ask for sampling."""
        tokens = logits.argmax(dim=-1).tolist()
        for row, ticket in enumerate(tickets):
            if ticket.params.temperature != 0:
                tokens[row] = self._pick(logits[row], ticket)
        return tokens

    def _pick(self, logits: torch.Tensor, ticket: Ticket) -> int:
        """The next token: the most likely one, or a sample after temperature and top-p (transformers' warpers)."""
        import torch
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        params = ticket.params
        if params.temperature == 0:
            return int(logits.argmax())
        scores = TemperatureLogitsWarper(params.temperature)(None, logits.float().unsqueeze(0))
        if params.top_p < 1:
            scores = TopPLogitsWarper(params.top_p, min_tokens_to_keep=1)(None, scores)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=ticket.generator))

    def _advance(self, ticket: Ticket, token: int, length: int) -> bool:
        """Record ``token`` for ``ticket``, send the new text; True while it goes on, False once it finished."""
        params, finish = ticket.params, None
        ticket.produced += 1
        if token in self.eos_ids and not params.ignore_eos:
            finish = "stop"
        else:
            ticket.generated.append(token)
        text = self.tokenizer.decode(ticket.generated, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in params.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        elif finish is None and (len(ticket.generated) >= params.max_tokens or length >= self.context_length):
            finish = "length"
        ready = text if finish else text[: len(text) - _held_back(text, params.stop)]
        if len(ready) > ticket.sent:
            self._send(ticket, Event(text=ready[ticket.sent:]))
            ticket.sent = len(ready)
        if finish is None:
            return True
        self._send(ticket, Event(finish_reason=finish, prompt_tokens=len(ticket.prompt_ids),
                                 completion_tokens=ticket.produced))  # fmt: skip
        return False

    def _send(self, ticket: Ticket, event: Event) -> None:
        if ticket.cancelled:
            return
        try:
            ticket.sink(event)
        except Exception:  # noqa: BLE001 - a sink that fails (its client left) ends that request only
            logger.debug("a request's sink failed; cancelling it", exc_info=True)
            ticket.cancel()

    def _fail_all(self, message: str) -> None:
        for ticket in self._batch.tickets:
            self._send(ticket, Event(finish_reason="error", error=message))
        self._batch = _Batch()


def _cache_of(output: Any) -> Any:
    cache = output.get("cache") if hasattr(output, "get") else None
    return cache if cache is not None else output.past_key_values


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of ``text`` not to send yet: a half-decoded character, or the start of a stop string."""
    if text.endswith("\ufffd"):  # a multi-byte character split across tokens: wait for its other bytes
        return len(text) - len(text.rstrip("\ufffd"))
    return max((n for s in stops for n in range(len(s) - 1, 0, -1) if text.endswith(s[:n])), default=0)


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """The ids that end an answer: the generation config's eos (one id or a list) and the tokenizer's."""
    found: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if is_integer(item) and item >= 0:
                found.add(int(item))
    return frozenset(found)
