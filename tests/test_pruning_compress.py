"""compress: pruning to a parameter target across heads, MLP channels and layers, on tiny random models."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from colab_helpers import compress as top_level_compress  # noqa: E402
from colab_helpers.pruning import AXES, CompressReport, compress, forward_flops, head_layout, load_pruned, save_pruned  # noqa: E402
from colab_helpers.pruning.batches import mean_loss  # noqa: E402
from colab_helpers.pruning.mlp import mlp_sizes  # noqa: E402

VOCAB = 128
COMMON = {"vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 0}
GQA = {"num_hidden_layers": 4, "hidden_size": 48, "num_attention_heads": 6, "num_key_value_heads": 2,
       "intermediate_size": 128, "max_position_embeddings": 64, **COMMON}  # fmt: skip
CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**GQA),
    "gpt2": lambda: transformers.GPT2Config(n_layer=4, n_embd=48, n_head=4, n_positions=64, **COMMON),
    "opt": lambda: transformers.OPTConfig(num_hidden_layers=4, hidden_size=48, num_attention_heads=4, ffn_dim=128,
                                          word_embed_proj_dim=48, max_position_embeddings=64, pad_token_id=1,
                                          **COMMON),  # fmt: skip
    "phi3": lambda: transformers.Phi3Config(**GQA, pad_token_id=1),
}


def build(name: str, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(CONFIGS[name]()).eval()


def batches(count: int = 2, seed: int = 1) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(2, VOCAB, (4, 16), generator=generator)
        mask = torch.ones_like(ids)
        mask[1, :3] = 0  # one left-padded row
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_compress_meets_the_target_and_reports_what_it_removed(name: str, tmp_path: Path) -> None:
    model = build(name)
    before = params(model)
    report = compress(model, batches(), 0.7, progress=False)
    assert isinstance(report, CompressReport)
    assert report.params_before == before and report.params_after == params(model)
    assert report.params_after <= 0.7 * before  # the target holds (rounding removes a little more, not less)
    assert report.params_after >= 0.6 * before
    assert sum(report.removed_params.values()) == before - report.params_after
    assert set(report.removed_params) == set(AXES)
    assert report.predicted_speedup > 1
    assert report.flops_after == forward_flops(model, 1, report.seq_len)
    assert len(report.heads_before) == len(report.heads_after) == 4 == len(report.mlp_after)
    assert [report.heads_after[i] for i in report.kept_layers] == [s for s in head_layout(model).query_heads]
    assert [report.mlp_after[i] for i in report.kept_layers] == mlp_sizes(model)
    assert all(report.heads_after[i] == 0 and report.mlp_after[i] == 0 for i in report.removed_layers)
    assert len(report.candidates) >= 2 and all(c["loss"] == c["loss"] for c in report.candidates)  # finite
    assert sum(c["chosen"] for c in report.candidates) == 1
    # the output projections of the layers that lost units were refit: less output error than plain removal
    assert report.reconstructed and report.strategies == {"heads": "taylor", "mlp": "taylor", "layers": "loss"}
    assert report.output_error and "refit by least squares" in report.summary()
    for axis, error in report.output_error.items():
        assert report.removed_params[axis] > 0 and 0 <= error["reconstructed"] < error["removed"]
    rows = report.per_layer()
    assert [r["removed"] for r in rows] == [i in report.removed_layers for i in range(4)]
    assert report.to_dict()["kept_share"] == pytest.approx(report.params_after / before)
    assert "kept" in report.summary()
    # the compressed model saves and reloads exactly
    with torch.no_grad():
        expected = model(**batches(1, seed=5)[0]).logits
    save_pruned(model, None, tmp_path / "model")
    reloaded, _ = load_pruned(tmp_path / "model")
    with torch.no_grad():
        got = reloaded(**batches(1, seed=5)[0]).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)
    assert params(reloaded) == params(model)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_without_reconstruction_the_chosen_plan_removes_what_was_measured(name: str) -> None:
    """Gating == removal: the chosen split's measured loss is the loss after plain removal."""
    model = build(name)
    report = compress(model, batches(), 0.7, reconstruct=False, progress=False)
    chosen = next(c for c in report.candidates if c["chosen"])
    every = max(c["tokens"] for c in report.candidates)  # the finalists', measured on all the evaluation tokens
    assert chosen["tokens"] == every and chosen["loss"] == min(c["loss"] for c in report.candidates if c["tokens"] == every)
    assert report.loss_after == pytest.approx(chosen["loss"], rel=1e-4)
    assert not report.reconstructed and not report.output_error and "refit" not in report.summary()


