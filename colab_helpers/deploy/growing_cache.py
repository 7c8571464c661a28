"""A KV cache that appends in place: the engine's decoding steps stop copying the whole cache.

transformers' DynamicLayer concatenates at every ``update``, copying every layer's keys and values at every decoding
step. :class:`GrowingLayer` keeps ``GROW_COLUMNS`` spare columns and copies once per ``GROW_COLUMNS`` steps; its
``keys`` / ``values`` are the filled part (a view), so whatever reads them (masks, the engine's re-batching) sees
what it saw before. Whoever replaces ``keys`` (a request joined or left the batch) gets fresh room at the next update.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

GROW_COLUMNS = 64


class GrowingLayer(DynamicLayer):
    """A DynamicLayer that appends into spare room instead of concatenating."""

    _room: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        if not self.is_initialized or self.keys.numel() == 0:
            return super().update(key_states, value_states, *args, **kwargs)
        filled, adding = self.keys.shape[-2], key_states.shape[-2]
        if not self._has_room(filled + adding):
            self._room = tuple(t.new_empty(*t.shape[:2], filled + adding + GROW_COLUMNS, t.shape[-1])
                               for t in (self.keys, self.values))  # fmt: skip
            self._room[0][:, :, :filled] = self.keys
            self._room[1][:, :, :filled] = self.values
        keys, values = self._room
        keys[:, :, filled : filled + adding] = key_states
        values[:, :, filled : filled + adding] = value_states
        self.keys, self.values = keys[:, :, : filled + adding], values[:, :, : filled + adding]
        return self.keys, self.values

    def _has_room(self, columns: int) -> bool:
        """True when ``keys`` is still the start of this layer's room and the room holds ``columns``."""
        room = self._room
        return (room is not None and room[0].data_ptr() == self.keys.data_ptr()
                and room[0].shape[:2] == self.keys.shape[:2] and room[0].shape[-2] >= columns)  # fmt: skip


def grow_in_place(cache: Any) -> Any:
    """``cache`` (a DynamicCache) with its plain layers turned into :class:`GrowingLayer` (their class swapped, the
    tensors kept); returned for use in a call."""
    for layer in cache.layers:
        if type(layer) is DynamicLayer:
            layer.__class__ = GrowingLayer
    return cache
