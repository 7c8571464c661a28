"""Save and reload physically pruned models, whose layers may each hold a different number of heads.

``from_pretrained`` cannot load such a model: the config has one head count and one MLP size for all layers. So
:func:`save_pruned` writes the usual ``save_pretrained`` files (config, safetensors weights, tokenizer) plus a
``pruning.json`` with the kept heads and MLP channels of every layer (removed layers are gone from the config's
``num_hidden_layers``), and :func:`load_pruned` builds the full model from the
config, cuts it to the recorded shapes, then loads the safetensors weights strictly. Nothing touches the
network; the directory is written under a temporary name and renamed into place when complete. A damaged
``pruning.json`` (not JSON, keys missing, head counts that do not fit the config) is refused with the file's path
and what is wrong, before any model is built.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..runtime.files import atomic_dir, atomic_write_text
from .layout import head_layout
from .mlp import apply_mlp_sizes, known_mlp_sizes
from .record import check_record, current_record
from .removal import apply_record

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

PRUNING_FILE = "pruning.json"
FORMAT = "colab_helpers.pruned_model"


def save_pruned(model: nn.Module, tokenizer: Any, path: str | os.PathLike[str]) -> Path:
    """Save ``model`` (pruned or not), ``tokenizer`` (may be None) and ``pruning.json`` to ``path``; return it.

    Weights are safetensors. The directory appears complete or not at all: files are written to a temporary
    sibling first. An existing ``path`` is replaced only if it is empty or an earlier :func:`save_pruned` output.
    """
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise ValueError(f"{str(target)!r} is a file; pass a directory path to save the pruned model into")
    if target.is_dir() and any(target.iterdir()) and not (target / PRUNING_FILE).is_file():
        raise ValueError(
            f"{str(target)!r} exists and is not a pruned-model directory; pass a new or empty directory so that "
            "nothing else gets overwritten"
        )
    record = current_record(model, head_layout(model), known_mlp_sizes(model))

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, **_save_kwargs(model))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        atomic_write_text(tmp / PRUNING_FILE, json.dumps({"format": FORMAT, **record}, indent=2) + "\n")

    atomic_dir(target, write)  # an unwritable destination is named before any weight is written
    logger.info("saved pruned model to %s", target)
    return target


def load_pruned(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    attn_implementation: str | None = None,
) -> tuple[nn.Module, Any]:
    """Load a model saved by :func:`save_pruned`; return ``(model, tokenizer)`` (tokenizer None if none saved).

    The model is in eval mode, in ``dtype`` (default: the saved weights' dtype) on ``device`` (default CPU), with
    ``attn_implementation`` (default: transformers' default for the architecture, usually sdpa; eager for a
    config that softcaps attention scores, e.g. Gemma 2, which sdpa cannot do).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    source = Path(path).expanduser()
    meta = _read_meta(source)
    config = AutoConfig.from_pretrained(source, local_files_only=True)
    if attn_implementation is None and getattr(config, "attn_logit_softcapping", None) is not None:
        # sdpa has no softcapping: transformers 5.1 still builds Gemma 2 with sdpa by default and silently drops
        # attn_logit_softcapping (other logits than the saved model); later versions default to eager themselves
        attn_implementation = "eager"
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_config(config, **extra)
    try:
        apply_record(model, {k: v for k, v in meta.items() if k != "format"})
        if "mlp_sizes" in meta:
            apply_mlp_sizes(model, meta["mlp_sizes"], original=meta.get("original_mlp_sizes"))
    except (ValueError, NotImplementedError) as exc:
        raise ValueError(f"{str(source / PRUNING_FILE)!r} does not fit the model's config.json: {exc}") from exc
    state = _read_state_dict(source)
    saved_dtype = next((t.dtype for t in state.values() if t.is_floating_point()), None)
    _load_strict(model, state, source)
    target_dtype = _as_dtype(dtype) if dtype is not None else saved_dtype
    if target_dtype is not None:
        model.to(target_dtype)
    if device is not None:
        model.to(device)
    model.eval()
    tokenizer = None
    if any((source / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    return model, tokenizer


def _save_kwargs(model: nn.Module) -> dict[str, Any]:
    """Keyword arguments for ``save_pretrained`` that this transformers version accepts."""
    params = inspect.signature(model.save_pretrained).parameters
    kwargs: dict[str, Any] = {}
    if "safe_serialization" in params:  # older 5.x; later versions always write safetensors
        kwargs["safe_serialization"] = True
    if "save_original_format" in params:  # keep the in-memory key names, which load_pruned loads directly
        kwargs["save_original_format"] = False
    return kwargs


def _read_meta(source: Path) -> dict[str, Any]:
    meta_path = source / PRUNING_FILE
    if not meta_path.is_file():
        raise ValueError(
            f"{str(source)!r} is not a pruned model saved by save_pruned (no {PRUNING_FILE}); load an ordinary "
            "checkpoint with colab_helpers.load_model(...) (or transformers' from_pretrained) instead"
        )
    fix = "save the pruned model again with save_pruned (or restore the file from the original save)"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(meta_path)!r} is not valid JSON ({exc}); {fix}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = repr(meta.get("format")) if isinstance(meta, dict) else f"a JSON {type(meta).__name__}"
        raise ValueError(f"{str(meta_path)!r} is not a {FORMAT} file (format {found}); {fix}")
    try:
        check_record({k: v for k, v in meta.items() if k != "format"})
    except ValueError as exc:
        raise ValueError(f"{str(meta_path)!r} is damaged: {exc}; {fix}") from exc
    return meta


def _read_state_dict(source: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = source / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    missing = [f for f in files if not (source / f).is_file()]
    if missing:
        raise ValueError(f"{str(source)!r} lacks weight file(s) {missing}; save the model again with save_pruned")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(source / name)))
    return state


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Load ``state`` into ``model``: every key must match, except tied weights that safetensors stores once."""
    own = model.state_dict(keep_vars=True)
    # load_state_dict raises a bare RuntimeError on a shape mismatch: name the files and the fix instead
    wrong = [
        f"{k} {tuple(t.shape)} != {tuple(own[k].shape)}" for k, t in state.items() if k in own and t.shape != own[k].shape
    ]
    if wrong:
        raise ValueError(
            f"weights in {str(source)!r} do not have the shapes that its {PRUNING_FILE} gives (saved != expected: "
            f"{wrong[:3]}); the files were changed or do not belong together: save the pruned model again with "
            "save_pruned"
        )
    result = model.load_state_dict(state, strict=False)
    stored = {id(t) for k, t in own.items() if k in state}
    untied_missing = [k for k in result.missing_keys if id(own[k]) not in stored]
    if untied_missing or result.unexpected_keys:
        raise ValueError(
            f"weights in {str(source)!r} do not match the pruned model (missing {untied_missing[:5]}, unexpected "
            f"{list(result.unexpected_keys)[:5]}); the files were not written by save_pruned or were changed"
        )
    tie = getattr(model, "tie_weights", None)
    if callable(tie):
        tie()


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype must be a torch dtype or its name (e.g. 'float16'), got {dtype!r}")
    return value