def test_splits_are_screened_then_finalists_measured_on_every_batch() -> None:
    model = build("llama")
    evaluation = batches(3)
    report = compress(model, batches(2), 0.7, eval_batches=evaluation, progress=False)
    every = sum(int(b["attention_mask"][:, 1:].bool().logical_and(b["attention_mask"][:, :-1].bool()).sum())
                for b in evaluation)  # fmt: skip
    tokens = sorted({c["tokens"] for c in report.candidates})
    assert len(tokens) == 2 and tokens[1] == every  # the screen (the first row of the first batch), then everything
    finalists = [c for c in report.candidates if c["tokens"] == every]
    others = [c for c in report.candidates if c["tokens"] != every]
    assert len(finalists) == 3 and others  # the three lowest on the screen
    assert max(c["screen_loss"] for c in finalists) <= min(c["screen_loss"] for c in others)
    assert all(c["loss"] == c["screen_loss"] for c in others)
    chosen = next(c for c in report.candidates if c["chosen"])
    assert chosen in finalists and chosen["loss"] == min(c["loss"] for c in finalists)


def test_reconstruction_lowers_the_calibration_loss_of_a_trained_model() -> None:
    """On a model that learned something (a few steps on a repeating pattern) the refit recovers loss."""
    model = build("llama")
    pattern = torch.arange(2, 18).repeat(4)[None].repeat(4, 1)
    data = [{"input_ids": torch.roll(pattern, shifts=s, dims=1)} for s in range(4)]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(30):
        for batch in data:
            optimizer.zero_grad()
            model(**batch, labels=batch["input_ids"]).loss.backward()
            optimizer.step()
    model.eval()
    plain, refit = copy.deepcopy(model), copy.deepcopy(model)
    without = compress(plain, data, 0.8, axes=("heads", "mlp"), reconstruct=False, progress=False)
    with_refit = compress(refit, data, 0.8, axes=("heads", "mlp"), progress=False)
    assert with_refit.reconstructed and with_refit.loss_after < without.loss_after


def test_compress_on_one_axis_uses_only_that_axis() -> None:
    for axis in AXES:
        model = build("llama")
        report = compress(model, batches(), 0.9 if axis == "heads" else 0.8, axes=(axis,), progress=False)
        assert report.axes == (axis,)
        assert set(report.removed_params) == {axis} and report.removed_params[axis] > 0
        assert report.params_after <= report.target_params * report.params_before
        if axis != "layers":
            assert not report.removed_layers
        if axis != "mlp":
            assert report.mlp_after == report.mlp_before or axis == "layers"


def test_compress_keeps_heads_grouped_evenly_and_one_per_group() -> None:
    model = build("llama")
    compress(model, batches(), 0.9, axes=("heads",), progress=False)  # 0.89 is all it can give
    layout = head_layout(model)
    assert sum(layout.query_heads) < 4 * 6
    for q, kv in zip(layout.query_heads, layout.kv_heads):
        assert kv == 2 and q % kv == 0 and q >= kv  # no padding heads needed, every group kept


