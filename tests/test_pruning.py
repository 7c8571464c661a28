"""Head pruning on tiny random models of every supported family: layout, gating, removal, importance, I/O."""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from colab_helpers.pruning import HeadGates, HeadLayout, PruneReport, gate_heads, head_importance, head_layout, load_pruned, remove_heads, save_pruned, select_heads
from colab_helpers.pruning import removal as removal_module  # noqa: E402
from colab_helpers.pruning.importance import NORMALIZATIONS, normalize_scores  # noqa: E402

VOCAB = 128
COMMON = {"vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 0}
LLAMA_LIKE = {
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    **COMMON,
}
# name -> (config class, kwargs, attention implementations, attention projections have biases (q, kv))
ARCHS: dict[str, tuple[str, dict[str, Any], tuple[str, ...], tuple[bool, bool]]] = {
    "gpt2": (
        "GPT2Config",
        {"n_layer": 2, "n_embd": 32, "n_head": 4, "n_positions": 64, **COMMON},
        ("sdpa", "eager"),
        (True, True),
    ),
    "opt": (
        "OPTConfig",
        {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "ffn_dim": 64, "word_embed_proj_dim": 32,
         "max_position_embeddings": 64, "pad_token_id": 1, **COMMON},
        ("sdpa", "eager"),
        (True, True),
    ),
    "gpt_neox": (
        "GPTNeoXConfig",
        {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64,
         "max_position_embeddings": 64, **COMMON},
        ("sdpa", "eager"),
        (True, True),
    ),
    "llama": ("LlamaConfig", LLAMA_LIKE, ("sdpa", "eager"), (False, False)),
    "qwen2": ("Qwen2Config", LLAMA_LIKE, ("sdpa", "eager"), (True, True)),
    "bloom": ("BloomConfig", {"n_layer": 2, "hidden_size": 32, "n_head": 4, **COMMON}, ("eager",), (True, True)),
}
CASES = [(arch, impl) for arch, (_, _, impls, _) in ARCHS.items() for impl in impls]
GQA = ("llama", "qwen2")


def build(arch: str, impl: str | None = None, seed: int = 0) -> Any:
    """Return a tiny random model of ``arch`` in eval mode."""
    config_class, kwargs, impls, _ = ARCHS[arch]
    config = getattr(transformers, config_class)(**kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation=impl or impls[0])
    return model.eval()


def inputs(seed: int = 1) -> dict[str, Any]:
    """Two sequences of 10 tokens; the second left-padded by 3."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, VOCAB, (2, 10), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :3] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def logits(model: Any, batch: dict[str, Any] | None = None) -> Any:
    with torch.no_grad():
        return model(**(batch or inputs())).logits


def mask_of(layout: HeadLayout, pruned: dict[int, list[int]]) -> Any:
    mask = torch.zeros(layout.num_layers, layout.max_heads, dtype=torch.bool)
    for layer, heads in pruned.items():
        mask[layer, heads] = True
    return mask


def expected_removed_params(arch: str, report: PruneReport, hidden: int, head_dim: int) -> int:
    """Weights of the removed heads: q rows + o columns per query head, k and v rows per key/value head."""
    q_bias, kv_bias = ARCHS[arch][3]
    total = 0
    before_after = zip(
        report.query_heads_before, report.query_heads_after, report.kv_heads_before, report.kv_heads_after
    )
    for qb, qa, kb, ka in before_after:
        total += (qb - qa) * (2 * hidden * head_dim + q_bias * head_dim)
        total += (kb - ka) * 2 * (hidden * head_dim + kv_bias * head_dim)
    return total


def state_copy(model: Any) -> dict[str, Any]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- layout -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHS))
def test_head_layout(arch: str) -> None:
    layout = head_layout(build(arch))
    kv = 2 if arch in GQA else 4
    assert layout == HeadLayout(architecture=arch, query_heads=(4, 4), kv_heads=(kv, kv), head_dim=8)
    assert (layout.num_layers, layout.max_heads, layout.total_heads) == (2, 4, 8)
    assert layout.groups == ((2, 2) if arch in GQA else (1, 1))


def test_unsupported_architecture_names_it_and_the_supported_list() -> None:
    model = torch.nn.Module()
    model.config = SimpleNamespace(model_type="mystery", num_hidden_layers=2)
    model.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])
    with pytest.raises(NotImplementedError, match=r"'mystery'.*Supported: gpt2, opt, gpt_neox, bloom, llama"):
        head_layout(model)


# --- gating -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("arch", "impl"), CASES)
def test_gating(arch: str, impl: str) -> None:
    model = build(arch, impl)
    layout = head_layout(model)
    base = logits(model)
    with gate_heads(model, mask_of(layout, {})) as gates:
        assert isinstance(gates, HeadGates)
        assert torch.equal(logits(model), base)
    handle = gate_heads(model, mask_of(layout, {0: [1], 1: [0, 3]}))
    gated = logits(model)
    assert (gated - base).abs().max() > 1e-4
    handle.remove()
    assert torch.equal(logits(model), base)
    # float gates equal to the mask give the same outputs as the mask
    with gate_heads(model, gates=(~mask_of(layout, {0: [1], 1: [0, 3]})).float()):
        assert torch.allclose(logits(model), gated, atol=1e-6)


def test_all_ones_gates_skip_the_multiply_and_edits_need_refresh() -> None:
    model = build("gpt2")
    layout = head_layout(model)
    base = logits(model)
    projections = [block.attn.c_proj for block in model.transformer.h]
    with gate_heads(model) as gates:
        assert not any(p._forward_pre_hooks for p in projections)  # all-ones layers get no hook at all
        gates.gates[1, 2] = 0.0
        gates.refresh()
        assert [bool(p._forward_pre_hooks) for p in projections] == [False, True]
        assert not torch.equal(logits(model), base)
        gates.gates[1, 2] = 1.0
        gates.refresh()
        assert not any(p._forward_pre_hooks for p in projections) and gates.active
        assert torch.equal(logits(model), base)
    with gate_heads(model, mask_of(layout, {1: [2]})):
        expected = logits(model)
    with gate_heads(model) as gates:
        gates.set(gates.gates.clone().index_put_((torch.tensor([1]), torch.tensor([2])), torch.tensor(0.0)))
        assert torch.equal(logits(model), expected)
    assert not model.transformer.h[0].attn.c_proj._forward_pre_hooks


def test_gates_that_require_grad_collect_gradients() -> None:
    model = build("llama")
    with gate_heads(model, requires_grad=True) as gates:
        batch = inputs()
        model(**batch, labels=batch["input_ids"]).loss.backward()
    assert gates.gates.grad is not None and gates.gates.grad.shape == (2, 4)
    assert bool((gates.gates.grad != 0).all())


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.zeros(2, 4), r"torch.bool tensor of shape \(2, 4\).*float32 and shape \(2, 4\)"),
        (torch.zeros(3, 4, dtype=torch.bool), r"shape \(2, 4\).*got Tensor of dtype torch.bool and shape \(3, 4\)"),
        ([[False] * 4] * 2, r"torch.bool tensor.*got list"),
    ],
)
def test_bad_masks_are_rejected(bad: Any, match: str) -> None:
    model = build("gpt2")
    with pytest.raises(ValueError, match=match):
        gate_heads(model, bad)
    with pytest.raises(ValueError, match=match):
        remove_heads(model, bad)
    assert not model.transformer.h[0].attn.c_proj._forward_pre_hooks


# --- removal ------------------------------------------------------------------------------------------------------

MASKS = {
    "mixed": {0: [0, 2], 1: [3]},
    "uneven_groups": {0: [1], 1: [0, 3]},  # GQA: layer 0 keeps a padding head; layer 1 goes to 1 head per group
    "whole_group": {0: [0, 1], 1: [0, 2, 3]},  # GQA: removes key/value groups
}
REMOVAL_CASES = [
    (arch, impl, kind) for arch, impl in CASES for kind in MASKS if kind == "mixed" or arch in GQA
]


@pytest.mark.parametrize(("arch", "impl", "kind"), REMOVAL_CASES)
def test_removal_matches_gating(arch: str, impl: str, kind: str) -> None:
    model = build(arch, impl)
    layout = head_layout(model)
    mask = mask_of(layout, MASKS[kind])
    with gate_heads(model, mask):
        gated = logits(model)
        gated_unpadded = logits(model, {"input_ids": inputs()["input_ids"]})
    report = remove_heads(model, mask)

    assert (logits(model) - gated).abs().max() < 1e-4
    assert (logits(model, {"input_ids": inputs()["input_ids"]}) - gated_unpadded).abs().max() < 1e-4
    after = head_layout(model)
    assert after.query_heads == report.query_heads_after and after.kv_heads == report.kv_heads_after
    assert report.params_after == sum(p.numel() for p in model.parameters())
    assert report.removed_params == expected_removed_params(arch, report, hidden=32, head_dim=8) > 0
    kept_by_mask = [[h for h in range(4) if not mask[layer, h]] for layer in range(2)]
    recorded = model.config.colab_helpers_pruning
    for layer in range(2):
        real = [h for h in recorded["kept_heads"][layer] if h not in recorded["padding_heads"][layer]]
        assert real == kept_by_mask[layer]
    if arch in GQA and kind == "uneven_groups":
        assert report.padding_heads == (1, 0) and report.query_heads_after == (4, 2)
    if arch in GQA and kind == "whole_group":
        assert report.kv_heads_after == (1, 1) and report.query_heads_after == (2, 1)

    batch = inputs()
    out = model.generate(**batch, do_sample=False, max_new_tokens=5, pad_token_id=0)
    assert out.shape == (2, 15)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bloom"])
def test_second_removal_composes_with_the_first(arch: str) -> None:
    model = build(arch)
    original = copy.deepcopy(model)
    layout = head_layout(model)
    remove_heads(model, mask_of(layout, {0: [1], 1: [0, 1]}))
    current = head_layout(model)
    second = mask_of(current, {0: [0]})  # relative to the heads the layers hold now
    report = remove_heads(model, second)
    kept = model.config.colab_helpers_pruning["kept_heads"]
    padding = model.config.colab_helpers_pruning["padding_heads"]
    composed = torch.ones(2, 4, dtype=torch.bool)
    for layer in range(2):
        for head in kept[layer]:
            composed[layer, head] = head in padding[layer]
    with gate_heads(original, composed):
        expected = logits(original)
    assert (logits(model) - expected).abs().max() < 1e-4
    assert report.query_heads_before == current.query_heads
    assert sum(p.numel() for p in model.parameters()) == report.params_after


def test_emptied_layer_needs_permission_and_then_matches_gating() -> None:
    model = build("llama")
    layout = head_layout(model)
    mask = mask_of(layout, {0: [0, 1, 2, 3], 1: [1]})
    before = state_copy(model)
    with pytest.raises(ValueError, match="prunes all 4 heads of layer 0.*allow_empty_layers=True"):
        remove_heads(model, mask)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with gate_heads(model, mask):
        gated = logits(model)
    report = remove_heads(model, mask, allow_empty_layers=True)
    assert report.query_heads_after == (1, 4) and report.padding_heads == (1, 1)
    assert (logits(model) - gated).abs().max() < 1e-4


def test_failed_removal_leaves_the_model_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build("qwen2")
    layout = head_layout(model)
    before = state_copy(model)
    base = logits(model)
    real_slice = removal_module._slice_site
    calls = []

    def failing_slice(site: Any, plan: Any) -> Any:
        calls.append(site.index)
        if site.index == 1:
            raise RuntimeError("simulated failure in layer 1")
        return real_slice(site, plan)

    monkeypatch.setattr(removal_module, "_slice_site", failing_slice)
    with pytest.raises(RuntimeError, match="simulated"):
        remove_heads(model, mask_of(layout, {0: [0, 1], 1: [2, 3]}))
    assert calls == [0, 1]
    assert head_layout(model) == layout
    assert model.model.layers[0].self_attn.num_key_value_groups == 2
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(logits(model), base)
    assert not hasattr(model.config, "colab_helpers_pruning")


def test_removal_refuses_while_gates_are_live() -> None:
    model = build("opt")
    mask = mask_of(head_layout(model), {0: [1]})
    with gate_heads(model, mask):
        with pytest.raises(ValueError, match=r"live head gates.*\.remove\(\)"):
            remove_heads(model, mask)
    assert remove_heads(model, mask).query_heads_after == (3, 4)


def test_mask_naming_missing_heads_is_rejected() -> None:
    model = build("gpt2")
    remove_heads(model, mask_of(head_layout(model), {0: [0, 1]}))
    layout = head_layout(model)
    assert layout.query_heads == (2, 4)
    stale = r"mask\[0, 3\] is True but layer 0 holds only 2 heads now.*masks index the heads a layer holds now"
    with pytest.raises(ValueError, match=stale):
        remove_heads(model, mask_of(layout, {0: [3]}))


def test_unsupported_removal_explains_and_leaves_model_unchanged() -> None:
    config = transformers.Olmo2Config(**{**LLAMA_LIKE, "pad_token_id": 1})
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    layout = head_layout(model)
    before = state_copy(model)
    with pytest.raises(NotImplementedError, match="q_norm.weight.*gate_heads is"):
        remove_heads(model, mask_of(layout, {0: [0, 1]}))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with gate_heads(model, mask_of(layout, {0: [0, 1]})):  # gating still works
        assert logits(model).shape == (2, 10, VOCAB)


# --- save / load --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "qwen2", "bloom"])
def test_save_load_round_trip(arch: str, tmp_path: Path) -> None:
    model = build(arch)
    remove_heads(model, mask_of(head_layout(model), MASKS["whole_group" if arch in GQA else "mixed"]))
    expected = logits(model)
    path = save_pruned(model, None, tmp_path / "pruned")
    assert (path / "model.safetensors").is_file() and (path / "pruning.json").is_file()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    loaded, tokenizer = load_pruned(path)
    assert tokenizer is None and not loaded.training
    assert head_layout(loaded) == head_layout(model)
    assert torch.allclose(logits(loaded), expected, atol=1e-6)
    # saving again over an earlier save replaces it
    save_pruned(loaded, None, path)
    assert torch.allclose(logits(load_pruned(path)[0]), expected, atol=1e-6)


def test_save_load_with_tokenizer_and_dtype(tiny_gpt2: tuple[Any, Any], tmp_path: Path) -> None:
    model, tokenizer = tiny_gpt2
    model = copy.deepcopy(model)
    remove_heads(model, mask_of(head_layout(model), {1: [0]}))
    save_pruned(model, tokenizer, tmp_path / "m")
    loaded, loaded_tokenizer = load_pruned(tmp_path / "m", dtype="bfloat16", attn_implementation="eager")
    assert next(loaded.parameters()).dtype == torch.bfloat16
    assert loaded.config._attn_implementation == "eager"
    assert loaded_tokenizer("hello world")["input_ids"] == tokenizer("hello world")["input_ids"]
    assert head_layout(loaded).query_heads == (2, 1)


def test_load_pruned_rejects_a_plain_checkpoint(tmp_path: Path) -> None:
    build("gpt2").save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match=r"plain'.*not a pruned model.*load_model"):
        load_pruned(tmp_path / "plain")


def test_save_pruned_refuses_to_overwrite_other_directories(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a pruned-model directory"):
        save_pruned(build("gpt2"), None, tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_save_pruned_into_an_unwritable_place_names_the_destination(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")  # a path below a regular file can never be created, even as root
    target = tmp_path / "file" / "pruned"
    with pytest.raises(PermissionError, match=f"cannot write '{target}'.*pass a folder you can write to"):
        save_pruned(build("gpt2"), None, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no temporary folder left anywhere


# --- importance ---------------------------------------------------------------------------------------------------

STRATEGY_CASES = [(arch, impl, s) for arch, impl in CASES for s in ("random", "magnitude", "entropy", "gradient")]


@pytest.mark.parametrize(("arch", "impl", "strategy"), STRATEGY_CASES)
def test_importance_strategies(arch: str, impl: str, strategy: str) -> None:
    model = build(arch, impl)
    before = state_copy(model)
    scores = head_importance(model, [inputs(1), inputs(2)], strategy, progress=False)
    assert scores.shape == (2, 4) and scores.dtype == torch.float32
    assert bool(torch.isfinite(scores).all())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.config._attn_implementation == impl
    if strategy != "random":
        assert len(set(scores.flatten().tolist())) > 1  # heads are told apart


def test_random_is_seeded() -> None:
    model = build("gpt2")
    a = head_importance(model, None, "random", seed=3, progress=False)
    assert torch.equal(a, head_importance(model, None, "random", seed=3, progress=False))
    assert not torch.equal(a, head_importance(model, None, "random", seed=4, progress=False))


def test_importance_on_a_pruned_model_is_nan_past_each_layers_heads() -> None:
    model = build("gpt2")
    remove_heads(model, mask_of(head_layout(model), {0: [0, 1, 2]}))
    for strategy in ("random", "magnitude", "entropy", "gradient"):
        scores = head_importance(model, [inputs()], strategy, progress=False)
        assert bool(torch.isnan(scores[0, 1:]).all()) and bool(torch.isfinite(scores[0, :1]).all())
        assert bool(torch.isfinite(scores[1]).all())


@pytest.mark.parametrize("strategy", ["entropy", "gradient"])
def test_importance_ignores_padding(strategy: str) -> None:
    """Right-padded rows score like the same rows alone: pad positions count in neither entropy nor loss."""
    model = build("llama")
    ids = torch.randint(2, VOCAB, (2, 10), generator=torch.Generator().manual_seed(5))
    padded = {"input_ids": ids.clone(), "attention_mask": torch.ones_like(ids)}
    padded["input_ids"][1, 6:] = 0
    padded["attention_mask"][1, 6:] = 0
    separate = [{"input_ids": ids[:1]}, {"input_ids": ids[1:, :6]}]
    together = head_importance(model, [padded], strategy, normalize="none", progress=False)  # the raw scores:
    apart = head_importance(model, separate, strategy, normalize="none", progress=False)  # zscore magnifies 1e-6
    assert torch.allclose(together, apart, atol=1e-5, rtol=1e-4)


def test_entropy_on_sdpa_switches_to_eager_and_back(caplog: pytest.LogCaptureFixture) -> None:
    model = build("gpt2", "sdpa")
    with caplog.at_level(logging.INFO, logger="colab_helpers.pruning"):
        scores = head_importance(model, [inputs()], "entropy", normalize="none", progress=False)
    assert model.config._attn_implementation == "sdpa"
    assert any("eager" in r.getMessage() for r in caplog.records)
    eager = build("gpt2", "eager")
    raw_eager = head_importance(eager, [inputs()], "entropy", normalize="none", progress=False)
    assert torch.allclose(scores, raw_eager, atol=1e-5)
    assert bool((scores >= 0).all()) and bool((scores <= 1).all())  # a focus between 0 and 1


def test_importance_restores_modes_grads_and_hooks() -> None:
    model = build("opt")
    model.train()
    model.model.decoder.layers[0].eval()  # mixed modes come back as they were
    model.lm_head.weight.requires_grad_(False)
    head_importance(model, [inputs()], "gradient", progress=False)
    head_importance(model, [inputs()], "entropy", progress=False)
    assert model.training and not model.model.decoder.layers[0].training and model.model.decoder.layers[1].training
    assert not model.lm_head.weight.requires_grad
    assert model.model.decoder.layers[0].self_attn.q_proj.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert not model.model.decoder.layers[0].self_attn.out_proj._forward_pre_hooks


def test_importance_argument_errors() -> None:
    model = build("gpt2")
    with pytest.raises(ValueError, match="strategy must be one of random, magnitude, entropy, gradient, got 'taylor'"):
        head_importance(model, [inputs()], "taylor")
    with pytest.raises(ValueError, match="needs batches"):
        head_importance(model, None, "entropy")
    with pytest.raises(ValueError, match="yielded no batch"):
        head_importance(model, [], "entropy", progress=False)
    with pytest.raises(ValueError, match="dict with input_ids"):
        head_importance(model, [torch.zeros(2, 3)], "gradient", progress=False)


def bad_token_batches() -> list[tuple[dict[str, Any], str]]:
    """Batches whose ids no model can embed, and the words their error must say (the bad value and the fix)."""
    ids = r"\['input_ids'\] "
    return [
        ({"input_ids": torch.zeros(2, 0, dtype=torch.long)}, ids + r"is empty \(shape \(2, 0\)\); pass the ids of some text"),
        ({"input_ids": torch.rand(2, 10) * 10}, ids + "must hold integer token ids, got dtype torch.float32; convert with"),
        ({"input_ids": torch.full((2, 10), VOCAB + 5)},
         ids + rf"holds id {VOCAB + 5}, outside the model's vocabulary of {VOCAB} ids.*load_model\(name\)"),
    ]


@pytest.mark.parametrize("strategy", ["entropy", "gradient"])
@pytest.mark.parametrize("case", range(3))
def test_importance_refuses_bad_token_ids_before_any_forward(strategy: str, case: int) -> None:
    """Zero-length sequences, float ids and ids past the vocabulary are named with the fix, before the model runs
    (an id past the embedding is an IndexError on the CPU and a device-side assert on a GPU)."""
    model = build("gpt2")
    forwards = []
    model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    bad, message = bad_token_batches()[case]
    with pytest.raises(ValueError, match="batches\\[1\\]" + message):  # the second batch: the first never ran
        head_importance(model, [inputs(), bad], strategy, progress=False)
    assert not forwards
    with pytest.raises(ValueError, match=message):  # read from an iterator: checked as each batch arrives
        head_importance(model, iter([bad]), strategy, progress=False)
    assert not forwards


def test_max_batches_limits_the_data_read() -> None:
    model = build("gpt2")
    seen = []

    def batches() -> Any:
        for i in range(10):
            seen.append(i)
            yield inputs(i)

    head_importance(model, batches(), "gradient", max_batches=2, progress=False)
    assert seen == [0, 1]


# --- normalisation -----------------------------------------------------------------------------------------------

RAGGED = torch.tensor([[1.0, 2.0, 3.0, 4.0], [100.0, 400.0, math.nan, math.nan], [-2.0, -1.0, -3.0, math.nan]])


def test_normalize_scores_rescales_each_layer_on_its_own() -> None:
    exists = ~torch.isnan(RAGGED)
    for method in ("l2", "zscore"):
        out = normalize_scores(RAGGED, method)
        assert out.dtype == torch.float32 and torch.equal(torch.isnan(out), ~exists)  # NaN kept, nothing new
        for layer in range(3):
            raw, row = RAGGED[layer][exists[layer]], out[layer][exists[layer]]
            assert torch.equal(torch.argsort(raw), torch.argsort(row))  # order within a layer kept
            if method == "l2":
                assert row.norm().item() == pytest.approx(1.0)
                assert torch.allclose(row, raw / raw.norm())
            else:
                assert row.mean().item() == pytest.approx(0.0, abs=1e-6)
                assert row.std(unbiased=False).item() == pytest.approx(1.0)
    assert torch.equal(normalize_scores(RAGGED, "none").nan_to_num(-9), RAGGED.nan_to_num(-9))


def test_normalize_scores_degenerate_layers_and_input_left_alone() -> None:
    scores = torch.tensor([[0.0, 0.0, 0.0], [5.0, math.nan, math.nan], [2.0, 2.0, 2.0]])
    before = scores.clone()
    assert normalize_scores(scores, "l2")[0].tolist() == [0.0, 0.0, 0.0]  # all-zero layer: no 0/0
    out = normalize_scores(scores, "zscore")  # one head, or all equal: no 0/0 either
    assert out[1, 0].item() == 0.0 and out[2].tolist() == [0.0, 0.0, 0.0] and bool(torch.isnan(out[1, 1:]).all())
    assert torch.equal(scores.nan_to_num(-9), before.nan_to_num(-9))


def test_l2_normalisation_stops_a_global_ranking_from_emptying_a_layer() -> None:
    """Layer 1's raw scores are 100x layer 0's: raw, layer 0 loses all but one head; normalised, both lose two."""
    scores = torch.tensor([[1.0, 2.0, 3.0, 4.0], [100.0, 200.0, 300.0, 400.0]])
    assert select_heads(scores, 0.5).sum(dim=1).tolist() == [3, 1]
    assert select_heads(normalize_scores(scores, "l2"), 0.5).sum(dim=1).tolist() == [2, 2]


@pytest.mark.parametrize("strategy", ["random", "magnitude", "entropy", "gradient"])
def test_importance_is_raw_unless_a_normalisation_is_asked_for(strategy: str) -> None:
    model = build("llama")
    batches = [inputs(1), inputs(2)]
    raw = head_importance(model, batches, strategy, normalize="none", progress=False)
    default = head_importance(model, batches, strategy, progress=False)  # the default is "none"
    assert torch.equal(default, raw)  # every strategy measured best raw on the real model (normalising cost more)
    l2 = head_importance(model, batches, strategy, normalize="l2", progress=False)
    assert torch.allclose(l2, normalize_scores(raw, "l2"), equal_nan=True)


def test_normalizations_are_the_concrete_methods() -> None:
    assert NORMALIZATIONS == ("none", "l2", "zscore")


@pytest.mark.parametrize("method", ["none", "l2", "zscore"])
def test_normalised_importance_keeps_nan_past_each_layers_heads(method: str) -> None:
    model = build("gpt2")
    remove_heads(model, mask_of(head_layout(model), {0: [0, 1, 2]}))
    for strategy in ("random", "magnitude", "entropy", "gradient"):
        scores = head_importance(model, [inputs()], strategy, normalize=method, progress=False)
        assert bool(torch.isnan(scores[0, 1:]).all()) and bool(torch.isfinite(scores[0, :1]).all())
        assert bool(torch.isfinite(scores[1]).all())


@pytest.mark.parametrize("bad", ["L2", "rank", "", None, 2])
def test_bad_normalize_names_the_value_and_the_choices(bad: Any) -> None:
    model = build("gpt2")
    choices = "'none', 'l2', 'zscore'"
    with pytest.raises(ValueError, match=f"normalize must be one of {choices}, got {bad!r}"):
        head_importance(model, [inputs()], "magnitude", normalize=bad, progress=False)
    with pytest.raises(ValueError, match=f"normalize must be one of {choices}, got 'auto'"):  # no automatic choice
        normalize_scores(torch.rand(2, 4), "auto")
    with pytest.raises(ValueError, match="scores must be a float tensor"):
        normalize_scores(torch.ones(2, 4, dtype=torch.long), "l2")


# --- selection ----------------------------------------------------------------------------------------------------


def test_select_heads_global_prunes_the_lowest_exactly() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.2, 0.8, 0.7, 0.6]])
    mask = select_heads(scores, 0.5)
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    assert mask.tolist() == [[True, False, True, True], [True, False, False, False]]
    assert int(select_heads(scores, 0.3).sum()) == round(0.3 * 8)
    assert not select_heads(scores, 0.0).any()


def test_select_heads_layer_scope_and_nan() -> None:
    scores = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.9, 0.8, math.nan, math.nan]])
    mask = select_heads(scores, 0.5, scope="layer")
    assert mask.tolist() == [[True, True, False, False], [False, True, False, False]]
    glob = select_heads(scores, 0.5)  # 3 of 6 existing heads, never a NaN
    assert int(glob.sum()) == 3 and not glob[1, 2:].any()


def test_select_heads_respects_min_heads_per_layer() -> None:
    scores = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.9, 0.8, 0.7, 0.6]])
    mask = select_heads(scores, 0.5, min_heads_per_layer=1)
    assert mask[0].tolist() == [True, True, True, False]  # layer 0 keeps 1, the 4th goes from layer 1
    assert mask[1].tolist() == [False, False, False, True]
    mask = select_heads(scores, 0.25, min_heads_per_layer=3)
    assert mask.tolist() == [[True, False, False, False], [False, False, False, True]]
    with pytest.raises(ValueError, match="only 2 can go with min_heads_per_layer=3"):
        select_heads(scores, 0.5, min_heads_per_layer=3)
    emptied = select_heads(torch.tensor([[0.1, 0.2], [0.9, 0.8]]), 0.5, min_heads_per_layer=0)
    assert emptied[0].all() and not emptied[1].any()
    with pytest.raises(ValueError, match="leaving fewer than min_heads_per_layer=1"):
        select_heads(torch.tensor([[0.1, 0.2, 0.3, 0.4]]), 0.9, scope="layer")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"level": 1.5}, r"level must be in \[0, 1\), got 1.5"),
    ({"level": 1.0}, r"level must be in \[0, 1\), got 1.0"),
    ({"level": -0.1}, r"level must be in \[0, 1\), got -0.1"),
    ({"level": 0.5, "scope": "model"}, "scope must be one of global, layer, got 'model'"),
    ({"level": 0.5, "min_heads_per_layer": -1}, "min_heads_per_layer must be an int >= 0"),
])
def test_select_heads_argument_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        select_heads(torch.rand(2, 4), **kwargs)


def test_end_to_end_importance_select_remove() -> None:
    model = build("qwen2")
    scores = head_importance(model, [inputs()], "gradient", progress=False)
    mask = select_heads(scores, 0.5)
    with gate_heads(model, mask):
        gated = logits(model)
    report = remove_heads(model, mask)
    assert sum(report.removed_heads) + report.total_padding == 4
    assert (logits(model) - gated).abs().max() < 1e-4
    assert report.to_dict()["removed_params"] == report.removed_params
    assert [row["layer"] for row in report.per_layer()] == [0, 1]


def test_entropy_scores_focus_outside_the_attention_sink() -> None:
    """A head parked on the first token and a uniform head are unimportant; a previous-token head is important."""
    from colab_helpers.pruning.importance import _entropy_sum

    n = 8
    sink = torch.zeros(n, n)
    sink[:, 0] = 1.0
    uniform = torch.tril(torch.ones(n, n))
    uniform = uniform / uniform.sum(dim=-1, keepdim=True)
    previous = torch.zeros(n, n)
    previous[0, 0] = 1.0
    for q in range(1, n):
        previous[q, q - 1] = 1.0
    weights = torch.stack([sink, uniform, previous])[None]  # [1 batch, 3 heads, query, key]
    total, counted = _entropy_sum(weights, torch.ones(1, n, dtype=torch.long))
    focus = total / counted
    assert counted == n - 2  # queries that see fewer than two tokens besides the first carry no information
    assert focus[0] == pytest.approx(0.0, abs=1e-6) and focus[1] == pytest.approx(0.0, abs=1e-6)
    assert focus[2] == pytest.approx(1.0, abs=1e-6)


# --- bad input: refused before any work, with the value as given and the fix ---------------------------------------


def test_select_heads_refuses_scores_that_hold_no_head() -> None:
    with pytest.raises(ValueError, match=r"scores hold no head: all 8 entries of the \(2, 4\) tensor are NaN"):
        select_heads(torch.full((2, 4), math.nan), 0.3)
    with pytest.raises(ValueError, match="scores hold no head"):
        select_heads(torch.full((2, 4), math.nan), 0.0)  # even when nothing would be pruned


@pytest.mark.parametrize(
    ("row", "where"),
    [
        ([math.nan] * 4, "every entry"),
        ([0.5, math.nan, 0.2, 0.1], "head 1, before head 3"),
        ([math.nan, 0.3, math.nan, math.nan], "head 0, before head 1"),
    ],
)
def test_select_heads_refuses_nan_where_a_head_exists(row: list[float], where: str) -> None:
    scores = torch.tensor([[0.1, 0.2, 0.3, 0.4], row])
    for scope in ("global", "layer"):
        with pytest.raises(ValueError, match=rf"scores of layer 1 are NaN at {where}, where a head exists.*broken"):
            select_heads(scores, 0.25, scope=scope)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"level": "0.3"}, r"level must be a number in \[0, 1\), got '0.3' \(a str\)"),
        ({"level": None}, r"level must be a number in \[0, 1\), got None \(a NoneType\)"),
        ({"level": True}, r"got True \(a bool\)"),
        ({"level": 0.3, "min_heads_per_layer": "1"}, r"min_heads_per_layer must be an int >= 0, got '1' \(a str\)"),
        ({"level": 0.3, "scope": None}, "scope must be one of global, layer, got None"),
    ],
)
def test_select_heads_names_the_type_of_a_wrong_argument(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        select_heads(torch.rand(2, 4), **kwargs)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_gate_heads_refuses_non_finite_gates(bad: float) -> None:
    model = build("gpt2")
    base = logits(model)
    gates = torch.ones(2, 4)
    gates[1, 2] = bad
    with pytest.raises(ValueError, match=rf"gates must be finite, got {bad} for head 2 of layer 1"):
        gate_heads(model, gates=gates)
    assert not any(block.attn.c_proj._forward_pre_hooks for block in model.transformer.h)
    per_example = torch.ones(2, 2, 4)
    per_example[1, 0, 3] = bad
    with pytest.raises(ValueError, match=r"head 3 of layer 0 \(example 1\)"):
        gate_heads(model, gates=per_example)
    with gate_heads(model) as handle:
        with pytest.raises(ValueError, match="gates must be finite"):
            handle.set(gates)
        handle.gates[0, 0] = bad  # an in-place edit is caught by refresh
        with pytest.raises(ValueError, match="gates must be finite"):
            handle.refresh()
        handle.gates[0, 0] = 1.0
        handle.refresh()
    assert torch.equal(logits(model), base)


def test_nan_gates_past_a_layers_heads_are_allowed() -> None:
    """NaN means "no head" in this package: gates past a pruned layer's heads are never read."""
    model = build("gpt2")
    remove_heads(model, mask_of(head_layout(model), {0: [0, 1]}))
    gates = torch.ones(2, 4)
    gates[0, 2:] = math.nan
    with gate_heads(model, gates=gates):
        assert bool(torch.isfinite(logits(model)).all())


@pytest.mark.parametrize(("arch", "heads"), [("gpt2", [1]), ("llama", [0, 1]), ("gpt_neox", [0, 1])])
def test_the_same_mask_twice_is_refused_not_applied_to_other_heads(arch: str, heads: list[int]) -> None:
    model = build(arch)
    mask = mask_of(head_layout(model), {0: heads})  # layer 1 keeps 4 heads, so the shape stays (2, 4)
    remove_heads(model, mask)
    before = state_copy(model)
    pruned = head_layout(model)
    assert pruned.max_heads == 4
    for again in (mask, mask.clone()):
        with pytest.raises(ValueError, match=r"last remove_heads applied.*masks index the heads a layer holds now"):
            remove_heads(model, again)
    assert head_layout(model) == pruned
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_equal_mask_built_for_the_current_heads_goes_through_when_asked() -> None:
    model = build("gpt2")
    mask = mask_of(head_layout(model), {0: [1]})
    remove_heads(model, mask)
    report = remove_heads(model, mask, allow_repeat=True)  # e.g. iterative pruning picking position 1 again
    assert report.query_heads_after == (2, 4) and model.config.colab_helpers_pruning["kept_heads"][0] == [0, 3]


def test_repeating_a_mask_that_names_the_same_padding_heads_changes_nothing() -> None:
    """With grouped-query attention a pruned head can stay as zeroed padding: its position still names it."""
    model = build("llama")
    mask = mask_of(head_layout(model), {0: [1]})
    remove_heads(model, mask)
    expected = logits(model)
    report = remove_heads(model, mask)
    assert report.padding_heads == (1, 0) and report.removed_params == 0
    assert torch.equal(logits(model), expected)


def test_a_mask_of_the_shape_before_removal_is_refused() -> None:
    model = build("gpt2")
    layout = head_layout(model)
    mask = mask_of(layout, {0: [3], 1: [3]})
    remove_heads(model, mask)
    assert head_layout(model).max_heads == 3
    with pytest.raises(ValueError, match=r"shape \(2, 4\), the shape before the earlier removal.*head_layout\(model\)"):
        remove_heads(model, mask_of(layout, {0: [0]}))
    with pytest.raises(ValueError, match="torch.bool tensor of shape"):  # an unpruned model: the usual message
        remove_heads(build("gpt2"), torch.zeros(2, 3, dtype=torch.bool))


def _encoder() -> Any:
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    return transformers.BertModel(config).eval()


def _encoder_decoder() -> Any:
    config = transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    return transformers.T5ForConditionalGeneration(config).eval()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: torch.nn.Linear(4, 4), r"got torch\.nn\.modules\.linear\.Linear, which has no \.config"),
        (_encoder, r"BertModel \(model type 'bert'\) is an encoder"),
        (_encoder_decoder, r"T5ForConditionalGeneration \(model type 't5'\) is an encoder-decoder model"),
        (lambda: (build("gpt2"), None), r"got tuple \(load_model returns \(model, tokenizer\)"),
        (lambda: "gpt2", r"got str"),
    ],
)
def test_what_is_not_a_causal_lm_is_refused_naming_its_type(make: Any, match: str) -> None:
    model = make()
    calls = {
        "head_layout": lambda: head_layout(model),
        "head_importance": lambda: head_importance(model, [inputs()], "gradient", progress=False),
        "gate_heads": lambda: gate_heads(model),
        "remove_heads": lambda: remove_heads(model, torch.zeros(2, 4, dtype=torch.bool)),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match=match):
            call()


