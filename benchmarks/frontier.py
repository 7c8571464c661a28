"""The size–quality frontier: SmolLM2-135M-Instruct pruned to several parameter targets, each recovered within the
same CPU budget, judged on general ability (text of other domains, zero-shot tasks).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/frontier.py              # every point not yet measured; hours
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/frontier.py --targets 0.75 --methods compress
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/frontier.py --minutes 20 --steps 480   # a time budget per point
    .venv/bin/python benchmarks/frontier.py --device cuda --minutes 10 --micro 16 --steps 20000 --points gpu.json
    .venv/bin/python benchmarks/frontier.py --report                       # the doc from the points measured
    .venv/bin/python benchmarks/frontier.py --quick                        # embedded-llama, seconds (tests)

Each point (a method at a target) is pruned from the unpruned model, measured (perplexity on the other-domain texts),
recovered by distillation from the unpruned model for ``--steps`` steps of 4 x 128 tokens on the recovery text,
and measured again (``colab_helpers.evaluation.evaluate_ability``: in-domain and other-domain perplexity, the
offline tasks). Points are saved one by one to ``benchmarks/frontier-points.json`` as they finish, so a long run
can stop and resume; a point is measured again only with ``--fresh`` or when its settings changed. Methods:

- ``compress``: ``colab_helpers.compress`` (Taylor scores, measured layer losses, allocation search, least-squares
  reconstruction), heads, MLP channels and layers;
- ``torch-pruning``: torch-pruning 1.6.1 as its LLM example prunes (benchmarks/torch_pruning_baseline.py), Taylor
  importance, the ratio found by bisection to reach the target (its heads come off a group at a time, so some
  targets it cannot reach: marked);
- ``random``: ``compress`` with random heads, channels and layers (seeded);
- ``compress-mix``: ``compress`` calibrated (scores and the allocation search's losses) on the recovery text (the
  model's own generations interleaved with the corpus) instead of the corpus alone.

Writes ``docs/compression-results.md`` and ``docs/compression-frontier.png`` (not with ``--quick``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from colab_helpers.runtime.modules import parameter_count  # noqa: E402 - after the environment defaults

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

POINTS = HERE / "frontier-points.json"
DOC = ROOT / "docs" / "compression-results.md"
FIGURE = ROOT / "docs" / "compression-frontier.png"
COMMAND = "OMP_NUM_THREADS=2 .venv/bin/python benchmarks/frontier.py"
TARGETS = (0.9, 0.8, 0.75, 0.6, 0.5)
METHODS = ("compress", "torch-pruning", "random", "compress-mix")
# goals: target -> (general perplexity / unpruned at most, task retention at least)
GOALS = {0.75: (1.25, 0.90), 0.9: (1.05, 0.98)}
# samples: the teacher's texts in the recovery mix (the first of the shipped sample; the toy samples its own)
FULL = dict(seq_len=128, calibration=(4, 8), eval=(2, 8), steps=120, micro=4, lr=1e-4, method="full", alpha=1.0,
            temperature=1.0, recovery_text="mix", samples=96, minutes=None, device="cpu",
            ability={})  # fmt: skip
QUICK = dict(seq_len=32, calibration=(1, 2), eval=(1, 2), steps=2, micro=2, lr=1e-4, method="full", alpha=1.0,
             temperature=1.0, recovery_text="mix", samples=4, minutes=None, device="cpu",
             ability={"tokens": 64, "seq_len": 32, "limit": 4})  # fmt: skip


def _settings_key(plan: dict[str, Any]) -> str:
    """What a point's figures depend on besides method and target: a point measured otherwise is measured again.
    A time budget and a recovery device other than the CPU are named only when set (the points measured before
    they existed keep their keys)."""
    keys = ("seq_len", "calibration", "eval", "steps", "micro", "lr", "method", "alpha", "temperature", "recovery_text",
            "samples")
    extra = {k: plan[k] for k, absent in (("minutes", None), ("device", "cpu")) if plan.get(k, absent) != absent}
    return json.dumps({k: plan[k] for k in keys} | extra, sort_keys=True)


def _load_points(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["points"] if path.is_file() else []


def _save_points(path: Path, points: list[dict[str, Any]]) -> None:
    from colab_helpers.runtime.files import atomic_write_text

    atomic_write_text(path, json.dumps({"points": points}, indent=1) + "\n")


# --- the three ways to prune -------------------------------------------------------------------------------------


def prune(method: str, model: Any, target: float, calibration: list[Any], evaluation: list[Any]) -> dict[str, Any]:
    """Prune ``model`` in place to ``target`` of its parameters by ``method``; return what was done."""
    from colab_helpers.pruning import compress

    started = time.perf_counter()
    if method in ("compress", "compress-mix"):
        report = compress(model, calibration, target, eval_batches=evaluation, progress=False)
        return {"seconds": time.perf_counter() - started, "summary": report.summary()}
    if method == "random":
        report = compress(model, calibration, target, eval_batches=evaluation, head_strategy="random",
                          mlp_strategy="random", layer_strategy="random", progress=False)  # fmt: skip
        return {"seconds": time.perf_counter() - started, "summary": report.summary()}
    ratio = _torch_pruning_ratio(model, target, calibration)
    from torch_pruning_baseline import layout, prune_with_torch_pruning

    started = time.perf_counter()  # the bisection above is this benchmark's, not torch-pruning's cost
    prune_with_torch_pruning(model, _rows(calibration), ratio=ratio, importance="taylor")
    return {"seconds": time.perf_counter() - started, "summary": f"ratio {ratio:.3f}: {layout(model)}"}


def _rows(batches: list[Any]) -> Any:
    import torch

    return torch.cat([torch.as_tensor(b["input_ids"]) for b in batches])


def _torch_pruning_ratio(model: Any, target: float, calibration: list[Any]) -> float:
    """The ratio at which torch-pruning's example keeps ``target`` of the parameters (bisection on magnitude pruning,
    which prunes the same shapes without gradients); ValueError when no ratio reaches it."""
    from torch_pruning_baseline import prune_with_torch_pruning

    full, ids = parameter_count(model), _rows(calibration)[:1]
    low, high = 0.0, 0.95
    for _ in range(8):
        mid = (low + high) / 2
        trial = copy.deepcopy(model)
        try:
            prune_with_torch_pruning(trial, ids, ratio=mid, importance="magnitude")
            kept = parameter_count(trial) / full
        except Exception:  # noqa: BLE001 - a ratio that empties a layer's heads: too high
            kept = 0.0
        low, high = (mid, high) if kept > target else (low, mid)
        del trial
    trial = copy.deepcopy(model)
    prune_with_torch_pruning(trial, ids, ratio=high, importance="magnitude")
    kept = parameter_count(trial) / full
    if abs(kept - target) > 0.02:
        raise ValueError(f"torch-pruning's example cannot reach {target:.0%} of the parameters (closest {kept:.1%})")
    return high


# --- one point ------------------------------------------------------------------------------------------------


def recovery_configs(plan: dict[str, Any], out: Path) -> tuple[Any, Any]:
    """The fine-tuning and distillation configs of ``plan`` (built first thing, so a bad flag fails before any work)."""
    from colab_helpers.finetune import DistillConfig, FineTuneConfig
    from colab_helpers.finetune.teacher_text import check_recovery_text

    check_recovery_text(plan["recovery_text"], fix="e.g. --recovery-text dataset for the corpus alone")
    config = FineTuneConfig(method=plan["method"], max_steps=plan["steps"], micro_batch_size=plan["micro"],
                            seq_len=plan["seq_len"], learning_rate=plan["lr"], warmup_steps=max(1, plan["steps"] // 20),
                            max_minutes=plan["minutes"], eval_every=10**9, restore_best=False,
                            output_dir=str(out))  # fmt: skip
    return config, DistillConfig(temperature=plan["temperature"], alpha=plan["alpha"])


def recover(student: Any, teacher: Any, tokenizer: Any, texts: list[str], plan: dict[str, Any],
            out: Path) -> tuple[Any, float, int]:  # fmt: skip
    """Distil ``student`` from ``teacher`` (already on ``plan["device"]``) as ``plan`` says, on that device; return
    the recovered model (on the CPU, in fp32, where it is measured), its seconds and steps."""
    from colab_helpers.finetune import distill, merge_adapter
    from colab_helpers.finetune.device import module_to_cpu

    config, distillation = recovery_configs(plan, out)
    started = time.perf_counter()
    student.to(plan["device"])
    result = distill(student, teacher, tokenizer, texts, None, config, distillation, live_plot=False,
                     progress=True)  # fmt: skip
    result.raise_if_failed()
    tuned = merge_adapter(result.model) if plan["method"] == "lora" else result.model
    module_to_cpu(tuned)
    return tuned, time.perf_counter() - started, result.steps


def _check_device(device: str) -> None:
    """Refuse a recovery device torch cannot use here, before any work (ValueError naming it and the fix)."""
    import torch

    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r} is not a torch device; e.g. --device cuda, or leave it out for the "
                         "CPU") from None  # fmt: skip
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: torch {torch.__version__} sees no CUDA device here; run on a GPU "
                         "machine, or leave --device out to recover on the CPU")  # fmt: skip


def _speedup(model: Any, pruned: Any, seq_len: int) -> float:
    """Forward latency ratio, unpruned / pruned: 1 x ``seq_len`` tokens, one thread, interleaved medians."""
    import torch
    from _timing import interleaved, ratio

    ids = torch.randint(2, 1000, (1, seq_len), generator=torch.Generator().manual_seed(0))

    def forward(target: Any) -> Any:
        def call() -> None:
            with torch.no_grad():
                target(input_ids=ids, use_cache=False)

        return call

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = interleaved({"unpruned": forward(model), "pruned": forward(pruned)}, 7)
    finally:
        torch.set_num_threads(threads)
    return ratio(times, "unpruned", "pruned")


def _point(method: str, target: float, ctx: dict[str, Any], plan: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Prune, measure, recover, measure: one frontier point as a JSON-ready dict."""
    import torch

    from colab_helpers.evaluation import evaluate_ability

    model, tokenizer = ctx["model"], ctx["tokenizer"]
    pruned = copy.deepcopy(model)
    row: dict[str, Any] = {"method": method, "target": target, "settings": _settings_key(plan)}
    source = "mix_" if method == "compress-mix" else ""
    try:
        row["prune"] = prune(method, pruned, target, ctx[f"{source}calibration"], ctx[f"{source}evaluation"])
    except ValueError as exc:
        print(f"  {method} at {target:.0%}: cannot ({exc})", flush=True)
        return row | {"unreachable": str(exc)}
    row["params"] = parameter_count(pruned)
    row["share"] = row["params"] / parameter_count(model)
    row["speedup"] = _speedup(model, pruned, plan["seq_len"])
    row["threads"] = torch.get_num_threads()  # pruning and recovery times depend on it
    before = evaluate_ability(pruned, tokenizer, in_domain=ctx["in_domain"], config=ctx["ppl_only"], progress=False)
    row["before"] = before.to_dict()
    print(f"  {method} at {target:.0%}: {row['share']:.1%} kept; before recovery {before}", flush=True)
    tuned, seconds, steps = recover(pruned, ctx["teacher"], tokenizer, ctx["recovery_texts"], plan,
                                    tmp / f"{method}-{target}")  # fmt: skip
    row["recovery_seconds"], row["recovery_steps"] = seconds, steps
    after = evaluate_ability(tuned, tokenizer, in_domain=ctx["in_domain"], config=ctx["ability"], progress=False)
    row["after"] = after.to_dict()
    print(f"  {method} at {target:.0%}: after {seconds / 60:.1f} min of recovery {after}", flush=True)
    return row


