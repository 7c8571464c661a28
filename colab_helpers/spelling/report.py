"""The report of a sweep: the spelling-vs-transfer scatter, the parameter-effect figure, and
:class:`TransferAnalysis`, which writes them with its tables as ``report.html`` and ``summary.md``."""

from __future__ import annotations

import html
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checks import is_finite_number
from ..plots.report import figure_html, html_report, table_html
from ..runtime.files import atomic_write_text, ensure_writable_dir
from .config import METRICS, SEARCH_SPACE, TRANSFER_TASKS
from .questions import TASKS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure


def plot_spelling_vs_transfer(runs: pd.DataFrame, baseline: Mapping[str, Any] | None = None,
                              controls: pd.DataFrame | None = None, *,
                              path: str | Path | None = None) -> Figure:  # fmt: skip
    """Return a figure: spelling accuracy (x) against position and count accuracy (y), one point per run with
    its 95% intervals, the baseline as a star and the controls as crosses."""
    from ..plots.base import new_figure

    figure = new_figure(10, 4.2)
    axes = figure.subplots(1, 2, sharex=True, sharey=True)
    for ax, task in zip(axes, TRANSFER_TASKS, strict=True):
        y = f"{task}_accuracy"
        if len(runs):
            xs, ys = runs["spelling_accuracy"].astype(float), runs[y].astype(float)
            xerr = _error_bars(runs, "spelling")
            yerr = _error_bars(runs, task)
            ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="o", color="#1f77b4", ecolor="#9ecae1", capsize=2,
                        label=f"LoRA on spelling ({len(runs)} runs)")  # fmt: skip
        if controls is not None and len(controls):
            ax.scatter(controls["spelling_accuracy"].astype(float), controls[y].astype(float), marker="x",
                       color="#d62728", label="control (plain text)", zorder=3)  # fmt: skip
        if baseline is not None:
            ax.scatter([baseline["spelling_accuracy"]], [baseline[y]], marker="*", s=160, color="#2ca02c",
                       label="untouched model", zorder=4)  # fmt: skip
        ax.set_xlabel("spelling accuracy")
        ax.set_ylabel(f"{task} accuracy")
        ax.set_title(f"Spelling vs {task}")
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    if path is not None:
        figure.save(path)
    return figure


def plot_task_accuracies(models: Mapping[str, Mapping[str, Any]], guesses: pd.DataFrame | None = None, *,
                         path: str | Path | None = None) -> Figure:  # fmt: skip
    """Return a figure: one panel per task, one bar per model (its accuracy with the 95% interval), and a dashed
    line for each guess of :func:`~.analysis.guess_baselines` (``guesses``, indexed by task).

    ``models`` maps a label ("untouched", "LoRA lr 1e-3", ...) to flat metrics (``<task>_accuracy``,
    ``<task>_ci_low``, ``<task>_ci_high``): the baseline, a run's row, a control's row.
    """
    import numpy as np

    from ..plots.base import new_figure

    labels = list(models)
    figure = new_figure(max(9.0, 0.75 * len(labels) * len(TASKS)), 3.8)
    axes = figure.subplots(1, len(TASKS), sharey=True)
    colours = ["#2ca02c", "#d62728", *[f"C{i}" for i in (0, 1, 4, 5, 6, 7, 8, 9)]]
    tops = [float(row.get(f"{t}_ci_high", 0) or 0) for row in models.values() for t in TASKS]
    tops += [float(v) for v in guesses["accuracy"]] if guesses is not None and len(guesses) else []
    top = min(100.0, max(50.0, 10 * math.ceil(10 * max([0.0, *[v for v in tops if math.isfinite(v)]]) + 1)))
    for ax, task in zip(axes, TASKS, strict=True):
        values = np.array([float(models[m].get(f"{task}_accuracy", np.nan)) for m in labels])
        low = np.array([float(models[m].get(f"{task}_ci_low", np.nan)) for m in labels])
        high = np.array([float(models[m].get(f"{task}_ci_high", np.nan)) for m in labels])
        errors = np.clip(np.nan_to_num(np.vstack([values - low, high - values])), 0, None)
        positions = np.arange(len(labels))
        ax.bar(positions, 100 * values, yerr=100 * errors, capsize=3, color=colours[: len(labels)] * 2,
               edgecolor="black", linewidth=0.5)  # fmt: skip
        if guesses is not None and task in guesses.index:
            guess = guesses.loc[task]
            ax.axhline(100 * float(guess["accuracy"]), color="grey", linestyle="--", linewidth=1)
            ax.text(len(labels) - 0.5, 100 * float(guess["accuracy"]), f"guess: {guess['guess']}", ha="right",
                    va="bottom", fontsize=8, color="dimgrey")  # fmt: skip
        ax.set_xticks(positions, labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(task)
        ax.set_ylim(0, top)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].set_ylabel("exact-match accuracy, % (95% interval)")
    if path is not None:
        figure.save(path)
    return figure


