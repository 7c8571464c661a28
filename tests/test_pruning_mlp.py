"""MLP-channel pruning on tiny random models of every architecture with an MLP spec (and decoders found by name):
sizes, importance, selection, gating == removal, the record, save/load, and bad input refused before any change."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, NamedTuple

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from colab_helpers.pruning import MLP_STRATEGIES, MlpGates, MlpReport, gate_heads, gate_mlp, head_layout, load_pruned, mlp_importance, remove_heads, remove_mlp_channels, save_pruned, select_mlp_channels  # noqa: E402
from colab_helpers.pruning.mlp import known_mlp_sizes, mlp_sites, mlp_sizes, supports_mlp  # noqa: E402
from colab_helpers.pruning.record import check_record  # noqa: E402
from test_pruning import COMMON, LLAMA_LIKE, VOCAB, bad_token_batches, inputs, logits, mask_of, state_copy  # noqa: E402

HIDDEN = 32
GATED = 3 * HIDDEN  # one channel: a row of gate_proj and of up_proj, a column of down_proj (no biases)
PLAIN = 2 * HIDDEN + 1  # one channel: a row and a bias entry of the up projection, a column of the down projection
BOTH, EAGER = ("sdpa", "eager"), ("eager",)
GPT2_LIKE = {"n_layer": 2, "n_embd": HIDDEN, "n_head": 4, "n_positions": 64, "n_inner": 64, **COMMON}
FALCON = {"num_hidden_layers": 2, "hidden_size": HIDDEN, "num_attention_heads": 4, "ffn_hidden_size": 64, **COMMON}
QWEN2 = {**LLAMA_LIKE, "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1}  # full, then sliding layers
GPT_NEO = {"num_layers": 2, "hidden_size": HIDDEN, "num_heads": 4, "intermediate_size": 64, "window_size": 4,
           "max_position_embeddings": 64, "attention_types": [[["global", "local"], 1]], **COMMON}  # fmt: skip
OPT = {"num_hidden_layers": 2, "hidden_size": HIDDEN, "num_attention_heads": 4, "ffn_dim": 64, "pad_token_id": 1,
       "word_embed_proj_dim": HIDDEN, "max_position_embeddings": 64, **COMMON}  # fmt: skip
NEOX = {"num_hidden_layers": 2, "hidden_size": HIDDEN, "num_attention_heads": 4, "intermediate_size": 64,
        "max_position_embeddings": 64, **COMMON}  # fmt: skip
BLOOM = {"n_layer": 2, "hidden_size": HIDDEN, "n_head": 4, **COMMON}  # 4 * hidden MLP channels, fixed


class Arch(NamedTuple):
    config: str  # transformers config class
    kwargs: dict[str, Any]
    impls: tuple[str, ...]  # attention implementations the architecture supports
    channel_cost: int  # parameters one MLP channel holds
    channels: int = 64  # MLP channels per layer


ARCHS: dict[str, Arch] = {
    "llama": Arch("LlamaConfig", LLAMA_LIKE, BOTH, GATED),
    "qwen2": Arch("Qwen2Config", QWEN2, BOTH, GATED),
    "qwen3": Arch("Qwen3Config", {**LLAMA_LIKE, "head_dim": 8}, BOTH, GATED),
    "mistral": Arch("MistralConfig", LLAMA_LIKE, BOTH, GATED),
    "gemma": Arch("GemmaConfig", {**LLAMA_LIKE, "head_dim": 8}, BOTH, GATED),
    "gemma2": Arch("Gemma2Config", {**LLAMA_LIKE, "head_dim": 8, "sliding_window": 4}, EAGER, GATED),
    "stablelm": Arch("StableLmConfig", LLAMA_LIKE, BOTH, GATED),
    "gpt2": Arch("GPT2Config", GPT2_LIKE, BOTH, PLAIN),
    "gpt_bigcode": Arch("GPTBigCodeConfig", GPT2_LIKE, BOTH, PLAIN),
    "gpt_neo": Arch("GPTNeoConfig", GPT_NEO, EAGER, PLAIN),
    "opt": Arch("OPTConfig", OPT, BOTH, PLAIN),  # fc1 / fc2 on the layer, on rows flattened to [batch * seq]
    "gpt_neox": Arch("GPTNeoXConfig", NEOX, BOTH, PLAIN),
    "bloom": Arch("BloomConfig", BLOOM, EAGER, PLAIN, 4 * HIDDEN),
    "falcon": Arch("FalconConfig", FALCON, BOTH, 2 * HIDDEN),  # bias=False by default
    "falcon_alibi": Arch("FalconConfig", {**FALCON, "multi_query": False, "alibi": True}, BOTH, 2 * HIDDEN),
    "gptj": Arch("GPTJConfig", {**GPT2_LIKE, "rotary_dim": 4}, BOTH, PLAIN),
    "phi": Arch("PhiConfig", {**LLAMA_LIKE, "num_key_value_heads": 4}, BOTH, PLAIN),
    "phi3": Arch("Phi3Config", {**LLAMA_LIKE, "pad_token_id": 1}, BOTH, GATED),  # fused gate_up_proj: 2 rows
    # not in the MLP table: found by their projection names
    "olmo": Arch("OlmoConfig", {**LLAMA_LIKE, "pad_token_id": 1}, BOTH, GATED),  # gate_proj / up_proj / down_proj
    "granite": Arch("GraniteConfig", LLAMA_LIKE, BOTH, GATED),
    "nemotron": Arch("NemotronConfig", {**LLAMA_LIKE, "head_dim": 8}, BOTH, 2 * HIDDEN),  # up_proj / down_proj, no bias
}
CASES = [(name, impl) for name, arch in ARCHS.items() for impl in arch.impls]
_LAYER_KEYS = ("num_hidden_layers", "n_layer", "num_layers")
SIZE_KEYS = ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size")


def _lacks_implementation(exc: ValueError) -> bool:
    """True when transformers refused an attention implementation that this version has not got for the model
    (e.g. GPT-J has no sdpa in transformers 5.1.0)."""
    return "does not support an attention implementation" in str(exc)


def build(name: str, impl: str | None = None, *, layers: int = 2, seed: int = 0) -> Any:
    """Return a tiny random model of ``name`` with ``layers`` decoder layers, in eval mode.

    ``impl`` None: the first of the architecture's implementations that the installed transformers has. A named
    ``impl`` that this transformers version lacks for the architecture skips the test, naming the version."""
    arch = ARCHS[name]
    kwargs = {k: (layers if k in _LAYER_KEYS else v) for k, v in arch.kwargs.items()}
    if name == "gpt_neo":  # global and local attention alternate
        kwargs["attention_types"] = [[["global", "local"], layers // 2]] + ([[["global"], 1]] if layers % 2 else [])
    config = getattr(transformers, arch.config)(**kwargs)
    lacking: ValueError | None = None
    for candidate in (impl,) if impl else arch.impls:
        torch.manual_seed(seed)
        try:
            return transformers.AutoModelForCausalLM.from_config(config, attn_implementation=candidate).eval()
        except ValueError as exc:
            if not _lacks_implementation(exc):
                raise
            if impl:
                pytest.skip(f"transformers {transformers.__version__} has no {impl!r} attention for {name}")
            lacking = exc
    raise AssertionError(f"transformers {transformers.__version__} has none of {arch.impls} for {name}") from lacking


def random_masks(sizes: list[int], shares: tuple[float, ...] = (0.25, 0.5), seed: int = 0) -> list[Any]:
    """Bool masks (True = prune) pruning a different share of each layer's channels, at random positions."""
    generator = torch.Generator().manual_seed(seed)
    masks = []
    for i, n in enumerate(sizes):
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=generator)[: int(shares[i % len(shares)] * n)]] = True
        masks.append(mask)
    return masks


