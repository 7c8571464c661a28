"""The in-place KV cache: the same keys and values as concatenation, one allocation per GROW_COLUMNS steps."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers.cache_utils import DynamicCache, DynamicLayer  # noqa: E402

from colab_helpers.deploy.growing_cache import GROW_COLUMNS, GrowingLayer, grow_in_place  # noqa: E402


def _states(rows: int, heads: int, columns: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(rows, heads, columns, 4, generator=generator) for _ in range(2))  # type: ignore[return-value]


def test_appending_in_place_equals_concatenating() -> None:
    plain, growing = DynamicLayer(), DynamicLayer()
    grow_in_place(type("Cache", (), {"layers": [growing]})())
    assert type(growing) is GrowingLayer
    rooms = set()
    for step in range(GROW_COLUMNS + 5):
        keys, values = _states(2, 3, 7 if step == 0 else 1, seed=step)  # a prompt, then one token at a time
        expected = plain.update(keys, values)
        got = growing.update(keys, values)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        rooms.add(growing._room[0].data_ptr() if growing._room is not None else None)
    assert growing.get_seq_length() == plain.get_seq_length() == 7 + GROW_COLUMNS + 4
    assert len(rooms - {None}) == 2  # room made once, then once more after GROW_COLUMNS appended columns


def test_keys_replaced_from_outside_get_fresh_room() -> None:
    layer = GrowingLayer()
    layer.update(*_states(3, 2, 5, seed=0))
    layer.update(*_states(3, 2, 1, seed=1))
    kept_keys, kept_values = layer.keys[[0, 2]], layer.values[[0, 2]]  # a request left the batch
    layer.keys, layer.values = kept_keys, kept_values
    new_keys, new_values = _states(2, 2, 1, seed=2)
    keys, values = layer.update(new_keys, new_values)
    assert torch.equal(keys, torch.cat([kept_keys, new_keys], dim=2))
    assert torch.equal(values, torch.cat([kept_values, new_values], dim=2))


def test_only_plain_dynamic_layers_are_turned() -> None:
    cache = DynamicCache()
    cache.layers.append(DynamicLayer())
    assert grow_in_place(cache) is cache and all(type(layer) is GrowingLayer for layer in cache.layers)
