"""Projection surgery (colab_helpers.pruning.surgery): Linear and GPT-2 Conv1D sliced and zeroed alike."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers.pytorch_utils import Conv1D  # noqa: E402

from colab_helpers.pruning.surgery import (  # noqa: E402
    in_features,
    is_conv1d,
    out_features,
    replace_int_attributes,
    slice_in,
    slice_out,
    weight_out_in,
    zero_in_features,
    zero_out_features,
)


def pair() -> tuple[torch.nn.Linear, Conv1D]:
    """A Linear 6 -> 4 and a Conv1D with the same weights (stored transposed)."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 4)
    conv = Conv1D(4, 6)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.t())
        conv.bias.copy_(linear.bias)
    return linear, conv


def test_shapes_and_weights_read_the_same_for_linear_and_conv1d() -> None:
    linear, conv = pair()
    assert is_conv1d(conv) and not is_conv1d(linear)
    for module in (linear, conv):
        assert (in_features(module), out_features(module)) == (6, 4)
        assert torch.equal(weight_out_in(module), linear.weight)


def test_slicing_keeps_the_chosen_features_of_either_layout() -> None:
    x = torch.randn(3, 6)
    for module in pair():
        full = module(x)
        slice_out(module, torch.tensor([0, 2]))
        assert out_features(module) == 2 and torch.allclose(module(x), full[:, [0, 2]])
        slice_in(module, torch.tensor([1, 3, 5]))
        assert in_features(module) == 3 and module(x[:, [1, 3, 5]]).shape == (3, 2)


def test_zeroing_and_count_attributes() -> None:
    for module in pair():
        with torch.no_grad():
            zero_out_features(module, 1, 3)
            zero_in_features(module, 0, 2)
        weight = weight_out_in(module)
        assert not weight[1:3].any() and not weight[:, 0:2].any() and not module.bias[1:3].any()
    module = torch.nn.Module()
    module.num_heads, module.head_dim = 4, 4
    replace_int_attributes(module, ("num_heads", "head_dim", "missing"), 4, 2)
    replace_int_attributes(module, ("head_dim",), 8, 1)  # holds another value: left alone
    assert (module.num_heads, module.head_dim) == (2, 2)