def close(a: Any, b: Any, rel: float = 1e-4) -> bool:
    """Equal up to ``rel`` of the larger magnitude (float32 sums in another order)."""
    return float((a - b).abs().max()) <= rel * max(1.0, float(b.abs().max()))


def hooks_on_outputs(model: Any) -> list[int]:
    return [len(site.output._forward_pre_hooks) for site in mlp_sites(model)]


def original_channels(masks: list[Any], kept: list[list[int]]) -> list[list[int]]:
    """Original channel indices still kept after ``masks`` (current positions) hit channels ``kept``."""
    return [[c for c, pruned in zip(k, m.tolist()) if not pruned] for k, m in zip(kept, masks)]


# --- sizes and support -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ARCHS))
def test_mlp_sizes_of_every_architecture(name: str) -> None:
    model = build(name, layers=3)
    assert mlp_sizes(model) == [ARCHS[name].channels] * 3
    assert known_mlp_sizes(model) == mlp_sizes(model)
    assert supports_mlp(model) is None


def test_a_mixture_of_experts_is_refused_naming_the_architecture() -> None:
    config = transformers.MixtralConfig(**{**LLAMA_LIKE, "num_local_experts": 2})
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    why = supports_mlp(model)
    assert why is not None and "'mixtral'" in why and "axes=('heads', 'layers')" in why
    assert known_mlp_sizes(model) is None
    with pytest.raises(NotImplementedError, match=r"cannot prune MLP channels of architecture 'mixtral'.*Supported"):
        mlp_sizes(model)
    with pytest.raises(NotImplementedError, match="'mixtral'"):
        mlp_importance(model, None, "random")


