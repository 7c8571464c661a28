"""Which recovery keeps general ability: SmolLM2-135M-Instruct compressed to 75%, recovered five ways with the same
number of distillation steps, judged on text of other domains and zero-shot tasks.

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/recovery_recipes.py   # about an hour at 60 steps
    .venv/bin/python benchmarks/recovery_recipes.py --report                          # the doc from the saved rows
    .venv/bin/python benchmarks/recovery_recipes.py --quick                           # embedded-llama, seconds

One ``compress`` to 75% (heads, MLP channels, layers), then, each from a copy of it (the 2-round recipe from the
unpruned model), ``--steps`` steps of 4 x 128 tokens of distillation from the unpruned model (KL at T=1, alone):

- **full, mix** (the frontier's recipe): every weight, learning rate 1e-4, on the mix recovery text (text the teacher
  wrote interleaved with the corpus);
- **full, corpus**: the same on the corpus alone (the training domain);
- **LoRA, mix**: rank 16 on every linear layer, learning rate 1e-3, merged after;
- **full, mix, corrected teacher** (Minitron): the teacher first fine-tuned (LoRA, LM loss, half as many steps) on
  the mix; its minutes are counted apart;
- **full, mix, 2 rounds** (Model-Optimizer): 86.6% then 86.6% of what is left, half the steps after each.

Rows are saved one by one to ``benchmarks/recovery-recipes.json`` (resumable); writes ``docs/recovery-recipes.md``.
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import frontier  # noqa: E402

ROWS = HERE / "recovery-recipes.json"
DOC = ROOT / "docs" / "recovery-recipes.md"
COMMAND = "OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/recovery_recipes.py"
TARGET = 0.75
STEPS = 60
BASELINE = "full, mix"
# name -> (recovery method, learning rate, recovery text, corrected teacher, rounds)
RECIPES: dict[str, tuple[str, float, str, bool, int]] = {
    "full, mix": ("full", 1e-4, "mix", False, 1),
    "full, corpus": ("full", 1e-4, "dataset", False, 1),
    "LoRA, mix": ("lora", 1e-3, "mix", False, 1),
    "full, mix, corrected teacher": ("full", 1e-4, "mix", True, 1),
    "full, mix, 2 rounds": ("full", 1e-4, "mix", False, 2),
}


def _plan(quick: bool, steps: int, recipe: tuple[str, float, str, bool, int]) -> dict[str, Any]:
    method, lr, text, _, _ = recipe
    base = frontier.QUICK if quick else frontier.FULL
    return dict(base, steps=steps, method=method, lr=lr, recovery_text=text)


def _texts(ctx: dict[str, Any], kind: str, plan: dict[str, Any], quick: bool) -> list[str]:
    from colab_helpers.finetune import recovery_texts

    # the frontier's count (the first of the shipped texts), so a recipe compares with the frontier's point
    return recovery_texts(kind, ctx["in_domain"].train, None if quick else "smollm2-135m-instruct",
                          teacher=ctx["model"], tokenizer=ctx["tokenizer"], samples=plan["samples"])  # fmt: skip


def _corrected_teacher(ctx: dict[str, Any], texts: list[str], plan: dict[str, Any], out: Path) -> tuple[Any, float]:
    from colab_helpers.finetune import FineTuneConfig
    from colab_helpers.finetune.recipes import correct_teacher

    steps = max(1, plan["steps"] // 2)
    config = FineTuneConfig(method="lora", max_steps=steps, micro_batch_size=plan["micro"], seq_len=plan["seq_len"],
                            learning_rate=1e-3, warmup_steps=max(1, steps // 20), eval_every=10**9,
                            restore_best=False, output_dir=str(out / "teacher"))  # fmt: skip
    started = time.perf_counter()
    teacher = correct_teacher(ctx["model"], ctx["tokenizer"], texts, config, live_plot=False, progress=True)
    return teacher, time.perf_counter() - started


def _two_rounds(ctx: dict[str, Any], texts: list[str], plan: dict[str, Any], rounds: int,
                out: Path) -> tuple[Any, float]:  # fmt: skip
    from colab_helpers.finetune import DistillConfig, FineTuneConfig
    from colab_helpers.finetune.recipes import compress_iteratively

    config = FineTuneConfig(method=plan["method"], max_steps=plan["steps"], micro_batch_size=plan["micro"],
                            seq_len=plan["seq_len"], learning_rate=plan["lr"],
                            warmup_steps=max(1, plan["steps"] // 20), eval_every=10**9, restore_best=False,
                            output_dir=str(out))  # fmt: skip
    student = copy.deepcopy(ctx["model"])
    result = compress_iteratively(student, ctx["model"], ctx["tokenizer"], ctx["calibration"], TARGET, texts, config,
                                  DistillConfig(temperature=plan["temperature"], alpha=plan["alpha"]), rounds=rounds,
                                  eval_batches=ctx["evaluation"], compress_options={"progress": False},
                                  live_plot=False, progress=True)  # fmt: skip
    return result.model, result.seconds  # distillation only, like the other recipes (pruning timed apart)


def _row(name: str, ctx: dict[str, Any], pruned: Any, quick: bool, steps: int, out: Path) -> dict[str, Any]:
    """Recover by recipe ``name``, measure; one JSON-ready row."""
    from colab_helpers.evaluation import evaluate_ability

    recipe = RECIPES[name]
    plan = _plan(quick, steps, recipe)
    texts = _texts(ctx, plan["recovery_text"], plan, quick)
    row: dict[str, Any] = {"recipe": name, "steps": steps, "quick": quick, "teacher_seconds": 0.0}
    teacher = ctx["model"]
    if recipe[3]:
        teacher, row["teacher_seconds"] = _corrected_teacher(ctx, texts, plan, out)
    if recipe[4] > 1:  # the rounds prune as they go, from the unpruned model
        tuned, row["seconds"] = _two_rounds(ctx, texts, plan, recipe[4], out)
    else:
        tuned, row["seconds"], _ = frontier.recover(copy.deepcopy(pruned), teacher, ctx["tokenizer"], texts, plan, out)
    row["params"] = frontier.parameter_count(tuned)
    row["share"] = row["params"] / frontier.parameter_count(ctx["model"])
    after = evaluate_ability(tuned, ctx["tokenizer"], in_domain=ctx["in_domain"], config=ctx["ability"], progress=False)
    row["after"] = after.to_dict()
    print(f"  {name}: {row['seconds'] / 60:.1f} min, {row['share']:.1%} kept: {after}", flush=True)
    return row


def run(quick: bool = False, *, steps: int = STEPS, recipes: tuple[str, ...] = tuple(RECIPES),
        rows_path: Path = ROWS) -> dict[str, Any]:  # fmt: skip
    """Measure every recipe not measured yet at ``steps``; return ``{"name", "rows", "reference", "table"}``."""
    import tempfile

    import torch

    from colab_helpers.evaluation import evaluate_ability

    path = Path(tempfile.mkdtemp()) / "rows.json" if quick else rows_path
    rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    plan = _plan(quick, steps, RECIPES[BASELINE])
    ctx = frontier.context(quick, plan)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0))))
    reference = next((r for r in rows if r["recipe"] == "unpruned" and r["quick"] == quick), None)
    if reference is None:
        unpruned = evaluate_ability(ctx["model"], ctx["tokenizer"], in_domain=ctx["in_domain"], config=ctx["ability"],
                                    progress=False)  # fmt: skip
        reference = {"recipe": "unpruned", "quick": quick, "steps": 0, "share": 1.0, "after": unpruned.to_dict()}
        rows.append(reference)
    done = {r["recipe"] for r in rows if r["steps"] == steps and r["quick"] == quick}
    todo = [name for name in recipes if name not in done]
    pruned = copy.deepcopy(ctx["model"])
    started = time.perf_counter()
    if todo:
        frontier.prune("compress", pruned, TARGET, ctx["calibration"], ctx["evaluation"])
    prune_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        for name in todo:
            row = _row(name, ctx, pruned, quick, steps, Path(tmp) / name.replace(" ", "_").replace(",", ""))
            row["prune_seconds"] = prune_seconds
            rows = [r for r in rows if not (r["recipe"] == name and r["steps"] == steps)] + [row]
            _save(path, rows)
    _save(path, rows)
    table = recipes_table([r for r in rows if r["quick"] == quick and r.get("steps") in (0, steps)])
    if not quick:
        write_doc(table, steps)
    return {"name": "recovery_recipes", "rows": rows, "table": table}


def _save(path: Path, rows: list[dict[str, Any]]) -> None:
    from colab_helpers.runtime.files import atomic_write_text

    atomic_write_text(path, json.dumps({"rows": rows}, indent=1) + "\n")


def recipes_table(rows: list[dict[str, Any]]) -> Any:
    """A row per recipe: general perplexity and its ratio to the unpruned model and to the frontier's recipe, each
    text and task, task retention, minutes."""
    import pandas as pd

    from colab_helpers.evaluation import AbilityResult, ability_retention

    reference = AbilityResult.from_dict(next(r for r in rows if r["recipe"] == "unpruned")["after"])
    base = next((r for r in rows if r["recipe"] == BASELINE), None)
    base_ppl = AbilityResult.from_dict(base["after"]).general_ppl if base else math.nan
    table = []
    for row in sorted(rows, key=lambda r: list(RECIPES).index(r["recipe"]) if r["recipe"] in RECIPES else -1):
        after = AbilityResult.from_dict(row["after"])
        entry = {"recipe": row["recipe"], "kept": row["share"], "general ppl": after.general_ppl,
                 "vs unpruned": after.general_ppl / reference.general_ppl,
                 f"vs {BASELINE}": after.general_ppl / base_ppl, "in-domain ppl": after.in_domain_ppl}  # fmt: skip
        entry.update({f"ppl {name}": value for name, value in after.other_ppl.items()})
        entry.update({name: score.accuracy for name, score in after.tasks.items()})
        entry["task retention"] = ability_retention(after, reference)
        entry["recovery min"] = row.get("seconds", 0.0) / 60
        entry["teacher min"] = row.get("teacher_seconds", 0.0) / 60
        table.append(entry)
    return pd.DataFrame(table)


def write_doc(table: Any, steps: int) -> Path:
    from colab_helpers.runtime.files import atomic_write_text

    lines = ["# Recovery recipes: which keeps general ability", "",
             f"Written by `{COMMAND} --steps {steps}` (do not edit by hand; rows saved in "
             "`benchmarks/recovery-recipes.json`, `--report` rewrites this page from them).", "",
             f"SmolLM2-135M-Instruct compressed once to {TARGET:.0%} of its parameters (`compress`: heads, MLP "
             f"channels, layers), then recovered by each recipe with {steps} distillation steps of 4 x 128 tokens "
             "(KL at T=1 from the unpruned model), one torch thread. *General ppl* is the geometric mean of the "
             "perplexities on the two texts of other domains; tasks are the offline zero-shot tasks. In-domain "
             "perplexity is on the corpus the models were calibrated on (and the corpus recipe trains on): a gain "
             "there alone is domain adaptation.", "", frontier.markdown(table), "", _spread(table), "",
             "Recipes: see the header of `benchmarks/recovery_recipes.py`. *teacher min* is the teacher "
             "correction's own time (done once per teacher, shared by every student of a frontier).", "",
             f"Not shown: one seed, one target ({TARGET:.0%}), {steps} steps each (the frontier uses "
             f"{frontier.FULL['steps']}); recipes within a few percent of each other are not told apart by this "
             "run."]  # fmt: skip
    return atomic_write_text(DOC, "\n".join(lines) + "\n")


def _spread(table: Any) -> str:
    """One sentence: how far apart the recipes land on general perplexity, and which is lowest."""
    recipes = table[table.recipe != "unpruned"]
    if recipes.empty:
        return ""
    low, high = recipes["general ppl"].min(), recipes["general ppl"].max()
    best = recipes.loc[recipes["general ppl"].idxmin(), "recipe"]
    return (f"General perplexity spans {low:,.1f} to {high:,.1f} across the recipes ({high / low - 1:.1%} apart; "
            f"lowest: {best}).")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="embedded-llama, a few tokens: seconds, for tests")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"distillation steps per recipe (default {STEPS})")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES), metavar="NAME")
    parser.add_argument("--report", action="store_true", help="only write the doc from the rows saved")
    args = parser.parse_args(argv)
    if args.report:
        rows = json.loads(ROWS.read_text())["rows"]
        write_doc(recipes_table([r for r in rows if not r["quick"] and r.get("steps") in (0, args.steps)]), args.steps)
        return
    result = run(args.quick, steps=2 if args.quick else args.steps, recipes=tuple(args.recipes))
    print(result["table"].round(3).to_string(index=False))


if __name__ == "__main__":
    main()