# --- the run ----------------------------------------------------------------------------------------------------


def context(quick: bool, plan: dict[str, Any]) -> dict[str, Any]:
    """The model, its tokenizer, calibration and allocation batches, held-out text and the recovery text."""
    import torch
    from torch_pruning_baseline import _load

    from colab_helpers.evaluation import AbilityConfig, load_text_dataset, tokenize_texts
    from colab_helpers.finetune import recovery_texts

    model, tokenizer, description = _load(quick)
    data = load_text_dataset("embedded")
    seq = plan["seq_len"]
    (cal_count, cal_size), (eval_count, eval_size) = plan["calibration"], plan["eval"]
    rows = cal_count * cal_size + eval_count * eval_size
    ids = tokenize_texts(tokenizer, data.train, max_tokens=rows * seq)[: rows * seq].view(rows, seq)

    def batches(block: Any, size: int) -> list[dict[str, Any]]:
        return [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in block.split(size)]

    texts = recovery_texts(plan["recovery_text"], data.train, None if quick else "smollm2-135m-instruct", teacher=model,
                           tokenizer=tokenizer, samples=plan["samples"])  # fmt: skip
    mix = tokenize_texts(tokenizer, texts, max_tokens=rows * seq)[: rows * seq].view(rows, seq)
    ability = AbilityConfig(**plan["ability"])
    return {
        "model": model, "tokenizer": tokenizer, "description": description,
        "calibration": batches(ids[: cal_count * cal_size], cal_size),
        "evaluation": batches(ids[cal_count * cal_size:], eval_size),
        "mix_calibration": batches(mix[: cal_count * cal_size], cal_size),
        "mix_evaluation": batches(mix[cal_count * cal_size:], eval_size),
        "in_domain": data, "ability": ability, "ppl_only": AbilityConfig(**(plan["ability"] | {"tasks": None})),
        "recovery_texts": texts,
    }  # fmt: skip


