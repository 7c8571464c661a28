"""Attach LoRA to a causal LM: which layers (by default every linear layer of the decoder, never the output head;
never a layer carrying a head gate), which backend (unsloth or peft), which precision, and QLoRA's 4-bit check."""

from __future__ import annotations

import functools
import importlib.util
import logging
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import ColabHelpersWarning
from .config import FineTuneConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

UNSLOTH_ARCHITECTURES = ("llama", "qwen2", "mistral", "gemma")
_LINEAR_CLASS_NAMES = ("Linear", "Conv1D", "Linear4bit", "Linear8bitLt")
_HEAD_NAMES = ("lm_head", "embed_out", "output", "score")


def _is_linear(module: Any) -> bool:
    return type(module).__name__ in _LINEAR_CLASS_NAMES


def linear_modules(model: nn.Module) -> dict[str, list[str]]:
    """Return ``{short name: [full module names]}`` of the linear layers LoRA can adapt (the output head excluded)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if not name or not _is_linear(module) or module is head:
            continue
        short = name.rsplit(".", 1)[-1]
        if short in _HEAD_NAMES:
            continue
        found.setdefault(short, []).append(name)
    return found


def hooked_modules(model: nn.Module) -> list[str]:
    """Return the full names of the linear layers carrying forward pre-hooks (head gates, usually)."""
    return [name for name, module in model.named_modules() if _is_linear(module) and module._forward_pre_hooks]


def resolve_targets(model: nn.Module, target_modules: list[str] | None) -> tuple[list[str], list[str]]:
    """Return ``(full names to adapt, full names left out because they carry gate hooks)``.

    ``target_modules=None`` means every linear layer of the decoder. Raises ``ValueError`` naming the unknown
    names and listing this architecture's linear layers when a requested name does not exist here.
    """
    available = linear_modules(model)
    if not available:
        raise ValueError(f"{type(model).__name__} has no linear layers LoRA can adapt (nn.Linear / Conv1D)")
    if target_modules is None:
        wanted = list(available)
    else:
        unknown = [t for t in target_modules if t not in available]
        if unknown:
            arch = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
            raise ValueError(
                f"target_modules {unknown} do not exist in this {arch} model; its linear layers are "
                f"{sorted(available)}: pick from those, or pass target_modules=None for the default"
            )
        wanted = list(dict.fromkeys(target_modules))
    # a head gate is a forward pre-hook on the attention output projection: a LoRA layer wrapped around it would read
    # the un-gated input on its adapter path and leak the gated heads back (moving the hook onto the wrapper would
    # break HeadGates.remove()), so gated layers stay out; gate before fine-tuning, for the same reason
    hooked = set(hooked_modules(model))
    chosen = [full for short in wanted for full in available[short] if full not in hooked]
    left_out = [full for short in wanted for full in available[short] if full in hooked]
    if left_out:
        message = (
            f"{len(left_out)} gated output projection(s) kept out of LoRA (e.g. {left_out[0]}): an adapter there "
            "would read the un-gated heads and bring them back"
        )
        if target_modules is not None:
            warnings.warn(message, ColabHelpersWarning, stacklevel=3)
        else:
            logger.info("%s", message)
    if not chosen:
        raise ValueError(
            f"no layer left to adapt: {target_modules or 'the default targets'} all carry gate hooks; "
            f"add other layers, e.g. target_modules={sorted(set(available) - {n.rsplit('.', 1)[-1] for n in hooked})}"
        )
    return chosen, left_out


def adapter_targets(model: nn.Module, target_modules: list[str] | None) -> tuple[list[str], list[str]]:
    """Return ``(targets, gated_left_out)`` of a run: the modules a peft model already adapts (its adapter is
    trained on), or :func:`resolve_targets` for a plain model; raise ValueError for a plain model that already
    carries LoRA layers (a second fine_tune call on the model the first one wrapped in place)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):  # continue training the adapter it carries
        logger.info("the model carries a LoRA adapter: training it (the config's r, alpha, dropout, targets unused)")
        return [n.removeprefix("base_model.model.") for n, m in model.named_modules() if hasattr(m, "lora_A")], []
    if any(hasattr(m, "lora_A") for m in model.modules()):
        raise ValueError(
            "the model already carries LoRA layers, probably from an earlier fine_tune call (it wraps the "
            "model in place): pass that call's result.model to keep training it, or reload the base model"
        )
    return resolve_targets(model, target_modules)


