"""Gated and pruned models through LoRA: gates hold after training, and merged exports reload with equal logits."""

from __future__ import annotations


import pytest
import torch

from _finetune_faults import TRAIN_TEXTS, tiny_model, tokenizer
from colab_helpers.errors import ColabHelpersWarning
from colab_helpers.finetune import FineTuneConfig, fine_tune, merge_adapter, save_adapter, save_merged

pruning = pytest.importorskip("colab_helpers.pruning", reason="colab_helpers.pruning is not there yet")

IDS = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 61, 8, 120]])


def train(model, tmp_path, **changes):
    settings = dict(max_steps=6, micro_batch_size=2, seq_len=16, warmup_steps=1, checkpoint_every=None,
                    output_dir=str(tmp_path / "run"), learning_rate=5e-2)  # fmt: skip
    return fine_tune(model, tokenizer(), TRAIN_TEXTS, None, FineTuneConfig(**{**settings, **changes}),
                     live_plot=False, progress=False)  # fmt: skip


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _value_rows(model, arch: str, layer: int, head: int) -> tuple[torch.Tensor, slice, int]:
    """Return (weight, index along the head axis, axis) of the value projection of one head."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if arch == "gpt2":
        attn = base.transformer.h[layer].attn
        c_attn = getattr(attn.c_attn, "base_layer", attn.c_attn)
        width, head_dim = base.config.n_embd, base.config.n_embd // base.config.n_head
        return c_attn.weight, slice(2 * width + head * head_dim, 2 * width + (head + 1) * head_dim), 1
    attn = base.model.layers[layer].self_attn
    v_proj = getattr(attn.v_proj, "base_layer", attn.v_proj)
    return v_proj.weight, slice(head * attn.head_dim, (head + 1) * attn.head_dim), 0


def _perturbed_logits(model, arch: str, layer: int, head: int) -> torch.Tensor:
    weight, index, axis = _value_rows(model, arch, layer, head)
    saved = weight.detach().clone()
    with torch.no_grad():  # random, not constant: a constant column meets LayerNorm's zero-mean output and cancels
        target = weight[:, index] if axis == 1 else weight[index]
        target.add_(torch.randn(target.shape, generator=torch.Generator().manual_seed(0)))
    try:
        return logits(model)
    finally:
        with torch.no_grad():
            weight.copy_(saved)


# --- gates ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_gated_head_contributes_nothing_after_lora_training(tmp_path, arch) -> None:
    model = tiny_model(arch)
    mask = torch.zeros(2, pruning.head_layout(model).max_heads, dtype=torch.bool)
    mask[0, 1] = True
    gates = pruning.gate_heads(model, mask)
    result = train(model, tmp_path)
    peft_model = result.model
    wrapped = {name.rsplit(".", 1)[-1] for name, module in peft_model.named_modules() if hasattr(module, "lora_A")}
    out_name = "c_proj" if arch == "gpt2" else "o_proj"
    attn_out = [m for n, m in peft_model.named_modules() if n.endswith(f"attn.{out_name}")]
    # the gated layer's output projection is kept out of LoRA; layer 1 has no gated head, so no hook: adapted
    assert len(attn_out) == 2 and not hasattr(attn_out[0], "lora_A") and hasattr(attn_out[1], "lora_A")
    assert {"c_attn", "c_fc"} <= wrapped if arch == "gpt2" else {"q_proj", "v_proj", "down_proj"} <= wrapped
    reference = logits(peft_model)
    assert torch.allclose(_perturbed_logits(peft_model, arch, layer=0, head=1), reference, atol=1e-6)
    assert not torch.allclose(_perturbed_logits(peft_model, arch, layer=0, head=0), reference, atol=1e-3)
    gates.remove()  # sanity: without the gate the same perturbation does reach the output
    assert not torch.allclose(_perturbed_logits(peft_model, arch, layer=0, head=1), logits(peft_model), atol=1e-3)


def test_asking_for_a_gated_projection_warns_and_keeps_it_out(tmp_path) -> None:
    model = tiny_model("llama")
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[0, 1] = mask[1, 2] = True  # a gated head in each layer: both o_proj carry a gate
    pruning.gate_heads(model, mask)
    with pytest.warns(ColabHelpersWarning, match="gated output projection"):
        result = train(model, tmp_path, target_modules=["q_proj", "o_proj"], max_steps=1)
    wrapped = sorted(n for n, m in result.model.named_modules() if hasattr(m, "lora_A"))
    assert all(n.endswith("q_proj") for n in wrapped) and len(wrapped) == 2


def test_a_model_still_gated_cannot_be_saved_merged(tmp_path) -> None:
    model = tiny_model("llama")
    pruning.gate_heads(model, torch.eye(2, 4, dtype=torch.bool))
    result = train(model, tmp_path, max_steps=1)
    with pytest.raises(ValueError, match="remove_heads"):
        save_merged(result.model, tokenizer(), tmp_path / "merged")


# --- export -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_merged_unpruned_model_reloads_with_from_pretrained(tmp_path, arch) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    before = logits(tiny_model(arch))
    result = train(tiny_model(arch), tmp_path)
    trained = logits(result.model)
    assert not torch.allclose(trained, before, atol=1e-3)  # the adapter changed something worth merging
    adapter_dir = save_adapter(result.model, tmp_path / "adapter")
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    path = save_merged(result.model, tokenizer(), tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(path)
    assert not any("lora" in n for n, _ in reloaded.named_parameters())
    assert torch.allclose(logits(reloaded), trained, atol=1e-5)
    assert AutoTokenizer.from_pretrained(path).eos_token == tokenizer().eos_token


def test_merge_adapter_returns_the_plain_model(tmp_path) -> None:
    result = train(tiny_model("llama"), tmp_path, max_steps=3)
    trained = logits(result.model)
    merged = merge_adapter(result.model)
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert torch.allclose(logits(merged), trained, atol=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_merged_pruned_model_reloads_with_load_pruned(tmp_path, arch) -> None:
    model = tiny_model(arch)
    heads = pruning.head_layout(model).max_heads
    mask = torch.zeros(2, heads, dtype=torch.bool)
    mask[0, 0] = True  # layer 0 loses one head, layer 1 none (llama: two): per-layer head counts differ
    if arch == "llama":
        mask[1, 1:3] = True
    pruning.remove_heads(model, mask)
    result = train(model, tmp_path)
    trained = logits(result.model)
    path = save_merged(result.model, tokenizer(), tmp_path / "merged")
    assert (path / "pruning.json").is_file()
    reloaded, reloaded_tokenizer = pruning.load_pruned(path)
    assert pruning.head_layout(reloaded).query_heads == pruning.head_layout(result.model.get_base_model()).query_heads
    assert torch.allclose(logits(reloaded), trained, atol=1e-5)
    assert reloaded_tokenizer is not None