def run(quick: bool = False, *, targets: tuple[float, ...] = TARGETS, methods: tuple[str, ...] = METHODS,
        steps: int | None = None, lr: float | None = None, micro: int | None = None, samples: int | None = None,
        recovery_method: str | None = None, temperature: float | None = None, alpha: float | None = None,
        recovery_text: str | None = None, minutes: float | None = None, device: str | None = None,
        fresh: bool = False, points_path: Path = POINTS) -> dict[str, Any]:  # fmt: skip
    """Measure every (method, target) point not measured yet with these settings; return the benchmark's result.
    Points of other settings (``steps``, ``lr``, ``micro``, ``samples``, ``recovery_method``: ``"full"`` or
    ``"lora"``, the distillation's ``temperature`` and ``alpha``, ``recovery_text``: what recovery reads, one of
    ``finetune.RECOVERY_TEXTS``, ``minutes``: a time budget per point, ``steps`` then the most it may take,
    ``device``: where recovery runs, e.g. ``"cuda"``; pruning and measuring stay on the CPU) are kept beside the
    default's; the doc's
    frontier shows the default's, its section "Recovery settings" compares the others with them."""
    import tempfile

    import torch

    from colab_helpers.evaluation import evaluate_ability

    plan = dict(QUICK if quick else FULL)
    overrides = dict(steps=steps, lr=lr, micro=micro, samples=samples, method=recovery_method, temperature=temperature,
                     alpha=alpha, recovery_text=recovery_text, minutes=minutes, device=device)  # fmt: skip
    plan |= {name: value for name, value in overrides.items() if value is not None}
    recovery_configs(plan, Path(tempfile.gettempdir()))  # a bad setting fails here, before minutes of work
    _check_device(plan["device"])
    key = _settings_key(plan)
    path = points_path if not quick else Path(tempfile.mkdtemp()) / "points.json"
    points = [] if fresh else _load_points(path)
    started = time.perf_counter()
    ctx = context(quick, plan)
    # the teacher runs beside the student, on its device (the unpruned model itself when that is the CPU)
    ctx["teacher"] = ctx["model"] if plan["device"] == "cpu" else copy.deepcopy(ctx["model"]).to(plan["device"])
    # every core this process may use, unless OMP_NUM_THREADS says otherwise (a run pinned to one core of a shared
    # machine keeps its timings steady)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0))))
    reference = next((p for p in points if p["method"] == "unpruned" and p.get("settings") == key), None)
    if reference is None:
        unpruned = evaluate_ability(ctx["model"], ctx["tokenizer"], in_domain=ctx["in_domain"], config=ctx["ability"],
                                    progress=False)  # fmt: skip
        reference = {"method": "unpruned", "target": 1.0, "settings": key, "params": parameter_count(ctx["model"]),
                     "share": 1.0, "speedup": 1.0, "after": unpruned.to_dict(), "before": unpruned.to_dict()}  # fmt: skip
        points = [p for p in points if not (p["method"] == "unpruned" and p.get("settings") == key)] + [reference]
        _save_points(path, points)
        print(f"  unpruned: {unpruned}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for target in targets:
            for method in methods:
                if any(p["method"] == method and p["target"] == target and p.get("settings") == key for p in points):
                    continue
                row = _point(method, target, ctx, plan, Path(tmp))
                # read the file again: another run (other methods, pinned to the other core) may have added points
                points = [p for p in _load_points(path)
                          if not (p["method"] == method and p["target"] == target and p.get("settings") == key)]
                points.append(row)
                _save_points(path, points)
    result = _result([p for p in points if p.get("settings") == key], plan, ctx["description"],
                     time.perf_counter() - started)  # fmt: skip
    if not quick and key == _settings_key(FULL) and path == POINTS:
        _write_docs(result, points)
    elif not quick:
        print(f"settings or points file differ from the doc's ({key}, {path}): points saved, "
              f"{DOC.relative_to(ROOT)} not written")  # fmt: skip
    return result


# --- checks, table, doc -----------------------------------------------------------------------------------------


def _ability(point: dict[str, Any], stage: str = "after") -> Any:
    from colab_helpers.evaluation import AbilityResult

    return AbilityResult.from_dict(point[stage])


def _find(points: list[dict[str, Any]], method: str, target: float) -> dict[str, Any] | None:
    return next((p for p in points if p["method"] == method and p["target"] == target and "after" in p), None)


def _checks(points: list[dict[str, Any]], plan: dict[str, Any]) -> list[dict[str, Any]]:
    from _timing import check

    from colab_helpers.evaluation import ability_retention

    reference = _ability(next(p for p in points if p["method"] == "unpruned"))
    rows = []
    for target, (most, least) in GOALS.items():
        point = _find(points, "compress", target)
        if point is None:
            continue
        after = _ability(point)
        general, kept = after.general_ppl / reference.general_ppl, ability_retention(after, reference)
        minutes = point["recovery_seconds"] / 60
        rows.append(check(f"{target:.0%} of the parameters: general perplexity / unpruned", f"<= {most:g} (<= 20 min)",
                          general, general <= most and minutes <= 20,
                          f"{after.general_ppl:,.1f} vs {reference.general_ppl:,.1f} after {minutes:.1f} min of "
                          f"recovery ({point.get('recovery_steps', plan['steps'])} steps)"))  # fmt: skip
        rows.append(check(f"{target:.0%} of the parameters: task-accuracy retention", f">= {least:g}", kept,
                          kept >= least, "mean accuracy on the tasks the unpruned model is above chance on, vs "
                          "the unpruned model's"))  # fmt: skip
    for target in sorted({p["target"] for p in points if p["method"] == "compress"}, reverse=True):
        ours = _find(points, "compress", target)
        for peer in ("torch-pruning", "random"):
            theirs = _find(points, peer, target)
            if ours is None or theirs is None:
                continue
            a, b = _ability(ours).general_ppl, _ability(theirs).general_ppl
            rows.append(check(f"{target:.0%}: compress vs {peer} after the same recovery, general perplexity", "< 1",
                              a / b, a < b, f"{a:,.1f} vs {b:,.1f}"))  # fmt: skip
    ours, theirs = _find(points, "compress", 0.75), _find(points, "torch-pruning", 0.75)
    if ours is not None and theirs is not None:
        ratio = ours["prune"]["seconds"] / theirs["prune"]["seconds"]
        rows.append(check("75%: compress wall time / torch-pruning's", "<= 3", ratio, ratio <= 3,
                          f"{ours['prune']['seconds']:.0f} s vs {theirs['prune']['seconds']:.0f} s"))  # fmt: skip
    return rows


def _result(points: list[dict[str, Any]], plan: dict[str, Any], description: str, seconds: float) -> dict[str, Any]:
    figures = {}
    for p in points:
        if "after" in p:
            figures[f"{p['method']}_{p['target']}_general_ppl"] = _ability(p).general_ppl
    settings = {"model": description, "recovery": _recovery_text(plan), "seconds": round(seconds, 1)}
    return {"name": "frontier", "checks": _checks(points, plan), "figures": figures, "settings": settings,
            "points": points, "plan": plan}  # fmt: skip


def _recovery_text(plan: dict[str, Any]) -> str:
    what = "every weight" if plan["method"] == "full" else "LoRA r 16 on every linear layer"
    return (f"distillation from the unpruned model ({what}; KL at temperature {plan['temperature']:g}, weight "
            f"{plan['alpha']:g} on it), {plan['steps']} steps of {plan['micro']} x {plan['seq_len']} tokens of the "
            f"'{plan['recovery_text']}' recovery text ({plan['samples']} of the model's own texts), learning rate "
            f"{plan['lr']:g}")


def frontier_table(points: list[dict[str, Any]]) -> Any:
    """A row per measured point: share kept, speed-up, general perplexity before and after recovery, each text and
    task after recovery, task retention, minutes of recovery."""
    import pandas as pd

    from colab_helpers.evaluation import ability_retention

    reference = _ability(next(p for p in points if p["method"] == "unpruned"))
    rows = []
    for p in sorted(points, key=lambda p: (-p["target"], METHODS.index(p["method"]) if p["method"] in METHODS else -1)):
        if "after" not in p:
            rows.append({"method": p["method"], "target": p["target"], "kept": math.nan,
                         "note": p.get("unreachable", "not measured")})  # fmt: skip
            continue
        after, before = _ability(p), _ability(p, "before")
        row = {"method": p["method"], "target": p["target"], "kept": p["share"], "speed-up": p.get("speedup"),
               "general ppl before recovery": before.general_ppl, "general ppl": after.general_ppl,
               "vs unpruned": after.general_ppl / reference.general_ppl, "in-domain ppl": after.in_domain_ppl}  # fmt: skip
        row.update({f"ppl {name}": value for name, value in after.other_ppl.items()})
        row.update({name: score.accuracy for name, score in after.tasks.items()})
        row["task retention"] = ability_retention(after, reference)
        row["recovery min"] = p.get("recovery_seconds", 0) / 60
        row["prune s"] = p.get("prune", {}).get("seconds", 0)
        row["threads"] = p.get("threads", math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def _plot(table: Any, reference: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = table.dropna(subset=["kept"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = dict(zip(METHODS, ("tab:blue", "tab:orange", "tab:green", "tab:purple"), strict=True))  # one colour per method
    for method, rows in measured[measured.method != "unpruned"].groupby("method", sort=False):
        rows, color = rows.sort_values("kept"), colors.get(method)
        left.plot(rows["kept"] * 100, rows["general ppl"], "o-", color=color, label=f"{method}, recovered")
        left.plot(rows["kept"] * 100, rows["general ppl before recovery"], "x:", color=color, alpha=0.5,
                  label=f"{method}, before")  # fmt: skip
        right.plot(rows["kept"] * 100, rows["task retention"] * 100, "o-", color=color, label=method)
    left.axhline(reference.general_ppl, color="grey", ls="--", label="unpruned")
    right.axhline(100, color="grey", ls="--", label="unpruned")
    left.set(yscale="log", xlabel="parameters kept (%)", ylabel="general perplexity (other-domain texts, log)",
             title="Perplexity on text of other domains (lower is better)")  # fmt: skip
    right.set(xlabel="parameters kept (%)", ylabel="task accuracy retained (%)",
              title="Zero-shot tasks, retention vs the unpruned model")  # fmt: skip
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.invert_xaxis()
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_docs(result: dict[str, Any], all_points: list[dict[str, Any]]) -> None:
    from colab_helpers.evaluation import ability_table
    from colab_helpers.runtime.files import atomic_write_text

    points, plan = result["points"], result["plan"]
    table = frontier_table(points)
    reference = _ability(next(p for p in points if p["method"] == "unpruned"))
    _plot(table, reference, FIGURE)
    lines = ["# Compression frontier: size against general ability", "",
             f"Written by `{COMMAND}` (do not edit by hand; run it again: it measures the points not yet measured, "
             "saved in `benchmarks/frontier-points.json`).", "",
             "Quality here is **general ability**: perplexity on two texts of other domains than any text the models "
             "were calibrated, tuned or distilled on (the GPL-3 licence, legal prose; Python's reference "
             "documentation, technical prose), their geometric mean as *general perplexity*, and zero-shot accuracy "
             "on the offline tasks (`colab_helpers.evaluation.evaluate_ability`). In-domain perplexity (the "
             "embedded corpus the models were calibrated on) is shown beside it and is not a measure of quality.", "",
             "## Goals", "", "| check | target | measured | result | detail |", "|---|---|---:|---|---|"]  # fmt: skip
    for row in result["checks"]:
        lines.append(f"| {row['name']} | {row['target']} | {row['measured']:.3f} | "
                     f"{'pass' if row['passed'] else 'MISS'} | {row['detail']} |")  # fmt: skip
    lines += ["", *_closest_lines(all_points), "## The frontier", "", markdown(table), "",
              "![the frontier](compression-frontier.png)", "",
              _missing(points), "", *_calibration_lines(points), *_settings_lines(all_points, plan),
              *_field_lines(points, plan, result["settings"]["model"]),
              "## The unpruned model on the tasks", "",
              markdown(ability_table({"unpruned": reference}, "unpruned").reset_index()), "",
              "## Settings", "", f"- **model**: {result['settings']['model']}",
              f"- **recovery**: {result['settings']['recovery']}",
              "- **threads**: recovery minutes and prune seconds are wall time at the `threads` torch threads of each row "
              "(a run pinned to one core of two takes about twice as long as one on both)",
              "- **not shown**: one model, one seed per point; CPU only (2 cores; speed-up is one forward of 1 x 128 "
              "tokens at one thread, not generation under load); the offline tasks are small (<= 100 items, 95% "
              "intervals of about +-0.1) and built from shipped text, not the field's standard benchmarks "
              "(run `tasks=\"standard\"` with the hub for those)."]  # fmt: skip
    atomic_write_text(DOC, "\n".join(lines) + "\n")
    print(f"wrote {DOC.relative_to(ROOT)}")


def _calibration_lines(points: list[dict[str, Any]]) -> list[str]:
    """The section comparing compress calibrated on the corpus with compress calibrated on the mix, where both ran."""
    rows, ratios = [], []
    for target in sorted({p["target"] for p in points if p["method"] == "compress-mix"}, reverse=True):
        corpus, mix = _find(points, "compress", target), _find(points, "compress-mix", target)
        if corpus is None or mix is None:
            continue
        before = (_ability(corpus, "before").general_ppl, _ability(mix, "before").general_ppl)
        after = (_ability(corpus).general_ppl, _ability(mix).general_ppl)
        ratios.append(after[1] / after[0])
        rows.append(f"| {target:.0%} | {before[0]:,.1f} | {before[1]:,.1f} | {before[1] / before[0]:.3f} | "
                    f"{after[0]:,.1f} | {after[1]:,.1f} | {ratios[-1]:.3f} |")  # fmt: skip
    if not rows:
        return []
    if all(abs(r - 1) <= 0.02 for r in ratios):
        verdict = ("Within 2% of each other after recovery at every target measured: the calibration text is not what "
                   "limits the result, and `compress` keeps calibrating on the corpus.")  # fmt: skip
    else:
        verdict = "The calibration text changes the result after recovery: see the rows above."
    return ["## Calibration text: the corpus or the mix", "",
            "`compress` scores heads and channels and measures allocations on calibration text; `compress-mix` uses "
            "the recovery text (the model's own answers interleaved with the corpus) instead of the corpus alone. "
            "General perplexity, before and after the same recovery:", "",
            "| kept | corpus, before | mix, before | mix / corpus | corpus, after | mix, after | mix / corpus |",
            "|---|---:|---:|---:|---:|---:|---:|", *rows, "", verdict, ""]  # fmt: skip


# the settings a point may change from the frontier's (the flags of the same names)
PROBED = ("lr", "steps", "micro", "samples", "method", "temperature", "alpha", "recovery_text", "minutes", "device")


def _unpruned_like(all_points: list[dict[str, Any]], point: dict[str, Any]) -> dict[str, Any] | None:
    """The unpruned reference measured with ``point``'s settings (None when there is none)."""
    return next((p for p in all_points if p["method"] == "unpruned" and p.get("settings") == point.get("settings")),
                None)  # fmt: skip


def _changed(settings: dict[str, Any], default: dict[str, Any]) -> str:
    """The probed settings where ``settings`` differ from ``default``, e.g. ``"lr 0.001, method lora"`` ('' if none)."""
    changed = {k: v for k, v in settings.items() if k in PROBED and v != default.get(k)}
    return ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in sorted(changed.items()))


def _recipe(point: dict[str, Any], default: dict[str, Any]) -> str:
    """:func:`_changed` of ``point``'s settings, with the steps a time budget let it take (``steps`` is then a cap)."""
    settings = json.loads(point.get("settings") or "{}")
    what = _changed(settings, default)
    taken = point.get("recovery_steps")
    if not what or taken is None or taken == settings.get("steps"):
        return what
    return f"{what} ({taken} step{'' if taken == 1 else 's'} taken)"


def _settings_lines(all_points: list[dict[str, Any]], plan: dict[str, Any]) -> list[str]:
    """The section comparing points recovered with other settings (the flags of :data:`PROBED`) with the point of
    ``plan`` (the doc's settings) of the same method and target, where both ran."""
    from colab_helpers.evaluation import ability_retention

    key = _settings_key(plan)
    default = json.loads(key)
    rows = []
    for point in sorted(all_points, key=lambda p: (-p["target"], p["method"], p.get("settings", ""))):
        what = _recipe(point, default)
        if not what or point["method"] == "unpruned" or "after" not in point:
            continue
        base = next((p for p in all_points if p.get("settings") == key and p["method"] == point["method"]
                     and p["target"] == point["target"] and "after" in p), None)  # fmt: skip
        unpruned = _unpruned_like(all_points, point)
        if base is None or unpruned is None:
            continue
        ours, theirs, reference = _ability(point), _ability(base), _ability(unpruned)
        rows.append(f"| {point['method']} | {point['target']:.0%} | {what} | {theirs.general_ppl:,.1f} | "
                    f"{ours.general_ppl:,.1f} | {ours.general_ppl / theirs.general_ppl:.3f} | "
                    f"{ours.general_ppl / reference.general_ppl:.3f} | "
                    f"{ability_retention(theirs, reference):.3f} | {ability_retention(ours, reference):.3f} | "
                    f"{point['recovery_seconds'] / 60:.1f} | {point.get('threads', '')} |")  # fmt: skip
    if not rows:
        return []
    return ["## Recovery settings", "",
            "Points recovered with other settings than the frontier's (the changes named, the rest as in Settings), "
            f"against the frontier's point of the same method and target (learning rate {plan['lr']:g}, "
            f"{plan['steps']} steps of {plan['micro']} x {plan['seq_len']} tokens, {plan['samples']} teacher texts in "
            "the mix). General perplexity after "
            "recovery and task retention (vs the unpruned model); below 1 in the ratio column is better. Recovery "
            "minutes are wall time at the point's torch threads, with whatever else ran on the host then:", "",
            "| method | kept | changed | general ppl, frontier | general ppl, changed | changed / frontier | "
            "changed / unpruned | retention, frontier | retention, changed | recovery minutes | threads |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|", *rows, "", *_same_recovery_lines(all_points, key)]  # fmt: skip


def _same_recovery_lines(all_points: list[dict[str, Any]], key: str) -> list[str]:
    """Sentences comparing ``compress`` with the baselines recovered by the same other settings than ``key``'s, at
    each target where both ran: the frontier's goal (better than torch-pruning and random after the same
    recovery) read under another recipe."""
    default = json.loads(key)
    lines = []
    recovered = [p for p in all_points if "after" in p and p["method"] != "unpruned" and p.get("settings") != key]
    for settings, target in sorted({(p["settings"], p["target"]) for p in recovered}, key=lambda s: (s[0], -s[1])):
        same = {p["method"]: _ability(p).general_ppl for p in recovered
                if p["settings"] == settings and p["target"] == target}  # fmt: skip
        others = [m for m in ("torch-pruning", "random") if m in same]
        if "compress" not in same or not others:
            continue
        versus = ", ".join(f"{m} {same[m]:,.1f} ({same['compress'] / same[m]:.3f}x)" for m in others)
        lines.append(f"- Recovered with {_changed(json.loads(settings), default)}, at {target:.0%}: compress "
                     f"{same['compress']:,.1f} general perplexity against {versus}: compress "
                     f"{'is' if all(same['compress'] < same[m] for m in others) else 'is NOT'} better than "
                     f"{' and '.join(others)} after the same recovery.")  # fmt: skip
    return lines + [""] if lines else []


# Published pruning results to read the frontier against (each paper's own model, text and budget; not re-run here):
# (study, model, kept share, recovery, perplexity after / before pruning, zero-shot task retention)
FIELD = (
    ("LLM-Pruner (Ma et al., 2023)", "LLaMA-7B", "80%", "none", "1.51x (WikiText2 12.62 -> 19.09)", "0.896"),
    ("LLM-Pruner (Ma et al., 2023)", "LLaMA-7B", "80%", "LoRA, 50k instruction samples", "1.38x (-> 17.37)",
     "0.936-0.95"),
    ("FLAP (An et al., 2024)", "LLaMA-7B", "80% / 70% / 50%", "none", "1.16x / 1.40x / 2.52x (WikiText2)", ""),
    ("Minitron (Sreenivas et al., 2024)", "Llama-3.1-8B -> 4.5B", "56%", "distillation, 94B tokens", "",
     "0.93 (MMLU)"),
)  # fmt: skip


def _field_lines(points: list[dict[str, Any]], plan: dict[str, Any], model: str) -> list[str]:
    """Our compress points (of ``model``) beside what the field publishes, so a goal can be read against what is
    known to be reachable."""
    from colab_helpers.evaluation import ability_retention

    unpruned = next((p for p in points if p["method"] == "unpruned"), None)
    ours = [p for p in (_find(points, "compress", t) for t in TARGETS) if p is not None]
    if unpruned is None or not ours:
        return []
    reference = _ability(unpruned)
    tokens = plan["steps"] * plan["micro"] * plan["seq_len"]
    rows = [f"| {study} | {model} | {kept} | {recovery} | {ppl} | {tasks} |"
            for study, model, kept, recovery, ppl, tasks in FIELD]  # fmt: skip
    for point in ours:
        after = _ability(point)
        rows.append(f"| this frontier (`compress`) | {model} | {point['target']:.0%} | distillation, "
                    f"{tokens / 1000:.0f}k tokens ({point['recovery_seconds'] / 60:.0f} min at {_threads(point)}) | "
                    f"{after.general_ppl / reference.general_ppl:.2f}x (two other-domain texts) | "
                    f"{ability_retention(after, reference):.3f} (offline tasks) |")  # fmt: skip
    return ["## Against the field", "",
            "Published results of structured pruning, each on its own model, text and recovery budget (not re-run "
            "here), beside this frontier's `compress` points. Perplexity is after / before pruning; task retention "
            "is the pruned model's mean zero-shot accuracy over the unpruned model's:", "",
            "| study | model | kept | recovery | perplexity vs unpruned | task retention |",
            "|---|---|---|---|---|---|", *rows, "",
            "Read: the 75% goal (<= 1.25x after 20 CPU minutes) asks for a smaller loss than LLM-Pruner reports at "
            "80% of a model fifty times larger after LoRA on 50k samples (1.38x), and FLAP at 70% without "
            "retraining (1.40x). A 135M model has less redundancy to give up than a 7B one, and the recovery here "
            "reads a few tens of thousands of tokens where Minitron's reads billions.", ""]  # fmt: skip


def _threads(point: dict[str, Any]) -> str:
    threads = point.get("threads")
    return "? threads" if threads is None else f"{threads:g} thread{'' if threads == 1 else 's'}"


def _closest_lines(all_points: list[dict[str, Any]]) -> list[str]:
    """One sentence per goal target: the best general perplexity any recovery setting reached there within the
    goal's 20 minutes (the Goals table reads the frontier's own settings only)."""
    from colab_helpers.evaluation import ability_retention

    parts = []
    for target, (most, least) in GOALS.items():
        best = None
        for point in all_points:
            if point["method"] != "compress" or point["target"] != target or "after" not in point:
                continue
            unpruned = _unpruned_like(all_points, point)
            if unpruned is None or point["recovery_seconds"] > 20 * 60:
                continue
            after, reference = _ability(point), _ability(unpruned)
            ratio = after.general_ppl / reference.general_ppl
            if best is None or ratio < best[0]:
                best = (ratio, ability_retention(after, reference), point)
        if best is not None:
            ratio, kept, point = best
            what = _recipe(point, json.loads(_settings_key(FULL))) or "the frontier's settings"
            verdict = "pass" if ratio <= most and kept >= least else "still a MISS"
            parts.append(f"at {target:.0%}, {ratio:.3f}x general perplexity and {kept:.3f} task retention "
                         f"({what}; {point['recovery_seconds'] / 60:.1f} min at {_threads(point)}; "
                         f"{verdict} against <= {most:g}x and >= {least:g})")  # fmt: skip
    if not parts:
        return []
    return ["Closest to the goals with any recovery setting measured within 20 minutes (section Recovery settings): "
            + "; ".join(parts) + ".", ""]


def _missing(points: list[dict[str, Any]]) -> str:
    """The sentence naming the (method, target) points of the full frontier not measured yet."""
    missing = [f"{method} at {target:.0%}" for target in TARGETS for method in METHODS if _find(points, method, target)
               is None and not any(p["method"] == method and p["target"] == target for p in points)]  # fmt: skip
    return ("Not measured yet: " + ", ".join(missing) + "." if missing else "Every point of the frontier is measured.")


def markdown(table: Any) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if math.isnan(value) else f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
        return str(value)

    head = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "---|" * len(table.columns)
    return "\n".join([head, rule] + ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="embedded-llama, a few tokens: seconds, for tests")
    parser.add_argument("--targets", type=float, nargs="+", default=list(TARGETS), help="shares of parameters to keep")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=None, help=f"recovery steps per point (default {FULL['steps']})")
    parser.add_argument("--lr", type=float, default=None, help=f"recovery learning rate (default {FULL['lr']:g})")
    parser.add_argument("--micro", type=int, default=None,
                        help=f"sequences per recovery step (default {FULL['micro']})")
    parser.add_argument("--samples", type=int, default=None,
                        help=f"teacher texts in the recovery mix (default {FULL['samples']})")
    parser.add_argument("--recovery-method", choices=("full", "lora"), default=None,
                        help=f"what recovery trains: every weight or a LoRA adapter (default {FULL['method']}; "
                        "LoRA wants a higher --lr, e.g. 1e-3)")  # fmt: skip
    parser.add_argument("--temperature", type=float, default=None,
                        help=f"distillation softmax temperature (default {FULL['temperature']:g})")
    parser.add_argument("--alpha", type=float, default=None,
                        help=f"weight of the distillation term, the rest the LM loss (default {FULL['alpha']:g})")
    parser.add_argument("--recovery-text", default=None,
                        help=f"what recovery reads: 'dataset' (the corpus alone), 'generated' (the model's own texts) "
                        f"or 'mix' (default {FULL['recovery_text']})")  # fmt: skip
    parser.add_argument("--minutes", type=float, default=None,
                        help="a time budget for each point's recovery, in minutes (--steps is then the most it may "
                        "take; its learning-rate decay ends with the budget); default: no budget")  # fmt: skip
    parser.add_argument("--device", default=None,
                        help="where recovery runs, e.g. cuda (pruning and measuring stay on the CPU); default cpu")
    parser.add_argument("--points", type=Path, default=POINTS,
                        help=f"the points file read and written (default {POINTS.relative_to(ROOT)}, the only "
                        "one the doc is written from)")  # fmt: skip
    parser.add_argument("--fresh", action="store_true", help="measure every point again")
    parser.add_argument("--report", action="store_true", help="only write the doc from the points measured")
    args = parser.parse_args(argv)
    if args.report:
        plan = dict(FULL)
        everything = _load_points(POINTS)  # the doc's own points, whatever --points says
        points = [p for p in everything if p.get("settings") == _settings_key(plan)]
        _write_docs(_result(points, plan, "smollm2-135m-instruct", 0.0), everything)
        return
    result = run(args.quick, targets=tuple(args.targets), methods=tuple(args.methods), steps=args.steps, lr=args.lr,
                 micro=args.micro, samples=args.samples, recovery_method=args.recovery_method,
                 temperature=args.temperature, alpha=args.alpha, recovery_text=args.recovery_text,
                 minutes=args.minutes, device=args.device, fresh=args.fresh, points_path=args.points)  # fmt: skip
    for row in result["checks"]:
        print(f"{'pass' if row['passed'] else 'MISS':4}  {row['name']}: {row['measured']:.3f} (target {row['target']}) - "
              f"{row['detail']}")  # fmt: skip


if __name__ == "__main__":
    main()
