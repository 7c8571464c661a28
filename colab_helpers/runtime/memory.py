"""Memory at a glance: RAM, process, GPU and disk figures, their peak during a block, and freeing caches.

Sizes are in powers of 1024 and labelled ``KB``/``MB``/``GB`` the way Colab's resource panel and
``nvidia-smi`` show them, so the numbers here match what a user sees there.

torch is imported only inside the functions that read CUDA figures; ``free_memory`` never imports it.
"""

from __future__ import annotations

import contextlib
import gc
import html
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib.util import find_spec
from typing import Any

from .kernel import in_kernel

logger = logging.getLogger(__name__)

_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")
_SAMPLE_INTERVAL_S = 0.005  # 5 ms: a 100 MB allocation takes longer than that to touch its pages
_WARN_FRACTION = 0.75  # progress bars turn orange above this share of the total
_DANGER_FRACTION = 0.90  # ... and red above this one


def format_bytes(n: float | None, *, precision: int = 1) -> str:
    """Return ``n`` bytes as a short human string (``"1.5 GB"``, ``"512 B"``, ``"n/a"`` for None).

    Units are powers of 1024 labelled as Colab and nvidia-smi label them; negative values (deltas) keep
    their sign; values of 100 units or more are shown without decimals.
    """
    if n is None:
        return "n/a"
    if precision < 0:
        raise ValueError(f"precision must be >= 0, got {precision}")
    value, unit = _scale(float(n))
    if unit == "B":
        return f"{int(round(value))} B"
    digits = 0 if abs(value) >= 100 else precision
    return f"{value:.{digits}f} {unit}"


def _scale(n: float, unit: str | None = None) -> tuple[float, str]:
    """Return ``n`` expressed in ``unit`` (or the largest unit that keeps it >= 1) and that unit."""
    if unit is not None:
        return n / 1024 ** _UNITS.index(unit), unit
    index = 0
    while abs(n) >= 1024 and index < len(_UNITS) - 1:
        n /= 1024
        index += 1
    return n, _UNITS[index]


def _format_pair(used: float, total: float) -> str:
    """Return ``"3.1/12.7 GB"``: both numbers in the unit that suits ``total``."""
    _, unit = _scale(float(total))
    if unit == "B":
        return f"{int(used)}/{int(total)} B"
    return f"{_scale(float(used), unit)[0]:.1f}/{_scale(float(total), unit)[0]:.1f} {unit}"


@dataclass(frozen=True)
class MemorySnapshot:
    """Memory figures at one moment, in bytes. CUDA fields are None when no CUDA device is usable.

    ``ram_used`` is ``ram_total - ram_available`` (what the machine cannot hand out now, caches excluded);
    ``cuda_allocated``/``cuda_reserved``/``cuda_peak`` are torch's allocator figures for this process on
    the current device; ``cuda_total``/``cuda_free`` are the device's, every process included.
    ``taken_at`` is a Unix time stamp.
    """

    ram_total: int
    ram_available: int
    ram_used: int
    process_rss: int
    cuda_allocated: int | None
    cuda_reserved: int | None
    cuda_peak: int | None
    cuda_total: int | None
    cuda_free: int | None
    disk_free: int
    taken_at: float

    def gigabytes(self) -> dict[str, float]:
        """Return the figures worth plotting over time, in GB (GPU ones only with CUDA): ``LivePlot`` input."""
        figures = {"RAM used (GB)": self.ram_used / 1e9, "process RSS (GB)": self.process_rss / 1e9}
        if self.cuda_allocated is not None:
            figures["GPU allocated (GB)"] = self.cuda_allocated / 1e9
        return figures

    def summary(self) -> str:
        """One line: ``RAM 3.1/12.7 GB (process 1.2 GB) | GPU 2.0/15.0 GB (peak 3.1) | disk 60 GB free``."""
        parts = [f"RAM {_format_pair(self.ram_used, self.ram_total)} (process {format_bytes(self.process_rss)})"]
        if self.cuda_total is not None:
            allocated = self.cuda_allocated or 0
            _, unit = _scale(float(self.cuda_total))
            peak = _scale(float(self.cuda_peak or 0), unit)[0]
            parts.append(f"GPU {_format_pair(allocated, self.cuda_total)} (peak {peak:.1f})")
        parts.append(f"disk {format_bytes(self.disk_free, precision=0)} free")
        return " | ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-serializable dict."""
        return asdict(self)


