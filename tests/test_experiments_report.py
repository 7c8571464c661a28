"""Tables and figures of results, from saved results (no pipeline run: the pipeline's tests draw them from real runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _experiment_results import old_result_dict

from colab_helpers.experiments import report
from colab_helpers.experiments.result import ExperimentResult


@pytest.fixture
def result(tmp_path: Path) -> ExperimentResult:
    run = tmp_path / "run"
    for folder in (run, run / "control"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "history.csv").write_text("step,loss,eval_loss\n1,5.0,5.2\n2,4.8,\n")
    return ExperimentResult.from_dict(old_result_dict(run))


def test_the_tables_read_the_typed_result(result: ExperimentResult) -> None:
    table = report.comparison_table(result)
    assert list(table.index) == ["baseline", "pruned", "fine-tuned", "control (unpruned, fine-tuned)"]
    assert table.loc["pruned", "vs baseline"] == "+2.1%" and table.loc["pruned", "speed-up"] == 0.95
    assert table["ms / token"].isna().tolist() == [False, False, False, True]  # the control is not timed
    readout = report.recovery_table(result)["value"]
    assert readout["share of the loss won back"] == "74%"
    assert "what pruning still costs" in readout["pruned + fine-tuned vs control"]
    generations = report.generations_table(result)["generation"]
    assert list(generations.index) == ["baseline", "pruned", "fine-tuned", "control"]
    assert generations["pruned"] == "A hacker is a bott"


def test_histories_and_figure_of_run_and_control(result: ExperimentResult, tmp_path: Path) -> None:
    assert list(report.training_history(result)["loss"]) == [5.0, 4.8]
    assert len(report.training_history(result, control=True)) == 2
    figure = report.plot_results([result], tmp_path / "results.png")
    labels = [line.get_label() for line in figure.axes[1].lines]
    assert "embedded-llama-gradient-30 train" in labels and "embedded-llama-gradient-30 control train" in labels
    assert (tmp_path / "results.png").stat().st_size > 0
    Path(result.training.history_path).unlink()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has no training history"):
        report.training_history(result)
    with pytest.raises(ValueError, match="no results to plot"):
        report.plot_results([])


def test_share_above_one_points_at_the_control() -> None:
    assert report._share(None) == "nothing was lost"
    assert report._share(0.5) == "50%"
    assert "compare with the control" in report._share(2.02)
