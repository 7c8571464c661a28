"""Fine-tune a LoRA adapter on several processes at once (data-parallel), e.g. two GPUs of one machine.

    accelerate launch --multi_gpu --num_processes 2 scripts/finetune_ddp_example.py --output-dir finetune-ddp
    torchrun --nproc_per_node 2 scripts/finetune_ddp_example.py                 # the same, without accelerate
    python scripts/finetune_ddp_example.py                                      # one process, as in a notebook

Nothing distributed is written here: ``fine_tune`` sees the launcher's variables (WORLD_SIZE, RANK, ...), joins
the process group, gives each process its own share of every step's sequences and averages the gradients, so the
effective batch is processes x micro-batch x accumulation. Rank 0 alone writes checkpoints, the adapter, the plot
and the report below; a resumed run (``--resume``) continues from the same checkpoint on every process.

Without GPUs: ``accelerate launch --multi_gpu --num_processes 2 ... --cpu`` runs two CPU processes (gloo).
``accelerate launch --cpu --num_processes 2`` starts only ONE process in accelerate 1.15 (several CPU processes
need ``--mpirun_hostfile``). Set OMP_NUM_THREADS so that processes x threads <= cores.

The report (``<output-dir>/ddp_report.json``, written by rank 0) holds what every rank ended with, gathered
before the process group closes: the same steps, losses, events and LoRA weights (a SHA-256) on every rank.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from colab_helpers.evaluation.data import load_text_dataset
from colab_helpers.finetune import Callback, FineTuneConfig, fine_tune
from colab_helpers.finetune.distributed import gather_object
from colab_helpers.models.loading import load_model

REPORT_FILE = "ddp_report.json"


def lora_checksum(model: Any) -> str:
    """Return a SHA-256 of the trainable (LoRA) weights, by name: equal on every rank when they are in sync."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class RankReport(Callback):
    """At the end of training, gather from every rank what it ended with (a collective: all ranks get here)."""

    def __init__(self) -> None:
        self.ranks: list[dict[str, Any]] = []

    def on_train_end(self, tuner: Any, result: Any) -> None:
        mine = {
            "rank": tuner.rank,
            "world_size": tuner.world_size,
            "steps": result.steps,
            "final_loss": result.final_loss,
            "losses": [row["loss"] for row in result.history],
            "eval_losses": [row["eval_loss"] for row in result.history if "eval_loss" in row],
            "events": [[event["step"], event["kind"]] for event in result.events],
            "micro_batch_size": tuner.micro_batch_size,
            "lora_sha256": lora_checksum(result.model),
        }
        self.ranks = gather_object(mine)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded-gpt2", help="model name or path (default: the embedded GPT-2)")
    parser.add_argument("--output-dir", default="finetune-ddp", help="checkpoints, adapter, plot and report")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps")
    parser.add_argument("--micro-batch-size", type=int, default=2, help="sequences per forward pass, per process")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1, help="micro-batches per step")
    parser.add_argument("--dropout", type=float, default=0.05, help="LoRA dropout (0 makes runs reproducible)")
    parser.add_argument("--max-chars", type=int, default=40_000, help="characters of the embedded corpus to use")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    parser.add_argument("--no-plot", action="store_true", help="do not draw training.png")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even when CUDA is available")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run the example; return the report on rank 0 (None on the other ranks)."""
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=f"[rank {rank}] %(message)s")
    model, tokenizer = load_model(args.model, device="cpu" if args.cpu else None)
    data = load_text_dataset("embedded", max_chars=args.max_chars)
    config = FineTuneConfig(
        max_steps=args.steps,
        micro_batch_size=args.micro_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        dropout=args.dropout,
        seq_len=args.seq_len,
        learning_rate=1e-3,
        warmup_steps=2,
        eval_every=5,
        eval_batches=2,
        checkpoint_every=5,
        output_dir=args.output_dir,
        resume=args.resume,
    )
    report = RankReport()
    result = fine_tune(
        model, tokenizer, data.train, data.validation, config, callbacks=[report], live_plot=not args.no_plot
    )
    if rank != 0:
        return None
    summary = {
        "world_size": result.world_size,
        "steps": result.steps,
        "final_loss": result.final_loss,
        "stopped_reason": result.stopped_reason,
        "device": result.device,
        "checkpoint_dir": str(result.checkpoint_dir),
        "adapter_dir": str(result.adapter_dir),
        "ranks": report.ranks,
    }
    path = Path(args.output_dir) / REPORT_FILE
    path.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(result.summary())  # a script: its output is the point
    print(f"report: {path}")
    return summary


if __name__ == "__main__":
    main()