# --- gating == removal -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "impl"), CASES)
def test_removal_matches_gating(name: str, impl: str) -> None:
    model = build(name, impl)
    arch = ARCHS[name]
    base = logits(model)  # the left-padded batch
    with gate_mlp(model, [torch.zeros(arch.channels, dtype=torch.bool)] * 2) as gates:
        assert isinstance(gates, MlpGates) and hooks_on_outputs(model) == [0, 0]  # all ones: no hook at all
        assert torch.equal(logits(model), base)
    masks = random_masks([arch.channels] * 2)
    with gate_mlp(model, masks):
        assert hooks_on_outputs(model) == [1, 1]
        gated = logits(model)
    assert hooks_on_outputs(model) == [0, 0]
    assert float((gated - base).abs().max()) > 1e-4  # the masks matter

    report = remove_mlp_channels(model, masks)

    assert close(logits(model), gated)
    kept = [arch.channels - int(m.sum()) for m in masks]
    assert mlp_sizes(model) == kept and list(report.sizes_after) == kept
    assert isinstance(report, MlpReport) and report.sizes_before == (arch.channels, arch.channels)
    assert report.architecture == model.config.model_type
    assert report.params_after == sum(p.numel() for p in model.parameters())
    assert report.removed_params == arch.channel_cost * sum(int(m.sum()) for m in masks)
    assert f"removed {sum(int(m.sum()) for m in masks)} of {2 * arch.channels} MLP channels" in report.summary()
    record = model.config.colab_helpers_pruning
    assert record["mlp_sizes"] == kept and record["original_mlp_sizes"] == [arch.channels] * 2
    check_record(record)
    out = model.generate(**inputs(), do_sample=False, max_new_tokens=3, pad_token_id=0)
    assert out.shape == (2, 13)


def test_gating_without_masks_and_handles() -> None:
    model = build("llama")
    base = logits(model)
    handle = gate_mlp(model)
    assert hooks_on_outputs(model) == [0, 0] and [tuple(g.shape) for g in handle.gates] == [(64,), (64,)]
    assert torch.equal(logits(model), base)
    handle.remove()
    handle = gate_mlp(model, random_masks([64, 64]))
    assert not torch.equal(logits(model), base)
    handle.remove()
    handle.remove()  # twice is safe
    assert hooks_on_outputs(model) == [0, 0] and torch.equal(logits(model), base)


def test_gate_of_zero_everywhere_removes_the_mlp_contribution() -> None:
    """Gating every channel of a layer leaves only the output projection's bias, like an MLP that returns it."""
    model = build("gpt2")
    with gate_mlp(model, [torch.ones(64, dtype=torch.bool), torch.zeros(64, dtype=torch.bool)]):
        gated = logits(model)
    bias = model.transformer.h[0].mlp.c_proj.bias
    model.transformer.h[0].mlp.register_forward_hook(lambda module, args, out: torch.zeros_like(out) + bias)
    assert close(logits(model), gated, 1e-5)


# --- the report, the record, a second removal ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "opt", "phi3", "gpt2", "bloom"])
def test_second_removal_composes_with_the_first(name: str) -> None:
    model = build(name)
    original = copy.deepcopy(model)
    n = ARCHS[name].channels
    first = random_masks([n, n], seed=1)
    remove_mlp_channels(model, first)
    kept = original_channels(first, [list(range(n))] * 2)
    sizes = mlp_sizes(model)
    second = random_masks(sizes, shares=(0.5, 0.25), seed=2)  # positions among the channels held now
    report = remove_mlp_channels(model, second)
    kept = original_channels(second, kept)

    assert report.sizes_before == tuple(sizes) and list(report.sizes_after) == [len(k) for k in kept]
    assert mlp_sizes(model) == [len(k) for k in kept] and all(a < b for a, b in zip(mlp_sizes(model), sizes))
    record = model.config.colab_helpers_pruning
    assert record["mlp_sizes"] == mlp_sizes(model) and record["original_mlp_sizes"] == [n, n]
    composed = [torch.tensor([c not in k for c in range(n)]) for k in kept]
    with gate_mlp(original, composed):
        expected = logits(original)
    assert close(logits(model), expected)


