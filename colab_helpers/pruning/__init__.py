"""Stage 2, pruning: attention heads, MLP channels and whole layers of causal LMs of many architectures, scored,
selected, gated, removed; :func:`compress` prunes to a parameter target across the three.

transformers 5 dropped ``head_mask`` and ``prune_heads``; this sub-package does both through one code path
driven by a small table of where attention lives. It works on any loaded ``nn.Module`` and imports no model
loading (:mod:`colab_helpers.models` imports it to read pruned checkpoints back).

- :mod:`.layout` -- where attention lives per architecture; :func:`head_layout` (per-layer head counts);
- :mod:`.surgery` -- slicing and reading single Linear / Conv1D projections, shared by every removal;
- :mod:`.batches` -- calibration batches checked and moved to the model, token losses, eval mode, progress bars;
- :mod:`.importance` -- :func:`head_importance`, ``[layers, max_heads]`` scores (random, magnitude, entropy, gradient),
  :func:`normalize_scores`;
- :mod:`.taylor` -- first-order Taylor scores of heads and MLP channels from one backward pass (gradient importance);
- :mod:`.selection` -- :func:`select_heads` / :func:`select_mlp_channels`, the masks to prune at a level;
- :mod:`.gating` -- :func:`gate_heads`, reversible gating by hooks (learnable gates for gradient importance);
- :mod:`.removal` -- :func:`remove_heads`, physical removal by slicing weights;
- :mod:`.alibi` -- the ALiBi biases of a layer's kept heads after removal (BLOOM, Falcon-RW);
- :mod:`.record` -- the pruning record (kept heads per layer), checked on load; the guard against stale masks;
- :mod:`.reports` -- what each removal reports: :class:`PruneReport`, :class:`MlpReport`, :class:`LayerReport`,
  :class:`CompressReport`, on one base;
- :mod:`.io` -- :func:`save_pruned` / :func:`load_pruned`, safetensors + ``pruning.json``;
- :mod:`.mlp` -- MLP channels: where they live, :func:`gate_mlp`, :func:`remove_mlp_channels` (per-layer sizes go
  into the record);
- :mod:`.mlp_importance` -- :func:`mlp_importance` (activation, Taylor, random);
- :mod:`.layers` -- whole layers: :func:`layer_importance` (block influence, loss, random), :func:`skip_layers`,
  :func:`remove_layers` (KV-cache indices, config and record follow);
- :mod:`.flops` -- :func:`forward_flops`, the speed-up prediction read from actual shapes;
- :mod:`.compress` -- :func:`compress`, to a parameter target across heads, MLP and layers;
- :mod:`.allocation` -- the units, their costs and the allocation search behind :func:`compress`;
- :mod:`.reconstruct` -- the least-squares refit of the output projections after pruning (``reconstruct=True``);
- :mod:`.study` -- strategies over seeds, perplexity against level (:class:`~.study.PruningStudyConfig`).

A new architecture: add its attention spec to :mod:`.layout`. A new strategy: a scoring function in
:mod:`.importance` and its name in ``STRATEGIES``. torch and transformers are imported by the functions that use
them, never at import time of this package.
"""

from __future__ import annotations

from .compress import AXES, compress
from .flops import forward_flops
from .gating import HeadGates, gate_heads
from .importance import NORMALIZATIONS, STRATEGIES, head_importance, normalize_scores
from .io import load_pruned, save_pruned
from .layers import LAYER_STRATEGIES, layer_importance, remove_layers, skip_layers
from .layout import AttentionSpec, HeadLayout, head_layout, supported_architectures
from .mlp import MlpGates, gate_mlp, remove_mlp_channels
from .mlp_importance import MLP_STRATEGIES, mlp_importance
from .removal import remove_heads
from .reports import CompressReport, LayerReport, MlpReport, PruneReport
from .selection import SCOPES, select_heads, select_mlp_channels
from .study import (
    PruningStudyConfig,
    importance_by_strategy,
    level_sweep,
    mean_scores,
    pruning_comparison,
    summarize_levels,
)

__all__ = [
    "PruningStudyConfig",
    "importance_by_strategy",
    "level_sweep",
    "mean_scores",
    "pruning_comparison",
    "summarize_levels",
    "AXES",
    "CompressReport",
    "LAYER_STRATEGIES",
    "LayerReport",
    "MLP_STRATEGIES",
    "MlpGates",
    "MlpReport",
    "compress",
    "forward_flops",
    "gate_mlp",
    "layer_importance",
    "mlp_importance",
    "remove_layers",
    "remove_mlp_channels",
    "select_mlp_channels",
    "skip_layers",
    "AttentionSpec",
    "HeadGates",
    "HeadLayout",
    "PruneReport",
    "SCOPES",
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