@dataclass
class PeakMemory:
    """Filled by ``track_peak_memory`` when its block ends (fields are None until then).

    ``peak_rss_bytes`` is the highest resident set size of this process seen during the block and
    ``rss_delta_bytes`` that peak minus the size at the start; ``peak_cuda_bytes`` is torch's
    ``max_memory_allocated`` over the block (None without CUDA) and ``cuda_delta_bytes`` that peak minus
    what was allocated at the start.
    """

    start_rss_bytes: int | None = None
    peak_rss_bytes: int | None = None
    rss_delta_bytes: int | None = None
    peak_cuda_bytes: int | None = None
    cuda_delta_bytes: int | None = None
    seconds: float | None = None

    def summary(self) -> str:
        """One line: ``peak RSS 2.1 GB (+1.3 GB) | peak GPU 3.0 GB (+2.5 GB) | 12.3 s``."""
        parts = [f"peak RSS {format_bytes(self.peak_rss_bytes)} ({_signed(self.rss_delta_bytes)})"]
        if self.peak_cuda_bytes is not None:
            parts.append(f"peak GPU {format_bytes(self.peak_cuda_bytes)} ({_signed(self.cuda_delta_bytes)})")
        if self.seconds is not None:
            parts.append(f"{self.seconds:.1f} s")
        return " | ".join(parts)


def _signed(n: int | None) -> str:
    """Return a byte delta with its sign: ``"+1.2 GB"``, ``"-3.0 MB"``, ``"n/a"``."""
    return format_bytes(n) if n is None or n < 0 else "+" + format_bytes(n)


def _rss() -> int:
    """Return this process's resident set size in bytes."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def _cuda() -> Any | None:
    """Return ``torch.cuda`` when torch is installed and a CUDA device is usable, else None.

    Imports torch if it is installed but not imported yet: the GPU figures are the point of a snapshot.
    """
    if "torch" not in sys.modules and find_spec("torch") is None:
        return None
    import torch

    return torch.cuda if torch.cuda.is_available() else None


def _cuda_if_imported() -> Any | None:
    """Return ``torch.cuda`` when torch is *already imported* and CUDA is initialized, else None."""
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "cuda"):
        return None
    cuda = torch.cuda
    return cuda if cuda.is_available() and cuda.is_initialized() else None


def memory_snapshot(path: str | os.PathLike[str] = ".") -> MemorySnapshot:
    """Return RAM, process, CUDA and disk figures now; ``disk_free`` is of the file system holding ``path``."""
    import psutil

    ram = psutil.virtual_memory()
    cuda = _cuda()
    allocated = reserved = peak = total = free = None
    if cuda is not None:
        allocated = int(cuda.memory_allocated())
        reserved = int(cuda.memory_reserved())
        peak = int(cuda.max_memory_allocated())
        free, total = (int(v) for v in cuda.mem_get_info())
    return MemorySnapshot(
        ram_total=int(ram.total),
        ram_available=int(ram.available),
        ram_used=int(ram.total - ram.available),
        process_rss=_rss(),
        cuda_allocated=allocated,
        cuda_reserved=reserved,
        cuda_peak=peak,
        cuda_total=total,
        cuda_free=free,
        disk_free=int(shutil.disk_usage(os.fspath(path)).free),
        taken_at=time.time(),
    )


def _bar_style(used: float, total: float) -> str:
    """Return the ipywidgets bar style for a usage level: success, warning or danger."""
    fraction = used / total if total else 0.0
    if fraction >= _DANGER_FRACTION:
        return "danger"
    return "warning" if fraction >= _WARN_FRACTION else "success"


def _bars(snapshot: MemorySnapshot) -> list[tuple[str, int, int, str]]:
    """Return ``(name, used, total, label)`` for each bar to draw: RAM and, with CUDA, the GPU."""
    bars = [
        (
            "RAM",
            snapshot.ram_used,
            snapshot.ram_total,
            f"{_format_pair(snapshot.ram_used, snapshot.ram_total)} (process {format_bytes(snapshot.process_rss)})",
        )
    ]
    if snapshot.cuda_total is not None and snapshot.cuda_free is not None:
        device_used = snapshot.cuda_total - snapshot.cuda_free
        bars.append(
            (
                "GPU",
                device_used,
                snapshot.cuda_total,
                f"{_format_pair(device_used, snapshot.cuda_total)} "
                f"(torch {format_bytes(snapshot.cuda_allocated)}, peak {format_bytes(snapshot.cuda_peak)})",
            )
        )
    return bars


def _memory_widget(snapshot: MemorySnapshot) -> Any:
    """Return an ipywidgets box of labelled progress bars (raises ImportError without ipywidgets)."""
    import ipywidgets as widgets

    rows = []
    for name, used, total, label in _bars(snapshot):
        bar = widgets.FloatProgress(
            value=float(used), min=0.0, max=float(max(total, 1)), description=name, bar_style=_bar_style(used, total)
        )
        rows.append(widgets.HBox([bar, widgets.Label(value=label)]))
    rows.append(widgets.Label(value=f"disk {format_bytes(snapshot.disk_free, precision=0)} free"))
    return widgets.VBox(rows)


def _memory_html(snapshot: MemorySnapshot) -> str:
    """Return the same read-out as an HTML snippet of ``<progress>`` bars (values escaped)."""
    lines = []
    for name, used, total, label in _bars(snapshot):
        lines.append(
            f"<div><b>{html.escape(name)}</b> <progress value='{int(used)}' max='{int(max(total, 1))}'></progress> "
            f"{html.escape(label)}</div>"
        )
    lines.append(f"<div>disk {html.escape(format_bytes(snapshot.disk_free, precision=0))} free</div>")
    return "\n".join(lines)


def show_memory(path: str | os.PathLike[str] = ".") -> MemorySnapshot:
    """Show memory use and return the snapshot.

    In a notebook: progress bars for RAM and GPU (ipywidgets; an HTML snippet when ipywidgets is missing).
    Elsewhere: one ``logger.info`` line. End the notebook line with ``;`` to keep the returned snapshot's
    repr out of the output.
    """
    snapshot = memory_snapshot(path)
    if not in_kernel():
        logger.info("%s", snapshot.summary())
        return snapshot
    from IPython.display import HTML, display

    try:
        display(_memory_widget(snapshot))
    except ImportError:
        display(HTML(_memory_html(snapshot)))
    return snapshot


_HWM = re.compile(r"^VmHWM:\s+(\d+)\s+kB", re.MULTILINE)


def _read_hwm() -> int | None:
    """Return this process's peak RSS (Linux VmHWM) in bytes, or None where /proc is unavailable."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            match = _HWM.search(status.read())
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def _reset_hwm() -> bool:
    """Reset Linux's peak-RSS counter to the current RSS; True when that worked (kernel >= 4.0).

    VmHWM is process-lifetime, so it is only usable for a block after this reset. Writing ``5`` to
    ``clear_refs`` resets the peak and nothing else.
    """
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    hwm = _read_hwm()
    # a kernel that ignores the request leaves the lifetime peak, far above the current size
    return hwm is not None and hwm <= _rss() + 16 * 1024 * 1024


