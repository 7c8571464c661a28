# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Experiment sweeps: every strategy x level x model, tracked and resumable
#
# **What you'll get:** the prune-then-recover pipeline run over a grid (importance strategies x pruning levels x
# models) within a time budget, with one progress bar over runs; the runs table (`runs.csv`, one row per run,
# every config key and metric a column) filtered and sorted; perplexity against level per strategy, recovery
# after fine-tuning and a strategy x level heat table; a rerun that skips the runs already done (this is how a
# sweep survives a Colab disconnect); a self-contained HTML report; and a zip to download.
#
# From a shell the same sweep runs as `python -m colab_helpers sweep base.yaml sweep.yaml`, and
# `python -m colab_helpers runs --root results/06_experiment_sweeps --sort-by fine_tuned_perplexity` lists it.

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
SMOKE: bool = False  # embedded tiny models, a few steps per run: well under a minute
RESULTS_DIR: str = "results/06_experiment_sweeps"  # runs.csv, one folder per run, figures, report, bundle
MODELS: list = ["embedded-gpt2", "embedded-llama"]  # models to sweep (on Colab e.g. ["distilgpt2", "gpt2"])
STRATEGIES: list = ["random", "magnitude", "gradient"]  # importance strategies
LEVELS: list = [0.1, 0.3, 0.5]  # pruning levels
FINE_TUNING_STEPS: int = 60  # LoRA steps per run
MAX_RUNTIME: int = 1800  # seconds: no new run starts after this; the rest are recorded as skipped
SWEEP_NAME: str = "strategies-x-levels"  # runs of one sweep share this name in runs.csv
ON_DRIVE: bool = False  # Colab: keep results on Google Drive so they survive a runtime reset

# %%
import colab_helpers as ch

if SMOKE:  # a smaller grid; each run is shrunk by ExperimentConfig.smoke() (smoke=SMOKE below)
    MODELS, STRATEGIES, LEVELS = MODELS[:1], STRATEGIES[:1] + STRATEGIES[-1:], LEVELS[1:2]
root = ch.drive_results_dir(RESULTS_DIR) if ON_DRIVE else RESULTS_DIR
experiment = ch.PruningFineTuningExperiment(root)
sweep = dict(strategies=STRATEGIES, pruning_levels=LEVELS, models=MODELS, fine_tuning_steps=FINE_TUNING_STEPS,
             max_runtime=MAX_RUNTIME, sweep=SWEEP_NAME, smoke=SMOKE)

# %% [markdown]
# ## 1. Run the sweep
# Each run loads the model, scores the heads, prunes, fine-tunes with LoRA and measures every stage. Runs are
# recorded in `runs.csv` as they start (`running`) and end (`done`, `failed` with its error, or `skipped`).

# %%
runs = experiment.run_experiment(**sweep)
runs[["run_id", "model", "strategy", "pruning_level", "status", "pruned_perplexity", "fine_tuned_perplexity", "recovery"]]

# %% [markdown]
# ## 2. The runs table, filtered and sorted
# Every config key and metric is a column. Here: the finished runs, best recovered perplexity first.

# %%
done = runs[runs["status"] == "done"].sort_values("fine_tuned_perplexity")
done[["model", "strategy", "pruning_level", "baseline_perplexity", "pruned_perplexity", "fine_tuned_perplexity",
      "fine_tuned_parameters", "run_seconds"]]

# %% [markdown]
# ## 3. Figures
# Left panels: perplexity against level per strategy (solid: pruned, dashed: after fine-tuning). Then the share
# of lost perplexity that fine-tuning won back, and fine-tuned perplexity per strategy and level.

# %%
experiment.plot_results()

# %% [markdown]
# ## 4. Rerun: finished runs are skipped
# After a disconnect, run the same sweep again: `done` runs are skipped, interrupted or failed ones are redone.

# %%
again = experiment.run_experiment(**sweep)
print(f"{len(again)} runs in the table, {int((again['status'] == 'done').sum())} done; nothing was run twice")

# %% [markdown]
# ## 5. Report and download
# One HTML file with the tables and figures embedded, then everything in a zip (model weights stay out).

# %%
report_path = experiment.report()
bundle_path = ch.bundle(experiment.results_dir)
ch.download(bundle_path)  # Colab: a browser download; Jupyter / lightning.ai: a link; headless: the path is logged
