"""The ``hf`` export: a folder plain transformers loads, per-layer shapes included, without colab_helpers.

transformers configs hold one head count and one MLP width for all layers (5.x's ``per_layer_config`` covers a few
new architectures, not Llama: a per-layer ``num_attention_heads`` on ``LlamaConfig`` raises), and padding removed
heads back with zeros would throw the speed away. So a pruned model's folder ships its own modeling code
(``modeling_pruned.py``, from ``templates/modeling_pruned.py.in``): the original ``...ForCausalLM`` subclassed, with
the projections whose shapes differ from a model built from the config (and the head counts their attention modules
read) listed in ``config.json`` under ``pruned_modules`` and resized before the weights load; ``auto_map`` points
``AutoModelForCausalLM`` at it. An unpruned model is saved as it is.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

from ..runtime.files import atomic_dir, atomic_write_text
from ..runtime.modules import parameter_count

logger = logging.getLogger(__name__)

# Architectures whose attention reads its head counts from the module (not from the shared config), checked by the
# tests at toy size: resizing the modules is all their per-layer shapes need.
HF_ARCHITECTURES = ("llama", "mistral", "qwen2", "gpt2", "opt")
REMOTE_CODE_FILE = "modeling_pruned.py"
_SHAPE_ATTRIBUTES = {"Linear": ("in_features", "out_features"), "Conv1D": ("nf", "nx")}


@dataclass(frozen=True)
class WrittenModel:
    """What a writer put on disk: its path and the model's shape."""

    path: Path
    parameters: int
    architecture: str
    pruned: bool
    remote_code: bool


def pruned_modules(model: Any) -> dict[str, dict[str, Any]]:
    """The modules of ``model`` that differ from a model built from its config: ``{path: {"linear": [in, out, bias]}
    or {"conv1d": [nf, nx]}, "attributes": {name: value}}``; empty for an unpruned model."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        reference = dict(AutoModelForCausalLM.from_config(copy.deepcopy(model.config)).named_modules())
    found: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        ref = reference.get(name)
        if ref is None or type(ref) is not type(module):
            raise ValueError(
                f"module {name!r} ({type(module).__name__}) is not where a {type(model).__name__} built from its "
                "config has it; the model was changed beyond removing heads, MLP channels and layers, which export "
                "cannot describe: export the model before such changes"
            )
        spec = _module_spec(module, ref)
        if spec:
            found[name] = spec
    return found


def _module_spec(module: Any, reference: Any) -> dict[str, Any]:
    kind = type(module).__name__
    shaped = kind in _SHAPE_ATTRIBUTES and tuple(module.weight.shape) != tuple(reference.weight.shape)
    spec: dict[str, Any] = {}
    if shaped and kind == "Linear":
        spec["linear"] = [module.in_features, module.out_features, module.bias is not None]
    elif shaped:
        spec["conv1d"] = [module.nf, module.nx]
    skip = _SHAPE_ATTRIBUTES.get(kind, ())
    attributes = {
        key: value
        for key, value in vars(module).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in skip
        and getattr(reference, key, None) != value
    }  # fmt: skip
    if attributes:
        spec["attributes"] = attributes
    return spec


def write_hf(model: Any, tokenizer: Any, target: Path) -> WrittenModel:
    """Write ``model`` (+ ``tokenizer``, may be None) to the folder ``target`` as described in the module docstring."""
    import transformers

    _check_target(target)
    _check_no_hooks(model)
    architecture = str(model.config.model_type)
    modules = pruned_modules(model)
    base = type(model).__name__
    if modules and architecture not in HF_ARCHITECTURES:
        raise ValueError(
            f"cannot export a pruned {architecture!r} model ({base}) as a transformers folder: its attention reads "
            f"head counts from the shared config, which holds one value for all layers; supported pruned "
            f"architectures are {HF_ARCHITECTURES}. Export it unpruned, or use load_pruned from colab_helpers"
        )
    if modules and not hasattr(transformers, base):
        raise ValueError(f"{base} is not a class of transformers {transformers.__version__}; the exported code "
                         "could not import it. Export a transformers model")  # fmt: skip

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if modules:
            _add_remote_code(tmp, base, modules)

    atomic_dir(target, write)
    logger.info("wrote a transformers folder to %s (%d resized modules)", target, len(modules))
    return WrittenModel(target, parameter_count(model), architecture, bool(modules), bool(modules))


def _add_remote_code(folder: Path, base: str, modules: dict[str, dict[str, Any]]) -> None:
    template = resources.files(__package__).joinpath("templates", "modeling_pruned.py.in").read_text(encoding="utf-8")
    atomic_write_text(folder / REMOTE_CODE_FILE, Template(template).substitute(base=base))
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["pruned_modules"] = modules
    config["auto_map"] = {"AutoModelForCausalLM": f"{Path(REMOTE_CODE_FILE).stem}.Pruned{base}"}
    # `transformers serve` builds `getattr(transformers, architectures[0])`, which ignores auto_map; without
    # architectures it goes through AutoModelForCausalLM, which follows auto_map
    config["architectures"] = None
    atomic_write_text(config_path, json.dumps(config, indent=2) + "\n")


def _check_target(target: Path) -> None:
    """Refuse to replace a folder that is not a model folder (``atomic_dir`` replaces whatever is there)."""
    if target.is_dir() and any(target.iterdir()) and not (target / "config.json").is_file():
        raise ValueError(
            f"{str(target)!r} exists and is not a model folder; pass a new or empty folder so that nothing else gets "
            "overwritten"
        )


def _check_no_hooks(model: Any) -> None:
    projections = (m for m in model.named_modules() if type(m[1]).__name__ in _SHAPE_ATTRIBUTES)
    hooked = [name for name, module in projections if module._forward_pre_hooks]  # noqa: SLF001
    if hooked:
        raise ValueError(
            f"the model still carries head-gate hooks ({hooked[0]}, ...), which a saved model cannot hold; remove the "
            "gated heads physically first (colab_helpers.pruning.remove_heads(model, mask) after gates.remove())"
        )
