"""Who a run is: its id (sortable, unique across processes) and its config's fingerprint (equal configs, equal hashes).

:class:`~.tracking.RunManager` names run folders and rows with :func:`new_run_id` and resumes a sweep by
:func:`config_hash`: a config whose fingerprint has a ``done`` run is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..runtime.records import to_jsonable

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_id_lock = threading.Lock()
_last_id_ms = 0


def new_run_id() -> str:
    """Return a fresh run id such as ``20261123-003512-345-ab12cd``: UTC time to the millisecond + 6 random hex.

    Ids sort in creation order (strictly within a process, to the millisecond across processes); the random
    part keeps processes apart, and ``RunManager.new_run`` claims the directory atomically as a last guard.
    """
    global _last_id_ms
    with _id_lock:
        ms = max(time.time_ns() // 1_000_000, _last_id_ms + 1)
        _last_id_ms = ms
    stamp = datetime.fromtimestamp(ms / 1000, UTC)
    return f"{stamp:%Y%m%d-%H%M%S}-{ms % 1000:03d}-{os.urandom(3).hex()}"


def claim_run_dir(parent: Path) -> tuple[str, Path]:
    """Return a fresh run id and its directory under ``parent``, created atomically (an id another process took
    meanwhile is skipped)."""
    for _ in range(100):
        run_id = new_run_id()
        path = parent / run_id
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return run_id, path
    raise RuntimeError(f"could not create a new run directory under {parent}")  # pragma: no cover


def check_run_id(run_id: str) -> str:
    """Return ``run_id`` when it can name a run folder; else ValueError saying what an id may hold."""
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        raise ValueError(
            f"run_id must be 1-128 letters, digits, '.', '_' or '-' (starting with a letter or digit), "
            f"got {run_id!r}; leave run_id=None to get a generated one"
        )
    return run_id


def config_hash(config: Mapping[str, Any]) -> str:
    """Return a 12-hex fingerprint of ``config`` (key order does not matter); equal configs, equal hashes."""
    text = json.dumps(to_jsonable(config, keep_nonfinite=True), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


__all__ = ["RUN_ID", "check_run_id", "claim_run_dir", "config_hash", "new_run_id"]
