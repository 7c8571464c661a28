"""memory: formatting, snapshots, peak tracking of a real allocation, freeing, and the notebook read-out."""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import pytest

from colab_helpers.runtime import memory
from colab_helpers.runtime.memory import MemorySnapshot, PeakMemory, format_bytes, free_memory, memory_snapshot, show_memory, track_peak_memory

KIB, MIB, GIB = 1024, 1024**2, 1024**3
cuda_present = pytest.importorskip("torch").cuda.is_available()


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "n/a"),
        (0, "0 B"),
        (512, "512 B"),
        (1536, "1.5 KB"),
        (int(3.1 * GIB), "3.1 GB"),
        (150 * GIB, "150 GB"),
        (-2 * MIB, "-2.0 MB"),
        (2 * 1024**4, "2.0 TB"),
    ],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_format_bytes_precision():
    assert format_bytes(int(1.25 * GIB), precision=2) == "1.25 GB"
    assert format_bytes(60 * GIB, precision=0) == "60 GB"
    with pytest.raises(ValueError, match="precision must be >= 0, got -1"):
        format_bytes(1, precision=-1)


def test_snapshot_fields_are_sane(tmp_path):
    before = time.time()
    snap = memory_snapshot(tmp_path)
    assert 0 < snap.ram_available <= snap.ram_total
    assert snap.ram_used == snap.ram_total - snap.ram_available
    assert 0 < snap.process_rss < snap.ram_total
    assert snap.disk_free > 0
    assert before <= snap.taken_at <= time.time()
    if not cuda_present:
        assert (snap.cuda_allocated, snap.cuda_reserved, snap.cuda_peak, snap.cuda_total, snap.cuda_free) == (None,) * 5
    assert set(snap.to_dict()) >= {"ram_total", "process_rss", "cuda_peak", "disk_free", "taken_at"}


def test_summary_format():
    snap = MemorySnapshot(
        ram_total=int(12.7 * GIB),
        ram_available=int(9.6 * GIB),
        ram_used=int(3.1 * GIB),
        process_rss=int(1.2 * GIB),
        cuda_allocated=2 * GIB,
        cuda_reserved=int(2.5 * GIB),
        cuda_peak=int(3.1 * GIB),
        cuda_total=15 * GIB,
        cuda_free=12 * GIB,
        disk_free=60 * GIB,
        taken_at=0.0,
    )
    assert snap.summary() == "RAM 3.1/12.7 GB (process 1.2 GB) | GPU 2.0/15.0 GB (peak 3.1) | disk 60 GB free"


@pytest.mark.skipif(cuda_present, reason="checks the CPU-only line")
def test_summary_of_real_snapshot_on_cpu():
    line = memory_snapshot().summary()
    pattern = r"RAM \d+\.\d/\d+\.\d [KMGT]?B \(process [\d.]+ [KMGT]?B\) \| disk \d+ [KMGT]?B free"
    assert re.fullmatch(pattern, line), line


def _fresh_block(size: int) -> Any:
    """Return ``size`` bytes of newly mapped memory with every page touched.

    Not a bytearray: a process that freed a large model earlier (the real-model tests) serves a bytearray from
    pages it already holds, and its resident memory does not grow.
    """
    import mmap

    block = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        block[offset] = 1
    return block


def test_track_peak_memory_sees_a_large_allocation():
    with track_peak_memory() as peak:
        assert peak.peak_rss_bytes is None  # filled on exit only
        block = _fresh_block(200 * MIB)
        block.close()
    assert peak.rss_delta_bytes >= 150 * MIB
    assert peak.peak_rss_bytes == peak.start_rss_bytes + peak.rss_delta_bytes
    assert peak.seconds is not None and peak.seconds >= 0
    if not cuda_present:
        assert peak.peak_cuda_bytes is None and "GPU" not in peak.summary()
    assert peak.summary().startswith("peak RSS ")


def test_sampler_alone_sees_a_short_lived_allocation(monkeypatch):
    monkeypatch.setattr(memory, "_reset_hwm", lambda: False)  # no kernel peak counter: the thread must see it
    with track_peak_memory(interval=0.001) as peak:
        block = _fresh_block(200 * MIB)
        time.sleep(0.05)  # hold it for many sampling intervals
        block.close()
    assert peak.rss_delta_bytes >= 150 * MIB


def test_track_peak_memory_fills_even_when_the_block_raises():
    peak = PeakMemory()
    with pytest.raises(RuntimeError, match="boom"), track_peak_memory() as peak:
        raise RuntimeError("boom")
    assert peak.peak_rss_bytes is not None and peak.seconds is not None


def test_track_peak_memory_rejects_bad_interval():
    with pytest.raises(ValueError, match="interval must be > 0 seconds, got 0"), track_peak_memory(interval=0):
        pass


def test_free_memory_runs_on_cpu(caplog):
    garbage = [[i] for i in range(1000)]
    garbage.append(garbage)  # a reference cycle only gc.collect can free
    del garbage
    with caplog.at_level(logging.INFO, logger="colab_helpers.runtime.memory"):
        snap = free_memory()
    assert isinstance(snap, MemorySnapshot)
    assert any("objects collected" in record.getMessage() for record in caplog.records)


def test_show_memory_outside_a_notebook_logs_and_returns(capsys, caplog):
    with caplog.at_level(logging.INFO, logger="colab_helpers.runtime.memory"):
        snap = show_memory()
    assert isinstance(snap, MemorySnapshot)
    assert capsys.readouterr() == ("", "")
    assert any(record.getMessage().startswith("RAM ") for record in caplog.records)


def test_show_memory_in_a_notebook_displays_bars(monkeypatch):
    display = pytest.importorskip("IPython.display")
    widgets = pytest.importorskip("ipywidgets")
    shown: list[object] = []
    monkeypatch.setattr(memory, "in_kernel", lambda: True)
    monkeypatch.setattr(display, "display", lambda obj: shown.append(obj))
    snap = show_memory()
    assert isinstance(snap, MemorySnapshot)
    (box,) = shown
    assert isinstance(box, widgets.VBox)
    ram_bar = box.children[0].children[0]
    assert isinstance(ram_bar, widgets.FloatProgress)
    assert (ram_bar.description, ram_bar.value, ram_bar.max) == ("RAM", snap.ram_used, snap.ram_total)

    shown.clear()
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # ipywidgets missing: an HTML snippet instead
    show_memory()
    (snippet,) = shown
    assert isinstance(snippet, display.HTML)
    assert "<progress" in snippet.data and "RAM" in snippet.data


def test_in_notebook_is_false_under_pytest():
    assert memory.in_kernel() is False