def resolve_precision(dtype: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """Return ``(autocast dtype or None for fp32, whether a GradScaler is needed)`` for ``dtype`` on ``device``."""
    import torch

    if dtype == "auto":
        if device.type != "cuda":
            return None, False
        major, _ = torch.cuda.get_device_capability(device)
        # not torch.cuda.is_bf16_supported(): it says True on a T4, where bf16 is only emulated
        dtype = "bf16" if major >= 8 else "fp16"
    if dtype == "fp32":
        return None, False
    if dtype == "bf16":
        return torch.bfloat16, False
    return torch.float16, device.type == "cuda"


def is_quantized(model: Any) -> bool:
    """True when the model was loaded in 4 or 8 bit (bitsandbytes)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)) or any(
        type(m).__name__ in ("Linear4bit", "Linear8bitLt") for m in model.modules()
    )


@functools.lru_cache(maxsize=1)
def unsloth_installed() -> bool:
    """True when the unsloth package can be found (it is not imported here: it needs a GPU to import)."""
    return importlib.util.find_spec("unsloth") is not None


def choose_backend(config: FineTuneConfig, model: Any, device: torch.device, *, gated: bool) -> str:
    """Return ``"unsloth"`` or ``"peft"`` for this model, device and config; say why when unsloth is not used."""
    if config.backend == "peft":
        return "peft"
    arch = getattr(getattr(model, "config", None), "model_type", "?")
    if device.type != "cuda":
        why = f"it needs a CUDA GPU and the model is on {device.type!r}"
    elif not unsloth_installed():
        why = "it is not installed"
    elif arch not in UNSLOTH_ARCHITECTURES:
        why = f"it does not support {arch!r} (only {', '.join(UNSLOTH_ARCHITECTURES)})"
    elif gated:
        why = "its fused kernels bypass the head-gate hooks (prune physically with remove_heads to use it)"
    elif getattr(getattr(model, "config", None), "colab_helpers_pruning", None):
        why = "the model was pruned physically and its layers have their own head counts"
    else:
        return "unsloth"
    message = f"training with peft, not unsloth: {why}"
    if config.backend == "unsloth":
        warnings.warn(message, ColabHelpersWarning, stacklevel=3)
    else:
        logger.info("%s", message)
    return "peft"


def check_4bit(config: FineTuneConfig, model: Any, device: torch.device) -> bool:
    """Return True when the model is 4/8-bit (QLoRA); warn once when ``load_in_4bit`` asks for what cannot be had."""
    # 4-bit is decided when the model is loaded: quantizing a loaded model in place would drop its hooks. Without
    # CUDA one warning and unquantized training, so that a CPU or SMOKE run still works end to end
    quantized = is_quantized(model)
    if config.load_in_4bit and not quantized:
        if device.type != "cuda":
            reason = f"4-bit needs a CUDA GPU and the model is on {device.type!r}"
        else:
            reason = "the model given was loaded unquantized; load it with load_model(name, load_in_4bit=True)"
        message = f"load_in_4bit ignored: {reason}; training the unquantized model"
        warnings.warn(message, ColabHelpersWarning, stacklevel=3)
    return quantized


def attach_lora(
    model: Any, config: FineTuneConfig, targets: list[str], backend: str, *, quantized: bool
) -> tuple[Any, str]:
    """Wrap ``model`` (in place) with a fresh LoRA adapter on ``targets``; return ``(peft model, backend used)``."""
    from peft import LoraConfig, get_peft_model

    if getattr(model, "loss_type", "") is None:
        # transformers finds no loss by class name for some models (GPT2LMHeadModel) and logs, in red in a
        # notebook, "`loss_type=None` ... Using the default loss: `ForCausalLMLoss`": say so ourselves, quietly
        model.loss_type = "ForCausalLM"
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if backend == "unsloth":
        try:
            return _attach_unsloth(model, config, targets), "unsloth"
        except Exception as exc:  # unsloth patches change often: never let them stop a run
            message = f"unsloth could not attach LoRA ({type(exc).__name__}: {exc}); using peft"
            warnings.warn(message, ColabHelpersWarning, stacklevel=3)
    fan_in_fan_out = any(type(m).__name__ == "Conv1D" for n, m in model.named_modules() if n in set(targets))
    lora = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(targets),
        fan_in_fan_out=fan_in_fan_out,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        # peft asks transformers 5 for is_gradient_checkpointing, deprecated there: not the user's concern
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora), "peft"


def _attach_unsloth(model: Any, config: FineTuneConfig, targets: list[str]) -> Any:
    from unsloth import FastLanguageModel  # needs CUDA: imported only on this path

    short = sorted({t.rsplit(".", 1)[-1] for t in targets})
    return FastLanguageModel.get_peft_model(
        model,
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=short,
        bias="none",
        use_gradient_checkpointing=False,
        random_state=config.seed,
    )


def trainable_parameters(model: nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """Return ``(name, parameter)`` of every parameter that requires grad (the LoRA weights)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def model_fingerprint(model: Any, targets: Iterable[str]) -> dict[str, Any]:
    """Return what identifies the base model for resuming: type, parameter shapes, a few embedding values.

    Parameter names are taken without peft's prefixes and LoRA weights, so the same model gives the same print
    before and after LoRA is attached. Values are a small sample, compared with a tolerance (bf16 vs fp32 loads).
    """
    import hashlib

    import torch

    shapes = []
    for name, param in model.named_parameters():
        if "lora_" in name or not param.is_floating_point():  # 4-bit packed weights have runtime-specific shapes
            continue
        clean = name.removeprefix("base_model.model.").replace(".base_layer", "")
        shapes.append(f"{clean}:{tuple(param.shape)}")
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    sample: list[float] = []
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        with torch.no_grad():
            sample = [round(v, 6) for v in embeddings.weight.detach().reshape(-1)[:16].float().cpu().tolist()]
    config = getattr(model, "config", None)
    return {
        "model_type": getattr(config, "model_type", type(model).__name__),
        "parameter_shapes": hashlib.sha256("\n".join(sorted(shapes)).encode()).hexdigest()[:16],
        "embedding_sample": sample,
        "target_modules": sorted(targets),
    }


def fingerprint_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Return ``"key: saved vs current"`` for each difference between two fingerprints (empty when they match)."""
    import math

    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{key}.{d}" for d in fingerprint_differences(a, b)]
        elif key == "embedding_sample" and isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            if not all(math.isclose(x, y, rel_tol=2e-2, abs_tol=1e-3) for x, y in zip(a, b)):
                diffs.append(f"{key}: weights differ")
        elif key == "target_modules" and a != b:
            diffs.append(f"{key}: {len(a or [])} layers vs {len(b or [])} layers")
        elif a != b:
            diffs.append(f"{key}: {a!r} vs {b!r}")
    return diffs
