"""Save what training produced, each folder written under a temporary name and renamed into place: the LoRA
adapter (:func:`save_adapter`), the model with the adapter merged in (:func:`merge_adapter`, :func:`save_merged`;
a physically pruned one through ``colab_helpers.pruning.save_pruned``), a model trained whole (:func:`save_model`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..runtime.files import atomic_dir

logger = logging.getLogger(__name__)

_PRUNING_ATTR = "colab_helpers_pruning"  # model.config attribute set by colab_helpers.pruning.remove_heads


def _require_peft(model: Any, what: str) -> None:
    if not hasattr(model, "peft_config"):
        raise TypeError(f"{what} needs a peft model (result.model of fine_tune), got {type(model).__name__}")


def save_adapter(peft_model: Any, path: str | os.PathLike[str]) -> Path:
    """Save the LoRA adapter of ``peft_model`` to directory ``path`` (replaced atomically); return the path."""
    _require_peft(peft_model, "save_adapter")
    saved = atomic_dir(path, lambda tmp: peft_model.save_pretrained(tmp))
    logger.info("saved adapter to %s", saved)
    return saved


def merge_adapter(peft_model: Any) -> Any:
    """Merge the LoRA weights into the base model and return the base model (a plain transformers model).

    The merge happens in place: afterwards ``peft_model`` no longer holds a separate adapter. Head-gate hooks on
    the base model are kept (the output projections they sit on were never wrapped by LoRA).
    """
    _require_peft(peft_model, "merge_adapter")
    return peft_model.merge_and_unload()


def _is_pruned(model: Any) -> bool:
    record = getattr(getattr(model, "config", None), _PRUNING_ATTR, None)
    return isinstance(record, dict) and record.get("kept_heads") is not None


def _gate_hooks(model: Any) -> list[str]:
    linear = ("Linear", "Conv1D")
    return [name for name, module in model.named_modules() if module._forward_pre_hooks and type(module).__name__ in linear]


def save_merged(peft_model: Any, tokenizer: Any, path: str | os.PathLike[str]) -> Path:
    """Merge the adapter (in place, see :func:`merge_adapter`) and save a standalone model + tokenizer; return the path.

    A physically pruned model goes through ``colab_helpers.pruning.save_pruned`` (reload with ``load_pruned``);
    an unpruned one through ``save_pretrained`` (reload with ``AutoModelForCausalLM.from_pretrained``). A model
    that is still only *gated* is refused: hooks are not saved, so the file would hold the unpruned model.
    """
    base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    hooked = _gate_hooks(base)
    if hooked:
        raise ValueError(
            f"the model still carries head-gate hooks ({hooked[0]}, ...), which save_pretrained cannot store: "
            "remove the gated heads physically first (colab_helpers.pruning.remove_heads(model, mask) after "
            "gates.remove()), or save the adapter alone with save_adapter"
        )
    return save_model(merge_adapter(peft_model), tokenizer, path)


def save_model(model: Any, tokenizer: Any, path: str | os.PathLike[str]) -> Path:
    """Save a plain model (no adapter: merged, or trained with ``method="full"``) + tokenizer; return the path.

    A physically pruned model goes through ``colab_helpers.pruning.save_pruned`` (reload with ``load_pruned``), any
    other through ``save_pretrained`` (reload with ``AutoModelForCausalLM.from_pretrained``), written atomically. A
    gated model is refused, as by :func:`save_merged`.
    """
    hooked = _gate_hooks(model)
    if hooked:
        raise ValueError(
            f"the model still carries head-gate hooks ({hooked[0]}, ...), which save_pretrained cannot store: "
            "remove the gated heads physically first (colab_helpers.pruning.remove_heads(model, mask) after "
            "gates.remove())"
        )
    if _is_pruned(model):
        from ..pruning import save_pruned

        saved = save_pruned(model, tokenizer, path)
        logger.info("saved pruned model to %s (reload with colab_helpers.pruning.load_pruned)", saved)
        return saved

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)

    saved = atomic_dir(path, write)
    logger.info("saved model to %s", saved)
    return saved
