"""Compression to a parameter target, then recovery by distillation, on SmolLM2-135M-Instruct: the checks below.

    OMP_NUM_THREADS=2 python benchmarks/compression.py            # about half an hour on a 2-core machine
    python benchmarks/compression.py --quick                       # embedded-llama, seconds (tests)
    python benchmarks/run.py --only compression                    # the same, its table into RESULTS.md

Writes ``docs/compression-recipes.md`` and ``docs/compression-recipes.png`` (not with ``--quick``). Every number
comes from one run on one text: held-out blocks of the embedded corpus's validation split (scored in
non-overlapping blocks of 128), calibration from the start of its train split, recovery training on the rest
of the train split. The checks (each a goal, in brackets):

- **Before recovery** [perplexity <= 1/3 of torch-pruning's Taylor at the same parameter count]: torch-pruning
  1.6.1 as its LLM example prunes (``torch_pruning_baseline.py``: 6 of 9 heads and MLP 1024 in every layer,
  75.3% of the parameters), then ``colab_helpers.compress`` to the same count, across heads, MLP and layers.
- **Speed** [measured forward speed-up >= 0.9 of the FLOPs prediction]: one forward of 1 x 128 tokens, unpruned vs
  compressed, interleaved CPU-time medians at ONE torch thread; the prediction is ``forward_flops``' ratio.
- **Recovery** [after <= 20 minutes of distillation on the 2-core CPU: held-out perplexity <= 1.15x the unpruned
  model's, and below plain LM-loss LoRA with the same steps and data]: LoRA (r 16, every linear layer) trained
  by ``distill`` (KL at temperature 2 mixed half and half with the LM loss) and by ``fine_tune`` (LM loss), same
  steps, batches, learning rate and seed. Training runs on every core (2 on the 2-core machine; "minutes" are
  wall-clock minutes of ``distill`` there, evaluations during training included).
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # loaded by file path: find the shared harness beside it
from _timing import check, command_line, interleaved, paired_spread, ratio  # noqa: E402

DOC = ROOT / "docs" / "compression-recipes.md"
# text of another domain, shipped in the package (colab_helpers/embedded/texts): what recovery on the embedded corpus
# keeps of the model's general ability
OTHER_TEXT = "gpl-3.0"
FIGURE = ROOT / "docs" / "compression-recipes.png"
TARGET_VS_TORCH_PRUNING = 1 / 3
TARGET_SPEED_AGREEMENT = 0.9
TARGET_RECOVERY = 1.15
TARGET_DISTILL_MINUTES = 20.0
COMMAND = "OMP_NUM_THREADS=2 .venv/bin/python benchmarks/compression.py"

# heldout: blocks of seq_len scored; calibration / eval: batches x batch size of seq_len for compress (Taylor
# scores; layer costs and allocations); steps x micro-batch of seq_len for each recovery run, evaluated every
# eval_every steps on eval_batches micro-batches of the held-out text; latency: batch x seq x repeats
FULL = dict(heldout=24, seq_len=128, calibration=(4, 8), eval=(2, 8), steps=240, micro=4, lr=1e-3, eval_every=40,
            eval_batches=6, latency=(1, 128, 10))  # fmt: skip
QUICK = dict(heldout=4, seq_len=32, calibration=(1, 2), eval=(1, 2), steps=4, micro=2, lr=1e-3, eval_every=2,
             eval_batches=1, latency=(1, 16, 2))  # fmt: skip

NOT_SHOWN = (
    "one model (SmolLM2-135M-Instruct, its Q4_1 GGUF dequantized), one text (the embedded corpus: recovery trains "
    "on its train split and is measured on its validation split, so both LoRA runs also adapt to the domain), one "
    "seed, one target (the parameter count torch-pruning's example reaches); perplexity only, no downstream task "
    "accuracy; CPU timings at one thread (speed) and two (training), not GPU throughput; the speed check is one "
    "forward of 128 tokens without a KV cache, not generation"
)


def _load(quick: bool) -> tuple[Any, Any, str]:
    from torch_pruning_baseline import _load as load_for_torch_pruning

    return load_for_torch_pruning(quick)


def _token_blocks(tokenizer: Any, text: Any, blocks: int, seq_len: int) -> Any:
    from colab_helpers.evaluation.perplexity import tokenize_texts

    ids = tokenize_texts(tokenizer, text, max_tokens=blocks * seq_len)
    if ids.numel() < blocks * seq_len:
        raise SystemExit(f"the text has {ids.numel()} tokens, fewer than {blocks} blocks of {seq_len}")
    return ids[: blocks * seq_len]


def _ours(eval_batches: list[dict[str, Any]], report_box: dict[str, Any]) -> Any:
    """Return the ``ours`` callable of ``torch_pruning_baseline.compare``: compress to the same parameter count."""
    from colab_helpers.pruning import compress

    def ours(model: Any, batches: list[dict[str, Any]], target_params: int) -> dict[str, Any]:
        share = target_params / sum(p.numel() for p in model.parameters())
        report = compress(model, batches, share, eval_batches=eval_batches, progress=False)
        report_box["report"] = report
        return {"model": model, "method": "colab_helpers.compress", "compress_s": report.seconds}

    return ours


def _speed(model: Any, compressed: Any, plan: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    from colab_helpers.pruning import forward_flops

    batch, seq, repeats = plan["latency"]
    ids = torch.randint(2, 1000, (batch, seq), generator=torch.Generator().manual_seed(0))

    def forward(target: Any) -> Any:
        def call() -> None:
            with torch.no_grad():
                target(input_ids=ids, use_cache=False)

        return call

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = interleaved({"unpruned": forward(model), "compressed": forward(compressed)}, repeats)
    finally:
        torch.set_num_threads(threads)
    measured = ratio(times, "unpruned", "compressed")
    predicted = forward_flops(model, batch, seq) / forward_flops(compressed, batch, seq)
    agreement = measured / predicted
    row = check(
        "compressed forward speed-up: measured / FLOPs-predicted",
        f">= {TARGET_SPEED_AGREEMENT:g}",
        agreement,
        agreement >= TARGET_SPEED_AGREEMENT,
        f"measured {measured:.3f}x ({paired_spread(times, 'unpruned', 'compressed')}), predicted {predicted:.3f}x; "
        f"one forward of {batch} x {seq} tokens, no KV cache, one torch thread, {repeats} interleaved repeats",
    )
    return row, {"measured_speedup": measured, "predicted_speedup": predicted, "speed_agreement": agreement}


def _recover(kind: str, student: Any, teacher: Any, tokenizer: Any, train: Any, heldout_text: Any,
             plan: dict[str, Any], out: Path) -> tuple[Any, Any, float]:  # fmt: skip
    """Train ``student`` for the plan's steps by ``kind`` ("distill" or "lora"); return (model, history, seconds)."""
    from colab_helpers.finetune import DistillConfig, FineTuneConfig, distill, fine_tune, merge_adapter

    config = FineTuneConfig(max_steps=plan["steps"], micro_batch_size=plan["micro"], seq_len=plan["seq_len"],
                            learning_rate=plan["lr"], warmup_steps=max(1, plan["steps"] // 20),
                            eval_every=plan["eval_every"], eval_batches=plan["eval_batches"], restore_best=False,
                            output_dir=str(out / kind), plot_title=f"recovery: {kind}")  # fmt: skip
    started = time.perf_counter()
    if kind == "distill":
        result = distill(student, teacher, tokenizer, train, heldout_text, config,
                         DistillConfig(temperature=2.0, alpha=0.5), live_plot=False, progress=True)  # fmt: skip
    else:
        result = fine_tune(student, tokenizer, train, heldout_text, config, live_plot=False, progress=True)
    seconds = time.perf_counter() - started
    result.raise_if_failed()
    return merge_adapter(result.model), result.history_frame(), seconds


def run(quick: bool = False) -> dict[str, Any]:
    """Run every stage; return ``{"name", "checks", "figures", "settings"}`` (and write the docs unless quick)."""
    import torch
    from torch_pruning_baseline import compare, torch_pruning_missing

    from colab_helpers.evaluation.data import load_text_dataset

    missing = torch_pruning_missing()
    if missing is not None:
        return {"name": "compression", "checks": [], "figures": {}, "settings": {}, "skipped": missing}
    plan = QUICK if quick else FULL
    started = time.perf_counter()
    model, tokenizer, description = _load(quick)
    data = load_text_dataset("embedded")
    seq = plan["seq_len"]
    heldout = _token_blocks(tokenizer, data.validation, plan["heldout"], seq)
    (cal_batches, cal_size), (eval_count, eval_size) = plan["calibration"], plan["eval"]
    calibration_rows = cal_batches * cal_size
    train_ids = _token_blocks(tokenizer, data.train, calibration_rows + eval_count * eval_size, seq)
    calibration = train_ids[: calibration_rows * seq].view(calibration_rows, seq)
    eval_ids = train_ids[calibration_rows * seq :].view(eval_count, eval_size, seq)
    eval_batches = [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in eval_ids]
    box: dict[str, Any] = {}

    rows = compare(model, tokenizer, heldout, calibration, seq_len=seq, batch_size=cal_size,
                   ours=_keep(_ours(eval_batches, box), box), progress=lambda r: print(
                       f"  {r['method']}: {r['params']:,} parameters, perplexity {r['perplexity']:,.1f}", flush=True))  # fmt: skip
    by_method = {row["method"]: row for row in rows}
    unpruned, taylor, ours_row = by_method["unpruned"], by_method["torch-pruning taylor"], by_method["colab_helpers.compress"]
    compressed, report = box["model"], box["report"]
    checks = [
        check(
            "before recovery: compress perplexity / torch-pruning Taylor's, same parameter count",
            f"<= {TARGET_VS_TORCH_PRUNING:.3f}",
            ours_row["perplexity"] / taylor["perplexity"],
            ours_row["perplexity"] <= TARGET_VS_TORCH_PRUNING * taylor["perplexity"],
            f"compress {ours_row['perplexity']:,.1f} at {ours_row['params']:,} parameters ({ours_row['share']:.1%}) vs "
            f"torch-pruning Taylor {taylor['perplexity']:,.1f} at {taylor['params']:,}; unpruned {unpruned['perplexity']:,.1f}",
        )
    ]
    speed_row, figures = _speed(model, compressed, plan)
    checks.append(speed_row)

    from colab_helpers.evaluation import other_domain_text, perplexity

    def held_out(target: Any) -> float:
        return perplexity(target, tokenizer, heldout, seq_len=seq, stride=seq, batch_size=8, progress=False).perplexity

    other = _token_blocks(tokenizer, other_domain_text(OTHER_TEXT), plan["heldout"], seq)

    def other_domain(target: Any) -> float:
        return perplexity(target, tokenizer, other, seq_len=seq, stride=seq, batch_size=8, progress=False).perplexity

    other_before = {"unpruned": other_domain(model), "compressed": other_domain(compressed)}
    train_text = data.train  # the recovery runs read from the start of the train split (calibration included)
    heldout_text = tokenizer.decode(heldout[: plan["eval_batches"] * plan["micro"] * seq])
    recovered: dict[str, dict[str, Any]] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # training as users run it: every core (run.py pins one thread)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("distill", "lora"):
            student = copy.deepcopy(compressed)
            tuned, history, seconds = _recover(kind, student, model, tokenizer, train_text, heldout_text, plan, Path(tmp))
            recovered[kind] = {"perplexity": held_out(tuned), "other": other_domain(tuned), "seconds": seconds,
                               "history": history}  # fmt: skip
            print(f"  {kind}: perplexity {recovered[kind]['perplexity']:,.1f} after {plan['steps']} steps "
                  f"({seconds / 60:.1f} min)", flush=True)  # fmt: skip
            del tuned, student
    torch.set_num_threads(threads)
    kd, lm = recovered["distill"], recovered["lora"]
    minutes = kd["seconds"] / 60
    # Judged on text of another domain: the recovery trains on the corpus, so its own held-out split measures domain
    # adaptation, not kept ability; the in-domain figures stay in the detail, labelled.
    checks.append(check(
        f"after distillation: perplexity on another domain ({OTHER_TEXT}) / unpruned",
        f"<= {TARGET_RECOVERY:g} (in <= {TARGET_DISTILL_MINUTES:g} min)", kd["other"] / other_before["unpruned"],
        kd["other"] <= TARGET_RECOVERY * other_before["unpruned"] and minutes <= TARGET_DISTILL_MINUTES,
        f"distilled {kd['other']:,.1f} vs unpruned {other_before['unpruned']:,.1f} after {plan['steps']} steps of "
        f"{plan['micro']} x {seq} tokens in {minutes:.1f} min (compressed {other_before['compressed']:,.1f}); on the "
        f"training domain's held-out text (domain adaptation) {kd['perplexity']:,.1f} vs {unpruned['perplexity']:,.1f}",
    ))
    checks.append(check(
        f"distillation vs plain LoRA, same steps and data: perplexity ratio on another domain ({OTHER_TEXT})", "< 1",
        kd["other"] / lm["other"], kd["other"] < lm["other"],
        f"distilled {kd['other']:,.1f} ({kd['seconds'] / 60:.1f} min) vs LM-loss LoRA {lm['other']:,.1f} "
        f"({lm['seconds'] / 60:.1f} min); on the training domain's held-out text {kd['perplexity']:,.1f} vs "
        f"{lm['perplexity']:,.1f} (LoRA adapts to that domain)",
    ))
    figures.update({
        "unpruned_perplexity": unpruned["perplexity"], "torch_pruning_taylor_perplexity": taylor["perplexity"],
        "torch_pruning_magnitude_perplexity": by_method.get("torch-pruning magnitude", {}).get("perplexity"),
        "compress_perplexity": ours_row["perplexity"], "params_before": unpruned["params"],
        "params_torch_pruning": taylor["params"], "params_compress": ours_row["params"],
        "distilled_perplexity": kd["perplexity"], "lora_perplexity": lm["perplexity"],
        "distill_minutes": minutes, "lora_minutes": lm["seconds"] / 60, "compress_seconds": report.seconds,
        "other_text_unpruned_perplexity": other_before["unpruned"],
        "other_text_compressed_perplexity": other_before["compressed"],
        "other_text_distilled_perplexity": kd["other"], "other_text_lora_perplexity": lm["other"],
    })  # fmt: skip
    settings = {
        "model": description,
        "text": f"held-out {plan['heldout']} x {seq} tokens of the embedded validation split; calibration "
        f"{cal_batches} x {cal_size} x {seq} and allocation batches {eval_count} x {eval_size} x {seq} of its train split",
        "compress": report.summary(),
        "recovery": f"{plan['steps']} steps of {plan['micro']} x {seq} tokens, LoRA r 16 on every linear layer, "
        f"learning rate {plan['lr']:g}; distillation: temperature 2, alpha 0.5",
        "not shown": NOT_SHOWN,
        "seconds": round(time.perf_counter() - started, 1),
    }
    result = {"name": "compression", "checks": checks, "figures": figures, "settings": settings}
    if not quick:
        _write_docs(result, rows, report, recovered, plan, other_before)
    return result


def _keep(ours: Any, box: dict[str, Any]) -> Any:
    """Wrap ``ours`` so that the compressed model stays available after ``compare`` measured it."""
    def wrapped(model: Any, batches: list[dict[str, Any]], target: int) -> dict[str, Any]:
        result = ours(model, batches, target)
        box["model"] = result["model"]
        return result

    return wrapped


def _write_docs(result: dict[str, Any], rows: list[dict[str, Any]], report: Any, recovered: dict[str, Any],
                plan: dict[str, Any], other: dict[str, float]) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    from colab_helpers.plots.compression import plot_compression, plot_recovery_curves
    from colab_helpers.runtime.files import atomic_write_text

    plot_compression(report.to_dict(), path=FIGURE)
    curves = plot_recovery_curves({"distillation (KD + LM)": recovered["distill"]["history"],
                                   "plain LoRA (LM loss)": recovered["lora"]["history"]})  # fmt: skip
    curves.save(FIGURE.with_name("compression-recovery.png"))
    lines = [
        "# Compression results: heads, MLP channels and layers to a parameter target, then distillation",
        "",
        f"Written by `{COMMAND}` (do not edit by hand; run it again). {plan['steps']} recovery steps; "
        f"{result['settings']['seconds'] / 60:.0f} min in all.",
        "",
        "## Goals",
        "",
        "| check | target | measured | result | detail |",
        "|---|---|---:|---|---|",
    ]
    for row in result["checks"]:
        lines.append(f"| {row['name']} | {row['target']} | {row['measured']:.3f} | "
                     f"{'pass' if row['passed'] else 'MISS'} | {row['detail']} |")  # fmt: skip
    lines += ["", "## Before recovery, at the same parameter count", "",
              "| method | parameters | share | perplexity | seconds | per layer |", "|---|---:|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['params']:,} | {row['share']:.1%} | {row['perplexity']:,.1f} | "
                     f"{row['prune_s']:.0f} | {row['layout']} |")  # fmt: skip
    lines += ["", f"compress: {report.summary()}", "", "Allocations compress measured (calibration loss on the "
              "allocation batches; the lowest was kept):", "", "| " + " | ".join(report.candidates[0]) + " |",
              "|" + "---|" * len(report.candidates[0])]  # fmt: skip
    for cand in report.candidates:
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else f"{v:,}" for v in cand.values()) + " |")
    lines += ["", "![what compress removed](compression-recipes.png)", "",
              "## Recovery: distillation vs plain LoRA", "",
              "| recovery | held-out perplexity | minutes |", "|---|---:|---:|"]
    for kind, label in (("distill", "distillation (KD + LM, T=2, alpha 0.5)"), ("lora", "plain LoRA (LM loss)")):
        lines.append(f"| {label} | {recovered[kind]['perplexity']:,.1f} | {recovered[kind]['seconds'] / 60:.1f} |")
    lines += ["", f"On text of another domain (the GPL-3 licence text, `other_domain_text({OTHER_TEXT!r})`, "
              f"{plan['heldout']} x {plan['seq_len']} tokens): what recovery on the embedded corpus keeps of the "
              "model's general ability.", "", "| model | perplexity on the other text |", "|---|---:|",
              f"| unpruned | {other['unpruned']:,.1f} |", f"| compressed, before recovery | {other['compressed']:,.1f} |",
              f"| distilled | {recovered['distill']['other']:,.1f} |",
              f"| plain LoRA | {recovered['lora']['other']:,.1f} |"]  # fmt: skip
    lines += ["", "![recovery curves](compression-recovery.png)", "", "## Reading the results", ""]
    lines += _reading(rows, report, recovered, other)
    lines += ["", "## Settings", ""]
    lines += [f"- **{key}**: {value}" for key, value in result["settings"].items()]
    atomic_write_text(DOC, "\n".join(lines) + "\n")
    print(f"wrote {DOC.relative_to(ROOT)}")


