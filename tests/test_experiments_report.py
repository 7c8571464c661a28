"""Tables and figures of results, from saved results (no pipeline run: the pipeline's tests draw them from real runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _experiment_results import old_result_dict, result_with_abilities

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
    assert table.loc["pruned", "in-domain vs baseline"] == "+2.1%" and table.loc["pruned", "speed-up"] == 0.95
    assert "general ppl" not in table.columns and "reading" not in table.columns  # measured without abilities
    assert table["ms / token"].isna().tolist() == [False, False, False, True]  # the control is not timed
    readout = report.recovery_table(result)["value"]
    assert readout["share of the in-domain loss won back"] == "74%"
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


def test_general_ability_sits_beside_in_domain_perplexity(tmp_path: Path) -> None:
    result = ExperimentResult.from_dict(result_with_abilities(tmp_path))
    table = report.comparison_table(result)
    assert list(table.columns[:6]) == ["in-domain ppl", "in-domain vs baseline", "general ppl", "general vs baseline",
                                       "task retention", "reading"]  # fmt: skip
    reading = table["reading"].to_dict()
    assert reading == {"baseline": "reference", "pruned": "worse", "fine-tuned": "worse",
                       "control (unpruned, fine-tuned)": "domain adaptation"}  # in-domain -7%, general +1%: not better
    assert table.loc["control (unpruned, fine-tuned)", "in-domain vs baseline"] == "-7.1%"
    assert table.loc["fine-tuned", "general vs baseline"] == "+12.2%"
    assert table.loc["pruned", "task retention"] == pytest.approx(0.5 / 0.6, abs=1e-3)
    abilities = report.ability_comparison(result)
    assert list(abilities.index) == list(table.index) and abilities.loc["baseline", "reading"] == "reference"
    assert abilities.loc["control (unpruned, fine-tuned)", "reading"] == "domain adaptation"
    readout = report.recovery_table(result)["value"]
    assert readout["share of the general loss won back"] == "-25%" and readout["share of the in-domain loss won back"] == "74%"
    assert readout["pruned + fine-tuned vs control, general ppl"] == "+11.1%"
    with pytest.raises(ValueError, match="measured no general ability"):
        report.ability_comparison(ExperimentResult.from_dict(old_result_dict(tmp_path)))
