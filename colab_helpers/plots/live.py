"""Live training plots that redraw in place in a notebook and end as a PNG on disk.

``LivePlot`` draws with matplotlib's object API on an Agg canvas (``matplotlib.figure.Figure``, never
``pyplot``), so it keeps no global figure state, works headless and from a training thread, and does not care
about ``MPLBACKEND``. In a notebook the figure is shown as a PNG image through one
``display(..., display_id=True)`` handle that is updated in place (at most once per ``min_interval``
seconds); without a kernel nothing is shown and the PNG is written when the plot is closed. matplotlib and
IPython are imported only when the first figure is drawn.

    with LivePlot(["loss", "eval_loss"], title="LoRA recovery") as plot:
        for step in range(steps):
            plot.update(step, loss=loss)
    plot.path  # results/lora-recovery.png
"""

from __future__ import annotations

import io
import logging
import math
import numbers
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..checks import is_integer
from ..runtime.files import atomic_write_bytes, check_creatable_dir
from ..runtime.kernel import in_kernel as _in_kernel

logger = logging.getLogger(__name__)

DEFAULT_RESULTS_DIR = Path("results")
MARK_COLORS: dict[str, str] = {
    "nan": "#d62728",  # red: a non-finite loss or gradient
    "fallback": "#ff7f0e",  # orange: CUDA failed, continued on the CPU
    "rollback": "#9467bd",  # purple: restored a checkpoint
    "checkpoint": "#2ca02c",  # green: a checkpoint was saved
}
_DEFAULT_MARK_COLOR = "#7f7f7f"
_AUTO_LOG_NAMES = ("perplexity", "ppl")  # spans orders of magnitude: log scale unless told otherwise
_PANEL_SIZE = (4.2, 3.0)  # inches per subplot
_DPI = 100
_MAX_DRAW_SHARE_INV = 20  # wait at least 20x as long as the last redraw took: drawing <= ~5% of the time
_LEGEND_BEST_MAX_POINTS = 1000  # loc="best" gets slow on long series


def _show_png(png: bytes, handle: Any | None) -> Any:
    """Show ``png`` in the notebook: a new display the first time, then the same one updated. Returns the handle."""
    from IPython.display import Image, display

    image = Image(data=png, format="png")
    if handle is None:
        return display(image, display_id=True)
    handle.update(image)
    return handle


def _slug(text: str) -> str:
    """Return ``text`` as a file-name stem: lower case, runs of other characters turned into ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _auto_layout(n: int) -> tuple[int, int]:
    """Return ``(rows, cols)`` for ``n`` subplots: one row up to three, then a near-square grid."""
    if n <= 3:
        return 1, max(n, 1)
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def _as_number(name: str, value: Any) -> float:
    """Return ``value`` as a float (NaN/inf kept); raise TypeError/ValueError naming the metric and the fix."""
    if isinstance(value, numbers.Real):
        return float(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar, 1-element tensor
        size = getattr(value, "size", None)
        count = size if isinstance(size, int) else getattr(value, "numel", lambda: 1)()
        if count != 1:
            shape = tuple(getattr(value, "shape", ()))
            raise ValueError(
                f"metric {name!r} must be a single number, got a {type(value).__name__} of shape {shape}; "
                f"pass one value, e.g. {name}=value.mean().item()"
            )
        item = value.item()
        if isinstance(item, numbers.Real):
            return float(item)
    raise TypeError(
        f"metric {name!r} must be a number, got {value!r} ({type(value).__name__}); "
        f"pass a float, e.g. update(step, {name}=float(value)), or leave the metric out at this step"
    )


def _gap_ratio(gap_inches: float, count: int, room_inches: float) -> float:
    """Return matplotlib's wspace/hspace (a share of the mean axis size) for a gap of ``gap_inches``."""
    if count < 2:
        return 0.0
    return gap_inches * count / max(room_inches - gap_inches * (count - 1), 0.1)


def _as_step(step: Any) -> float | int:
    """Return ``step`` if it is a finite number; raise TypeError/ValueError otherwise."""
    if isinstance(step, bool) or not isinstance(step, numbers.Real):
        if hasattr(step, "item") and not isinstance(step, (str, bytes)):
            return _as_step(step.item())
        raise TypeError(f"step must be a number, got {step!r} ({type(step).__name__}); pass e.g. update(10, loss=2.3)")
    if not math.isfinite(step):
        raise ValueError(f"step must be finite, got {step}; pass the training step or epoch")
    return step if isinstance(step, int) else float(step)


