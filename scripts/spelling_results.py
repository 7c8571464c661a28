#!/usr/bin/env python
"""Spelling transfer on a real model: zero-shot accuracy, a small LoRA sweep on spelling only, a control adapter.

On ``smollm2-135m-instruct`` (SmolLM2-135M-Instruct, Q4_1 GGUF, dequantized; see ``colab_helpers.models.packaged``)
on the CPU, through the package's own study (``colab_helpers.spelling.SpellingStudy``):

1. the untouched model answers the test questions of all three tasks (spelling, letter position, letter count)
   through its chat template: exact match after normalisation, bootstrap 95% intervals;
2. a grid of LoRA runs trained on the *spelling* rows only (by default three learning rates, same rank and steps),
   each scored on all three tasks, and one control adapter trained as many steps on plain text (the embedded
   corpus) with the strongest run's settings;
3. paired gains (the same questions answered by two models) of every run over the untouched model and over
   the control, with paired bootstrap intervals.

Writes the tables, the figure (``docs/spelling-transfer.png``), the exact command and the date into
``docs/spelling-transfer.md`` between generated-section markers: the prose outside them is kept on a rerun.
Every run is tracked in ``--results`` (``runs.csv``, each run's answers): an interrupted run, started again
with the same arguments, goes on where it stopped (``--fresh`` starts over).

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/spelling_results.py           # ~25-30 min at one thread
    .venv/bin/python scripts/spelling_results.py --smoke --no-write         # the embedded toy: the mechanics, ~1 min
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from _docs import END, REPO_ROOT, START, write_doc  # scripts/_docs.py, beside this file: offline settings first

DOC = REPO_ROOT / "docs" / "spelling-transfer.md"
FIGURE = REPO_ROOT / "docs" / "spelling-transfer.png"
MODEL = "smollm2-135m-instruct"
MODEL_LABEL = {MODEL: "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)"}
TASK_LABEL = {"spelling": "spelling", "position": "letter position", "count": "letter count"}
_T0 = time.perf_counter()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Zero-shot and after-LoRA spelling / position / count accuracy.")
    parser.add_argument("--model", default=MODEL, help="a load_model name (default: the offline SmolLM2 wheel)")
    parser.add_argument("--train-words", type=int, default=400, help="words of the training split (spelling only)")
    parser.add_argument("--validation-words", type=int, default=16, help="words for the validation loss")
    parser.add_argument("--test-words", type=int, default=60, help="test words: one question per task each")
    parser.add_argument("--learning-rates", nargs="+", type=float, default=[1e-4, 3e-4, 1e-3],
                        help="the grid's learning rates (the control uses the largest)")  # fmt: skip
    parser.add_argument("--ranks", nargs="+", type=int, default=[16], help="the grid's LoRA ranks (alpha = 2 x rank)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of every run and of the control")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per step (spelling pairs or text blocks)")
    parser.add_argument("--seq-len", type=int, default=80, help="tokens per example (the longest pair is ~67)")
    parser.add_argument("--eval-batch-size", type=int, default=60, help="prompts generated at once")
    parser.add_argument("--seed", type=int, default=0, help="words, splits, LoRA initialisation")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: shared machines thrash with more)")
    parser.add_argument("--results", type=Path, default=Path("/tmp/spelling-results"), help="runs.csv and answers")
    parser.add_argument("--fresh", action="store_true", help="delete --results first (else done runs are reused)")
    parser.add_argument("--smoke", action="store_true", help="embedded toy model, tiny data, 3 steps: mechanics only")
    parser.add_argument("--output", type=Path, default=DOC)
    parser.add_argument("--figure", type=Path, default=FIGURE)
    parser.add_argument("--no-write", action="store_true", help="print the tables, write nothing under docs/")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.train_words, args.validation_words, args.test_words = "embedded-gpt2", 24, 6, 8
        args.steps, args.learning_rates, args.seq_len = 3, [1e-3, 5e-3], 64
    return args


def say(message: str) -> None:
    print(f"[{(time.perf_counter() - _T0) / 60:5.1f} min] {message}", flush=True)


def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def interval(value: float, low: float, high: float, signed: bool = False) -> str:
    """``12.3 [5.0, 20.0]`` in percentage points (``+12.3 [+5.0, +20.0]`` when ``signed``)."""
    fmt = "{:+.1f}" if signed else "{:.1f}"
    return f"{fmt.format(100 * value)} [{fmt.format(100 * low)}, {fmt.format(100 * high)}]"


def accuracy_cells(row: Any) -> list[str]:
    from colab_helpers.spelling import TASKS

    return [interval(row[f"{t}_accuracy"], row[f"{t}_ci_low"], row[f"{t}_ci_high"]) for t in TASKS]


def run_label(row: Any) -> str:
    return f"LoRA r={int(row['lora.r'])}, lr {row['training.learning_rate']:g}"


def build(args: argparse.Namespace) -> dict[str, Any]:
    """Load the model, build the data, run baseline, sweep and control; return everything the doc needs."""
    import torch

    import colab_helpers as ch
    from colab_helpers import spelling as ss
    from colab_helpers.experiments.sweep_config import SweepConfig
    from colab_helpers.spelling import data as sp

    torch.set_num_threads(args.threads)
    if args.fresh and args.results.exists():
        shutil.rmtree(args.results)
    say(f"loading {args.model} ...")
    model, tokenizer = ch.load_model(args.model, device="cpu")
    parameters = sum(p.numel() for p in model.parameters())
    data_config = sp.SpellingDataConfig(train_size=args.train_words, validation_size=args.validation_words,
                                        test_size=args.test_words, seed=args.seed)  # fmt: skip
    data = sp.build_datasets(tokenizer, data_config)
    sp.save_datasets(data, args.results / "data")
    say(f"{parameters:,} parameters; data: " + ", ".join(f"{s} {len(d)} rows" for s, d in data.items()))
    study = ss.SpellingStudy(model, tokenizer, data, args.results, model_name=args.model,
                             batch_size=args.eval_batch_size, control="per_steps", live_plot=False, progress=True,
                             seed=args.seed)  # fmt: skip
    say("zero-shot evaluation of the untouched model ...")
    baseline = study.baseline()
    say("zero-shot: " + ", ".join(f"{t} {pct(baseline[f'{t}_accuracy'])}%" for t in ss.TASKS)
        + f" ({baseline['eval_seconds']:.0f} s)")  # fmt: skip

    base = ss.base_config(args.model)
    rank = max(args.ranks)
    base["lora"].update(r=rank, alpha=2 * rank)
    # the control (plain text, per step count) takes the base settings: the strongest run's, so that "any
    # fine-tuning of this strength" is what it measures; 2 validation-loss checks, no early stop, one checkpoint
    base["training"].update(learning_rate=max(args.learning_rates), batch_size=args.batch_size, max_steps=args.steps,
                            seq_len=args.seq_len, warmup_ratio=0.1, evaluations=2, early_stopping_patience=None,
                            checkpoints=1, seed=args.seed)  # fmt: skip
    grid: dict[str, Any] = {"training.learning_rate": {"values": list(args.learning_rates)}}
    if len(args.ranks) > 1:
        grid["lora.r"] = {"values": list(args.ranks)}
    sweep = SweepConfig(parameters=grid, search="grid", name="spelling-lora")
    say(f"sweep: {sweep.size} LoRA runs on spelling + 1 control, {args.steps} steps each ...")
    runs = study.run_sweep(sweep, base)
    for _, row in runs.iterrows():
        if row["status"] != "done":
            say(f"run {row['run_id']}: {row['status']} {row.get('error', '')}")
    done = runs[runs["status"] == "done"].reset_index(drop=True)
    if done.empty:
        raise SystemExit("no LoRA run finished: nothing to report (see runs.csv under --results)")
    references = study.references()
    controls = references[(references["kind"] == "control") & (references["status"] == "done")]
    control = controls.iloc[-1] if len(controls) else None
    gains = []
    for _, row in done.iterrows():
        say(f"{run_label(row)}: " + ", ".join(f"{t} {pct(row[f'{t}_accuracy'])}%" for t in ss.TASKS))
        gains.append({"label": run_label(row), "run": row,
                      "vs_baseline": study.gains(row["run_id"], baseline["run_id"]),
                      "vs_control": study.gains(row["run_id"], row["control_run_id"])
                      if isinstance(row.get("control_run_id"), str) else None})  # fmt: skip
    control_gain = study.gains(control["run_id"], baseline["run_id"]) if control is not None else None
    guesses = ss.guess_baselines(data["test"], n_boot=study.n_boot, seed=args.seed)
    analysis = study.analyze()
    analysis.save(args.results)
    return {"model": model, "tokenizer": tokenizer, "parameters": parameters, "data": data, "study": study,
            "baseline": baseline, "base": base, "runs": done, "all_runs": runs, "control": control,
            "control_gain": control_gain, "gains": gains, "guesses": guesses, "analysis": analysis}  # fmt: skip


def gain_table(result: dict[str, Any]) -> list[str]:
    """Markdown rows: each run's (and the control's) paired gain per task over the baseline and the control."""
    from colab_helpers.spelling import TASKS

    lines = ["| model | compared with | " + " | ".join(TASK_LABEL[t] for t in TASKS) + " |",
             "|---|---|" + "---:|" * len(TASKS)]  # fmt: skip

    def row(label: str, reference: str, table: Any) -> str:
        cells = [interval(table.loc[t, "gain"], table.loc[t, "ci_low"], table.loc[t, "ci_high"], signed=True)
                 for t in TASKS]  # fmt: skip
        return f"| {label} | {reference} | " + " | ".join(cells) + " |"

    for entry in result["gains"]:
        lines.append(row(entry["label"], "untouched model", entry["vs_baseline"]))
        if entry["vs_control"] is not None:
            lines.append(row(entry["label"], "control", entry["vs_control"]))
    if result["control_gain"] is not None:
        lines.append(row("control (plain text)", "untouched model", result["control_gain"]))
    return lines


def _moved(gain: Any) -> str:
    """Return "rose" / "fell" when the paired 95% interval excludes 0, else "no detectable change"."""
    return "rose" if gain["ci_low"] > 0 else "fell" if gain["ci_high"] < 0 else "no detectable change"


def verdict(result: dict[str, Any]) -> list[str]:
    """Return the answer in words per run, read off the paired intervals (generated: it follows the numbers)."""
    from colab_helpers.spelling import TASKS

    lines = []
    for entry in result["gains"]:
        parts = []
        for task in TASKS:
            versus = [("the untouched model", entry["vs_baseline"]), ("the control", entry["vs_control"])]
            said = [f"{_moved(table.loc[task])} vs {name} "
                    f"({interval(*table.loc[task, ['gain', 'ci_low', 'ci_high']], signed=True)})"
                    for name, table in versus if table is not None]  # fmt: skip
            parts.append(f"{TASK_LABEL[task]}: {', '.join(said)}")
        lines.append(f"- **{entry['label']}**: " + "; ".join(parts) + ".")
    models = [("the untouched model", result["baseline"])] + [(e["label"], e["run"]) for e in result["gains"]]
    if result["control"] is not None:
        models.append(("the control", result["control"]))
    for task, guess in result["guesses"].iterrows():
        above = [name for name, row in models if row[f"{task}_ci_low"] > guess["accuracy"]]
        lines.append(f"- Against the guess for {TASK_LABEL[task]} ({guess['guess']}: {pct(guess['accuracy'])}%): "
                     + (f"above it (interval clear of it): {', '.join(above)}." if above else
                        "no model is above it (no lower interval bound clears it)."))  # fmt: skip
    return lines


def examples(result: dict[str, Any], per_task: int = 2) -> list[str]:
    """Markdown rows: a few test questions with the untouched model's, the control's and the strongest run's answers."""
    from colab_helpers.spelling import TASKS

    study, data = result["study"], result["data"]
    best = max(result["gains"], key=lambda e: e["run"]["spelling_accuracy"])
    answers = {"untouched": study.predictions(result["baseline"]["run_id"]),
               best["label"]: study.predictions(best["run"]["run_id"])}  # fmt: skip
    if result["control"] is not None:
        answers["control"] = study.predictions(result["control"]["run_id"])
    keyed = {name: frame.set_index(["task", "word"])["prediction"] for name, frame in answers.items()}
    lines = ["| question | expected | " + " | ".join(answers) + " |", "|---|---|" + "---|" * len(answers)]
    test = data["test"].to_pandas()
    for task in TASKS:
        for _, row in test[test["task"] == task].head(per_task).iterrows():
            cells = [_short(keyed[name].get((task, row["word"]), "")) for name in answers]
            lines.append(f"| {_short(row['question'])} | `{row['answer']}` | " + " | ".join(cells) + " |")
    return lines


