"""Gradient norms of a training run: saved at checkpoints, read back per layer, and drawn.

``save_gradients(directory, model, step)`` writes ``step_<step>.safetensors`` (one L2 norm per parameter, or
every gradient with ``full=True``); :class:`~colab_helpers.finetune.callbacks.GradientCallback` calls it at each
checkpoint of a LoRA run (``FineTuneConfig(save_gradients=True)``), ``RunManager.save_gradients`` for any run.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..checks import check_integer
from ..plots.training import natural_key
from ..runtime.files import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)


def save_gradients(directory: str | os.PathLike[str], model: Any, step: int, *, full: bool = False) -> Path:
    """Write the gradients of ``model`` at ``step`` to ``directory/step_<step>.safetensors``; return the path.

    ``full=False`` stores one L2 norm per parameter; ``full=True`` every gradient tensor. ``model`` is a torch
    module (parameters without a gradient are skipped) or a dict name -> gradient tensor.
    """
    import torch
    from safetensors.torch import save_file

    step = check_integer(step, "step", least=0)
    if isinstance(model, Mapping):
        grads = {str(name): grad for name, grad in model.items() if grad is not None}
    else:
        grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    if not grads:
        raise ValueError("the model has no gradients; call loss.backward() before save_gradients(run_id, model, step)")
    tensors: dict[str, Any] = {}
    for name, grad in grads.items():
        grad = grad.detach()
        if full:
            tensors[name] = grad.to("cpu", copy=True).contiguous()
        else:
            tensors[name] = torch.linalg.vector_norm(grad.float()).reshape(1).cpu()
    target = Path(directory) / f"step_{step:08d}.safetensors"
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata={"step": str(step), "kind": "gradients" if full else "norms"})
    logger.info("saved %s of %d parameters at step %d to %s", "gradients" if full else "gradient norms",
                len(tensors), step, target)
    return target


def layer_of(name: str) -> str:
    """Return the layer a parameter belongs to: ``transformer.h.3.attn.c_attn.weight`` -> ``transformer.h.3``.

    Names without a block index are grouped by their module (``transformer.wte.weight`` -> ``transformer.wte``).
    """
    parts = name.split(".")
    for index, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: index + 1])
    return ".".join(parts[:-1]) or name


def load_gradient_norms(run_dir: str | os.PathLike[str]) -> dict[int, dict[str, float]]:
    """Return ``{step: {layer: L2 norm of the layer's gradients}}`` from the files ``save_gradients`` wrote.

    ``run_dir`` is a run directory (its ``gradients/`` folder is read) or the gradients folder itself.
    """
    import torch
    from safetensors import safe_open

    folder = Path(run_dir)
    if (folder / "gradients").is_dir():
        folder = folder / "gradients"
    files = sorted(folder.glob("step_*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"no gradient files (step_*.safetensors) in {str(folder)!r}; call "
            "RunManager.save_gradients(run_id, model, step) at your checkpoints first"
        )
    norms: dict[int, dict[str, float]] = {}
    for file in files:
        squares: dict[str, float] = {}
        with safe_open(str(file), framework="pt") as handle:
            step = int((handle.metadata() or {}).get("step", file.stem.removeprefix("step_")))
            for name in handle.keys():
                norm = float(torch.linalg.vector_norm(handle.get_tensor(name).float()))
                layer = layer_of(name)
                squares[layer] = squares.get(layer, 0.0) + norm * norm
        norms[step] = {layer: math.sqrt(squares[layer]) for layer in sorted(squares, key=natural_key)}
    return dict(sorted(norms.items()))


def plot_gradient_norms(run_dir: str | os.PathLike[str], *, max_legend: int = 12) -> Figure:
    """Return a figure of the gradient norms ``save_gradients`` wrote under ``run_dir`` (see
    :func:`colab_helpers.plots.training.plot_layer_norms`)."""
    from ..plots.training import plot_layer_norms

    return plot_layer_norms(load_gradient_norms(run_dir), max_legend=max_legend)
