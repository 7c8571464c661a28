"""What a notebook shows of pipeline runs: tables and figures of :class:`~.result.ExperimentResult` objects.

:func:`comparison_table` (every stage measured, in-domain and general), :func:`ability_comparison` (general ability
per stage), :func:`recovery_table` (the loss won back, read against the control),
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

    Columns: in-domain perplexity (the dataset's validation split) and its change against the baseline; when the run
    measured general ability, general perplexity (text of other domains) and its change, task retention against the
    baseline and the ``reading`` (:func:`colab_helpers.evaluation.ability.ability_reading`: an in-domain gain that
    general text does not confirm reads "domain adaptation", not "better"); then parameters, size of the weights as
    saved (MB), median latency per generated token (wall) and the speed-up against the baseline (CPU time on a
    CPU), and the seconds each stage took.
    """
    import pandas as pd

    stages = _with_control(result, "control (unpruned, fine-tuned)")
    baseline = result.baseline
    rows = {}
    for name, stage in stages.items():
        row = {"in-domain ppl": stage.perplexity, "in-domain vs baseline": _change(stage.perplexity, baseline.perplexity)}
        if baseline.ability is not None:
            row.update(_ability_columns(stage, baseline, reference=name == "baseline"))
        row.update({
            "parameters": stage.parameters,
            "weights MB": math.nan if stage.weights_mb is None else stage.weights_mb,
            "ms / token": math.nan if stage.latency is None else stage.latency.ms_per_token,
            "speed-up": math.nan if stage.speedup is None else stage.speedup,
            "seconds": stage.seconds,
        })  # fmt: skip
        rows[name] = row
    table = pd.DataFrame(rows).T
    floats = ["in-domain ppl", "weights MB", "ms / token", "speed-up", "seconds"]
    floats += ["general ppl", "task retention"] if "general ppl" in table.columns else []
    table = table.astype({**dict.fromkeys(floats, float), "parameters": int})
    return table.round({"in-domain ppl": 2, "general ppl": 2, "task retention": 3, "weights MB": 1, "ms / token": 1,
                        "speed-up": 3, "seconds": 1})  # fmt: skip


def _change(value: float | None, reference: float | None) -> str:
    """``+2.1%``: the change of ``value`` against ``reference`` (empty when either is missing)."""
    if value is None or reference is None or not reference:
        return ""
    return f"{value / reference - 1:+.1%}"


def _ability_columns(stage: StageMetrics, baseline: StageMetrics, *, reference: bool) -> dict[str, Any]:
    """The general-ability columns of one stage against the baseline (NaN and empty where it was not measured)."""
    from ..evaluation.ability import ability_reading, ability_retention

    if stage.ability is None or baseline.ability is None:
        return {"general ppl": math.nan, "general vs baseline": "", "task retention": math.nan, "reading": ""}
    return {
        "general ppl": math.nan if stage.general_ppl is None else stage.general_ppl,
        "general vs baseline": _change(stage.general_ppl, baseline.general_ppl),
        "task retention": ability_retention(stage.ability, baseline.ability),
        "reading": "reference" if reference else ability_reading(stage.ability, baseline.ability),
    }


def ability_comparison(result: ExperimentResult) -> Any:
    """Return the general ability of every stage (and the control) against the baseline, a pandas DataFrame
    (:func:`colab_helpers.evaluation.ability_table`): in-domain perplexity, each other-domain text's, general
    perplexity and its ratio to the baseline's, each task's accuracy, task retention and the reading.

    ValueError when the run measured no ability (``ability=False``).
    """
    from ..evaluation.ability import ability_table

    abilities = {name: stage.ability for name, stage in _with_control(result, "control (unpruned, fine-tuned)").items()
                 if stage.ability is not None}  # fmt: skip
    if "baseline" not in abilities:
        raise ValueError(f"run {result.name!r} measured no general ability (ability=False); run it with ability=True")
    return ability_table(abilities, reference="baseline")


def recovery_table(result: ExperimentResult) -> Any:
    """Return what pruning cost and recovery won back, read against the control when it ran.

    Fine-tuning on text of the evaluation's domain lowers its perplexity by itself, so a share recovered above 1
    is not a better model than the unpruned one: the share is on general (other-domain) perplexity when the run
    measured it (the in-domain share beside it), and the control (the unpruned model fine-tuned as long on the
    same text) is the fair reference: ``pruned + fine-tuned vs control`` is what pruning still costs.
    """
    import pandas as pd

    ppl = {stage: metrics.perplexity for stage, metrics in result.stages.items()}
    rows: dict[str, Any] = {
        "unpruned (in-domain ppl)": f"{ppl['baseline']:.2f}",
        "pruned": f"{ppl['pruned']:.2f} ({ppl['pruned'] / ppl['baseline'] - 1:+.1%})",
        "pruned + fine-tuned": f"{ppl['fine_tuned']:.2f}",
    }
    general = {stage: metrics.general_ppl for stage, metrics in result.stages.items()}
    if None not in general.values():
        rows["general ppl: unpruned, pruned, pruned + fine-tuned"] = ", ".join(f"{value:.2f}" for value in general.values())
        rows["share of the general loss won back"] = _share(result.recovered_share)
        rows["share of the in-domain loss won back"] = _share(result.recovered_share_in_domain)
    else:
        rows["share of the in-domain loss won back"] = _share(result.recovered_share)
    if result.control is not None:
        control = result.control.perplexity
        rows["control: unpruned + fine-tuned as long"] = f"{control:.2f}"
        rows["pruned + fine-tuned vs control"] = f"{ppl['fine_tuned'] / control - 1:+.1%} (what pruning still costs)"
        if result.control.general_ppl is not None and general["fine_tuned"] is not None:
            rows["pruned + fine-tuned vs control, general ppl"] = _change(general["fine_tuned"], result.control.general_ppl)
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