def test_masks_are_for_the_channels_held_now() -> None:
    model = build("llama")
    masks = random_masks([64, 64])
    remove_mlp_channels(model, masks)
    with pytest.raises(ValueError, match=r"masks\[0\] must be a torch.bool tensor of shape \(48,\) \(layer 0 holds 48 "
                                         r"channels now; True = prune\), got torch.bool \(64,\)"):  # fmt: skip
        remove_mlp_channels(model, masks)


def test_a_model_changed_behind_the_records_back_is_refused() -> None:
    model = build("llama")
    remove_mlp_channels(model, random_masks([64, 64]))
    model.config.colab_helpers_pruning["mlp_sizes"] = [64, 64]
    with pytest.raises(RuntimeError, match=r"says the layers hold \[64, 64\] MLP channels but they hold \[48, 32\]"):
        remove_mlp_channels(model, [torch.zeros(48, dtype=torch.bool), torch.zeros(32, dtype=torch.bool)])


# --- importance ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ARCHS))
def test_importance_strategies(name: str) -> None:
    model = build(name)
    head = model.get_output_embeddings()  # lm_head; GPT-NeoX's embed_out before transformers renamed it
    head.weight.requires_grad_(False)  # flags come back as they were
    before = state_copy(model)
    n = ARCHS[name].channels
    for strategy in MLP_STRATEGIES:
        scores = mlp_importance(model, [inputs(1), inputs(2)], strategy, progress=False)
        assert [tuple(s.shape) for s in scores] == [(n,), (n,)], strategy
        assert all(s.dtype == torch.float32 and bool(torch.isfinite(s).all()) for s in scores), strategy
        assert all(bool((s >= 0).all()) for s in scores), strategy
        assert len(set(torch.cat(scores).tolist())) > n, strategy  # channels are told apart
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not head.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert hooks_on_outputs(model) == [0, 0] and not model.training


def test_importance_restores_flags_and_reads_the_pruned_sizes() -> None:
    model = build("qwen2")
    model.train()
    model.lm_head.weight.requires_grad_(False)
    remove_mlp_channels(model, random_masks([64, 64]))
    for strategy in MLP_STRATEGIES:
        scores = mlp_importance(model, [inputs()], strategy, progress=False)
        assert [len(s) for s in scores] == [48, 32]
    assert model.training and not model.lm_head.weight.requires_grad
    assert model.model.layers[0].mlp.down_proj.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_random_importance_is_seeded_and_needs_no_batches() -> None:
    model = build("gpt2")
    a = mlp_importance(model, None, "random", seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, mlp_importance(model, None, "random", seed=3)))
    assert not torch.equal(a[0], mlp_importance(model, None, "random", seed=4)[0])
    assert not torch.equal(a[0], a[1])  # layers get different draws
    assert all(bool(((s >= 0) & (s < 1)).all()) for s in a)


PADDING_CASES = [("llama", "sdpa"), ("llama", "eager"), ("opt", "sdpa"), ("gpt2", "eager"), ("bloom", "eager"),
                 ("falcon_alibi", "sdpa"), ("phi3", "sdpa")]  # fmt: skip


@pytest.mark.parametrize(("name", "impl"), PADDING_CASES)
def test_activation_ignores_padded_positions(name: str, impl: str) -> None:
    model = build(name, impl)
    batch = inputs()  # row 1 left-padded by 3
    other = {k: v.clone() for k, v in batch.items()}
    other["input_ids"][1, :3] = torch.tensor([5, 77, 120])  # other tokens where the mask says padding
    a = mlp_importance(model, [batch], "activation", progress=False)
    b = mlp_importance(model, [other], "activation", progress=False)
    assert all(torch.allclose(x, y, rtol=1e-5, atol=1e-6) for x, y in zip(a, b))
    unmasked = mlp_importance(model, [{"input_ids": batch["input_ids"]}], "activation", progress=False)
    assert not all(torch.allclose(x, y, rtol=1e-5, atol=1e-6) for x, y in zip(a, unmasked))  # padding would count