def answer_shapes(result: dict[str, Any]) -> list[str]:
    """Markdown rows: what each model's answers look like, beyond exact match (partial spelling, answer formats)."""
    import difflib
    from collections import Counter

    from colab_helpers.spelling import normalize_answer

    study = result["study"]
    models = [("untouched", result["baseline"]["run_id"])]
    if result["control"] is not None:
        models.append(("control", result["control"]["run_id"]))
    models += [(entry["label"], entry["run"]["run_id"]) for entry in result["gains"]]
    lines = ["| model | spelling: letter similarity | spelling: first letter right | position: answer spells the word "
             "out | position: answer is the word's first letter | count: most common answer |",
             "|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for name, run_id in models:
        frame = study.predictions(run_id)
        spelling, position, count = (frame[frame["task"] == t] for t in ("spelling", "position", "count"))
        said = [normalize_answer(p, "spelling").replace(" ", "") for p in spelling["prediction"]]
        truth = [normalize_answer(a, "spelling").replace(" ", "") for a in spelling["answer"]]
        similarity = sum(difflib.SequenceMatcher(None, a, b).ratio() for a, b in zip(said, truth, strict=True))
        first = sum(a[:1] == b[:1] for a, b in zip(said, truth, strict=True))
        runs = [normalize_answer(p, "spelling").split() for p in position["prediction"]]  # a spelled run, else words
        spelled = sum(len(run) >= 3 and all(len(letter) == 1 for letter in run) for run in runs)
        initial = sum(normalize_answer(p, "position") == w[0] for p, w in zip(position["prediction"], position["word"],
                                                                              strict=True))  # fmt: skip
        common, times = Counter(normalize_answer(p, "count") for p in count["prediction"]).most_common(1)[0]
        lines.append(f"| {name} | {similarity / len(said):.2f} | {first}/{len(said)} | {spelled}/{len(position)} | "
                     f"{initial}/{len(position)} | `{_short(common, 12)}` ({times}/{len(count)}) |")  # fmt: skip
    return lines


def _short(text: Any, limit: int = 70) -> str:
    line = " ".join(str(text).split()).replace("|", "\\|")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def generated_section(result: dict[str, Any], args: argparse.Namespace, command: str, seconds: float) -> str:
    """Return the generated part of the doc: command, setup, tables, the answer in words, examples, runtime."""
    import torch
    import transformers

    from colab_helpers.spelling import TASKS
    from colab_helpers.spelling.data import summary_table
    from colab_helpers.spelling.questions import uses_chat

    baseline, base, runs, control = result["baseline"], result["base"], result["runs"], result["control"]
    label = MODEL_LABEL.get(args.model, args.model)
    prompt_note = ("Prompts go through its chat template (its default system prompt, the question as the user turn, "
                   "generation after the assistant header)." if uses_chat(result["tokenizer"]) else
                   "It has no chat template: prompts are `Q: <question>\\nA:`.")  # fmt: skip
    sizes = summary_table(result["data"])
    tokens = result["study"].train_pairs
    header = "| model | " + " | ".join(f"{TASK_LABEL[t]} % [95% CI]" for t in TASKS) + " |"
    rule = "|---|" + "---:|" * len(TASKS)
    accuracy = [header, rule, f"| untouched model (zero-shot) | " + " | ".join(accuracy_cells(baseline)) + " |"]
    if control is not None:
        accuracy.append(f"| control: {args.steps} steps on plain text | " + " | ".join(accuracy_cells(control)) + " |")
    for _, row in runs.iterrows():
        accuracy.append(f"| {run_label(row)}, {int(row['train_steps'])} steps on spelling | "
                        + " | ".join(accuracy_cells(row)) + " |")  # fmt: skip
    guesses = result["guesses"]
    guess_lines = [f"| guess: {row['guess']} | " + " | ".join(
        interval(row["accuracy"], row["ci_low"], row["ci_high"]) if task == t else "" for t in TASKS) + " |"
        for task, row in guesses.iterrows()]  # fmt: skip
    timing = [f"untouched-model evaluation {baseline['eval_seconds']:.0f} s"]
    if control is not None:
        timing.append(f"control {control['train_seconds']:.0f} s training + {control['eval_seconds']:.0f} s evaluation")
    timing += [f"{run_label(r)} {r['train_seconds']:.0f} s + {r['eval_seconds']:.0f} s" for _, r in runs.iterrows()]
    trained = [r for _, r in runs.iterrows()] + ([control] if control is not None else [])
    compute = baseline["eval_seconds"] + sum(float(r["train_seconds"]) + float(r["eval_seconds"]) for r in trained)
    lines = [
        START,
        "<!-- written by scripts/spelling_results.py: edit the prose outside these markers, not inside -->",
        "",
        f"Command: `{command}`  ",
        (f"Date (UTC): {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M')}; the runs took {compute / 60:.1f} min of "
         f"training and evaluation (this invocation {seconds / 60:.1f} min: runs already in `--results` are reused) "
         f"at {args.threads} torch thread(s) on a shared {os.cpu_count()}-core CPU; torch {torch.__version__}, "
         f"transformers {transformers.__version__}, Python {platform.python_version()}."),
        "",
        "### Setup",
        "",
        f"- **Model**: {label}, {result['parameters']:,} parameters, float32 on the CPU. " + prompt_note,
        f"- **Data** (`build_datasets`, seed {args.seed}, words of 3-10 letters from the shipped SCOWL list, no word "
        f"in two splits): {sizes.loc['train', 'words']} training words (spelling questions only, "
        f"{args.steps * args.batch_size} of them seen: {args.steps} steps x {args.batch_size}), "
        f"{sizes.loc['validation', 'words']} validation words (validation loss), **{sizes.loc['test', 'words']} test "
        f"words, one question per task each** ({len(result['data']['test'])} questions). Templates are drawn per "
        "question (4 for spelling, 3 each for position and count).",
        "- **Scoring**: greedy generation, batched with left padding; room for the longest question plus its answer "
        "plus 4 tokens (instruct models often restate the question before answering); exact match on the first line after "
        "normalisation; accuracy with a 95% bootstrap interval (1,000 resamples of the questions).",
        f"- **LoRA runs** (`SpellingStudy.run_sweep`, peft on the CPU): r={base['lora']['r']}, "
        f"alpha={base['lora']['alpha']}, dropout {base['lora']['dropout']}, on the attention and MLP projections; "
        f"{args.steps} steps of {args.batch_size} (prompt, answer) pairs, the loss on the answer only, "
        "AdamW, 10% linear warm-up then cosine decay, learning rates "
        f"{', '.join(f'{lr:g}' for lr in args.learning_rates)}; "
        f"{len(tokens)} training pairs available. The adapter with the lower validation loss of the two checks "
        "(half-way, end) is kept.",
        f"- **Control**: the same LoRA settings at lr {base['training']['learning_rate']:g} for the same "
        f"{args.steps} steps of {args.batch_size} x {args.seq_len}-token blocks of plain English prose (the "
        "embedded Jargon File corpus): any fine-tuning of that strength, no spelling.",
        "",
        "### Accuracy per task",
        "",
        *accuracy,
        *guess_lines,
        "",
        "The two *guess* rows need no letter-level skill: the word's first letter as the answer to every position "
        "question, and one constant number (the test split's most common count) to every count question. A model "
        "at or below them has not shown the skill, whatever its score.",
        "",
        "### Gains on the same questions (percentage points, paired bootstrap 95% interval)",
        "",
        "Each model against the untouched model and against the control, question by question "
        "(`SpellingStudy.gains`): tighter than comparing the intervals above, since most questions are answered "
        "the same way by both models.",
        "",
        *gain_table(result),
        "",
        "### The answer, read off the intervals",
        "",
        *verdict(result),
        "",
        "### What the answers look like",
        "",
        "Beyond exact match (a rough look): *letter similarity* is difflib's ratio between the letters of a "
        "spelling answer (its longest run of single letters, else all the letters of its first line) and the "
        "word's (1.0 = the same letters in the same order); a position answer *spells the word out* when its "
        "first line holds a run of 3 or more single letters.",
        "",
        *answer_shapes(result),
        "",
        *examples(result),
        "",
        f"![Accuracy per task and model, with 95% intervals and the guesses]({args.figure.name})",
        "",
        f"Time: {'; '.join(timing)}.",
        "",
        END,
    ]
    return "\n".join(lines)


_TEMPLATE = """# Spelling transfer: does learning to spell teach letter positions and counts?

{generated}
"""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "HF_HUB_OFFLINE=1 .venv/bin/python scripts/spelling_results.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    result = build(args)
    seconds = time.perf_counter() - _T0
    section = generated_section(result, args, command.strip(), seconds)
    print(section)
    if args.no_write:
        return 0
    from colab_helpers.spelling import plot_task_accuracies

    models = {"untouched": result["baseline"]}
    if result["control"] is not None:
        models["control (plain text)"] = result["control"]
    models.update({entry["label"].removeprefix("LoRA "): entry["run"] for entry in result["gains"]})
    plot_task_accuracies(models, result["guesses"], path=args.figure)
    write_doc(args.output, section, _TEMPLATE)
    say(f"wrote {args.output} and {args.figure} ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
