"""Attention-head pruning for causal LMs of many architectures: layout, importance, selection, gating, removal.

transformers 5 dropped ``head_mask`` and ``prune_heads``; this subpackage does both through one code path
driven by a small table of where attention lives (see :mod:`.layout`):

- :func:`head_layout` -- per-layer query / key-value head counts and head size;
- :func:`head_importance` -- ``[layers, max_heads]`` scores (random, magnitude, entropy, gradient);
- :func:`select_heads` -- the mask of heads to prune at a level (global or per layer);
- :func:`gate_heads` -- reversible gating by hooks (also learnable gates for gradient importance);
- :func:`remove_heads` -- physical removal by slicing weights, with a :class:`PruneReport`;
- :func:`save_pruned` / :func:`load_pruned` -- round trip of a pruned model (safetensors + ``pruning.json``).

torch and transformers are imported by the functions that use them, never at import time of this package.
"""

from __future__ import annotations

from .gating import HeadGates, gate_heads
from .importance import AUTO_NORMALIZATION, NORMALIZATIONS, STRATEGIES, head_importance, normalize_scores, select_heads
from .io import load_pruned, save_pruned
from .layout import AttentionSpec, HeadLayout, head_layout, supported_architectures
from .removal import PruneReport, remove_heads

__all__ = [
    "AUTO_NORMALIZATION",
    "AttentionSpec",
    "HeadGates",
    "HeadLayout",
    "PruneReport",
    "STRATEGIES",
    "gate_heads",
    "head_importance",
    "head_layout",
    "load_pruned",
    "NORMALIZATIONS",
    "normalize_scores",
    "remove_heads",
    "save_pruned",
    "select_heads",
    "supported_architectures",
]