@pytest.mark.parametrize("name", ["llama", "opt"])
def test_activation_keeps_nan_at_padded_positions_out(name: str) -> None:
    """Half-precision models can hold inf or NaN where a row is padding: it must not reach the scores."""
    model = build(name)
    batch = inputs()
    clean = mlp_importance(model, [batch], "activation", progress=False)
    last = mlp_sites(model)[-1].output

    def poison(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0].clone()
        padded = ~batch["attention_mask"].bool()
        x[padded.reshape(-1) if x.dim() == 2 else padded] = float("nan")  # OPT: rows are [batch * seq]
        return (x, *args[1:])

    handle = last.register_forward_pre_hook(poison)  # the last layer: NaN reaches no real token afterwards
    try:
        poisoned = mlp_importance(model, [batch], "activation", progress=False)
    finally:
        handle.remove()
    assert all(torch.allclose(x, y, rtol=1e-5, atol=1e-7) for x, y in zip(clean, poisoned))


@pytest.mark.parametrize("strategy", ["activation", "taylor"])
@pytest.mark.parametrize("name", ["llama", "opt", "gpt2"])
def test_right_padded_rows_score_like_the_rows_alone(name: str, strategy: str) -> None:
    model = build(name)
    ids = torch.randint(2, VOCAB, (2, 10), generator=torch.Generator().manual_seed(5))
    padded = {"input_ids": ids.clone(), "attention_mask": torch.ones_like(ids)}
    padded["input_ids"][1, 6:] = 3
    padded["attention_mask"][1, 6:] = 0
    together = mlp_importance(model, [padded], strategy, progress=False)
    # activation: a mean over real tokens; taylor: a mean over examples; either way batching does not matter
    apart = mlp_importance(model, [{"input_ids": ids[:1]}, {"input_ids": ids[1:, :6]}], strategy, progress=False)
    assert all(torch.allclose(x, y, rtol=1e-4, atol=1e-7) for x, y in zip(together, apart))


def test_taylor_scores_estimate_the_loss_change_of_removing_a_channel() -> None:
    """|a * dL/da| ranks the channels like the loss change measured by gating each one off (first-order)."""
    model = build("llama")
    batch = inputs()
    scores = mlp_importance(model, [batch], "taylor", progress=False)
    assert bool((scores[0] > 0).all())
    top = int(scores[0].argmax())
    low = int(scores[0].argmin())

    def loss_without(channel: int) -> float:
        mask = torch.zeros(64, dtype=torch.bool)
        mask[channel] = True
        with gate_mlp(model, [mask, torch.zeros(64, dtype=torch.bool)]), torch.no_grad():
            return float(model(**batch, labels=batch["input_ids"]).loss)

    with torch.no_grad():
        base = float(model(**batch, labels=batch["input_ids"]).loss)
    assert abs(loss_without(top) - base) > abs(loss_without(low) - base)


def test_max_batches_limits_the_data_read() -> None:
    model = build("gpt2")
    for strategy in ("activation", "taylor"):
        seen = []

        def batches() -> Any:
            for i in range(10):
                seen.append(i)
                yield inputs(i)

        mlp_importance(model, batches(), strategy, max_batches=2, progress=False)
        assert seen == [0, 1], strategy


# --- selection -------------------------------------------------------------------------------------------------

SCORES = [torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.9, 0.8, 0.7, 0.6])]


def test_select_global_ranks_all_layers_together() -> None:
    masks = select_mlp_channels(SCORES, 0.25)
    assert [m.tolist() for m in masks] == [[True, True, False, False], [False, False, False, False]]
    assert all(m.dtype == torch.bool for m in masks)
    # the lowest half is all of layer 0: it keeps min_channels=1 (its best), so fewer than half go
    masks = select_mlp_channels(SCORES, 0.5)
    assert [m.tolist() for m in masks] == [[True, True, True, False], [False, False, False, False]]
    masks = select_mlp_channels(SCORES, 0.5, min_channels=2)
    assert [m.tolist() for m in masks] == [[True, True, False, False], [False, False, False, False]]
    assert not any(m.any() for m in select_mlp_channels(SCORES, 0.0))


def test_select_layer_removes_the_share_from_every_layer() -> None:
    masks = select_mlp_channels(SCORES, 0.5, scope="layer")
    assert [m.tolist() for m in masks] == [[True, True, False, False], [False, False, True, True]]
    uneven = [torch.arange(10.0), torch.arange(4.0).flip(0)]  # layers of different sizes
    assert [int(m.sum()) for m in select_mlp_channels(uneven, 0.5, scope="layer")] == [5, 2]
    assert [int(m.sum()) for m in select_mlp_channels(uneven, 0.9, scope="layer", min_channels=2)] == [8, 2]


