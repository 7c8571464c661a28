"""Export a model the suite made (pruned, compressed, merged, fully fine-tuned) for use outside it.

Two formats, one call (:func:`export_model`) and one command (``python -m colab_helpers export MODEL_DIR OUT_DIR
--format hf|gguf``):

- ``hf``: a folder that plain ``transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``
  (and so ``transformers serve --trust-remote-code``) loads without colab_helpers, removed weights still removed
  (:mod:`.export_hf`). An unpruned model becomes an ordinary folder that needs no remote code.
- ``gguf``: one file for llama.cpp (f16 or q8_0), per-layer head counts and MLP widths included
  (:mod:`.export_gguf`).

The output appears complete or not at all (written under a temporary name, then renamed).
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..checks import check_choice

logger = logging.getLogger(__name__)

FORMATS = ("hf", "gguf")
QUANTS = ("f16", "q8_0")
DEFAULT_OUTPUT_ROOT = "results/deployment/models"  # where the notebook puts exported models


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: ``path`` (a folder for hf, a .gguf file for gguf), its size on disk, the model's shape."""

    path: str
    format: str
    quant: str | None  # gguf only: "f16" or "q8_0"
    bytes: int  # on disk, every file of the export
    parameters: int  # of the model exported (tied weights once)
    architecture: str  # transformers model_type, e.g. "llama"
    pruned: bool  # per-layer shapes differ from the config's (needs remote code for hf, per-layer arrays for gguf)
    remote_code: bool  # hf: the folder ships modeling_pruned.py (load with trust_remote_code=True)

    def __post_init__(self) -> None:
        check_choice(self.format, FORMATS, "format")
        if self.quant is not None:
            check_choice(self.quant, QUANTS, "quant")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportResult:
        return cls(**data)


def export_model(
    source: Any,
    out_dir: str | os.PathLike[str],
    *,
    format: str = "hf",  # noqa: A002 - the CLI's --format
    quant: str = "f16",
    tokenizer: Any = None,
) -> ExportResult:
    """Export ``source`` to ``out_dir``; return an :class:`ExportResult`.

    ``source``: a model in memory (pass its ``tokenizer`` too, else the export has none), or a folder the suite saved
    (``save_pruned``, merged or fully fine-tuned) or any name ``load_model`` accepts. ``format="hf"`` writes the
    folder ``out_dir``; ``format="gguf"`` writes ``out_dir`` itself when it ends in ``.gguf``, else
    ``out_dir/model-<quant>.gguf``. ``quant`` (gguf only): ``"f16"`` or ``"q8_0"``.
    """
    check_choice(format, FORMATS, "format", fix="'hf' for transformers, 'gguf' for llama.cpp")
    check_choice(quant, QUANTS, "quant", fix="'f16' keeps the weights, 'q8_0' halves them again")
    target = Path(out_dir).expanduser()
    if isinstance(source, (str, os.PathLike)) and Path(source).expanduser().resolve() == target.resolve():
        raise ValueError(f"out_dir {str(out_dir)!r} is the model's own folder; pass another folder, so that the "
                         "source is not replaced by its export")  # fmt: skip
    model, tokenizer = _resolve_source(source, tokenizer)
    if format == "hf":
        from .export_hf import write_hf

        written = write_hf(model, tokenizer, target)
    else:
        from .export_gguf import write_gguf

        file = target if target.suffix == ".gguf" else target / f"model-{quant}.gguf"
        written = write_gguf(model, tokenizer, file, quant=quant)
    result = ExportResult(
        path=str(written.path),
        format=format,
        quant=quant if format == "gguf" else None,
        bytes=_bytes_on_disk(written.path),
        parameters=written.parameters,
        architecture=written.architecture,
        pruned=written.pruned,
        remote_code=written.remote_code,
    )
    logger.info("exported %s (%s, %d bytes)", result.path, format, result.bytes)
    return result


def _resolve_source(source: Any, tokenizer: Any) -> tuple[Any, Any]:
    """(model, tokenizer): a model in memory as given, a folder or a name loaded on the CPU in float32."""
    if isinstance(source, (str, os.PathLike)):
        from ..models import load_model

        model, loaded = load_model(str(source), device="cpu", dtype="float32")
        return model, tokenizer if tokenizer is not None else loaded
    if not hasattr(source, "state_dict") or not hasattr(getattr(source, "config", None), "model_type"):
        raise TypeError(
            f"source must be a transformers causal LM in memory, a model folder or a model name, got "
            f"{type(source).__name__}; pass e.g. the model of load_model(...) or the folder save_pruned wrote"
        )
    if hasattr(source, "peft_config"):
        raise ValueError(
            "source still holds a LoRA adapter; merge it first (colab_helpers.merge_adapter(model)) so that the export "
            "is one plain model"
        )
    return source, tokenizer


def _bytes_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def add_parser(commands: Any) -> None:
    """Add ``export`` to the sub-commands of ``python -m colab_helpers``."""
    parser = commands.add_parser(
        "export",
        help="export a model as a transformers folder (hf) or a llama.cpp file (gguf)",
        description="Export MODEL_DIR (a folder the suite saved, or a model name) to OUT_DIR.",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="a save_pruned / merged / fine-tuned folder, or a name")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="the folder to write (gguf: a folder or a .gguf file)")
    parser.add_argument("--format", choices=FORMATS, default="hf", help="hf (transformers) or gguf (llama.cpp)")
    parser.add_argument("--quant", choices=QUANTS, default="f16", help="gguf weight type (default f16)")


def run(args: argparse.Namespace) -> int:
    """Run ``export``: print where the export went and its size; return the exit status."""
    result = export_model(args.model_dir, args.out_dir, format=args.format, quant=args.quant)
    extra = " (load with trust_remote_code=True)" if result.remote_code else ""
    print(f"exported {result.format} to {result.path}: {result.bytes / 1e6:.1f} MB, "
          f"{result.parameters:,} parameters{extra}")  # fmt: skip
    return 0
