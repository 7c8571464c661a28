"""LivePlot: throttled redraws with an injected clock, the PNG on disk, NaN handling, bad values, no pyplot."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from colab_helpers.plots import live as plotting
from colab_helpers.plots.live import LivePlot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeHandle:
    def __init__(self, shown: list[bytes]) -> None:
        self.shown = shown

    def update(self, image: Any) -> None:
        self.shown.append(image.data)


@pytest.fixture
def notebook(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[bytes]]:
    """Replace the notebook display: record first displays and in-place updates (PNG bytes)."""
    calls: dict[str, list[bytes]] = {"display": [], "update": []}

    def show(png: bytes, handle: Any) -> Any:
        if handle is None:
            calls["display"].append(png)
            return FakeHandle(calls["update"])
        handle.update(type("Image", (), {"data": png})())
        return handle

    monkeypatch.setattr(plotting, "_show_png", show)
    return calls


def test_throttled_redraws_in_place(tmp_path: Path, notebook: dict[str, list[bytes]]) -> None:
    clock = FakeClock()
    plot = LivePlot(["loss"], path=tmp_path / "loss.png", min_interval=1.0, display=True, clock=clock)
    assert notebook["display"] == []  # nothing shown before there is data: no blank first frame
    plot.update(0, loss=2.0)
    assert len(notebook["display"]) == 1 and notebook["display"][0].startswith(PNG_MAGIC)
    clock.now += 0.5
    plot.update(1, loss=1.9)  # too soon: stored, not drawn
    assert plot.redraws == 1 and notebook["update"] == []
    clock.now += 0.6
    plot.update(2, {"loss": 1.8})
    assert plot.redraws == 2 and len(notebook["update"]) == 1
    clock.now += 0.1
    plot.mark(2, "checkpoint", kind="checkpoint")  # throttled like updates
    assert plot.redraws == 2
    assert plot.close() == tmp_path / "loss.png"  # forces the last redraw
    assert len(notebook["display"]) == 1 and len(notebook["update"]) == 2  # always the same display
    assert plot.history == {"loss": [(0, 2.0), (1, 1.9), (2, 1.8)]}
    assert plot.marks == [(2, "checkpoint", "checkpoint")]


def test_slow_redraws_are_spaced_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    plot = LivePlot(path=tmp_path / "p.png", min_interval=1.0, save_every_redraw=True, clock=clock)
    real_render = plot._render

    def slow_render() -> bytes:
        clock.now += 0.3  # a redraw that takes 0.3 s
        return real_render()

    monkeypatch.setattr(plot, "_render", slow_render)
    plot.update(0, loss=1.0)
    clock.now += 2.0  # past min_interval, but not 20 x 0.3 s after the last redraw started
    plot.update(1, loss=0.9)
    assert plot.redraws == 1
    clock.now += 4.0
    plot.update(2, loss=0.8)
    assert plot.redraws == 2


def test_headless_writes_png_only_on_close(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "plot.png"
    with LivePlot(path=path, min_interval=0) as plot:  # no IPython kernel under pytest
        for step in range(5):
            plot.update(step, loss=1.0 / (step + 1))
        assert plot.redraws == 0 and not path.exists()
    assert path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 1000
    assert plot.redraws == 1
    assert [p.name for p in path.parent.iterdir()] == ["plot.png"]  # written atomically: no temporary left


def test_save_every_redraw_and_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    clock = FakeClock()
    plot = LivePlot(title="LoRA recovery: run 1", min_interval=5, save_every_redraw=True, clock=clock)
    assert plot.path == Path("results/lora-recovery-run-1.png")
    plot.update(0, loss=1.0)
    assert (tmp_path / plot.path).read_bytes().startswith(PNG_MAGIC)
    plot.update(1, loss=0.9)
    assert plot.redraws == 1


def test_nan_and_inf_are_gaps_marked_and_counted(tmp_path: Path) -> None:
    plot = LivePlot(["loss", "ppl"], path=tmp_path / "p.png")
    for step, (loss, ppl) in enumerate([(2.0, 74.0), (math.nan, math.inf), (1.8, 6.0), (-math.inf, 5.0)]):
        plot.update(step, loss=loss, ppl=ppl)
    from matplotlib.figure import Figure

    figure = Figure()
    ax_loss, ax_ppl = figure.subplots(1, 2)
    plot._draw_panel(ax_loss, ("loss",))
    plot._draw_panel(ax_ppl, ("ppl",))
    line, *crosses = ax_loss.get_lines()
    assert np.isnan(line.get_ydata()[1]) and np.isnan(line.get_ydata()[3]) and line.get_ydata()[2] == 1.8
    assert [legend.get_text() for legend in ax_loss.get_legend().get_texts()] == ["loss (2 non-finite)"]
    assert [list(c.get_xdata()) for c in crosses] == [[1, 3]]  # NaN and -inf: at the bottom edge
    assert list(crosses[0].get_ydata()) == [0.03, 0.03] and crosses[0].get_marker() == "x"
    _, top = ax_ppl.get_lines()
    assert list(top.get_xdata()) == [1] and list(top.get_ydata()) == [0.97]  # +inf: at the top edge
    assert ax_ppl.get_yscale() == "log" and ax_loss.get_yscale() == "linear"  # perplexity over 14x: log
    assert plot.history["loss"][1][1] != plot.history["loss"][1][1]  # the NaN itself is kept in the history
    assert plot.close().stat().st_size > 0


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ("2.3", TypeError, r"metric 'loss' must be a number, got '2.3' \(str\); pass a float"),
        (None, TypeError, r"got None \(NoneType\).*leave the metric out"),
        ([1.0, 2.0], TypeError, r"got \[1.0, 2.0\] \(list\)"),
        (np.array([1.0, 2.0]), ValueError, r"single number, got a ndarray of shape \(2,\).*mean\(\).item\(\)"),
    ],
)
def test_bad_values_name_the_metric_and_the_fix(value: Any, error: type[Exception], match: str) -> None:
    plot = LivePlot(display=False)
    with pytest.raises(error, match=match):
        plot.update(3, loss=value, acc=0.5)
    assert plot.history == {}  # nothing half-recorded


def test_numbers_of_other_types_are_accepted() -> None:
    import torch

    plot = LivePlot(display=False)
    plot.update(np.int64(1), loss=torch.tensor(2.5), acc=np.float32(0.5), n=3)
    assert plot.history == {"loss": [(1, 2.5)], "acc": [(1, 0.5)], "n": [(1, 3.0)]}


def test_bad_settings_and_steps() -> None:
    with pytest.raises(ValueError, match="min_interval must be"):
        LivePlot(min_interval=-1)
    with pytest.raises(ValueError, match=r"layout must be \(rows, cols\)"):
        LivePlot(layout=(0, 2))
    with pytest.raises(ValueError, match="listed twice"):
        LivePlot(["loss", ("loss", "eval_loss")])
    with pytest.raises(ValueError, match=r"room for 1 plots, but 2 are needed"):
        LivePlot(["a", "b"], layout=(1, 1))
    plot = LivePlot(layout=(1, 1), display=False)
    plot.update(0, a=1.0)
    with pytest.raises(ValueError, match="pass a bigger layout"):
        plot.update(0, b=1.0)
    with pytest.raises(TypeError, match="step must be a number"):
        plot.update("ten", a=1.0)
    with pytest.raises(ValueError, match="step must be finite"):
        plot.update(math.nan, a=1.0)
    with pytest.raises(TypeError, match="values must be a dict"):
        plot.update(1, [("a", 1.0)])  # type: ignore[arg-type]


def test_a_path_that_cannot_take_the_png_is_refused_at_construction(tmp_path: Path) -> None:
    """A folder as the path, or a folder below a file, failed only at close(), after the whole run was plotted."""
    folder = tmp_path / "plots"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match=rf"LivePlot path '{re.escape(str(folder))}' is a folder; pass the PNG "
                                                rf"file to write, e.g. path='{re.escape(str(folder / 'plot.png'))}'"):
        LivePlot(["loss"], path=folder)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    with pytest.raises(NotADirectoryError, match=rf"LivePlot path '{re.escape(str(blocker / 'sub' / 'loss.png'))}': "
                                                 rf"its folder .*'{re.escape(str(blocker))}' is "
                                                 r"a file; pass a folder path instead, e.g. path='results/plot.png'"):
        LivePlot(["loss"], path=blocker / "sub" / "loss.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "plots"] and not any(folder.iterdir())


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_folder_is_refused_at_construction(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match=rf"LivePlot path '{re.escape(str(locked / 'run' / 'loss.png'))}': "
                                                  r"its folder .* is not "
                                                  r"writable; pass a folder you can write to, e.g. path='results/plot.png'"):
            LivePlot(["loss"], path=locked / "run" / "loss.png")
    finally:
        locked.chmod(0o700)


def test_series_keep_their_own_steps(tmp_path: Path) -> None:
    plot = LivePlot([("loss", "eval_loss")], path=tmp_path / "p.png")
    for step in range(1, 7):
        plot.update(step, loss=1.0 / step, learning_rate=1e-3)  # learning_rate: recorded, not drawn
        if step % 3 == 0:
            plot.update(step, eval_loss=1.5 / step)
    assert [x for x, _ in plot.history["eval_loss"]] == [3, 6]
    frame = plot.to_dataframe()
    assert list(frame.columns) == ["loss", "learning_rate", "eval_loss"]
    assert frame.index.name == "step" and list(frame.index) == [1, 2, 3, 4, 5, 6]
    assert frame["eval_loss"].isna().sum() == 4 and frame.loc[6, "eval_loss"] == 0.25
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    plot._draw_panel(ax, ("loss", "eval_loss"))
    train, evaluation = ax.get_lines()
    assert list(train.get_xdata()) == [1, 2, 3, 4, 5, 6] and list(evaluation.get_xdata()) == [3, 6]
    assert plot.close().stat().st_size > 0


def test_closing_an_empty_plot_writes_a_png_but_shows_nothing(
    tmp_path: Path, notebook: dict[str, list[bytes]]
) -> None:
    assert LivePlot(path=tmp_path / "empty.png", display=True).close().read_bytes().startswith(PNG_MAGIC)
    assert notebook["display"] == []


def test_updates_from_threads(tmp_path: Path) -> None:
    import threading

    plot = LivePlot(path=tmp_path / "t.png", min_interval=3600, save_every_redraw=True)
    workers = [
        threading.Thread(target=lambda k=k: [plot.update(i, **{f"m{k}": float(i)}) for i in range(20)])
        for k in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert {name: len(points) for name, points in plot.history.items()} == {"m0": 20, "m1": 20, "m2": 20}
    assert plot.redraws == 1  # the first update drew, the others were throttled
    assert plot.close().read_bytes().startswith(PNG_MAGIC)


def test_no_matplotlib_on_import_and_no_pyplot_after_use(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import colab_helpers.plots.live as p\n"
        "before = 'matplotlib' in sys.modules\n"
        f"plot = p.LivePlot(['loss'], path={str(tmp_path / 'x.png')!r}, display=False)\n"
        "plot.update(1, loss=1.0); plot.close()\n"
        "print(before, 'matplotlib' in sys.modules, 'matplotlib.pyplot' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True", "False"]
    assert (tmp_path / "x.png").stat().st_size > 0


def test_log_axis_only_for_wide_ranges_with_plain_tick_labels(tmp_path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    narrow = LivePlot(["eval_perplexity"], path=tmp_path / "narrow.png")
    wide = LivePlot(["eval_perplexity"], path=tmp_path / "wide.png")
    for step, value in enumerate([157.5, 158.2, 156.9]):
        narrow.update(step, eval_perplexity=value)
    for step, value in enumerate([2000.0, 300.0, 150.0]):
        wide.update(step, eval_perplexity=value)
    figure = Figure()
    FigureCanvasAgg(figure)
    ax_narrow, ax_wide = figure.subplots(1, 2)
    narrow._draw_panel(ax_narrow, ("eval_perplexity",))
    wide._draw_panel(ax_wide, ("eval_perplexity",))
    figure.canvas.draw()
    assert ax_narrow.get_yscale() == "linear" and ax_wide.get_yscale() == "log"
    assert not ax_narrow.yaxis.get_major_formatter().get_offset()  # no "+1.57e2" above the axis
    labels = [t.get_text() for t in ax_wide.get_yticklabels() if t.get_text()]
    assert labels and all("times" not in label and "^" not in label for label in labels), labels
    assert any(label in ("200", "500", "1,000") for label in labels), labels
