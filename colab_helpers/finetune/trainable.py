"""What a run trains: a fresh LoRA adapter on the model (or a peft model's own), or with ``method="full"`` every
floating-point weight; and the checks that refuse a model which cannot be trained whole."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import FineTuneConfig
from .lora import attach_lora, choose_backend, hooked_modules, is_quantized, trainable_parameters

if TYPE_CHECKING:  # pragma: no cover
    import torch


def make_trainable(model: Any, config: FineTuneConfig, targets: list[str], device: torch.device, *,
                   quantized: bool) -> tuple[Any, str, list[tuple[str, torch.nn.Parameter]]]:  # fmt: skip
    """Return ``(the model with LoRA attached on targets, its backend, its trainable parameters by name)``; a peft
    model's own adapter is trained on. With ``method="full"``: the model itself with every floating-point weight
    trainable, backend ``"full"``. ValueError when nothing is left to train."""
    import torch
    from peft import PeftModel

    if config.method == "full":
        if getattr(model, "loss_type", "") is None:  # as attach_lora: name the loss, quietly
            model.loss_type = "ForCausalLM"
        for param in model.parameters():
            param.requires_grad_(param.is_floating_point())
        tuned, backend = model, "full"
    elif isinstance(model, PeftModel):
        tuned, backend = model, "peft"
    else:
        backend = choose_backend(config, model, device, gated=bool(hooked_modules(model)))
        torch.manual_seed(config.seed)  # LoRA initialisation
        tuned, backend = attach_lora(model, config, targets, backend, quantized=quantized)
    named_params = trainable_parameters(tuned)
    if not named_params:
        raise ValueError(
            "the model has no trainable parameters: check target_modules, or load a saved adapter with "
            "PeftModel.from_pretrained(base, path, is_trainable=True)"
        )
    return tuned, backend, named_params


def check_full_training(model: Any) -> None:
    """Raise ValueError for a model that ``method="full"`` cannot train: one carrying a LoRA adapter, one loaded in
    4 or 8 bit, or one with float16 weights."""
    import torch

    if hasattr(model, "peft_config") or any(hasattr(m, "lora_A") for m in model.modules()):
        raise ValueError(
            "method='full' trains a plain model, and this one carries a LoRA adapter: fold it in first (model = "
            "merge_adapter(model)) or reload the base model; or keep training the adapter with method='lora'"
        )
    if is_quantized(model):
        raise ValueError(
            "method='full' cannot train a model loaded in 4 or 8 bit: load it unquantized, or use method='lora' "
            "(QLoRA)"
        )
    half = next((name for name, p in model.named_parameters() if p.dtype == torch.float16), None)
    if half is not None:  # GradScaler refuses float16 gradients, and AdamW's small updates vanish in float16
        raise ValueError(
            f"method='full' cannot train float16 weights ({half}, ...; load_model's default on GPUs older than "
            "the A100, e.g. a T4): load the model with load_model(name, dtype='float32'), or use method='lora'"
        )
