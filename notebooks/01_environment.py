# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Where am I running, and what can it hold?
#
# **What you'll get:** a table of this runtime (Colab, Kaggle, lightning.ai, local Jupyter or a headless
# papermill run), its accelerator and memory, what that means for training (dtype, 4-bit, how large a model
# fits for inference, LoRA and QLoRA), a live memory display, a text generation that survives CUDA errors
# (and tells you which path produced it), and everything bundled as a zip to download.
#
# Press *Run all*. Nothing here needs the internet: offline, the suite uses its embedded model and corpus.

# %% [markdown]
# ## Install (Colab only)
# On Colab this clones the suite and installs it with its requirements; Colab's own torch is kept, and the GPU
# extras (bitsandbytes) come only when a GPU is attached. Everywhere else it does nothing: there, install with
# `pip install -e .` or `make install` from a clone.

# %%
import os, shutil, subprocess, sys  # noqa: E401  (the package is not installed yet)

REPO_URL = "https://github.com/colab-helpers/colab-helpers"  # the suite's repository
if "COLAB_RELEASE_TAG" in os.environ and not os.path.isdir("/content/colab-helpers"):  # set on every Colab runtime
    extra = "[gpu]" if shutil.which("nvidia-smi") else ""
    subprocess.run(["git", "clone", "-q", "--depth", "1", REPO_URL, "/content/colab-helpers"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"/content/colab-helpers{extra}"], check=True)

# %% [markdown]
# ## Settings
# Change these, or pass them to papermill with `-p NAME VALUE`.

# %% tags=["parameters"]
SMOKE: bool = False  # embedded tiny model on CPU, a few seconds end to end
RESULTS_DIR: str = "results/01_environment"  # where the report, plots and the bundle go
MODEL: str = "auto"  # "auto": gpt2 when the hub is reachable, else the embedded model; or any hub id / path
PROMPT: str = "The hacker culture"  # prompt for the generation check
MAX_NEW_TOKENS: int = 40  # length of the generated continuation

# %%
import colab_helpers as ch

model_name = "embedded-gpt2" if SMOKE else MODEL
max_new_tokens = 12 if SMOKE else MAX_NEW_TOKENS
results_dir = ch.ensure_writable_dir(RESULTS_DIR)
memory_plot = ch.LivePlot(title="Memory through this notebook (GB)", path=results_dir / "memory.png",
                          xlabel="notebook step", display=False)  # shown once, at the end
memory_plot.update(0, **ch.memory_snapshot().gigabytes())

# %% [markdown]
# ## 1. The runtime
# Runtime, accelerator, memory, disk and library versions, read from this machine, and what they allow.

# %%
env = ch.detect_environment()
memory_plot.update(1, **ch.memory_snapshot().gigabytes())
env

# %% [markdown]
# ## 2. What that means for you
# The dtype to train in, whether 4-bit (QLoRA) and unsloth are usable, and hints for this hardware.
# Notebook 02 turns this into a concrete model choice with per-model memory estimates.

# %%
env.recommendations

# %% [markdown]
# ## 3. Memory right now
# RAM and (if present) GPU memory, with the process's own share. Call `ch.show_memory()` any time.

# %%
snapshot = ch.show_memory()
memory_plot.update(2, **snapshot.gigabytes())

# %% [markdown]
# ## 4. A generation that survives CUDA errors
# `safe_generate` tries sampling as asked, then greedy decoding, then the CPU, and reports which path worked.

# %%
model, tokenizer = ch.load_model(model_name)
memory_plot.update(3, **ch.memory_snapshot().gigabytes())
generation = ch.safe_generate(model, tokenizer, PROMPT, max_new_tokens=max_new_tokens, seed=0)
memory_plot.update(4, **ch.memory_snapshot().gigabytes())
generation

# %% [markdown]
# ## 5. Memory through this notebook
# Machine RAM in use and this process's share, after each step above (saved as `memory.png`).

# %%
memory_plot.close()
memory_plot

# %% [markdown]
# ## 6. Save and download
# The report (Markdown and JSON), the memory figure and the generation go into one zip.

# %%
ch.save_results(results_dir, environment=env, generation=generation)
bundle_path = ch.bundle(results_dir)
ch.download(bundle_path)  # Colab: a browser download; Jupyter / lightning.ai: a link; headless: the path is logged