def test_select_rounds_the_kept_counts() -> None:
    scores = [torch.rand(64, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    for level, scope in ((0.3, "layer"), (0.3, "global"), (0.6, "global"), (0.05, "layer")):
        masks = select_mlp_channels(scores, level, scope=scope, round_to=8)
        kept = [64 - int(m.sum()) for m in masks]
        assert all(k % 8 == 0 and 8 <= k <= 64 for k in kept), (level, scope, kept)
    masks = select_mlp_channels(scores, 0.3, scope="layer", round_to=8)
    assert [64 - int(m.sum()) for m in masks] == [48, 48, 48]  # 45 -> 48
    masks = select_mlp_channels([torch.rand(10)], 0.9, scope="layer", round_to=8, min_channels=3)
    assert int((~masks[0]).sum()) == 3  # rounding to 0 would go below min_channels


def test_select_keeps_the_highest_scores() -> None:
    scores = [torch.rand(64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    for scope in ("global", "layer"):
        masks = select_mlp_channels(scores, 0.4, scope=scope)
        for s, m in zip(scores, masks):
            assert float(s[~m].min()) > float(s[m].max())
        per_layer = [round(0.4 * 64)] * 2 if scope == "layer" else None  # each layer rounds its own share
        assert sum(int(m.sum()) for m in masks) == (sum(per_layer) if per_layer else round(0.4 * 128))


def test_select_end_to_end_removes_what_gating_predicts() -> None:
    model = build("phi3")
    masks = select_mlp_channels(mlp_importance(model, [inputs()], "taylor", progress=False), 0.5, round_to=8)
    with gate_mlp(model, masks):
        gated = logits(model)
    report = remove_mlp_channels(model, masks)
    assert all(n % 8 == 0 for n in report.sizes_after)
    assert close(logits(model), gated)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"level": 1.0}, r"level must be in \[0, 1\) \(share of MLP channels to prune\), got 1.0"),
        ({"level": -0.1}, r"level must be in \[0, 1\).*got -0.1"),
        ({"level": 0.5, "scope": "model"}, "scope must be 'global' or 'layer', got 'model'"),
        ({"level": 0.5, "min_channels": 0}, r"min_channels must be an int >= 1 \(every layer keeps a channel; remove "
                                            r"whole layers with remove_layers\), got 0"),
        ({"level": 0.5, "min_channels": 1.5}, r"min_channels must be an int >= 1.*got 1.5"),
        ({"level": 0.5, "round_to": 0}, r"round_to must be an int >= 1.*got 0"),
        ({"level": 0.5, "round_to": True}, r"round_to must be an int >= 1.*got True"),
    ],
)
def test_select_argument_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        select_mlp_channels(SCORES, **kwargs)


# --- save / load -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama", "gemma2", "gpt2", "gpt_neo", "opt", "bloom", "falcon", "gptj", "phi3",
                                  "olmo"])  # fmt: skip
