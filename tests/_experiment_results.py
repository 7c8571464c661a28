"""Pipeline results without running the pipeline: a ``result.json`` in the shape the dict-based pipeline wrote (before
the typed results), and small fake results for sweep tests."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from colab_helpers.evaluation.latency import LatencyReport
from colab_helpers.experiments.config import ExperimentConfig
from colab_helpers.experiments.result import ExperimentResult, HeadsPruned, StageMetrics, Training

_LATENCY = {"ms_per_token": 6.0, "cpu_ms_per_token": 5.0, "wall_spread": [5.5, 7.0], "rounds": 2, "new_tokens": 16,
            "threads": 1, "device": "cpu"}  # fmt: skip


def _stage(perplexity: float, parameters: int, generation: str, speedup: float | None = 1.0) -> dict[str, Any]:
    stage = {"perplexity": perplexity, "eval_tokens": 1476, "generation": generation, "generation_path": "as_asked",
             "parameters": parameters, "weights_mb": parameters * 4 / 1e6, "seconds": 0.25}  # fmt: skip
    if speedup is not None:
        stage.update(latency_ms_per_token=6.0, cpu_ms_per_token=5.0, speedup=speedup, latency=dict(_LATENCY))
    return stage


def _training(run: Path) -> dict[str, Any]:
    return {"steps": 6, "seconds": 2.2, "final_loss": 4.9, "best_step": 1, "best_eval_loss": 5.17, "stopped": "max_steps",
            "device": "cpu", "backend": "peft", "dtype": "auto", "load_in_4bit": False, "events": 0, "event_kinds": [],
            "history_path": str(run / "history.csv"), "plot_path": None, "recovery_method": "lora"}  # fmt: skip


def old_result_dict(run: Path = Path("/runs/embedded-llama-gradient-30")) -> dict[str, Any]:
    """A head-pruning run with its control, as ``result.json`` held it before the typed results (the share was
    ``recovery``; the pruning record had ``normalization``; every flat config key was there)."""
    config = {"model": "embedded-llama", "dataset": "embedded", "strategy": "gradient", "pruning_level": 0.3,
              "scope": "global", "remove_heads": True, "prompt": "A hacker is", "max_new_tokens": 8,
              "fine_tuning_steps": 6, "fine_tuning_epochs": None, "learning_rate": 0.001, "lora_r": 16, "lora_alpha": 32,
              "micro_batch_size": 4, "seq_len": 64, "eval_tokens": 1500, "eval_stride": None, "importance_batches": 2,
              "latency_rounds": 2, "seed": 0, "control": True, "dtype": "auto", "load_in_4bit": False,
              "save_model": True, "target_params": None, "axes": ["heads", "mlp", "layers"], "recovery_method": "lora",
              "distill_temperature": 2.0, "distill_alpha": 0.5, "distill_top_k": None}  # fmt: skip
    report = {"architecture": "llama", "query_heads_before": [8, 8], "query_heads_after": [8, 4],
              "kv_heads_before": [4, 4], "kv_heads_after": [4, 2], "padding_heads": [0, 0],
              "kept_heads": [[0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 4, 5]], "params_before": 955520, "params_after": 930944,
              "removed_params": 24576, "removed_heads": [0, 4], "total_padding": 0}  # fmt: skip
    return {
        "name": "embedded-llama-gradient-30", "config": config,
        "stages": {"baseline": _stage(182.9, 955520, " a program."), "pruned": _stage(186.8, 930944, " a bott", 0.95),
                   "fine_tuned": _stage(184.0, 930944, " a program.", 1.02)},
        "pruning": {"method": "heads", "heads_pruned": 4, "mask": [[0] * 8, [0, 0, 1, 1, 0, 0, 1, 1]],
                    "scores": [[0.5] * 8, [0.1] * 8], "normalization": "none", "report": report},
        "training": _training(run), "recovery": 0.74, "seconds": 13.75, "output_dir": str(run),
        "model_dir": str(run / "model"),
        "control": {**_stage(183.0, 955520, " a program.", None), "training": _training(run / "control")},
    }  # fmt: skip


def old_compress_dict() -> dict[str, Any]:
    """A compression run recovered by distillation, no control, in the shape of before the typed results."""
    data = old_result_dict(Path("/runs/embedded-gpt2-keep80-heads+mlp+layers-distill"))
    data["name"] = "embedded-gpt2-keep80-heads+mlp+layers-distill"
    data["config"].update(model="embedded-gpt2", target_params=0.8, recovery_method="distill", control=False)
    data["training"].update(recovery_method="distill", distill={"temperature": 2.0, "alpha": 0.5, "top_k": None,
                                                               "teacher_cache": None})  # fmt: skip
    del data["control"]
    data["pruning"] = {
        "method": "compress", "heads_pruned": 9, "architecture": "gpt2", "target_params": 0.8,
        "axes": ["heads", "mlp", "layers"], "params_before": 1088256, "params_after": 867976,
        "removed_params": {"heads": 148320, "mlp": 71960, "layers": 0}, "shares": {"heads": 0.5, "mlp": 0.5, "layers": 0.0},
        "heads_before": [4, 4], "heads_after": [0, 0], "mlp_before": [512, 512], "mlp_after": [400, 300],
        "removed_layers": [], "kept_layers": [0, 1], "flops_before": 130.0, "flops_after": 100.0, "seq_len": 64,
        "loss_before": 5.03, "loss_after": 5.05, "candidates": [{"heads": 0.5, "mlp": 0.5, "loss": 5.05}], "seconds": 1.5,
        "predicted_speedup": 1.3, "kept_share": 0.7976, "summary": "gpt2: parameters 1,088,256 -> 867,976",
    }  # fmt: skip
    return copy.deepcopy(data)


def fake_result(config: ExperimentConfig, perplexity: float = 10.0, recovered: float | None = 0.5) -> ExperimentResult:
    """A head-pruning result of ``config`` with the same figures at every stage (for sweeps that skip the pipeline)."""
    latency = LatencyReport(1.0, 1.0, (1.0, 1.0), 1, 16, 1, "cpu")
    stage = StageMetrics(perplexity, 100, "", None, 100, 0.4, 0.01, latency, 1.0)
    return ExperimentResult(name=config.run_name(), config=config, baseline=stage, pruned=stage, fine_tuned=stage,
                            pruning=HeadsPruned([[1, 0]], [[0.1, 0.2]]), training=Training("lora", 1, 0.01),
                            recovered_share=recovered, seconds=0.01, output_dir=Path("."))  # fmt: skip


def _ability(in_domain: float, gpl: float, pydoc: float, capitals: float) -> dict[str, Any]:
    score = {"task": "capitals", "accuracy": capitals, "n": 100, "low": capitals - 0.09, "high": capitals + 0.09,
             "chance": 0.25, "metric": "acc"}  # fmt: skip
    return {"in_domain_ppl": in_domain, "other_ppl": {"gpl-3.0": gpl, "python-docs": pydoc}, "general_ppl": None,
            "tasks": {"capitals": score}, "seconds": 0.5}  # fmt: skip


def result_with_abilities(run: Path = Path("/runs/embedded-llama-gradient-30")) -> dict[str, Any]:
    """``old_result_dict`` measured as today's pipeline does, general ability at every stage: fine-tuning won back
    in-domain perplexity but lost general perplexity, and the control adapted to the domain (in-domain -7%, general
    +1%)."""
    data = old_result_dict(run)
    data["config"].update(ability=True, ability_tasks="capitals", ability_limit=100)
    data["stages"]["baseline"]["ability"] = _ability(182.9, 400.0, 420.0, 0.6)
    data["stages"]["pruned"]["ability"] = _ability(186.8, 440.0, 460.0, 0.5)
    data["stages"]["fine_tuned"]["ability"] = _ability(184.0, 450.0, 470.0, 0.5)
    data["control"].update(perplexity=170.0, ability=_ability(170.0, 404.0, 424.0, 0.6))
    data["recovered_share_in_domain"] = data.pop("recovery")
    data["recovered_share"] = -0.25  # (pruned - fine-tuned) / (pruned - baseline) on general perplexity
    return data
