"""Head pruning on attention layouts beyond the basic families: multi-query (GPTBigCode, Falcon), Falcon's grouped
fused projection and ALiBi, Phi-3's config-read head counts, and decoders found by name (not in the spec table)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from colab_helpers.pruning import gate_heads, head_importance, head_layout, load_pruned, remove_heads, save_pruned, supported_architectures  # noqa: E402
from colab_helpers.pruning.layout import HeadLayout  # noqa: E402
from test_pruning import COMMON, LLAMA_LIKE, inputs, logits, mask_of  # noqa: E402  (the same two padded sequences, 128 tokens)

GQA = LLAMA_LIKE  # 4 query heads in 2 key/value groups, head size 8
BIGCODE = {"n_layer": 2, "n_embd": 32, "n_head": 4, "n_positions": 64, **COMMON}
FALCON = {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, **COMMON}
# name -> (config class, kwargs, key/value heads per layer, in the spec table)
ARCHS: dict[str, tuple[str, dict[str, Any], int, bool]] = {
    "gpt_bigcode_mqa": ("GPTBigCodeConfig", {**BIGCODE, "multi_query": True}, 1, True),
    "gpt_bigcode_mha": ("GPTBigCodeConfig", {**BIGCODE, "multi_query": False}, 4, True),
    "falcon_mqa": ("FalconConfig", {**FALCON, "multi_query": True}, 1, True),
    "falcon_mha": ("FalconConfig", {**FALCON, "multi_query": False}, 4, True),
    "falcon_new": ("FalconConfig", {**FALCON, "new_decoder_architecture": True, "num_kv_heads": 2}, 2, True),
    "falcon_alibi": ("FalconConfig", {**FALCON, "multi_query": False, "alibi": True}, 4, True),
    "phi3": ("Phi3Config", {**GQA, "pad_token_id": 1}, 2, True),
    # not in the table: found by their q_proj / k_proj / v_proj / o_proj names
    "olmo": ("OlmoConfig", {**GQA, "pad_token_id": 1}, 2, False),
    "starcoder2": ("Starcoder2Config", GQA, 2, False),
    "granite": ("GraniteConfig", GQA, 2, False),
    "cohere": ("CohereConfig", {**GQA, "pad_token_id": 1}, 2, False),
}
IMPLS = ("sdpa", "eager")
MASKS = {
    "mixed": {0: [1], 1: [0, 3]},  # with 2 groups: layer 0 keeps a padding head, layer 1 one head per group
    "whole_group": {0: [0, 1], 1: [1, 2, 3]},  # with 2 groups: removes a key/value group in each layer
}


def build(name: str, impl: str = "sdpa", seed: int = 0) -> Any:
    config_class, kwargs, _, _ = ARCHS[name]
    config = getattr(transformers, config_class)(**kwargs)
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config, attn_implementation=impl).eval()


@pytest.mark.parametrize("name", list(ARCHS))
def test_head_layout(name: str) -> None:
    model = build(name)
    kv = ARCHS[name][2]
    assert head_layout(model) == HeadLayout(
        architecture=model.config.model_type, query_heads=(4, 4), kv_heads=(kv, kv), head_dim=8
    )
    assert (model.config.model_type in supported_architectures()) == ARCHS[name][3]


CASES = [(name, impl, kind) for name in ARCHS for impl in IMPLS for kind in MASKS]


@pytest.mark.parametrize(("name", "impl", "kind"), CASES)
def test_removal_matches_gating(name: str, impl: str, kind: str) -> None:
    model = build(name, impl)
    layout = head_layout(model)
    mask = mask_of(layout, MASKS[kind])
    base = logits(model)
    unpadded = {"input_ids": inputs()["input_ids"]}
    with gate_heads(model, mask):
        gated = logits(model)
        gated_unpadded = logits(model, unpadded)
    assert (gated - base).abs().max() > 1e-4  # the mask matters
    params_before = sum(p.numel() for p in model.parameters())

    report = remove_heads(model, mask)

    assert (logits(model) - gated).abs().max() < 1e-4
    assert (logits(model, unpadded) - gated_unpadded).abs().max() < 1e-4
    after = head_layout(model)
    assert after.query_heads == report.query_heads_after and after.kv_heads == report.kv_heads_after
    assert report.params_after == sum(p.numel() for p in model.parameters()) < params_before
    recorded = model.config.colab_helpers_pruning
    for layer in range(2):
        real = [h for h in recorded["kept_heads"][layer] if h not in recorded["padding_heads"][layer]]
        assert real == [h for h in range(4) if not mask[layer, h]]
    if ARCHS[name][2] == 1:  # multi-query: the one key/value head stays, query heads go one by one
        assert report.kv_heads_after == (1, 1) and report.total_padding == 0
    if ARCHS[name][2] == 2 and kind == "whole_group":
        assert report.kv_heads_after == (1, 1) and report.query_heads_after == (2, 1)
    out = model.generate(**inputs(), do_sample=False, max_new_tokens=4, pad_token_id=0)
    assert out.shape == (2, 14)


@pytest.mark.parametrize("name", ["gpt_bigcode_mqa", "falcon_new", "falcon_alibi", "phi3", "olmo"])
def test_second_removal_and_save_load_round_trip(name: str, tmp_path: Path) -> None:
    model = build(name)
    original = copy.deepcopy(model)
    remove_heads(model, mask_of(head_layout(model), {0: [1], 1: [2, 3]}))
    remove_heads(model, mask_of(head_layout(model), {0: [0]}))
    record = model.config.colab_helpers_pruning
    composed = torch.ones(2, 4, dtype=torch.bool)
    for layer in range(2):
        for head in record["kept_heads"][layer]:
            composed[layer, head] = head in record["padding_heads"][layer]
    with gate_heads(original, composed):
        expected = logits(original)
    assert (logits(model) - expected).abs().max() < 1e-4

    loaded, _ = load_pruned(save_pruned(model, None, tmp_path / "pruned"))
    assert head_layout(loaded) == head_layout(model)
    assert (logits(loaded) - expected).abs().max() < 1e-4


def test_phi3_layers_read_their_own_head_counts_and_follow_the_shared_config() -> None:
    model = build("phi3")
    remove_heads(model, mask_of(head_layout(model), MASKS["whole_group"]))
    attentions = [layer.self_attn for layer in model.model.layers]
    assert [a.config.num_attention_heads for a in attentions] == [2, 1]
    assert [a.config.num_key_value_heads for a in attentions] == [1, 1]
    assert model.config.num_attention_heads == 4  # the shared config keeps the original counts
    model.set_attn_implementation("eager")  # reaches the layers through their views
    assert [a.config._attn_implementation for a in attentions] == ["eager", "eager"]
    copied = copy.deepcopy(model)
    assert copied.model.layers[0].self_attn.config.num_attention_heads == 2
    assert torch.allclose(logits(copied), logits(model))


@pytest.mark.parametrize("name", ["gpt_bigcode_mqa", "falcon_new", "phi3"])
@pytest.mark.parametrize("strategy", ["magnitude", "entropy", "gradient"])
def test_importance_on_new_layouts(name: str, strategy: str) -> None:
    model = build(name)
    scores = head_importance(model, [inputs()], strategy, progress=False)
    assert scores.shape == (2, 4) and bool(torch.isfinite(scores).all())
    assert len(set(scores.flatten().tolist())) > 1