def _check_png_path(path: Path) -> None:
    """Raise when the PNG cannot be written at ``path``: it is a folder, or its folder cannot be created or written
    (:func:`~colab_helpers.runtime.files.check_creatable_dir`). Creates nothing."""
    if path.is_dir():
        raise IsADirectoryError(f"LivePlot path {str(path)!r} is a folder; pass the PNG file to write, e.g. "
                                f"path={str(path / 'plot.png')!r}")  # fmt: skip
    check_creatable_dir(path.parent, what=f"LivePlot path {str(path)!r}: its folder", example="path='results/plot.png'")


class LivePlot:
    """A grid of line plots of training metrics, redrawn in place in a notebook and saved as a PNG.

    ``metrics`` lists what to plot, one subplot each, or a tuple of names for metrics sharing a subplot
    (``["loss", ("train_ppl", "eval_ppl")]``); None plots every metric as it arrives. Other metrics given
    to :meth:`update` are kept in :attr:`history` but not drawn. ``path`` is where :meth:`close` writes the
    PNG (default ``results/<title>.png``); ``min_interval`` is the least time in seconds between two
    redraws (longer when drawing is slow: redraws take at most about a tenth of the time); ``layout`` is ``(rows, cols)`` or None for an automatic grid; ``log_scale`` is True, False, or
    the metric names to draw on a log axis (default: names containing "perplexity" or "ppl").
    ``display`` is None to show the figure only inside an IPython kernel; ``save_every_redraw`` also
    writes the PNG at each redraw (handy when a runtime may disconnect); ``clock`` is for tests.

    Non-finite values are drawn as gaps, marked with an ``x`` at the bottom (NaN, -inf) or top (+inf) of
    the axis and counted in the legend. Each metric keeps its own steps, so train and eval metrics logged
    at different steps plot correctly.
    """

    def __init__(
        self,
        metrics: Sequence[str | Sequence[str]] | None = None,
        *,
        title: str = "",
        path: str | os.PathLike[str] | None = None,
        min_interval: float = 1.0,
        layout: tuple[int, int] | None = None,
        xlabel: str = "step",
        log_scale: bool | Iterable[str] | None = None,
        display: bool | None = None,
        save_every_redraw: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(min_interval, numbers.Real) or not min_interval >= 0:
            raise ValueError(f"min_interval must be a number of seconds >= 0, got {min_interval!r}; try 1.0")
        if layout is not None and not (
            isinstance(layout, tuple) and len(layout) == 2 and all(is_integer(n) and n >= 1 for n in layout)
        ):
            raise ValueError(f"layout must be (rows, cols) of positive ints or None, got {layout!r}; e.g. (2, 2)")
        self.title = str(title)
        self.xlabel = str(xlabel)
        self.min_interval = float(min_interval)
        self.layout = layout
        self.path = Path(path) if path is not None else DEFAULT_RESULTS_DIR / f"{_slug(self.title) or 'live-plot'}.png"
        _check_png_path(self.path)  # now, not at close() after the whole run
        self.save_every_redraw = bool(save_every_redraw)
        self.redraws = 0  # how many times the figure was drawn
        self._fixed = metrics is not None
        self._panels: list[tuple[str, ...]] = [] if metrics is None else self._check_panels(metrics)
        self._log_scale = log_scale if isinstance(log_scale, bool) or log_scale is None else set(log_scale)
        self._display = _in_kernel() if display is None else bool(display)
        self._clock = clock
        self._series: dict[str, list[tuple[float | int, float]]] = {}
        self._marks: list[tuple[float | int, str, str]] = []
        self._next_draw: float | None = None  # clock time before which no redraw happens
        self._last_png: bytes | None = None  # the last figure drawn: close() reuses it when nothing changed
        self._dirty = False
        self._handle: Any | None = None
        self._lock = threading.RLock()
        if self._panels:
            self._check_layout(len(self._panels))

    # --- input ---------------------------------------------------------------------------------------

    @staticmethod
    def _check_panels(metrics: Sequence[str | Sequence[str]]) -> list[tuple[str, ...]]:
        """Return ``metrics`` as a list of name tuples, one per subplot; raise ValueError on bad entries."""
        if isinstance(metrics, str):
            metrics = [metrics]
        panels: list[tuple[str, ...]] = []
        seen: set[str] = set()
        for entry in metrics:
            names = (entry,) if isinstance(entry, str) else tuple(entry)
            if not names or not all(isinstance(n, str) and n for n in names):
                raise ValueError(
                    f"metrics entries must be names or tuples of names, got {entry!r}; e.g. ['loss', ('a', 'b')]"
                )
            if seen.intersection(names):
                raise ValueError(f"metric {sorted(seen.intersection(names))[0]!r} is listed twice; list it once")
            seen.update(names)
            panels.append(names)
        return panels

    def _check_layout(self, n: int) -> None:
        """Raise ValueError when a fixed ``layout`` has no room for ``n`` subplots."""
        if self.layout is not None and self.layout[0] * self.layout[1] < n:
            raise ValueError(
                f"layout {self.layout} has room for {self.layout[0] * self.layout[1]} plots, but {n} are needed; "
                "pass a bigger layout or layout=None"
            )

    def update(self, step: Any, values: Mapping[str, Any] | None = None, /, **metrics: Any) -> None:
        """Record metric values at ``step`` (``update(10, loss=2.3)`` or ``update(10, {"loss": 2.3})``).

        Redraws when at least ``min_interval`` seconds passed since the last redraw. Raises TypeError or
        ValueError, before recording anything, when a value is not a single number.
        """
        x = _as_step(step)
        if values is not None and not isinstance(values, Mapping):
            raise TypeError(f"values must be a dict of metric -> number, got {values!r}; e.g. {{'loss': 2.3}}")
        merged = {**(values or {}), **metrics}
        numbers_ = {str(name): _as_number(str(name), value) for name, value in merged.items()}
        with self._lock:
            for name, value in numbers_.items():
                if name not in self._series and not self._fixed:
                    self._check_layout(len(self._panels) + 1)
                    self._panels.append((name,))
                self._series.setdefault(name, []).append((x, value))
            self._dirty = self._dirty or bool(numbers_)
            self._maybe_redraw()

    def mark(self, step: Any, label: str, kind: str = "event") -> None:
        """Add a dashed vertical line at ``step`` on every subplot, labelled ``label`` and coloured by ``kind``.

        Known kinds: ``"nan"``, ``"fallback"``, ``"rollback"``, ``"checkpoint"``; any other is grey.
        """
        x = _as_step(step)
        with self._lock:
            self._marks.append((x, str(label), str(kind)))
            self._dirty = True
            self._maybe_redraw()

    # --- output --------------------------------------------------------------------------------------

    @property
    def history(self) -> dict[str, list[tuple[float | int, float]]]:
        """Return every recorded value: ``{metric: [(step, value), ...]}`` in the order they arrived."""
        with self._lock:
            return {name: list(points) for name, points in self._series.items()}

    @property
    def marks(self) -> list[tuple[float | int, str, str]]:
        """Return the markers as ``[(step, label, kind), ...]``."""
        with self._lock:
            return list(self._marks)

    def to_dataframe(self) -> Any:
        """Return a pandas DataFrame indexed by step with one column per metric (NaN where not logged)."""
        import pandas as pd

        with self._lock:
            columns = {name: pd.Series(dict(points), dtype=float) for name, points in self._series.items()}
        frame = pd.DataFrame(columns).sort_index() if columns else pd.DataFrame()
        frame.index.name = self.xlabel
        return frame

    def close(self) -> Path:
        """Draw the final state (shown in the notebook if it has data), write the PNG atomically, return its path."""
        with self._lock:
            png = self._last_png if (self._last_png is not None and not self._dirty) else self._render()
            if self._display and self._plotted() and (self._dirty or self._handle is None):
                self._handle = _show_png(png, self._handle)
            self._dirty = False
        atomic_write_bytes(self.path, png)
        logger.info("LivePlot: saved %s", self.path)
        return self.path

    finalize = close

    def __enter__(self) -> LivePlot:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()  # also after an error: the plot of what happened until then is what one wants to see

    def _repr_png_(self) -> bytes:
        with self._lock:
            return self._render()

    # --- drawing -------------------------------------------------------------------------------------

    def _maybe_redraw(self) -> None:
        """Redraw now if something changed, someone looks (notebook or file), and ``min_interval`` passed."""
        if not self._dirty or not (self._display or self.save_every_redraw):
            return
        if self._display and self._handle is None and not self._plotted():
            return  # no blank first frame: wait for data
        started = self._clock()
        if self._next_draw is not None and started < self._next_draw:
            return
        png = self._render()
        # Drawing costs 0.1-0.5 s on a small CPU: space redraws so that they take at most ~5% of the time.
        self._next_draw = started + max(self.min_interval, _MAX_DRAW_SHARE_INV * (self._clock() - started))
        if self._display:
            self._handle = _show_png(png, self._handle)
        if self.save_every_redraw:
            atomic_write_bytes(self.path, png)
        self._dirty = False

    def _plotted(self) -> bool:
        """True when at least one drawn metric has a value."""
        return any(name in self._series for names in self._panels for name in names)

    def _is_log(self, names: tuple[str, ...]) -> bool:
        """True when the subplot of ``names`` should have a log y axis."""
        if isinstance(self._log_scale, bool):
            return self._log_scale
        if self._log_scale is None:
            return any(key in name.lower() for name in names for key in _AUTO_LOG_NAMES)
        return bool(self._log_scale.intersection(names))

    def _render(self) -> bytes:
        """Draw the figure from scratch and return it as PNG bytes."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        panels = self._panels
        rows, cols = self.layout or _auto_layout(len(panels))
        width, height = _PANEL_SIZE[0] * cols, _PANEL_SIZE[1] * rows
        figure = Figure(figsize=(width, height), dpi=_DPI)
        # Fixed margins in inches, not layout="constrained": that layout engine measured more than half of each
        # redraw (~0.7 s of 1.2 s for four panels on one CPU thread), and redraws are the live plot's whole cost.
        left, right, bottom, top = 0.75, 0.15, 0.5, (0.65 if self.title else 0.4)
        figure.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                               wspace=_gap_ratio(0.8, cols, width - left - right),
                               hspace=_gap_ratio(0.95, rows, height - bottom - top))  # fmt: skip
        canvas = FigureCanvasAgg(figure)
        if self.title:
            figure.suptitle(self.title)
        if not self._plotted():
            figure.text(0.5, 0.5, "waiting for data", ha="center", va="center", color="#888")
        else:
            axes = figure.subplots(rows, cols, squeeze=False).ravel()
            for ax, names in zip(axes, panels):
                self._draw_panel(ax, names)
            for ax in axes[len(panels) :]:
                ax.set_visible(False)
        buffer = io.BytesIO()
        canvas.print_png(buffer)
        self.redraws += 1
        self._last_png = buffer.getvalue()
        return self._last_png

    def _draw_panel(self, ax: Any, names: tuple[str, ...]) -> None:
        """Draw the series of ``names`` on ``ax``: gaps and ``x`` marks for non-finite values, and the markers."""
        from .base import plain_log_axis, wide_range

        edge = ax.get_xaxis_transform()  # x in data units, y in axis units (0 bottom, 1 top)
        drawn: list[float] = []
        for name in names:
            points = self._series.get(name, [])
            xs = [x for x, _ in points]
            ys = [y if math.isfinite(y) else math.nan for _, y in points]
            drawn += [y for y in ys if math.isfinite(y)]
            bad_low = [x for x, y in points if math.isnan(y) or y == -math.inf]
            bad_high = [x for x, y in points if y == math.inf]
            bad = len(bad_low) + len(bad_high)
            label = f"{name} ({bad} non-finite)" if bad else name
            (line,) = ax.plot(xs, ys, label=label, marker="o" if len(points) < 20 else None, markersize=3)
            for where, y in ((bad_low, 0.03), (bad_high, 0.97)):
                if where:
                    ax.plot(where, [y] * len(where), "x", color=line.get_color(), transform=edge, clip_on=False)
        for x, text, kind in self._marks:
            color = MARK_COLORS.get(kind, _DEFAULT_MARK_COLOR)
            ax.axvline(x, color=color, linestyle="--", linewidth=1)
            ax.text(x, 0.98, f" {text}", transform=edge, rotation=90, va="top", ha="left", fontsize=7, color=color)
        if self._is_log(names) and wide_range(drawn):  # a narrow range reads better on a linear axis
            plain_log_axis(ax)
        else:
            ax.ticklabel_format(axis="y", useOffset=False)  # 175.02, not "+1.75e2" above the axis and 0.02
        ax.set_xlabel(self.xlabel)
        if all(float(x).is_integer() for name in names for x, _ in self._series.get(name, ())):
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are counts: no 1.5 ticks
        ax.set_title(", ".join(names), fontsize=10)
        ax.grid(True, alpha=0.3)
        points = sum(len(self._series.get(name, ())) for name in names)
        ax.legend(fontsize="small", loc="best" if points <= _LEGEND_BEST_MAX_POINTS else "upper right")