def test_save_load_round_trip_with_per_layer_sizes(name: str, tmp_path: Path) -> None:
    model = build(name)
    n = ARCHS[name].channels
    remove_mlp_channels(model, random_masks([n, n]))
    expected = logits(model)
    path = save_pruned(model, None, tmp_path / "pruned")

    meta = json.loads((path / "pruning.json").read_text())
    assert meta["mlp_sizes"] == [n - n // 4, n - n // 2] and meta["original_mlp_sizes"] == [n, n]
    saved_config = json.loads((path / "config.json").read_text())
    for key in SIZE_KEYS:  # the config keeps the original size: the record holds the per-layer ones
        assert saved_config.get(key) == getattr(build(name).config, key, None), key
    loaded, _ = load_pruned(path)
    assert mlp_sizes(loaded) == meta["mlp_sizes"]
    assert torch.allclose(logits(loaded), expected, atol=1e-6)
    assert loaded.config.colab_helpers_pruning["mlp_sizes"] == meta["mlp_sizes"]
    # the loaded model prunes further, and saves again over the earlier save
    remove_mlp_channels(loaded, random_masks(mlp_sizes(loaded), shares=(0.5,), seed=3))
    again = logits(loaded)
    save_pruned(loaded, None, path)
    reloaded, _ = load_pruned(path)
    assert mlp_sizes(reloaded) == mlp_sizes(loaded) and torch.allclose(logits(reloaded), again, atol=1e-6)
    assert reloaded.config.colab_helpers_pruning["original_mlp_sizes"] == [n, n]


@pytest.mark.parametrize("name", ["llama", "gpt2", "bloom", "phi3", "falcon_alibi"])
@pytest.mark.parametrize("heads_first", [True, False])
def test_heads_and_mlp_removed_together_round_trip(name: str, heads_first: bool, tmp_path: Path) -> None:
    model = build(name)
    original = copy.deepcopy(model)
    n = ARCHS[name].channels
    head_mask = mask_of(head_layout(model), {0: [1], 1: [0, 1]})
    masks = random_masks([n, n])
    with gate_heads(original, head_mask), gate_mlp(original, masks):
        expected = logits(original)
    steps = [lambda: remove_heads(model, head_mask), lambda: remove_mlp_channels(model, masks)]
    for step in steps if heads_first else steps[::-1]:
        step()
    assert close(logits(model), expected)
    record = model.config.colab_helpers_pruning
    assert record["mlp_sizes"] == mlp_sizes(model) and [len(k) for k in record["kept_heads"]] != [4, 4]
    loaded, _ = load_pruned(save_pruned(model, None, tmp_path / "pruned"))
    assert head_layout(loaded) == head_layout(model) and mlp_sizes(loaded) == mlp_sizes(model)
    assert close(logits(loaded), expected)


def _saved(tmp_path: Path) -> Path:
    model = build("llama")
    remove_mlp_channels(model, random_masks([64, 64]))
    return save_pruned(model, None, tmp_path / "pruned")


def _edit(path: Path, edit: Any) -> Path:
    meta_path = path / "pruning.json"
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))
    return meta_path


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.update(mlp_sizes=[80, 32]),
         r"is damaged: mlp_sizes\[0\] must be in \[1, original_mlp_sizes\[0\] = 64\], got 80"),
        (lambda m: m.update(mlp_sizes=[0, 32]), r"is damaged: mlp_sizes\[0\] must be in \[1, .*got 0"),
        (lambda m: m.update(mlp_sizes=[48]),
         r"is damaged: mlp_sizes and original_mlp_sizes need one entry per layer \(2\)"),
        (lambda m: m.update(original_mlp_sizes=[64, 64, 64]), r"need one entry per layer \(2\)"),
        (lambda m: m.pop("original_mlp_sizes"), r"is damaged: original_mlp_sizes must be a list of integers, got None"),
        (lambda m: m.update(mlp_sizes=[48, "32"]), r"is damaged: mlp_sizes must be a list of integers"),
        (lambda m: m.update(mlp_sizes=[48, 32.0]), r"is damaged: mlp_sizes must be a list of integers"),
        (lambda m: m.update(mlp_sizes=[80, 32], original_mlp_sizes=[96, 64]),
         r"does not fit the model's config.json: the record's original MLP sizes \[96, 64\] differ"),
        (lambda m: m.update(original_mlp_sizes=[96, 64]),
         r"does not fit the model's config.json: the record's original MLP sizes \[96, 64\] differ from the model"),
        (lambda m: m.update(mlp_sizes=[32, 48]),  # consistent, but not the shapes of the weights
         r"do not have the shapes that its pruning.json gives .*model.layers.0.mlp.gate_proj.weight \(48, 32\) != "
         r"\(32, 32\).*save the pruned model again"),
    ],
)
def test_load_refuses_damaged_mlp_sizes_naming_the_file(tmp_path: Path, edit: Any, match: str) -> None:
    meta_path = _edit(_saved(tmp_path), edit)
    with pytest.raises(ValueError, match=match) as caught:
        load_pruned(meta_path.parent)
    assert str(meta_path.parent) in str(caught.value)


