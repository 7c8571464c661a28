"""Measure the prune-then-recover pipeline on the embedded models and write docs/pipeline-results.md.

    .venv/bin/python scripts/pipeline_results.py            # both embedded models, ~5-10 minutes on 2 CPU cores

For each model: 30% of heads pruned with the gradient strategy (the best one in docs/pruning-results.md),
physically removed, then LoRA fine-tuned on the embedded corpus; the control is the unpruned model fine-tuned
for the same steps, which separates recovery from plain extra training.
"""

from __future__ import annotations

import argparse
import datetime
import platform
from pathlib import Path

import colab_helpers as ch
from colab_helpers._io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["embedded-gpt2", "embedded-llama"])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--level", type=float, default=0.3)
    parser.add_argument("--strategy", default="gradient")
    parser.add_argument("--output", default=str(ROOT / "docs" / "pipeline-results.md"))
    parser.add_argument("--results", default="/tmp/pipeline-results")
    args = parser.parse_args()
    experiment = ch.PruningExperiment(args.results, progress=False, live_plot=False)
    rows = []
    for model in args.models:
        result = experiment.run_single_experiment(model, args.strategy, args.level, fine_tuning_steps=args.steps,
                                                  dataset="embedded", control=True)  # fmt: skip
        stages = result["stages"]
        rows.append(
            f"| `{model}` | {stages['baseline']['perplexity']:.2f} | {stages['pruned']['perplexity']:.2f} | "
            f"{stages['fine_tuned']['perplexity']:.2f} | {result['control']['perplexity']:.2f} | "
            f"{result['recovery']:.2f} | {stages['baseline']['parameters']:,} -> {stages['pruned']['parameters']:,} | "
            f"{result['training']['seconds']:.0f} s |"
        )
    figure = experiment.plot_results(ROOT / "docs" / "pipeline-results.png")
    del figure
    import torch

    text = f"""# Pipeline results: prune, then recover with LoRA

Measured {datetime.date.today()} on {platform.machine()} ({torch.get_num_threads()} torch threads), torch
{torch.__version__}, with:

    .venv/bin/python scripts/pipeline_results.py --steps {args.steps} --level {args.level} --strategy {args.strategy}

Each row: the embedded model; {args.level:.0%} of its attention heads scored with `{args.strategy}` importance and
**physically removed**; then LoRA (r=16, alpha=32, lr 1e-3, micro-batch 8 x 128 tokens) for {args.steps} steps on
the embedded corpus's train split. Perplexity is on 20,000 validation tokens. The control fine-tunes the
*unpruned* model for the same steps.

| model | unpruned | pruned | pruned + fine-tuned | control: unpruned + fine-tuned | share of loss recovered | parameters | fine-tuning time |
|---|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

![perplexity per stage and training curves](pipeline-results.png)

## Reading it honestly
- "Share recovered" is (pruned - fine-tuned) / (pruned - unpruned): 1.0 means back to the unpruned
  perplexity. The issue's target is at least 0.5.
- The embedded models are 1M-parameter toys trained for a few minutes (validation perplexity ~155); they are
  under-trained, so *any* further training on the same corpus lowers perplexity. The control row shows how much:
  when the control beats the pruned + fine-tuned model, part of the "recovery" is plain extra training, and the
  honest gap to report is pruned + fine-tuned vs. control (what pruning still costs after recovery).
- Pruning {args.level:.0%} of heads costs these toys little perplexity (their heads are not yet specialised),
  so the "lost" denominator is small. On real models (GPT-2 on Wikitext-2, on a GPU) pruning costs more and
  recovery is the interesting number: run `notebooks/05_prune_and_finetune.ipynb` with `MODEL="gpt2"`.
"""
    atomic_write_text(args.output, text)
    print(text)


if __name__ == "__main__":
    main()
