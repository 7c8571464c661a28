"""Least-squares refit of the output projections after pruning (pruning/reconstruct.py), on tiny random models of
every architecture: the refit lowers a pruned layer's output error, and the error it reports is the one measured."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from colab_helpers.pruning import remove_heads, remove_mlp_channels  # noqa: E402
from colab_helpers.pruning.layout import attention_sites  # noqa: E402
from colab_helpers.pruning.mlp import mlp_sites  # noqa: E402
from colab_helpers.pruning.reconstruct import collect_grams, plan_refits, refit_columns, write_refits  # noqa: E402
from colab_helpers.pruning.removal import check_removable  # noqa: E402
from test_pruning import VOCAB  # noqa: E402
from test_pruning_mlp import ARCHS, build  # noqa: E402


def calibration(count: int = 3, seed: int = 1) -> list[dict[str, Any]]:
    """Batches of 4 x 24 tokens, one row left-padded (padding must count nowhere)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(2, VOCAB, (4, 24), generator=generator)
        mask = torch.ones_like(ids)
        mask[1, :5] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def projection_outputs(model: Any, proj: Any, batches: list[dict[str, Any]]) -> Any:
    """The outputs of ``proj`` at the real tokens of ``batches``, ``[tokens, width]``."""
    seen = []
    handle = proj.register_forward_hook(lambda module, args, output: seen.append(output.detach().clone()))
    try:
        with torch.no_grad():
            for batch in batches:
                model(**batch, use_cache=False)
    finally:
        handle.remove()
    masks = [b["attention_mask"].reshape(-1).bool() for b in batches]
    return torch.cat([out.reshape(-1, out.shape[-1])[mask] for out, mask in zip(seen, masks)])


def prune_layer0(name: str, axis: str, pruned: list[int], refit: bool) -> tuple[Any, Any, Any]:
    """Prune ``pruned`` heads or MLP channels of layer 0 of a fresh ``name`` model (refit or not); return the
    layer-0 output projection's outputs before and after, and the output error the refit planned."""
    model = build(name)
    sites, mlp = attention_sites(model), mlp_sites(model)
    proj = sites[0].out_proj if axis == "heads" else mlp[0].output
    batches = calibration()
    before = projection_outputs(model, proj, batches)
    grams = collect_grams(model, batches, sites if axis == "heads" else None, mlp if axis == "mlp" else None)
    head_mask = torch.zeros(len(sites), max(s.n_q for s in sites), dtype=torch.bool)
    mlp_masks = [torch.zeros(s.size, dtype=torch.bool) for s in mlp]
    if axis == "heads":
        head_mask[0, pruned] = True
    else:
        mlp_masks[0][pruned] = True
    refits = plan_refits(grams, sites, mlp, head_mask, mlp_masks, ())
    assert len(refits[axis]) == 1 and not refits["mlp" if axis == "heads" else "heads"]
    if axis == "heads":
        remove_heads(model, head_mask)
    else:
        remove_mlp_channels(model, mlp_masks)
    errors = write_refits(refits) if refit else None
    after = projection_outputs(model, sites[0].out_proj if axis == "heads" else mlp[0].output, batches)
    return before, after, (errors or {}).get(axis, refits[axis][0].error)


def squared_error(before: Any, after: Any) -> float:
    return float(((before.double() - after.double()) ** 2).sum(dim=-1).mean())


def heads_removable(name: str) -> bool:
    model = build(name)
    try:
        for site in attention_sites(model):
            check_removable(model, site)
    except NotImplementedError:
        return False
    return True


@pytest.mark.parametrize("axis", ["mlp", "heads"])
@pytest.mark.parametrize("name", list(ARCHS))
def test_refit_lowers_the_output_error_of_a_pruned_layer(name: str, axis: str) -> None:
    if axis == "heads" and not heads_removable(name):
        pytest.skip(f"{name}: heads cannot be removed physically")
    width = ARCHS[name].channels
    pruned = [0, 2] if axis == "heads" else list(range(0, width, 2))  # one head per key/value group; half the MLP
    before, plain, error = prune_layer0(name, axis, pruned, refit=False)
    _, refit, refit_error = prune_layer0(name, axis, pruned, refit=True)
    removed, reconstructed = squared_error(before, plain), squared_error(before, refit)
    assert reconstructed < 0.9 * removed  # the refit, measured on the calibration tokens
    # the errors the refit reports, computed from the moments alone, are the measured ones
    assert error.removed == pytest.approx(removed, rel=1e-3)
    assert refit_error.reconstructed == pytest.approx(reconstructed, rel=1e-3, abs=1e-6 * removed)
    assert refit_error.energy == pytest.approx(squared_error(before, torch.zeros_like(before)), rel=1e-3)


def test_uneven_groups_keep_their_padding_heads_zero() -> None:
    """Pruning one head of one key/value group keeps a zeroed padding head; the refit leaves its columns zero."""
    before, refit, error = prune_layer0("llama", "heads", [0], refit=True)
    assert squared_error(before, refit) == pytest.approx(error.reconstructed, rel=1e-3)
    model = build("llama")
    # the same pruning through compress's path: the padding head's output columns are zero after the refit
    sites, mlp = attention_sites(model), mlp_sites(model)
    grams = collect_grams(model, calibration(), sites, None)
    mask = torch.zeros(len(sites), 4, dtype=torch.bool)
    mask[0, 0] = True
    refits = plan_refits(grams, sites, mlp, mask, [torch.zeros(s.size, dtype=torch.bool) for s in mlp], ())
    remove_heads(model, mask)
    write_refits(refits)
    columns = model.model.layers[0].self_attn.o_proj.weight[:, :8]  # kept heads 0 (padding), 1, 2, 3
    assert bool((columns == 0).all())


def test_skipped_layers_get_no_refit() -> None:
    model = build("llama")
    sites, mlp = attention_sites(model), mlp_sites(model)
    grams = collect_grams(model, calibration(1), sites, mlp)
    masks = [torch.ones(s.size, dtype=torch.bool) for s in mlp]
    masks[0][:8] = False
    head_mask = torch.zeros(2, 4, dtype=torch.bool)
    head_mask[:, [0, 2]] = True
    refits = plan_refits(grams, sites, mlp, head_mask, masks, (1,))
    assert [len(refits["heads"]), len(refits["mlp"])] == [1, 1]


def test_a_refit_with_a_bias_fits_the_intercept() -> None:
    """y = W x + b with one input channel a copy of another plus a constant: dropping it loses nothing."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(500, 4, generator=generator, dtype=torch.float64)
    x[:, 3] = 2 * x[:, 0] + 1.5
    weight, bias = torch.randn(3, 4, generator=generator, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    gram, mean = x.T @ x / len(x), x.mean(dim=0)
    new_w, new_b, error = refit_columns(weight, bias, gram, mean, torch.tensor([0, 1, 2]), damping=1e-9)
    assert torch.allclose(x[:, :3] @ new_w.T + new_b, x @ weight.T + bias, atol=1e-5)
    assert error.reconstructed < 1e-8 < error.removed