def test_a_bert_configured_as_a_decoder_is_an_unsupported_architecture_not_an_encoder() -> None:
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, is_decoder=True)  # fmt: skip
    with pytest.raises(NotImplementedError, match=r"'bert'.*Supported"):
        head_layout(transformers.BertLMHeadModel(config))


def _saved(tmp_path: Path) -> Path:
    model = build("llama")
    remove_heads(model, mask_of(head_layout(model), MASKS["whole_group"]))
    return save_pruned(model, None, tmp_path / "pruned")


def _edit_record(path: Path, edit: Any) -> Path:
    import json

    meta_path = path / "pruning.json"
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))
    return meta_path


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.pop("kept_kv_heads"), r"is damaged: the pruning record lacks kept_kv_heads"),
        (lambda m: m.update(kept_heads=[[0, 1]]), r"is damaged: kept_heads needs one list per layer \(2 layers\)"),
        (lambda m: m.update(kept_heads=[[2, 7], [0]]), r"kept_heads\[0\] must be increasing head indices in \[0, 4\)"),
        (lambda m: m["kept_heads"].__setitem__(0, [2, "3"]), r"kept_heads\[0\] must be a list of integers"),
        (lambda m: m.update(kept_kv_heads=[[0], [1]]), r"layer 0: kept query heads \[2, 3\] do not fill the kept "
                                                        r"key/value heads \[0\] evenly"),
        (lambda m: m.update(padding_heads=[[0], []]), r"padding_heads\[0\] \[0\] names heads missing from"),
        (lambda m: m.update(format="other"), r"is not a colab_helpers.pruned_model file \(format 'other'\)"),
        (lambda m: m.update(original_query_heads=[8, 8], original_kv_heads=[4, 4]),
         r"does not fit the model's config.json: the pruning record is for 2 layers with query heads \[8, 8\]"),
        (lambda m: m.update(head_dim=4), r"does not fit the model's config.json.*head size 4"),
    ],
)
def test_load_pruned_says_which_file_is_damaged_and_how(tmp_path: Path, edit: Any, match: str) -> None:
    meta_path = _edit_record(_saved(tmp_path), edit)
    with pytest.raises(ValueError, match=match) as caught:
        load_pruned(meta_path.parent)
    assert str(meta_path) in str(caught.value)


def test_load_pruned_reports_a_pruning_json_that_is_not_json(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    (path / "pruning.json").write_text('{"format": "colab_helpers.pruned_model", "kept_heads": [[0, 1')
    with pytest.raises(ValueError, match=r"pruning.json' is not valid JSON \(.*line 1.*\); save the pruned model"):
        load_pruned(path)
    (path / "pruning.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"not a colab_helpers.pruned_model file \(format a JSON list\)"):
        load_pruned(path)