def test_target_one_changes_nothing() -> None:
    model = build("gpt2")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = compress(model, batches(), 1.0, progress=False)
    assert report.params_after == report.params_before and not report.candidates
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_rounds_and_separate_eval_batches() -> None:
    model = build("llama")
    report = compress(model, batches(2), 0.7, eval_batches=batches(1, seed=9), rounds=2, progress=False)
    assert report.params_after <= 0.7 * report.params_before
    assert {c["round"] for c in report.candidates} == {1, 2}
    assert report.loss_after == pytest.approx(mean_loss(model, batches(1, seed=9)), rel=1e-6)


@pytest.mark.parametrize("strategy", ["activation", "random"])
def test_other_mlp_strategies(strategy: str) -> None:
    model = build("gpt2")
    report = compress(model, batches(), 0.8, axes=("mlp",), mlp_strategy=strategy, progress=False)
    assert report.params_after <= 0.8 * report.params_before


def test_block_influence_layer_strategy() -> None:
    model = build("llama")
    report = compress(model, batches(), 0.7, axes=("layers",), layer_strategy="block_influence", progress=False)
    assert report.removed_layers and len(report.kept_layers) >= 1


def test_top_level_name_is_the_contract() -> None:
    import inspect

    assert top_level_compress is compress
    signature = inspect.signature(compress)
    assert list(signature.parameters)[:4] == ["model", "batches", "target_params", "axes"]
    assert signature.parameters["target_params"].default == 0.75
    assert signature.parameters["axes"].default == ("heads", "mlp", "layers")


@pytest.mark.parametrize("target", [0, -0.1, 1.5, float("nan"), "0.7", True, None])
def test_bad_targets_are_refused_before_any_work(target: Any) -> None:
    model = build("llama")
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="target_params must be the share of parameters to keep, in \\(0, 1\\]"):
        compress(model, batches(), target, progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("axes", [(), ("heads", "width"), "depth", [1]])
def test_bad_axes_are_refused(axes: Any) -> None:
    with pytest.raises(ValueError, match="axes must be"):
        compress(build("llama"), batches(), 0.7, axes=axes, progress=False)


def test_an_axis_the_architecture_cannot_prune_is_named_with_the_reason() -> None:
    config = transformers.GPT2Config(n_layer=2, n_embd=48, n_head=4, n_positions=64,
                                     scale_attn_by_inverse_layer_idx=True, **COMMON)  # fmt: skip
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises(ValueError, match="axis 'layers' cannot be pruned on this model: .*scale_attn_by_inverse"):
        compress(model, batches(), 0.7, progress=False)
    report = compress(model, batches(), 0.8, axes=("heads", "mlp"), progress=False)  # the other axes still work
    assert report.params_after <= 0.8 * report.params_before


def test_a_single_layer_model_cannot_lose_its_layer() -> None:
    model = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**{**GQA, "num_hidden_layers": 1}))
    with pytest.raises(ValueError, match="axis 'layers' cannot be pruned: the model holds one decoder layer"):
        compress(model, batches(), 0.7, axes=("layers",), progress=False)