def _error_bars(runs: pd.DataFrame, task: str) -> Any:
    import numpy as np

    low, high, value = f"{task}_ci_low", f"{task}_ci_high", f"{task}_accuracy"
    if low not in runs or high not in runs:
        return None
    centre = runs[value].astype(float).to_numpy()
    below, above = centre - runs[low].astype(float).to_numpy(), runs[high].astype(float).to_numpy() - centre
    return np.clip(np.vstack([below, above]), 0, None)


def plot_parameter_effects(effects: pd.DataFrame, metrics: Sequence[str] = METRICS[:3], *,
                           path: str | Path | None = None) -> Figure:  # fmt: skip
    """Return a figure: for each swept parameter, the mean accuracy per value (one line per task)."""
    from ..plots.base import new_figure

    parameters = list(dict.fromkeys(effects["parameter"])) if len(effects) else []
    columns = min(3, max(1, len(parameters)))
    rows = max(1, math.ceil(len(parameters) / columns))
    figure = new_figure(4 * columns, 3 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, parameter in zip(axes, parameters, strict=False):
        group = effects[effects["parameter"] == parameter]
        labels = [f"{v:g}" if isinstance(v, float) else str(v) for v in group["value"]]
        for metric in metrics:
            if f"mean_{metric}" in group:
                ax.plot(labels, group[f"mean_{metric}"], marker="o", label=metric.removesuffix("_accuracy"))
        ax.set_title(parameter, fontsize=10)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(parameters) :]:
        ax.set_visible(False)
    if parameters:
        axes[0].set_ylabel("mean accuracy")
        axes[0].legend(fontsize=8)
    else:
        axes[0].set_visible(True)
        axes[0].text(0.5, 0.5, "no swept parameter has finished runs", ha="center", va="center")
    if path is not None:
        figure.save(path)
    return figure


_WHOLE_COLUMNS = {*SEARCH_SPACE, "runs", "values", "best_value", "train_steps", "n"}  # settings and counts: "%g"


def _cell(column: str, value: Any, digits: int = 3) -> str:
    """Return one table cell as text: settings and counts as written (4, 0.0001), metrics to ``digits`` places."""
    if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real):
        return "" if value is None else str(value)
    number = float(value)
    if math.isnan(number):
        return ""
    if column in _WHOLE_COLUMNS:
        return f"{number:g}"
    return f"{number:.{digits}g}" if number and abs(number) < 1e-2 else f"{number:.{digits}f}"


def _display(frame: pd.DataFrame) -> pd.DataFrame:
    """Return ``frame`` with every cell formatted by :func:`_cell` (for the Markdown and HTML reports)."""
    return frame.apply(lambda column: column.map(lambda value: _cell(str(column.name), value)))


def _markdown_table(frame: pd.DataFrame) -> str:
    """Return ``frame`` as a GitHub Markdown table (no extra package needed)."""
    if frame is None or frame.empty:
        return "_(none)_"
    shown = _display(frame)
    header = "| " + " | ".join(str(c) for c in shown.columns) + " |"
    rule = "| " + " | ".join("---" for _ in shown.columns) + " |"
    body = ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join([header, rule, *body])


