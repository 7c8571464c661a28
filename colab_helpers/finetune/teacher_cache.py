"""The teacher's top-k logits of every training sequence, computed once into safetensors shards
(``DistillConfig(teacher_cache=...)``), so distillation runs the teacher for one pass over the data, and a resumed or
repeated run not at all. Written atomically, manifest last; a cache of another teacher, data, ``top_k``,
``temperature`` or ``seq_len``, or a damaged one, is computed again with one warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ColabHelpersWarning
from ..runtime.cuda_fallback import is_cuda_oom
from ..runtime.files import atomic_path, atomic_write_text, ensure_writable_dir, size_mismatch
from ..runtime.modules import parameter_count
from .completions import CompletionBatch
from .lora import fingerprint_differences, model_fingerprint

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

MANIFEST = "cache.json"
_SHARD = "shard-{:05d}.safetensors"
_FORMAT = 1
_SHARD_BYTES = 256 << 20  # about this much per shard file


@dataclass
class TeacherCache:
    """The teacher's top-k logits of every training sequence (rows in the order of the training blocks), in CPU
    memory (``rows x length x (k x 8 + 4)`` bytes); a micro-batch's rows go to the device when used."""

    values: torch.Tensor  # [rows, length, k] float32 logits, largest first
    indices: torch.Tensor  # [rows, length, k] int32 token ids
    log_normalizer: torch.Tensor  # [rows, length] float32 logsumexp(logits / temperature) over the vocabulary
    directory: Path

    def lookup(self, rows: torch.Tensor, length: int, device: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(values, indices, log_normalizer)`` of the sequences ``rows`` cut to ``length`` positions, on
        ``device``."""
        values = self.values[rows, :length].to(device, non_blocking=True)
        indices = self.indices[rows, :length].to(device, non_blocking=True).long()
        return values, indices, self.log_normalizer[rows, :length].to(device, non_blocking=True)


def cache_fingerprint(teacher: Any, sequences: Any, top_k: int, temperature: float, seq_len: int) -> dict[str, Any]:
    """Return what a cache must have been computed for to be read: the teacher, the sequences, ``top_k``,
    ``temperature`` and ``seq_len``."""
    config = getattr(teacher, "config", None)
    identity = model_fingerprint(teacher, [])
    identity.pop("target_modules", None)
    identity["name_or_path"] = str(getattr(config, "_name_or_path", "") or getattr(config, "name_or_path", "") or "")
    identity["parameters"] = parameter_count(teacher)
    return {"teacher": identity, "sequences": _sequences_hash(sequences), "top_k": top_k,
            "temperature": temperature, "seq_len": seq_len}


def _sequences_hash(sequences: Any) -> dict[str, Any]:
    digest = hashlib.sha256()
    tensors = [sequences.input_ids, sequences.attention_mask] if isinstance(sequences, CompletionBatch) else [sequences]
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return {"sha256": digest.hexdigest()[:32], "shape": list(sequences.shape)}


def open_cache(
    directory: str | Path,
    fingerprint: dict[str, Any],
    sequences: Any,
    forward: Callable[[Any], tuple[torch.Tensor, ...]],
    micro_batch_size: int,
) -> TeacherCache:
    """Return the cache in ``directory`` when it matches ``fingerprint``; otherwise compute it with ``forward``
    (one warning when a cache was there but does not match or does not read) and return it."""
    directory = Path(directory).expanduser()
    cache, problem = read_cache(directory, fingerprint)
    if cache is not None:
        logger.info("distillation: reading the teacher's top-%d logits from %s", fingerprint["top_k"], directory)
        return cache
    if problem is not None:
        warnings.warn(
            f"teacher_cache {str(directory)!r} {problem}: computing it again (its files are replaced)",
            ColabHelpersWarning,
            stacklevel=5,  # open_cache <- Distiller._open_cache <- Distiller <- distill <- the caller
        )
    return build_cache(directory, fingerprint, sequences, forward, micro_batch_size)


def read_cache(directory: Path, fingerprint: dict[str, Any]) -> tuple[TeacherCache | None, str | None]:
    """Return ``(the cache, None)`` when ``directory`` holds a whole one matching ``fingerprint``, else ``(None,
    what is wrong)``; ``(None, None)`` when there is no manifest (no cache, or a build that never finished)."""
    import torch
    from safetensors.torch import load_file

    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return None, None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        saved, shards = manifest["fingerprint"], list(manifest["shards"])
        if manifest.get("format") != _FORMAT:
            return None, f"has format {manifest.get('format')!r}, not {_FORMAT}"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"has a damaged {MANIFEST} ({type(exc).__name__})"
    diffs = fingerprint_differences(saved, fingerprint)
    if diffs:
        return None, f"was computed for another teacher or data (cache vs now: {'; '.join(diffs)})"
    problem = size_mismatch(directory, {shard["file"]: shard["bytes"] for shard in shards})
    if problem is not None:
        return None, f"is incomplete ({problem})"
    try:
        parts = [load_file(str(directory / shard["file"])) for shard in shards]
        values = torch.cat([part["values"] for part in parts])
        indices = torch.cat([part["indices"] for part in parts])
        log_normalizer = torch.cat([part["log_normalizer"] for part in parts])
    except Exception as exc:  # noqa: BLE001 - any failure to read means: compute it again
        return None, f"cannot be read ({type(exc).__name__}: {str(exc)[:120]})"
    rows, length = fingerprint["sequences"]["shape"]
    shape = (rows, length, fingerprint["top_k"])
    if tuple(values.shape) != shape or values.shape != indices.shape or log_normalizer.shape != shape[:2]:
        return None, f"holds logits of shape {tuple(values.shape)}, not {shape}"
    return TeacherCache(values, indices, log_normalizer, directory), None


def build_cache(
    directory: Path,
    fingerprint: dict[str, Any],
    sequences: Any,
    forward: Callable[[Any], tuple[torch.Tensor, ...]],
    micro_batch_size: int,
) -> TeacherCache:
    """Compute the teacher's top-k logits of every row of ``sequences`` with ``forward`` (a micro-batch -> CPU
    ``(values, indices, log_normalizer)``), write them to ``directory`` atomically, manifest last, and return the cache. An
    out-of-memory error halves the micro-batch and retries."""
    import torch
    from safetensors.torch import save_file

    directory = ensure_writable_dir(directory)
    (directory / MANIFEST).unlink(missing_ok=True)  # from here on the folder holds no cache until it is whole
    for old in directory.glob("shard-*.safetensors"):
        old.unlink()
    rows, length = fingerprint["sequences"]["shape"]
    per_shard = max(1, _SHARD_BYTES // max(1, length * (fingerprint["top_k"] * 8 + 4)))
    logger.info("distillation: computing the teacher's top-%d logits of %d sequences into %s", fingerprint["top_k"],
                rows, directory)  # fmt: skip
    names = ("values", "indices", "log_normalizer")
    done: list[dict[str, torch.Tensor]] = []  # the shards written
    pending: list[dict[str, torch.Tensor]] = []  # micro-batches not written yet
    pending_rows = 0
    shards: list[dict[str, Any]] = []
    start, size = 0, micro_batch_size
    while start < rows:
        chunk = sequences[start : start + size]
        try:
            values, indices, log_normalizer = forward(chunk)
        except Exception as exc:
            if not is_cuda_oom(exc) or size == 1:
                raise
            size = max(1, size // 2)
            logger.warning("out of memory computing the teacher cache: micro-batch halved to %d", size)
            continue
        pending.append({"values": values.float().cpu(), "indices": indices.to(torch.int32).cpu(),
                        "log_normalizer": log_normalizer.float().cpu()})  # fmt: skip
        start += len(chunk)
        pending_rows += len(chunk)
        if pending_rows >= per_shard or start >= rows:
            shard = {name: torch.cat([part[name] for part in pending]).contiguous() for name in names}
            pending, pending_rows = [], 0
            file = _SHARD.format(len(shards))
            with atomic_path(directory / file) as tmp:
                save_file(shard, str(tmp))
            shards.append({"file": file, "rows": len(shard["values"]), "bytes": (directory / file).stat().st_size})
            done.append(shard)
    manifest = {"format": _FORMAT, "fingerprint": fingerprint, "shards": shards}
    atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    whole = {name: torch.cat([shard[name] for shard in done]) for name in names}
    return TeacherCache(whole["values"], whole["indices"], whole["log_normalizer"], directory)
