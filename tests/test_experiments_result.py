"""The typed result of a run: read from result.json (today's and the dict-based pipeline's), written back the same."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _experiment_results import old_compress_dict, old_result_dict, result_with_abilities

from colab_helpers.experiments.config import Compression, HeadPruning
from colab_helpers.experiments.result import (
    Compressed,
    ExperimentResult,
    HeadsPruned,
    StageMetrics,
    Training,
    recovered_share,
    recovered_shares,
)


def test_recovered_share() -> None:
    assert recovered_share(100.0, 150.0, 125.0) == pytest.approx(0.5)
    assert recovered_share(100.0, 150.0, 90.0) == pytest.approx(1.2)  # beyond the unpruned model
    assert recovered_share(100.0, 100.0, 90.0) is None  # nothing was lost
    assert recovered_share(100.0, 99.0, 90.0) is None  # pruning helped: nothing to win back
    assert recovered_share(100.0, 150.0, 150.0) == 0.0 and recovered_share(100.0, 150.0, 100.0) == pytest.approx(1.0)
    assert recovered_share(100.0, math.inf, 120.0) is None  # a diverged pruned model has no share


def test_a_result_json_of_the_dict_based_pipeline_reads_as_typed_attributes() -> None:
    result = ExperimentResult.from_dict(old_result_dict())
    assert result.name == "embedded-llama-gradient-30" and result.recovered_share == 0.74  # 'recovery' in that shape
    assert result.config.pruning == HeadPruning(strategy="gradient", level=0.3, scope="global", remove=True)
    assert result.config.control and result.config.seq_len == 64
    assert [stage.perplexity for stage in result.stages.values()] == [182.9, 186.8, 184.0]
    assert isinstance(result.fine_tuned, StageMetrics) and result.fine_tuned is result.stages["fine_tuned"]
    assert result.pruned.latency_ms_per_token == 6.0 and result.pruned.latency.wall_spread == (5.5, 7.0)
    assert result.pruned.speedup == 0.95 and result.pruned.parameters == 930944
    pruning = result.pruning
    assert isinstance(pruning, HeadsPruned) and pruning.heads_pruned == 4 and pruning.mask[1][2] == 1
    assert pruning.removal is not None and pruning.removal.removed_heads == (0, 4)
    assert pruning.removal.kept_heads[1] == (0, 1, 4, 5)
    assert isinstance(result.training, Training) and result.training.steps == 6 and result.training.device == "cpu"
    assert result.control is not None and result.control.perplexity == 183.0 and result.control.latency is None
    assert result.control_training.history_path.endswith("control/history.csv")  # type: ignore[union-attr]
    assert result.output_dir == Path("/runs/embedded-llama-gradient-30") and result.model_dir.name == "model"


def test_a_compression_result_reads_with_its_report() -> None:
    result = ExperimentResult.from_dict(old_compress_dict())
    assert result.config.pruning == Compression(0.8) and result.config.recovery_method == "distill"
    assert isinstance(result.pruning, Compressed) and result.pruning.heads_pruned == 8
    report = result.pruning.report
    assert report.params_after == 867976 and report.predicted_speedup == pytest.approx(1.3)
    assert report.axes == ("heads", "mlp", "layers") and report.candidates[0]["loss"] == 5.05
    assert result.training.distill == {"temperature": 2.0, "alpha": 0.5, "top_k": None, "teacher_cache": None}
    assert result.control is None and result.control_training is None


@pytest.mark.parametrize("data", [old_result_dict(), old_compress_dict()], ids=["heads", "compress"])
def test_to_dict_writes_what_from_dict_reads(data: dict, tmp_path: Path) -> None:
    result = ExperimentResult.from_dict(data)
    written = result.to_dict()
    assert ExperimentResult.from_dict(written) == result
    assert "recovery" not in written and written["recovered_share"] == result.recovered_share
    assert written["stages"]["pruned"]["latency_ms_per_token"] == 6.0 and written["pruning"]["heads_pruned"] >= 4
    (tmp_path / "result.json").write_text(json.dumps(written))
    assert ExperimentResult.load(tmp_path) == result == ExperimentResult.load(tmp_path / "result.json")
    # the config as flat keys, None for the keys of the other kind of pruning
    unused = ("target_params", "axes") if isinstance(result.pruning, HeadsPruned) else ("strategy", "pruning_level")
    assert all(written["config"][key] is None for key in unused)


def test_a_missing_or_foreign_file_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no saved run at"):
        ExperimentResult.load(tmp_path / "nothing-here")
    (tmp_path / "result.json").write_text(json.dumps({"loss": 1.0}))
    with pytest.raises(ValueError, match="not a pipeline result"):
        ExperimentResult.load(tmp_path)


def test_the_share_is_on_general_perplexity_when_abilities_were_measured() -> None:
    result = ExperimentResult.from_dict(result_with_abilities())
    general = [stage.general_ppl for stage in result.stages.values()]
    assert general == pytest.approx([(400 * 420) ** 0.5, (440 * 460) ** 0.5, (450 * 470) ** 0.5])
    share, in_domain = recovered_shares(*result.stages.values())
    assert share == pytest.approx(recovered_share(*general)) == pytest.approx(-0.25, abs=1e-3)  # general text got worse
    assert in_domain == pytest.approx(recovered_share(182.9, 186.8, 184.0)) and in_domain > 0.7  # in-domain it "recovered"
    old = ExperimentResult.from_dict(old_result_dict())  # no abilities: both shares are the in-domain one
    assert recovered_shares(*old.stages.values()) == (pytest.approx(in_domain), pytest.approx(in_domain))


def test_abilities_round_trip_and_old_results_read_without_them(tmp_path: Path) -> None:
    result = ExperimentResult.from_dict(result_with_abilities())
    assert result.fine_tuned.ability is not None and result.fine_tuned.ability.tasks["capitals"].accuracy == 0.5
    assert result.control is not None and result.control.ability is not None and result.recovered_share_in_domain == 0.74
    written = result.to_dict()
    assert written["stages"]["pruned"]["ability"]["general_ppl"] == pytest.approx(result.pruned.general_ppl)
    (tmp_path / "result.json").write_text(json.dumps(written))
    assert ExperimentResult.load(tmp_path) == result
    old = ExperimentResult.from_dict(old_result_dict())  # written before abilities: none measured, none claimed
    assert old.baseline.ability is None and old.baseline.general_ppl is None and old.config.ability is False
    assert old.recovered_share == old.recovered_share_in_domain == 0.74
    assert old.training.fine_tuning_method == "lora" and old.training.recovery_text == "dataset"
