"""The removal reports (colab_helpers.pruning.reports): one base for parameters, each report's summary and JSON."""

from __future__ import annotations

import json

import pytest

from colab_helpers.pruning import CompressReport, LayerReport, MlpReport, PruneReport
from colab_helpers.pruning.reports import ParameterChange


def test_every_report_shares_the_parameter_base() -> None:
    layers = LayerReport(architecture="llama", params_before=1000, params_after=800, layers_before=3, removed=(1,),
                         kept=(0, 2))  # fmt: skip
    assert all(issubclass(kind, ParameterChange) for kind in (PruneReport, MlpReport, LayerReport, CompressReport))
    assert layers.removed_params == 200 and layers.removed_share == pytest.approx(0.2)
    assert layers.kept_share == pytest.approx(0.8)
    assert layers.summary() == "llama: removed layers [1] (3 -> 2); parameters 1,000 -> 800 (-20.0%)"
    assert layers._repr_markdown_().startswith("**LayerReport** · llama: removed layers [1]")
    assert json.loads(json.dumps(layers.to_dict()))["removed_params"] == 200


def test_head_removal_report_adds_its_derived_counts() -> None:
    report = PruneReport(architecture="gpt2", params_before=100, params_after=90, query_heads_before=(4, 4),
                         query_heads_after=(3, 4), kv_heads_before=(4, 4), kv_heads_after=(3, 4), padding_heads=(0, 1),
                         kept_heads=((0, 1, 2), (0, 1, 2, 3)))  # fmt: skip
    data = report.to_dict()
    assert data["removed_heads"] == [1, 0] and data["total_padding"] == 1 and data["removed_params"] == 10
    assert report.summary() == (
        "gpt2: removed 1 of 8 query heads (1 kept as zeroed padding); parameters 100 -> 90 (-10.0%)"
    )
    assert report._repr_markdown_().startswith("**Removal** · ")


def test_compress_report_keeps_its_per_axis_parameters() -> None:
    report = CompressReport(
        architecture="llama", params_before=1000, params_after=750, target_params=0.75, axes=("heads", "mlp"),
        removed_params={"heads": 50, "mlp": 200}, shares={"heads": 0.25, "mlp": 0.75}, heads_before=(4,),
        heads_after=(3,), mlp_before=(64,), mlp_after=(40,), removed_layers=(), kept_layers=(0,), flops_before=2.0,
        flops_after=1.0, seq_len=16, loss_before=1.0, loss_after=1.5, candidates=(), seconds=0.1,
    )  # fmt: skip
    data = report.to_dict()
    assert data["removed_params"] == {"heads": 50, "mlp": 200} and data["predicted_speedup"] == 2.0
    assert data["kept_share"] == pytest.approx(0.75) and data["summary"] == report.summary()
    assert report._repr_markdown_().startswith("**Compression** · llama: parameters 1,000 -> 750 (75.0% kept")