class _RssSampler:
    """Background thread that records the highest RSS seen until ``stop()``."""

    def __init__(self, interval: float) -> None:
        self.peak = _rss()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="colab_helpers-rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, _rss())

    def stop(self) -> int:
        """Stop sampling and return the peak RSS seen, the final reading included."""
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        return self.peak


@contextlib.contextmanager
def track_peak_memory(interval: float = _SAMPLE_INTERVAL_S) -> Iterator[PeakMemory]:
    """Measure the peak memory of a block; yield a ``PeakMemory`` that is filled when the block ends.

    RSS is sampled every ``interval`` seconds by a daemon thread, plus start and end readings; on Linux the
    kernel's exact peak (VmHWM, reset at the start) is used as well. With CUDA, torch's peak statistics are
    reset at the start (this resets them for the whole process) and read at the end.
    """
    if interval <= 0:
        raise ValueError(f"interval must be > 0 seconds, got {interval}")
    peak = PeakMemory()
    cuda = _cuda()
    cuda_start = 0
    if cuda is not None:
        cuda.reset_peak_memory_stats()
        cuda_start = int(cuda.memory_allocated())
    hwm_reset = _reset_hwm()
    peak.start_rss_bytes = _rss()
    sampler = _RssSampler(interval)
    started = time.perf_counter()
    try:
        yield peak
    finally:
        peak.seconds = time.perf_counter() - started
        peak_rss = sampler.stop()
        hwm = _read_hwm() if hwm_reset else None
        peak.peak_rss_bytes = max(peak_rss, hwm or 0)
        peak.rss_delta_bytes = peak.peak_rss_bytes - peak.start_rss_bytes
        if cuda is not None:
            peak.peak_cuda_bytes = int(cuda.max_memory_allocated())
            peak.cuda_delta_bytes = peak.peak_cuda_bytes - cuda_start
        logger.debug("track_peak_memory: %s", peak.summary())


def free_memory(path: str | os.PathLike[str] = ".") -> MemorySnapshot:
    """Collect garbage and, when torch is already imported with CUDA in use, empty its cache; return a snapshot.

    Drop your own references first (``del model``): only unreferenced objects can be freed. The freed
    amounts are logged at INFO level.
    """
    rss_before = _rss()
    cuda = _cuda_if_imported()
    reserved_before = int(cuda.memory_reserved()) if cuda is not None else 0
    collected = gc.collect()
    if cuda is not None:
        cuda.empty_cache()
        cuda.ipc_collect()
    snapshot = memory_snapshot(path)
    reserved_after = snapshot.cuda_reserved or 0
    logger.info(
        "free_memory: %d objects collected, RSS %s, CUDA cache %s freed",
        collected,
        format_bytes(max(rss_before - snapshot.process_rss, 0)),
        format_bytes(max(reserved_before - reserved_after, 0)),
    )
    return snapshot
