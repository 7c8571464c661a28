# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Prune, then recover: the full pipeline
#
# **What you'll get:** a model made smaller by removing its least important attention heads, then brought
# back with LoRA fine-tuning, with every stage measured the same way: perplexity, a generation, parameter
# count, latency per token and time spent. A comparison table, the pruned heads on their importance map,
# training curves, the pruned and fine-tuned model saved, and one zip to download.
#
# This is the successor of the original *PruningAndFineTuningColab* notebook. Offline it runs on the
# embedded model and corpus; `make demo` runs exactly this.

# %% [markdown]
# ## Install (Colab only)
# On Colab this clones the suite and installs it; Colab's torch is kept. Elsewhere it does nothing.

# %%
import os, shutil, subprocess, sys  # noqa: E401  (the package is not installed yet)

REPO_URL = "https://github.com/colab-helpers/colab-helpers"  # the suite's repository
if "COLAB_RELEASE_TAG" in os.environ and not os.path.isdir("/content/colab-helpers"):  # set on every Colab runtime
    extra = "[gpu]" if shutil.which("nvidia-smi") else ""
    subprocess.run(["git", "clone", "-q", "--depth", "1", REPO_URL, "/content/colab-helpers"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"/content/colab-helpers{extra}"], check=True)

# %% [markdown]
# ## Settings

# %% tags=["parameters"]
SMOKE: bool = False  # embedded tiny model, a few steps: seconds end to end
RESULTS_DIR: str = "results/05_prune_and_finetune"  # everything this notebook writes, and the bundle
MODEL: str = "auto"  # "auto": gpt2 with the hub, else embedded-gpt2; any catalog/hub name or local path
DATASET: str = "auto"  # "auto": wikitext-2 with the hub, else the embedded corpus
STRATEGY: str = "gradient"  # head importance: "random", "magnitude", "entropy" or "gradient"
PRUNING_LEVEL: float = 0.3  # fraction of attention heads to prune
FINE_TUNING_STEPS: int = 300  # LoRA steps to recover quality (a few minutes on a CPU for the embedded model)
LEARNING_RATE: float = 1e-3  # LoRA learning rate
SEQ_LEN: int = 128  # tokens per sequence
PROMPT: str = "A hacker is"  # prompt for the generations at each stage
CONTROL: bool = True  # also fine-tune the unpruned model as long: is it recovery, or just more training?
SAVE_MODEL: bool = True  # save the pruned, fine-tuned model (safetensors) under RESULTS_DIR

# %%
import colab_helpers as ch

config = ch.ExperimentConfig(model=MODEL, dataset=DATASET, strategy=STRATEGY, pruning_level=PRUNING_LEVEL,
                             fine_tuning_steps=FINE_TUNING_STEPS, learning_rate=LEARNING_RATE, seq_len=SEQ_LEN,
                             prompt=PROMPT, control=CONTROL, save_model=SAVE_MODEL)
if SMOKE:
    config = config.smoke()
experiment = ch.PruningExperiment(RESULTS_DIR)
config

# %% [markdown]
# ## 1. The environment
# What this runtime has, and the memory in use right now.

# %%
env = ch.detect_environment()
print(env.summary())
ch.show_memory();

# %% [markdown]
# ## 2. Run the pipeline
# One call runs every stage: the **baseline** (perplexity, generation, size, speed), **head importance** with
# the chosen strategy, **pruning** (the lowest-scored heads are sliced out of the model), and **LoRA
# fine-tuning** of the pruned model with a live plot of its losses, then measures each stage the same way.
# Training survives NaNs, out-of-memory and CUDA errors, and writes checkpoints as it goes.

# %%
result = experiment.run(config)

# %% [markdown]
# ## 3. What changed, stage by stage
# Perplexity (lower is better), parameters, generation latency per token, and the time each stage took.

# %%
experiment.comparison()

# %% [markdown]
# How much of the quality lost to pruning did fine-tuning win back (1.0 = all of it)? With `CONTROL`, the
# unpruned model fine-tuned for the same steps shows how much of that is plain extra training.

# %%
experiment.recovery_table()

# %%
experiment.generations()

# %% [markdown]
# ## 4. Figures
# Which heads were pruned (on their importance map), and perplexity per stage next to the training curves.

# %%
ch.plot_head_importance(result["pruning"]["scores"], result["pruning"]["mask"], title=f"{config.strategy} importance",
                        path=experiment.results_dir / "pruned_heads.png")

# %%
experiment.plot_results()

# %% [markdown]
# ## 5. Save and download
# The comparison, the run's result JSON, the training history and the figures, bundled as one zip (the model
# weights stay out of the zip; pass `include_weights=True` to `bundle` to take them too).

# %%
ch.save_results(experiment.results_dir, comparison=experiment.comparison().reset_index().to_dict(orient="records"))
bundle_path = ch.bundle(experiment.results_dir)
ch.download(bundle_path)  # Colab: a browser download; Jupyter / lightning.ai: a link; headless: the path is logged
