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
# every config key and metric a column) filtered and sorted; perplexity against level per strategy, the share of
# the loss fine-tuning won back and a strategy x level heat table; a rerun that skips the runs already done (this is how a
# sweep survives a Colab disconnect); a self-contained HTML report; and a zip to download.
#
# From a shell the same sweep runs as `python -m colab_helpers sweep base.yaml sweep.yaml`, and
# `python -m colab_helpers runs --root results/06_experiment_sweeps --sort-by fine_tuned_perplexity` lists it.

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
sweep = ch.Sweep(root)
grid = dict(strategies=STRATEGIES, pruning_levels=LEVELS, models=MODELS, fine_tuning_steps=FINE_TUNING_STEPS,
            max_runtime=MAX_RUNTIME, sweep=SWEEP_NAME, smoke=SMOKE)

# %% [markdown]
# ## 1. Run the sweep
# Each run loads the model, scores the heads, prunes, fine-tunes with LoRA and measures every stage. Runs are
# recorded in `runs.csv` as they start (`running`) and end (`done`, `failed` with its error, or `skipped`).

# %%
runs = sweep.run(**grid)
runs[["run_id", "model", "strategy", "pruning_level", "status", "pruned_perplexity", "fine_tuned_perplexity",
      "recovered_share"]]

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
sweep.plot_results()

# %% [markdown]
# ## 4. Rerun: finished runs are skipped
# After a disconnect, run the same sweep again: `done` runs are skipped, interrupted or failed ones are redone.

# %%
again = sweep.run(**grid)
print(f"{len(again)} runs in the table, {int((again['status'] == 'done').sum())} done; nothing was run twice")

# %% [markdown]
# ## 5. Report and download
# One HTML file with the tables and figures embedded, then everything in a zip (model weights stay out).

# %%
report_path = sweep.report()
bundle_path = ch.bundle(sweep.results_dir)
ch.download(bundle_path)  # Colab: a browser download; Jupyter / lightning.ai: a link; headless: the path is logged
