"""Forward FLOPs of a causal LM read from its actual shapes: the prediction every speed-up is measured against.

Kept apart from the benchmarks so that :func:`~colab_helpers.pruning.compress.compress` reports the same
prediction the benchmarks check (``benchmarks/pruning.py``, ``benchmarks/compression.py``).
"""

from __future__ import annotations

from typing import Any

from .layout import head_layout
from .surgery import in_features, is_conv1d, out_features


def forward_flops(model: Any, batch: int, seq: int, *, causal: bool = False) -> float:
    """Return the matmul FLOPs (2 per multiply-add) of one forward of a causal LM at ``batch x seq`` tokens.

    Read from the model's actual shapes, so a pruned model is counted as it now runs: every linear layer
    (``nn.Linear`` and GPT-2's ``Conv1D``: q/k/v and output projections, MLP, LM head) once per token at its
    weight's size, and per layer the attention scores and the weighted sum of values for every query head the
    layer holds (full ``seq x seq`` per head, as eager attention computes them; ``causal=True`` counts only the
    lower triangle, as a causal kernel may). Zeroed *padding* heads (kept by ``remove_heads`` to even
    grouped-query groups) compute nothing useful but keep their rows and columns, so they are counted like any
    other head. Not counted: embeddings, norms, softmax, activations, rotary embeddings, biases, residual adds
    (linear in tokens and small next to the matmuls in FLOPs, not in memory traffic).
    """
    from torch import nn

    layout = head_layout(model)
    tokens = batch * seq
    pairs = seq * (seq + 1) / 2 if causal else seq * seq  # query-key pairs per head
    flops = 0.0
    for module in model.modules():
        if isinstance(module, nn.Linear) or is_conv1d(module, unwrap=False):
            flops += 2.0 * tokens * in_features(module) * out_features(module)
    for n_q in layout.query_heads:  # padding heads included: they still sit in the weights
        flops += 2.0 * 2 * batch * n_q * pairs * layout.head_dim  # scores (q k^T) and values (p v)
    return flops