@dataclass
class TransferAnalysis:
    """The analysis of a sweep: correlations, parameter effects, top configurations, figures, notes."""

    title: str
    runs: Any = field(repr=False)  # finished runs (DataFrame)
    correlations: Any = field(repr=False)
    effects: Any = field(repr=False)
    importance: Any = field(repr=False)
    top: Any = field(repr=False)
    baseline: dict[str, Any] | None = field(default=None, repr=False)
    controls: Any = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)

    def scatter(self, path: str | Path | None = None) -> Figure:
        """Return the spelling-vs-transfer scatter (see :func:`plot_spelling_vs_transfer`)."""
        return plot_spelling_vs_transfer(self.runs, self.baseline, self.controls, path=path)

    def effects_figure(self, path: str | Path | None = None) -> Figure:
        """Return the per-parameter effect figure (see :func:`plot_parameter_effects`)."""
        return plot_parameter_effects(self.effects, path=path)

    def reference_table(self) -> pd.DataFrame:
        """Return the baseline and control accuracies (with intervals) as a table."""
        import pandas as pd

        rows = []
        if self.baseline is not None:
            rows.append({"model": "untouched (baseline)", **_accuracy_cells(self.baseline)})
        if self.controls is not None:
            for _, control in self.controls.iterrows():
                steps = control.get("training.max_steps")
                steps = f"{int(steps)}" if all_finite(steps) else "?"
                rows.append({"model": f"control, {steps} steps (plain text)", **_accuracy_cells(control)})
        return pd.DataFrame(rows)

    def to_markdown(self) -> str:
        """Return the Markdown summary: references, correlations, what matters, top configurations, notes."""
        parts = [
            f"# {self.title}", "",
            f"{len(self.runs)} finished runs. Accuracy is exact match after normalisation, with bootstrap 95% intervals.",
            "", "## Reference models", "", _markdown_table(self.reference_table()),
            "", "## Correlation of spelling accuracy with transfer accuracy across runs", "",
            _markdown_table(self.correlations), "",
            "## Which hyperparameters matter (spread of mean transfer accuracy over each parameter's values)", "",
            _markdown_table(self.importance), "", "## Top configurations for transfer", "", _markdown_table(self.top),
            "", "## Notes", "", *[f"- {note}" for note in self.notes],
        ]  # fmt: skip
        return "\n".join(parts) + "\n"

    def to_html(self) -> str:
        """Return a self-contained HTML report (tables, figures embedded as base64 PNG)."""
        def table(frame: Any) -> str:
            return table_html(frame if frame is None or frame.empty else _display(frame))

        columns = [c for c in ("run_id", *SEARCH_SPACE, *METRICS, "position_gain_vs_control", "count_gain_vs_control",
                               "position_transfer_ratio", "count_transfer_ratio", "train_steps", "stopped_reason")
                   if c in self.runs]  # fmt: skip
        notes = "".join(f"<li>{html.escape(note)}</li>" for note in self.notes)
        return html_report(self.title, {
            "Reference models": table(self.reference_table()),
            "Spelling vs transfer": figure_html(self.scatter(), "spelling vs transfer accuracy"),
            "Correlations across runs": table(self.correlations),
            "Which hyperparameters matter": [table(self.importance), figure_html(self.effects_figure(), "parameter effects"),
                                             table(self.effects)],
            "Top configurations for transfer": table(self.top),
            "Notes": f"<ul>{notes}</ul>",
            "All finished runs": table(self.runs[columns] if columns else self.runs),
        }, intro=f"{len(self.runs)} finished runs. Accuracy is exact match after normalisation, with bootstrap 95% "
                 "intervals.")  # fmt: skip

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write ``report.html``, ``summary.md``, the two figures and the tables (CSV) under ``directory``."""
        from ..runtime.files import atomic_write_bytes

        target = ensure_writable_dir(directory)
        written = {"report": atomic_write_text(target / "report.html", self.to_html()),
                   "summary": atomic_write_text(target / "summary.md", self.to_markdown())}  # fmt: skip
        written["scatter"] = atomic_write_bytes(target / "spelling_vs_transfer.png", self.scatter().png())
        written["effects_figure"] = atomic_write_bytes(target / "parameter_effects.png", self.effects_figure().png())
        for name in ("correlations", "effects", "importance", "top"):
            written[name] = atomic_write_text(target / f"{name}.csv", getattr(self, name).to_csv(index=False))
        return written

    def _repr_markdown_(self) -> str:
        return self.to_markdown()


def _accuracy_cells(row: Mapping[str, Any]) -> dict[str, Any]:
    cells = {}
    for task in TASKS:
        value = row.get(f"{task}_accuracy")
        low, high = row.get(f"{task}_ci_low"), row.get(f"{task}_ci_high")
        cells[task] = f"{value:.3f} [{low:.3f}, {high:.3f}]" if all_finite(value, low, high) else ""
    return cells


def all_finite(*values: Any) -> bool:
    """Return True when every value is a finite real number (not a bool, None, NaN or text)."""
    return all(is_finite_number(v) for v in values)