def test_an_unreachable_target_is_refused_with_the_reachable_one() -> None:
    model = build("llama")
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"axes \('heads',\) can remove at most .* one head per key/value group.*"
                                         r"pass target_params >= 0\.\d+"):
        compress(model, batches(), 0.8, axes=("heads",), progress=False)
    with pytest.raises(ValueError, match="one layer"):
        compress(model, batches(), 0.01, progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_the_smallest_reachable_target_keeps_one_of_everything() -> None:
    model = build("llama")
    with pytest.raises(ValueError) as error:
        compress(model, batches(), 0.01, progress=False)
    reachable = float(str(error.value).rsplit(">= ", 1)[1].split()[0])
    compress(model, batches(), reachable, progress=False)
    assert len(head_layout(model).query_heads) >= 1
    layout = head_layout(model)
    assert all(q >= kv for q, kv in zip(layout.query_heads, layout.kv_heads))
    assert all(size >= 1 for size in mlp_sizes(model))
    with torch.no_grad():
        assert torch.isfinite(model(**batches(1)[0]).logits).all()


def test_the_random_baseline_is_seeded() -> None:
    def random_compress(seed: int) -> tuple[Any, Any]:
        model = build("llama")
        report = compress(model, batches(), 0.7, head_strategy="random", mlp_strategy="random",
                          layer_strategy="random", seed=seed, progress=False)  # fmt: skip
        return model, report

    first, report = random_compress(0)
    again, _ = random_compress(0)
    other, _ = random_compress(1)
    assert report.strategies == {"heads": "random", "mlp": "random", "layers": "random"}
    assert report.params_after <= 0.7 * report.params_before
    state, same, different = first.state_dict(), again.state_dict(), other.state_dict()
    assert state.keys() == same.keys() and all(torch.equal(v, same[k]) for k, v in state.items())
    assert state.keys() != different.keys() or any(
        v.shape != different[k].shape or not torch.equal(v, different[k]) for k, v in state.items()
    )


def test_random_heads_are_chosen_across_layers() -> None:
    model = build("llama")
    compress(model, batches(), 0.9, axes=("heads",), head_strategy="random", reconstruct=False, progress=False)
    layout = head_layout(model)
    assert sum(layout.query_heads) < 4 * 6 and all(q % kv == 0 for q, kv in zip(layout.query_heads, layout.kv_heads))


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("head_strategy", "gradient", r"head_strategy must be one of \('taylor', 'random'\), got 'gradient'"),
     ("reconstruct", "yes", "reconstruct must be True or False, got 'yes'"),
     ("seed", -1, "seed must be a non-negative integer"), ("seed", 1.5, "seed must be a non-negative integer"),
     ("mlp_strategy", "magnitude", "mlp_strategy must be one of"), ("layer_strategy", "ppl", "layer_strategy must be"),
     ("grid_step", 0.3, "grid_step must divide 1"), ("grid_step", 0, "grid_step must be in"),
     ("rounds", 0, "rounds must be a positive integer"), ("round_to", 2.5, "round_to must be a positive integer")],
)
def test_bad_options_are_refused(option: str, value: Any, message: str) -> None:
    model = build("llama")
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=message):
        compress(model, batches(), 0.7, progress=False, **{option: value})
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_bad_batches_are_refused() -> None:
    with pytest.raises(ValueError, match="batches is empty"):
        compress(build("llama"), [], 0.7, progress=False)
    with pytest.raises(ValueError, match="must be a dict with input_ids"):
        compress(build("llama"), [torch.zeros(2, 4, dtype=torch.long)], 0.7, progress=False)


@pytest.mark.parametrize(
    ("bad", "message"),
    [(torch.zeros(4, 0, dtype=torch.long), r"is empty \(shape \(4, 0\)\); pass the ids of some text"),
     (torch.rand(4, 16) * 10, "must hold integer token ids, got dtype torch.float32; convert with"),
     (torch.full((4, 16), VOCAB), rf"holds id {VOCAB}, outside the model's vocabulary of {VOCAB} ids.*load_model")],
)
@pytest.mark.parametrize("where", ["batches", "eval_batches"])
def test_bad_token_ids_are_refused_before_any_forward(bad: Any, message: str, where: str) -> None:
    """Zero-length sequences, float ids and ids past the vocabulary: named with the fix, the model untouched."""
    model = build("llama")
    state = copy.deepcopy(model.state_dict())
    forwards = []
    model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    given = {"batches": batches(), "eval_batches": batches(1)}
    given[where] = [*given[where], {"input_ids": bad}]
    with pytest.raises(ValueError, match=rf"^{where}\[\d\]\['input_ids'\] " + message):
        compress(model, given["batches"], 0.7, eval_batches=given["eval_batches"], progress=False)
    assert not forwards and all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_a_model_with_an_adapter_is_refused() -> None:
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(build("llama"), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="merge"):
        compress(model, batches(), 0.7, progress=False)