def test_record_checks_the_mlp_entries() -> None:
    model = build("llama")
    remove_mlp_channels(model, random_masks([64, 64]))
    record = copy.deepcopy(model.config.colab_helpers_pruning)
    check_record(record)
    for edit, match in [
        ({"mlp_sizes": [65, 32]}, r"mlp_sizes\[0\] must be in \[1, original_mlp_sizes\[0\] = 64\], got 65"),
        ({"mlp_sizes": [48, 32, 16]}, "need one entry per layer"),
        ({"original_mlp_sizes": [64]}, "need one entry per layer"),
        ({"mlp_sizes": [48, True]}, "mlp_sizes must be a list of integers"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_record({**record, **edit})
    v1 = {k: v for k, v in record.items() if k not in ("mlp_sizes", "original_mlp_sizes")}
    check_record(v1)


# --- bad input: refused before any change ----------------------------------------------------------------------


def unchanged(model: Any, before: dict[str, Any]) -> bool:
    state = model.state_dict()
    return state.keys() == before.keys() and all(
        state[k].shape == v.shape and torch.equal(state[k], v) for k, v in before.items()
    )


@pytest.mark.parametrize(
    ("masks", "match"),
    [
        ([torch.zeros(64, dtype=torch.bool)], r"masks needs one bool tensor per decoder layer \(2 layers, channels "
                                              r"\[64, 64\]\), got 1 entries; build them with select_mlp_channels"),
        (torch.zeros(2, 64, dtype=torch.bool), r"per decoder layer.*got Tensor"),
        (None, r"per decoder layer.*got NoneType"),
        ([torch.zeros(64, dtype=torch.bool), torch.zeros(63, dtype=torch.bool)],
         r"masks\[1\] must be a torch.bool tensor of shape \(64,\).*got torch.bool \(63,\)"),
        ([torch.zeros(64), torch.zeros(64, dtype=torch.bool)],
         r"masks\[0\] must be a torch.bool tensor.*got torch.float32"),
        ([[False] * 64, torch.zeros(64, dtype=torch.bool)], r"masks\[0\] must be a torch.bool tensor.*got list"),
        ([torch.zeros(1, 64, dtype=torch.bool)] * 2, r"masks\[0\].*got torch.bool \(1, 64\)"),
    ],
)
def test_bad_masks_are_refused_and_change_nothing(masks: Any, match: str) -> None:
    model = build("llama")
    before = state_copy(model)
    with pytest.raises(ValueError, match=match):
        remove_mlp_channels(model, masks)
    if masks is not None:
        with pytest.raises(ValueError, match=match):
            gate_mlp(model, masks)
    assert unchanged(model, before) and hooks_on_outputs(model) == [0, 0]
    assert not hasattr(model.config, "colab_helpers_pruning")


@pytest.mark.parametrize("name", ["llama", "gpt2", "phi3", "opt"])
def test_a_mask_pruning_a_whole_layer_is_refused(name: str) -> None:
    model = build(name)
    n = ARCHS[name].channels
    before = state_copy(model)
    masks = [torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]
    masks[0][:5] = True  # layer 0 would change if the check came after it
    with pytest.raises(ValueError, match=rf"masks\[1\] prunes all {n} MLP channels of layer 1; keep at least one "
                                         r"\(or remove the whole layer with remove_layers\)"):  # fmt: skip
        remove_mlp_channels(model, masks)
    assert unchanged(model, before) and mlp_sizes(model) == [n, n]
    assert not hasattr(model.config, "colab_helpers_pruning")


def test_adapters_are_refused_with_the_fix() -> None:
    peft = pytest.importorskip("peft")
    model = build("llama")
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["up_proj", "down_proj"]))
    before = state_copy(wrapped)
    with pytest.raises(ValueError, match=r"layer 0's MLP projection .* carries an adapter; merge it first "
                                         r"\(model = model.merge_and_unload\(\)\)"):  # fmt: skip
        remove_mlp_channels(wrapped, random_masks([64, 64]))
    assert unchanged(wrapped, before)
    merged = wrapped.merge_and_unload()
    assert remove_mlp_channels(merged, random_masks([64, 64])).sizes_after == (48, 32)


@pytest.mark.parametrize("bad", ["gradient", "Taylor", "", None])
def test_unknown_strategy_is_refused(bad: Any) -> None:
    choices = "activation, taylor, random"
    with pytest.raises(ValueError, match=rf"MLP importance strategy must be one of {choices}, got {bad!r}"):
        mlp_importance(build("gpt2"), [inputs()], bad, progress=False)


@pytest.mark.parametrize("strategy", ["activation", "taylor"])
def test_measured_strategies_need_batches(strategy: str) -> None:
    model = build("gpt2")
    with pytest.raises(ValueError, match=rf"MLP importance '{strategy}' needs calibration batches.*got None"):
        mlp_importance(model, None, strategy)
    with pytest.raises(ValueError, match="needs text"):
        mlp_importance(model, [], strategy, progress=False)
    with pytest.raises(ValueError, match="dict with input_ids"):
        mlp_importance(model, [torch.zeros(2, 3, dtype=torch.long)], strategy, progress=False)
    assert hooks_on_outputs(model) == [0, 0] and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("strategy", ["activation", "taylor"])
@pytest.mark.parametrize("case", range(3))
def test_bad_token_ids_are_refused_before_any_forward(strategy: str, case: int) -> None:
    """Zero-length sequences, float ids and ids past the vocabulary: named with the fix before the model runs."""
    model = build("gpt2")
    forwards = []
    model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    bad, message = bad_token_batches()[case]
    with pytest.raises(ValueError, match=r"batches\[1\]" + message):
        mlp_importance(model, [inputs(), bad], strategy, progress=False)
    assert not forwards and hooks_on_outputs(model) == [0, 0]
