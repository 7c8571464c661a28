"""Depth pruning on tiny random models of every architecture: layer importance, skipping == removal, the KV cache
and the config after a removal, the record's original layer indices, save/load, heads / MLP / layers combined,
and bad input refused before any change."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from colab_helpers.pruning import LAYER_STRATEGIES, LayerReport, gate_heads, gate_mlp, head_layout, layer_importance, load_pruned, remove_heads, remove_layers, remove_mlp_channels, save_pruned, skip_layers  # noqa: E402
from colab_helpers.pruning.batches import mean_loss  # noqa: E402
from colab_helpers.pruning.layers import decoder_layers, screened_loss_costs  # noqa: E402
from colab_helpers.pruning.mlp import mlp_sizes  # noqa: E402
from colab_helpers.pruning.record import check_record  # noqa: E402
from test_pruning import VOCAB, bad_token_batches, inputs, logits, mask_of, state_copy  # noqa: E402
from test_pruning_mlp import ARCHS, CASES, build, close, random_masks  # noqa: E402

INDEX_ATTRS = ("layer_idx", "layer_id")


def layer_indices(model: Any) -> list[set[int]]:
    """The KV-cache indices the modules of each decoder layer hold."""
    return [
        {getattr(m, a) for m in layer.modules() for a in INDEX_ATTRS if type(getattr(m, a, None)) is int}
        for layer in decoder_layers(model)
    ]


def decodes_incrementally(model: Any, batch: dict[str, Any] | None = None, split: int = 6) -> bool:
    """True when a prefix with use_cache=True, then the rest from its cache, gives the logits of one full forward
    at every real token (padded positions attend to nothing: their logits are arbitrary)."""
    import inspect

    batch = batch or inputs()
    ids, mask = batch["input_ids"], batch["attention_mask"]
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # renamed in 5.x
    with torch.no_grad():
        first = model(input_ids=ids[:, :split], attention_mask=mask[:, :split], use_cache=True)
        rest = model(input_ids=ids[:, split:], attention_mask=mask, use_cache=True, **{name: getattr(first, name)})
    real = mask.bool()
    return close(torch.cat([first.logits, rest.logits], dim=1)[real], logits(model, batch)[real])


def greedy(model: Any, **kwargs: Any) -> Any:
    return model.generate(**inputs(), do_sample=False, max_new_tokens=4, pad_token_id=0, **kwargs)


def unchanged(model: Any, before: dict[str, Any], layers: int) -> bool:
    state = model.state_dict()
    same = state.keys() == before.keys() and all(torch.equal(state[k], v) for k, v in before.items())
    return same and len(decoder_layers(model)) == layers == model.config.num_hidden_layers


def original_heads_mask(layers: int, rows: dict[int, list[int]]) -> Any:
    mask = torch.zeros(layers, 4, dtype=torch.bool)
    for layer, heads in rows.items():
        mask[layer, heads] = True
    return mask


# --- skipping == removal; the cache, the config and the record after a removal -------------------------------


@pytest.mark.parametrize(("name", "impl"), CASES)
def test_removal_matches_skipping(name: str, impl: str) -> None:
    model = build(name, impl, layers=3)
    base = logits(model)
    with skip_layers(model, [0]):
        skipped = logits(model)
    assert torch.equal(logits(model), base)  # the hooks are gone
    assert float((skipped - base).abs().max()) > 1e-4  # the layer matters
    removed_params = sum(p.numel() for p in decoder_layers(model)[0].parameters())
    params_before = sum(p.numel() for p in model.parameters())
    config_before = copy.deepcopy(model.config)

    report = remove_layers(model, [0])

    assert close(logits(model), skipped)
    assert isinstance(report, LayerReport) and report.architecture == model.config.model_type
    assert (report.layers_before, report.removed, report.kept) == (3, (0,), (1, 2))
    assert report.params_before == params_before and report.removed_params == removed_params
    assert report.params_after == sum(p.numel() for p in model.parameters())
    assert "removed layers [0] (3 -> 2)" in report.summary()
    # the config follows: layer count and per-layer lists
    assert model.config.num_hidden_layers == len(decoder_layers(model)) == 2
    if getattr(config_before, "layer_types", None) is not None:
        assert model.config.layer_types == config_before.layer_types[1:]
    if name == "gpt_neo":
        assert model.config.attention_layers == ["local", "global"]
        assert transformers.GPTNeoConfig(**model.config.to_dict()).attention_layers == ["local", "global"]
    # each remaining layer's KV-cache index is its new position
    assert layer_indices(model) == [{0}, {1}]
    record = model.config.colab_helpers_pruning
    assert record["kept_layers"] == [1, 2] and record["original_num_layers"] == 3
    assert len(record["kept_heads"]) == 2 and record["mlp_sizes"] == [ARCHS[name].channels] * 2
    check_record(record)
    # incremental decoding equals a full forward, and generate() with a cache equals generate() without one
    batch = inputs()
    assert decodes_incrementally(model, batch)
    assert torch.equal(greedy(model), greedy(model, use_cache=False))


@pytest.mark.parametrize("name", ["qwen2", "gemma2", "gpt_neo"])
def test_per_layer_config_lists_are_cut_to_the_kept_layers(name: str) -> None:
    """Layer types follow their layers: the sliding / local layers stay where they were in the original."""
    model = build(name, layers=4)
    before = list(getattr(model.config, "attention_layers" if name == "gpt_neo" else "layer_types"))
    with skip_layers(model, [1, 2]):
        expected = logits(model)
    remove_layers(model, [1, 2])
    after = getattr(model.config, "attention_layers" if name == "gpt_neo" else "layer_types")
    assert after == [before[0], before[3]]
    assert close(logits(model), expected)
    assert decodes_incrementally(model)


def test_skip_layers_handle() -> None:
    model = build("llama", layers=3)
    base = logits(model)
    handle = skip_layers(model, [2, 0])
    assert handle.skipped == [0, 2]
    skipped = logits(model)
    handle.remove()
    handle.remove()  # twice is safe
    assert torch.equal(logits(model), base) and not torch.equal(skipped, base)
    with skip_layers(model, []):
        assert torch.equal(logits(model), base)
    with skip_layers(model, range(3)):  # skipping all is allowed: the embeddings go straight to the head
        assert logits(model).shape == base.shape
    assert not any(layer._forward_hooks for layer in decoder_layers(model))


# --- importance ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ARCHS))
def test_layer_importance_strategies(name: str) -> None:
    model = build(name, layers=3)
    before = state_copy(model)
    batches = [inputs(1), inputs(2)]  # left-padded: padding must count nowhere
    influence = layer_importance(model, batches, "block_influence", progress=False)
    assert influence.shape == (3,) and influence.dtype == torch.float32
    assert bool(torch.isfinite(influence).all()) and bool(((influence >= 0) & (influence <= 2)).all())
    assert len(set(influence.tolist())) == 3
    cost = layer_importance(model, batches, "loss", progress=False)
    assert cost.shape == (3,) and bool(torch.isfinite(cost).all())
    base = mean_loss(model, batches)
    for index in range(3):  # the layers before the skipped one are replayed from the intact pass: same numbers
        with skip_layers(model, [index]):
            assert cost[index].item() == pytest.approx(mean_loss(model, batches) - base, abs=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(layer._forward_hooks or "forward" in vars(layer) for layer in decoder_layers(model))


@pytest.mark.parametrize("name", ["llama", "gpt2", "opt"])
def test_screened_loss_costs_measure_the_layers_that_turn_their_input_least(name: str) -> None:
    model = build(name, layers=4)
    batches = [inputs(1), inputs(2)]
    influence = layer_importance(model, batches[:1], "block_influence", progress=False)
    full = layer_importance(model, batches, "loss", progress=False)
    screened = screened_loss_costs(model, batches, 2, progress=False)
    measured = sorted(torch.argsort(influence).tolist()[:2])
    others = [i for i in range(4) if i not in measured]
    assert torch.allclose(screened[measured], full[measured], atol=1e-5)
    assert float(screened[others].min()) > float(screened[measured].max())  # ranked after every measured layer
    assert torch.argsort(screened[others]).tolist() == torch.argsort(influence[others]).tolist()
    assert torch.allclose(screened_loss_costs(model, batches, 9, progress=False), full, atol=1e-6)
    with pytest.raises(ValueError, match="measure must be a positive number of layers, got 0"):
        screened_loss_costs(model, batches, 0, progress=False)


def test_a_layer_that_does_nothing_scores_zero() -> None:
    """Zeroed output projections make a layer the identity (its residual): nothing to lose by dropping it."""
    model = build("llama", layers=3)
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    batches = [inputs()]
    influence = layer_importance(model, batches, "block_influence", progress=False)
    cost = layer_importance(model, batches, "loss", progress=False)
    assert influence[1].item() == pytest.approx(0.0, abs=1e-6) and bool((influence[[0, 2]] > 1e-3).all())
    assert cost[1].item() == pytest.approx(0.0, abs=1e-6) and bool((cost[[0, 2]].abs() > 1e-4).all())


@pytest.mark.parametrize("strategy", ["block_influence", "loss"])
def test_right_padded_rows_score_like_the_rows_alone(strategy: str) -> None:
    model = build("gpt2", layers=3)
    ids = torch.randint(2, VOCAB, (2, 10), generator=torch.Generator().manual_seed(5))
    padded = {"input_ids": ids.clone(), "attention_mask": torch.ones_like(ids)}
    padded["input_ids"][1, 6:] = 3
    padded["attention_mask"][1, 6:] = 0
    together = layer_importance(model, [padded], strategy, progress=False)
    apart = layer_importance(model, [{"input_ids": ids[:1]}, {"input_ids": ids[1:, :6]}], strategy, progress=False)
    assert torch.allclose(together, apart, rtol=1e-4, atol=1e-6)


def test_block_influence_keeps_nan_at_padded_positions_out() -> None:
    model = build("llama", layers=3)
    batch = inputs()
    clean = layer_importance(model, [batch], "block_influence", progress=False)

    def poison(module: Any, args: tuple[Any, ...], output: Any) -> Any:
        hidden = (output[0] if isinstance(output, tuple) else output).clone()
        hidden[~batch["attention_mask"].bool()] = float("nan")
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = decoder_layers(model)[-1].register_forward_hook(poison)  # the last layer: no real token sees it
    try:
        poisoned = layer_importance(model, [batch], "block_influence", progress=False)
    finally:
        handle.remove()
    assert torch.allclose(clean, poisoned, rtol=1e-5, atol=1e-7)


def test_random_layer_importance_is_seeded() -> None:
    model = build("gpt2", layers=3)
    a = layer_importance(model, None, "random", seed=3)
    assert a.shape == (3,) and torch.equal(a, layer_importance(model, None, "random", seed=3))
    assert not torch.equal(a, layer_importance(model, None, "random", seed=4))


def test_max_batches_limits_the_data_read() -> None:
    model = build("gpt2", layers=3)
    for strategy in ("block_influence", "loss"):
        seen = []

        def batches() -> Any:
            for i in range(10):
                seen.append(i)
                yield inputs(i)

        layer_importance(model, batches(), strategy, max_batches=2, progress=False)
        assert seen == [0, 1], strategy


@pytest.mark.parametrize("bad", ["influence", "taylor", None])
def test_unknown_layer_strategy_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match=rf"layer importance strategy must be one of block_influence, loss, random, "
                                         rf"got {bad!r}"):  # fmt: skip
        layer_importance(build("gpt2"), [inputs()], bad, progress=False)
    assert LAYER_STRATEGIES == ("block_influence", "loss", "random")


@pytest.mark.parametrize("strategy", ["block_influence", "loss"])
def test_measured_layer_strategies_need_batches(strategy: str) -> None:
    model = build("gpt2")
    with pytest.raises(ValueError, match=rf"layer importance '{strategy}' needs calibration batches.*got None"):
        layer_importance(model, None, strategy)
    with pytest.raises(ValueError, match="needs text"):
        layer_importance(model, [], strategy, progress=False)
    assert not any(layer._forward_hooks for layer in decoder_layers(model))


@pytest.mark.parametrize("strategy", ["block_influence", "loss"])
@pytest.mark.parametrize("case", range(3))
def test_bad_token_ids_are_refused_before_any_forward(strategy: str, case: int) -> None:
    """Zero-length sequences, float ids and ids past the vocabulary: named with the fix before the model runs."""
    model = build("gpt2")
    forwards = []
    model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    bad, message = bad_token_batches()[case]
    with pytest.raises(ValueError, match=r"batches\[1\]" + message):
        layer_importance(model, [inputs(), bad], strategy, progress=False)
    assert not forwards and not any(layer._forward_hooks for layer in decoder_layers(model))


# --- two removals, save / load -------------------------------------------------------------------------------


ROUND_TRIPS = ["llama", "qwen2", "gemma2", "gpt_neo", "gpt2", "opt", "bloom", "falcon", "phi3", "gptj"]


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_two_removals_keep_original_indices_and_round_trip(name: str, tmp_path: Path) -> None:
    model = build(name, layers=4)
    original = copy.deepcopy(model)
    first = remove_layers(model, [1])
    second = remove_layers(model, [0])  # position 0 now: original layer 0
    assert first.kept == (0, 2, 3) and (second.removed, second.kept) == ((0,), (2, 3))
    assert second.layers_before == 3 and layer_indices(model) == [{0}, {1}]
    with skip_layers(original, [0, 1]):
        expected = logits(original)
    assert close(logits(model), expected)

    path = save_pruned(model, None, tmp_path / "pruned")
    meta = json.loads((path / "pruning.json").read_text())
    assert meta["kept_layers"] == [2, 3] and meta["original_num_layers"] == 4
    assert json.loads((path / "config.json").read_text()).get("num_hidden_layers", 2) == 2
    loaded, _ = load_pruned(path)
    assert len(decoder_layers(loaded)) == loaded.config.num_hidden_layers == 2
    assert layer_indices(loaded) == [{0}, {1}]
    assert torch.allclose(logits(loaded), expected, atol=1e-6)
    assert decodes_incrementally(loaded)
    assert torch.equal(greedy(loaded), greedy(model))
    # a third removal on the loaded model still names original layers
    assert remove_layers(loaded, [1]).kept == (2,)
    assert loaded.config.colab_helpers_pruning["kept_layers"] == [2]


@pytest.mark.parametrize("name", ["llama", "gpt2", "bloom", "falcon_alibi", "phi3"])
def test_heads_then_layers_round_trip(name: str, tmp_path: Path) -> None:
    """BLOOM's and Falcon's ALiBi slices follow the heads of the layers that stay."""
    model = build(name, layers=3)
    original = copy.deepcopy(model)
    head_mask = original_heads_mask(3, {0: [1], 1: [0, 1], 2: [3]})
    remove_heads(model, head_mask)
    report = remove_layers(model, [1])
    assert report.kept == (0, 2)
    with gate_heads(original, head_mask), skip_layers(original, [1]):
        expected = logits(original)
    assert close(logits(model), expected)
    record = model.config.colab_helpers_pruning
    real = [[h for h in kept if h not in pad] for kept, pad in zip(record["kept_heads"], record["padding_heads"])]
    assert real == [[0, 2, 3], [0, 1, 2]]  # the heads of original layers 0 and 2 (grouped attention pads, others cut)
    assert "last_mask" not in record  # positions of a mask for the old layers mean nothing now
    assert decodes_incrementally(model)
    loaded, _ = load_pruned(save_pruned(model, None, tmp_path / "pruned"))
    assert head_layout(loaded) == head_layout(model)
    assert close(logits(loaded), expected)
    assert torch.equal(greedy(loaded), greedy(model))


@pytest.mark.parametrize("name", ["llama", "gpt2", "bloom", "falcon_alibi"])
def test_layers_then_heads_round_trip(name: str, tmp_path: Path) -> None:
    model = build(name, layers=3)
    original = copy.deepcopy(model)
    remove_layers(model, [0])
    remove_heads(model, mask_of(head_layout(model), {0: [1], 1: [0, 1]}))  # rows: the layers held now
    with gate_heads(original, original_heads_mask(3, {1: [1], 2: [0, 1]})), skip_layers(original, [0]):
        expected = logits(original)
    assert close(logits(model), expected)
    record = model.config.colab_helpers_pruning
    assert record["kept_layers"] == [1, 2] and len(record["kept_heads"]) == 2
    check_record(record)
    loaded, _ = load_pruned(save_pruned(model, None, tmp_path / "pruned"))
    assert head_layout(loaded) == head_layout(model) and loaded.config.num_hidden_layers == 2
    assert close(logits(loaded), expected)
    assert decodes_incrementally(loaded)


@pytest.mark.parametrize("name", ["llama", "opt", "phi3"])
@pytest.mark.parametrize("mlp_first", [True, False])
def test_mlp_and_layers_round_trip(name: str, mlp_first: bool, tmp_path: Path) -> None:
    model = build(name, layers=3)
    original = copy.deepcopy(model)
    n = ARCHS[name].channels
    masks = random_masks([n] * 3, shares=(0.25, 0.5, 0.75))
    if mlp_first:
        remove_mlp_channels(model, masks)
        remove_layers(model, [1])
    else:
        remove_layers(model, [1])
        remove_mlp_channels(model, [masks[0], masks[2]])
    with gate_mlp(original, masks), skip_layers(original, [1]):
        expected = logits(original)
    assert close(logits(model), expected)
    record = model.config.colab_helpers_pruning
    sizes = [n - n // 4, n - 3 * n // 4]
    assert mlp_sizes(model) == record["mlp_sizes"] == sizes and record["original_mlp_sizes"] == [n, n]
    loaded, _ = load_pruned(save_pruned(model, None, tmp_path / "pruned"))
    assert mlp_sizes(loaded) == sizes and close(logits(loaded), expected)


def test_a_v1_pruning_json_still_loads_and_prunes_further(tmp_path: Path) -> None:
    """Files saved before MLP and layer pruning existed hold neither kept_layers nor mlp_sizes."""
    model = build("llama", layers=3)
    remove_heads(model, mask_of(head_layout(model), {0: [1], 1: [0, 1]}))
    expected = logits(model)
    path = save_pruned(model, None, tmp_path / "pruned")
    meta = json.loads((path / "pruning.json").read_text())
    for key in ("kept_layers", "original_num_layers", "mlp_sizes", "original_mlp_sizes"):
        meta.pop(key)
    meta["format_version"] = 1
    (path / "pruning.json").write_text(json.dumps(meta))
    loaded, _ = load_pruned(path)
    assert torch.allclose(logits(loaded), expected, atol=1e-6)
    assert remove_layers(loaded, [2]).kept == (0, 1)
    record = loaded.config.colab_helpers_pruning
    assert record["kept_layers"] == [0, 1] and record["original_num_layers"] == 3 and record["format_version"] == 2
    assert record["mlp_sizes"] == [64, 64]


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"kept_layers": [2, 0]}, r"kept_layers must be 2 increasing layer indices in \[0, 3\), got \[2, 0\]"),
        ({"kept_layers": [0, 3]}, r"kept_layers must be 2 increasing layer indices in \[0, 3\), got \[0, 3\]"),
        ({"kept_layers": [0]}, r"kept_layers must be 2 increasing"),
        ({"original_num_layers": 1}, r"original_num_layers must be an integer >= the 2 layers recorded, got 1"),
        ({"original_num_layers": "3"}, r"original_num_layers must be an integer"),
    ],
)
def test_load_refuses_damaged_kept_layers_naming_the_file(tmp_path: Path, edit: dict[str, Any], match: str) -> None:
    model = build("llama", layers=3)
    remove_layers(model, [1])
    path = save_pruned(model, None, tmp_path / "pruned")
    meta = json.loads((path / "pruning.json").read_text())
    (path / "pruning.json").write_text(json.dumps({**meta, **edit}))
    with pytest.raises(ValueError, match=match) as caught:
        load_pruned(path)
    assert f"{str(path / 'pruning.json')!r} is damaged" in str(caught.value)


# --- the record ----------------------------------------------------------------------------------------------


def _v2_record() -> dict[str, Any]:
    model = build("llama", layers=3)
    remove_mlp_channels(model, random_masks([64] * 3))
    remove_layers(model, [1])
    return copy.deepcopy(model.config.colab_helpers_pruning)


def test_check_record_accepts_v1_and_v2_records() -> None:
    record = _v2_record()
    check_record(record)
    assert record["kept_layers"] == [0, 2] and record["mlp_sizes"] == [48, 48]
    v1 = {k: v for k, v in record.items() if k not in ("kept_layers", "original_num_layers", "mlp_sizes",
                                                      "original_mlp_sizes")}  # fmt: skip
    check_record({**v1, "format_version": 1})
    check_record({k: v for k, v in v1.items() if k != "format_version"})


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"kept_layers": [2, 0]}, r"kept_layers must be 2 increasing layer indices in \[0, 3\)"),
        ({"kept_layers": [0, 0]}, r"kept_layers must be 2 increasing"),
        ({"kept_layers": [0, 1, 2]}, r"kept_layers must be 2 increasing"),
        ({"kept_layers": [-1, 0]}, r"kept_layers must be 2 increasing"),
        ({"kept_layers": [0, "2"]}, r"kept_layers must be a list of integers"),
        ({"kept_layers": None}, r"kept_layers must be a list of integers, got None"),
        ({"original_num_layers": None}, r"original_num_layers must be an integer >= the 2 layers recorded, got None"),
        ({"original_num_layers": True}, r"original_num_layers must be an integer"),
        ({"mlp_sizes": [48, 65]}, r"mlp_sizes\[1\] must be in \[1, original_mlp_sizes\[1\] = 64\], got 65"),
        ({"mlp_sizes": [48]}, r"mlp_sizes and original_mlp_sizes need one entry per layer \(2\)"),
        ({"original_mlp_sizes": None}, r"original_mlp_sizes must be a list of integers"),
    ],
)
def test_check_record_refuses_inconsistent_v2_records(edit: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_record({**_v2_record(), **edit})


def test_check_record_refuses_half_of_a_pair() -> None:
    record = _v2_record()
    with pytest.raises(ValueError, match="original_num_layers must be an integer"):
        check_record({k: v for k, v in record.items() if k != "original_num_layers"})
    with pytest.raises(ValueError, match="kept_layers must be a list of integers, got None"):
        check_record({k: v for k, v in record.items() if k != "kept_layers"})
    with pytest.raises(ValueError, match="mlp_sizes must be a list of integers, got None"):
        check_record({k: v for k, v in record.items() if k != "mlp_sizes"})


# --- bad input: refused before any change --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layers", "match"),
    [
        ([3], r"layer indices \[3\] are out of range: the model holds 3 decoder layers \(0-2\)"),
        ([0, -1], r"layer indices \[-1\] are out of range"),
        ([1, 1], r"layer indices \[1, 1\] name a layer twice"),
        ([0, 1, 2], r"removing all 3 decoder layers leaves no model; keep at least one"),
        ([1.5], r"layers must be an iterable of layer indices \(integers\), got \[1.5\]"),
        ([1.0], r"layers must be an iterable of layer indices"),
        (["1"], r"layers must be an iterable of layer indices"),
        ([True], r"layers must be an iterable of layer indices"),
        ([None], r"layers must be an iterable of layer indices"),
        (1, r"layers must be an iterable of layer indices \(integers\), got 1"),
        (torch.tensor([0.0]), r"layers must be an iterable of layer indices"),
    ],
)
def test_bad_layer_indices_are_refused_and_change_nothing(layers: Any, match: str) -> None:
    model = build("llama", layers=3)
    before = state_copy(model)
    with pytest.raises(ValueError, match=match):
        remove_layers(model, layers)
    if "removing all" not in match:
        with pytest.raises(ValueError, match=match):
            skip_layers(model, layers)
    assert unchanged(model, before, 3) and not hasattr(model.config, "colab_helpers_pruning")
    assert not any(layer._forward_hooks for layer in decoder_layers(model))


def test_integer_types_of_numpy_and_torch_are_indices() -> None:
    np = pytest.importorskip("numpy")
    model = build("llama", layers=4)
    assert remove_layers(model, [np.int64(3)]).kept == (0, 1, 2)
    assert remove_layers(model, torch.tensor([0])).kept == (1, 2)
    assert remove_layers(model, (i for i in [1])).kept == (1,)


def test_gpt2_scaling_by_layer_index_is_refused_naming_the_setting() -> None:
    config = transformers.GPT2Config(**{**ARCHS["gpt2"].kwargs, "n_layer": 3, "scale_attn_by_inverse_layer_idx": True})
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    before = state_copy(model)
    with pytest.raises(NotImplementedError, match=r"scale_attn_by_inverse_layer_idx=True.*prune heads and MLP"):
        remove_layers(model, [1])
    assert unchanged(model, before, 3) and not hasattr(model.config, "colab_helpers_pruning")
    with skip_layers(model, [1]):  # skipping renumbers nothing: still fine
        assert logits(model).shape == (2, 10, VOCAB)


def test_live_gates_are_refused() -> None:
    model = build("llama", layers=3)
    before = state_copy(model)
    with gate_heads(model, mask_of(head_layout(model), {0: [1]})):
        with pytest.raises(ValueError, match=r"live gates \(gate_heads / gate_mlp\); remove them before remove_layers"):
            remove_layers(model, [1])
    with gate_mlp(model, random_masks([64] * 3)):
        with pytest.raises(ValueError, match="live gates"):
            remove_layers(model, [1])
    assert unchanged(model, before, 3) and not hasattr(model.config, "colab_helpers_pruning")
    assert remove_layers(model, [1]).kept == (0, 2)  # once the gates are gone


def test_adapters_are_refused() -> None:
    peft = pytest.importorskip("peft")
    model = build("llama", layers=3)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj", "down_proj"]))
    before = state_copy(wrapped)
    with pytest.raises(ValueError, match=r"carries a peft adapter; merge it first \(model = model.merge_and_unload"):
        remove_layers(wrapped, [1])
    assert state_copy(wrapped).keys() == before.keys() and len(decoder_layers(wrapped)) == 3
