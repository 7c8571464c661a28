"""What a notebook shows of pipeline runs: tables and figures of :class:`~.result.ExperimentResult` objects.

:func:`comparison_table` (every stage measured), :func:`recovery_table` (the loss won back, read against the control),
:func:`generations_table`, :func:`training_history` (a fine-tuning's losses by step, from its ``history.csv``) and
:func:`plot_results` (perplexity per stage beside the training curves).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import STAGES
from .result import ExperimentResult, StageMetrics


def _with_control(result: ExperimentResult, control_name: str) -> dict[str, StageMetrics]:
    stages = {stage.replace("_", "-"): metrics for stage, metrics in result.stages.items()}
    return stages | ({control_name: result.control} if result.control is not None else {})


def comparison_table(result: ExperimentResult) -> Any:
    """Return a table of one run's stages, with the control when it ran (a pandas DataFrame, one row per stage).

    Columns: perplexity and its change against the baseline, parameters, size of the weights as saved (MB),
    median latency per generated token (wall) and the speed-up against the baseline (CPU time on a CPU), and the
    seconds each stage took.
    """
    import pandas as pd

    baseline = result.baseline.perplexity
    rows = {
        name: {
            "perplexity": stage.perplexity,
            "vs baseline": f"{stage.perplexity / baseline - 1:+.1%}",
            "parameters": stage.parameters,
            "weights MB": math.nan if stage.weights_mb is None else stage.weights_mb,
            "ms / token": math.nan if stage.latency is None else stage.latency.ms_per_token,
            "speed-up": math.nan if stage.speedup is None else stage.speedup,
            "seconds": stage.seconds,
        }
        for name, stage in _with_control(result, "control (unpruned, fine-tuned)").items()
    }
    table = pd.DataFrame(rows).T
    table = table.astype({"perplexity": float, "parameters": int, "weights MB": float, "ms / token": float,
                          "speed-up": float, "seconds": float})  # fmt: skip
    return table.round({"perplexity": 2, "weights MB": 1, "ms / token": 1, "speed-up": 3, "seconds": 1})


def recovery_table(result: ExperimentResult) -> Any:
    """Return what pruning cost and fine-tuning won back, read against the control when it ran.

    Fine-tuning on text of the evaluation's domain lowers perplexity by itself, so a share recovered above 1
    is not a better model than the unpruned one: the control (the unpruned model fine-tuned as long on the
    same text) is the fair reference, and ``pruned + fine-tuned vs control`` is what pruning still costs.
    """
    import pandas as pd

    ppl = {stage: metrics.perplexity for stage, metrics in result.stages.items()}
    rows: dict[str, Any] = {
        "unpruned": f"{ppl['baseline']:.2f}",
        "pruned": f"{ppl['pruned']:.2f} ({ppl['pruned'] / ppl['baseline'] - 1:+.1%})",
        "pruned + fine-tuned": f"{ppl['fine_tuned']:.2f}",
        "share of the loss won back": _share(result.recovered_share),
    }
    if result.control is not None:
        control = result.control.perplexity
        rows["control: unpruned + fine-tuned as long"] = f"{control:.2f}"
        rows["pruned + fine-tuned vs control"] = f"{ppl['fine_tuned'] / control - 1:+.1%} (what pruning still costs)"
    return pd.DataFrame({"value": rows})


def generations_table(result: ExperimentResult) -> Any:
    """Return the prompt's generation at each stage (and the control's) as a table."""
    import pandas as pd

    prompt = result.config.prompt
    return pd.DataFrame({"generation": {name: prompt + stage.generation
                                        for name, stage in _with_control(result, "control").items()}})  # fmt: skip


def training_history(result: ExperimentResult, *, control: bool = False) -> Any:
    """Return the training history of a run's recovery (or its control's): a DataFrame by step with ``loss``,
    ``eval_loss``, and for distillation ``kd_loss`` / ``lm_loss``, read from its ``history.csv``."""
    import pandas as pd

    training = result.control_training if control else result.training
    path = Path(training.history_path or "") if training is not None else Path()
    if not path.is_file():
        what = "its control" if control else "it"
        raise ValueError(f"run {result.name!r} has no training history ({what} trained no steps, or its history.csv "
                         "was moved)")  # fmt: skip
    return pd.read_csv(path, index_col=0)


def plot_results(results: Sequence[ExperimentResult], path: str | os.PathLike[str] | None = None) -> Any:
    """Draw perplexity per stage for every run and the training curves (the controls' too); save to ``path`` (PNG).

    Stages are points joined per run on an axis that starts near the data (a 1% change is visible; the
    axis is labelled so it is not read as starting at 0); the control is drawn as a separate point.
    """
    from ..plots.base import new_figure
    from ..plots.pruning import plot_stage_perplexity
    from ..plots.training import plot_loss_curves

    if not results:
        raise ValueError("no results to plot: pass the results of Experiment(...).run(config)")
    histories = {}
    for result in results:
        for control, label in ((False, result.name), (True, f"{result.name} control")):
            try:
                histories[label] = training_history(result, control=control)
            except ValueError:  # no steps trained, or no control
                continue
    figure = new_figure(11, 3.8)
    stages_ax, curves = figure.subplots(1, 2)
    plot_stage_perplexity(stages_ax, [result.to_dict() for result in results], STAGES)
    plot_loss_curves(curves, histories, title="LoRA: training curves")
    if path is not None:
        figure.save(path)
    return figure


def _share(value: float | None) -> str:
    """A recovered share in words: 'nothing was lost', or a percentage, flagged above 100%."""
    if value is None:
        return "nothing was lost"
    note = " (beyond the unpruned model: compare with the control)" if value > 1 else ""
    return f"{value:.0%}{note}"