def _reading(rows: list[dict[str, Any]], report: Any, recovered: dict[str, Any], other: dict[str, float]) -> list[str]:
    """What the tables say, in sentences built from this run's numbers."""
    unpruned = rows[0]["perplexity"]
    kd, lm = recovered["distill"]["perplexity"], recovered["lora"]["perplexity"]
    removed = {axis: n for axis, n in report.removed_params.items() if n}
    untouched = [axis for axis in report.axes if not report.removed_params.get(axis)]
    lines = [
        f"- **Where the parameters came from.** compress took {', '.join(f'{n / 1e6:.1f}M from {a}' for a, n in removed.items())}"
        + (f" and nothing from {', '.join(untouched)}" if untouched else "")
        + ": every allocation it measured that gave heads a share had a higher calibration loss (table above). "
        "torch-pruning's example takes a third of every layer's heads and MLP channels alike; ranking channels "
        "across layers and taking whole layers where they cost least is what keeps the loss down.",
        f"- **Distillation vs plain LoRA.** On held-out text of the training domain, plain LoRA reached {lm:,.1f} and "
        f"distillation {kd:,.1f} (unpruned {unpruned:,.1f}). "
        + ("Distillation wins here." if kd < lm else
           "The LM loss adapts the student to the training text's domain; distillation pulls it towards the "
           f"unpruned teacher, which was never adapted to that domain (its own perplexity there is {unpruned:,.1f}), "
           "so on in-domain text the teacher is a ceiling that plain LoRA is free to pass. Minitron's remedy is "
           "*teacher correction* (fine-tune the teacher on the distillation text first: `finetune.correct_teacher`); "
           "docs/recovery-recipes.md measures it against general text."),
    ]
    lines.append(
        f"- **Another domain.** On the GPL-3 text the unpruned model scores {other['unpruned']:,.1f}, the "
        f"compressed one {other['compressed']:,.1f}, distilled {recovered['distill']['other']:,.1f}, plain LoRA "
        f"{recovered['lora']['other']:,.1f}: which recovery keeps more of what the model knew outside the "
        "training text."
    )
    lines.append("- **Not shown**: " + NOT_SHOWN + ".")
    return lines


if __name__ == "__main__":
    command_line(run, __doc__.splitlines()[0])
