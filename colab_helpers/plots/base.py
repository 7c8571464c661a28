"""The shared figure base: a matplotlib ``Figure`` that shows itself in a notebook and saves atomically.

No pyplot state anywhere (figures work headless and under papermill); matplotlib is imported only when a figure
is made. Also the axis helpers every figure uses: a log axis only for wide ranges, with plain tick labels.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..runtime.files import atomic_write_bytes

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def _figure_class() -> type:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    class NotebookFigure(Figure):
        """A matplotlib Figure that displays itself in notebooks (``_repr_png_``) and saves atomically."""

        def _repr_png_(self) -> bytes:
            return self.png()

        def png(self, dpi: int = 110) -> bytes:
            buffer = io.BytesIO()
            if self.canvas is None or not isinstance(self.canvas, FigureCanvasAgg):
                FigureCanvasAgg(self)
            self.savefig(buffer, format="png", dpi=dpi)
            return buffer.getvalue()

        def save(self, path: str | os.PathLike[str], dpi: int = 110) -> Any:
            return atomic_write_bytes(path, self.png(dpi=dpi))

    return NotebookFigure


def new_figure(width: float, height: float) -> "Figure":
    """Return an empty :class:`NotebookFigure` of ``width`` x ``height`` inches."""
    figure = _figure_class()(figsize=(width, height), layout="constrained")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    return figure


def wide_range(values: Sequence[float], factor: float = 3.0) -> bool:
    """True when the finite positive ``values`` span more than ``factor`` (then a log axis reads better)."""
    positive = [float(v) for v in values if math.isfinite(float(v)) and float(v) > 0]
    return bool(positive) and max(positive) > factor * min(positive)


def plain_log_axis(ax: Any, axis: str = "y") -> None:
    """Put ``ax`` on a log scale whose tick labels are plain numbers (150, 200), not ``1.5 x 10^2``."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    def plain(value: float, _: Any) -> str:
        return f"{value:,.0f}" if value >= 10 else f"{value:g}"

    getattr(ax, f"set_{axis}scale")("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(plain))
    target.set_minor_formatter(NullFormatter())


def finish_figure(figure: "Figure", path: str | os.PathLike[str] | None) -> "Figure":
    """Save ``figure`` to ``path`` (PNG, atomically) when a path is given; return the figure."""
    if path is not None:
        figure.save(path)
    return figure
