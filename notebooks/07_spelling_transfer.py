# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Does learning to spell teach letter positions and counts?
#
# **What you'll get:** a small instruct model fine-tuned with LoRA on *spelling only* ("Spell 'apple'." ->
# `a p p l e`), over a sweep of LoRA rank, alpha, learning rate, batch size, gradient accumulation and steps,
# and each run measured on three tasks it was or was not trained on: spelling, **letter position** ("What is
# the 3rd letter of 'apple'?") and **letter count** ("How many times does 'p' appear in 'apple'?"). Against
# two references: the untouched model (zero-shot baseline) and a *control* adapter trained as long on plain
# text. Then: a runs table, correlations between spelling and transfer accuracy with bootstrap intervals, which
# hyperparameters matter, the best configurations for transfer, figures, an HTML report and one zip.
#
# Needs a GPU for real results (a T4 is enough for Qwen2.5-0.5B). Offline or in `SMOKE` mode it runs the same
# code on the embedded 1M-parameter toy model: the numbers then show the mechanics, not findings. What a CPU
# study of SmolLM2-135M-Instruct found (zero-shot, a small LoRA sweep, a control) is in
# `docs/spelling-transfer.md`: short spelling training changed the *format* of the model's other answers rather
# than teaching it letters.

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
SMOKE: bool = False  # embedded toy model on the CPU, tiny data, 2 runs of 5 steps: well under a minute
RESULTS_DIR: str = "results/07_spelling_transfer"  # runs.csv, every run, the report, and the bundle
MODEL: str = "Qwen/Qwen2.5-0.5B-Instruct"  # a small instruct model; offline it falls back to embedded-gpt2
TRAIN_WORDS: int = 2000  # words in the training split (spelling questions only)
VALIDATION_WORDS: int = 200  # words for early stopping on the validation loss
TEST_WORDS: int = 500  # words of the reported accuracies (one spelling, position and count question each)
MIN_LENGTH: int = 3  # shortest word, in letters
MAX_LENGTH: int = 10  # longest word, in letters
SEARCH: str = "random"  # "random": NUM_RUNS draws from the search space; "grid": all 4,096 combinations
NUM_RUNS: int = 8  # runs of a random search (the 5000-step ones dominate the time)
CONTROL: str = "per_steps"  # control adapter: "per_steps" (one per step count), "per_run" (2x cost) or "none"
MAX_RUNTIME_HOURS: float = 0.0  # no new run starts after this many hours, 0 for no limit; rerun to go on
EVAL_BATCH_SIZE: int = 64  # prompts generated at once during evaluation
SEED: int = 0  # words, splits, random search draws and LoRA initialisation

# %%
import colab_helpers as ch
from colab_helpers import spelling as ss
from colab_helpers.spelling import data as sp

data_config = sp.SpellingDataConfig(train_size=TRAIN_WORDS, validation_size=VALIDATION_WORDS, test_size=TEST_WORDS,
                                    min_length=MIN_LENGTH, max_length=MAX_LENGTH, seed=SEED)
if SMOKE:
    data_config = data_config.smoke()
sweep = ss.default_sweep(smoke=SMOKE, search=SEARCH, num_runs=NUM_RUNS, seed=SEED)
max_runtime = MAX_RUNTIME_HOURS * 3600 or None
data_config

# %% [markdown]
# ## 1. The environment
# What this runtime has. A GPU makes the real sweep feasible; on a CPU, keep to `SMOKE`.

# %%
env = ch.detect_environment()
print(env.summary())

# %% [markdown]
# ## 2. The model
# The instruct model when it can be loaded (from the hub or its cache), else the embedded offline model, with
# one warning saying so. `base` holds the settings the sweep varies around.

# %%
model, tokenizer, model_name = ss.load_study_model(MODEL, smoke=SMOKE)
base = ss.base_config(model_name, smoke=SMOKE)
print(f"{model_name}: {sum(p.numel() for p in model.parameters()):,} parameters on {model.device}")
base

# %% [markdown]
# ## 3. The data
# Words from the shipped list (SCOWL, offline), split so that no word is in two splits. Training rows are
# spelling only; validation and test rows ask all three questions about each word. Saved as JSONL.

# %%
data = sp.build_datasets(tokenizer, data_config)
sp.save_datasets(data, f"{RESULTS_DIR}/data")
sp.summary_table(data)

# %%
sp.examples(data, "test", per_task=3)

# %% [markdown]
# What the model actually sees: its chat template when it has one, else a plain `Q: ... A:` prompt.

# %%
print(data["test"][0]["prompt"])

# %% [markdown]
# ## 4. The baseline: the untouched model
# Batched greedy generation, exact match after normalising the answer (case, quotes, "the letter p", "two" ->
# 2, any separators between spelled letters), with bootstrap 95% intervals. Recorded once, reused on reruns.

# %%
study = ss.SpellingStudy(model, tokenizer, data, RESULTS_DIR, model_name=model_name, batch_size=EVAL_BATCH_SIZE,
                         control=CONTROL, seed=SEED)
baseline = study.baseline()
ss.accuracy_table(baseline)

# %%
study.predictions(baseline["run_id"]).head(9)

# %% [markdown]
# Two guesses that need no letter-level skill: the word's first letter for every position question, the most
# common answer for every count question. A model at or below these has not shown the skill, whatever its score.

# %%
ss.guess_baselines(data["test"])

# %% [markdown]
# ## 5. The sweep
# Each run trains a fresh LoRA adapter on spelling (early stopping on the validation loss, checkpoints as it
# goes), then answers the test questions. Every run is a row of `runs.csv`: rerunning this cell skips the runs
# already done, so a disconnect costs at most one run. The plot shows each run's three accuracies as they come.

# %%
runs = study.run_sweep(sweep, base, max_runtime=max_runtime)

# %% [markdown]
# ## 6. Results
# One row per run, best transfer (mean of position and count accuracy) first; gains are over the baseline and
# over the control adapter; a transfer ratio is the position (count) gain divided by the spelling gain, empty
# when the spelling gain is within 2 points of zero.

# %%
ss.results_table(runs)

# %% [markdown]
# ## 7. Analysis
# Does better spelling go with better position and count answers across runs? Pearson and Spearman
# correlations with bootstrap 95% intervals (few runs give wide intervals: read them before the point values).

# %%
analysis = study.analyze()
analysis.correlations

# %% [markdown]
# Which hyperparameters matter: the spread of mean transfer accuracy across each parameter's values (a first
# look: no interactions, no significance test), and the best configurations for transfer.

# %%
analysis.importance

# %%
analysis.top

# %%
analysis.scatter()

# %%
analysis.effects_figure()

# %% [markdown]
# ## 8. Report and download
# `report.html` (figures embedded), `summary.md`, the tables as CSV, `runs.csv`, every run's config and
# answers, and the data, bundled as one zip (adapters are not kept unless `keep_adapters=True`).

# %%
paths = analysis.save(RESULTS_DIR)
print(analysis.to_markdown()[:1500])
bundle_path = ch.bundle(RESULTS_DIR)
ch.download(bundle_path)  # Colab: a browser download; Jupyter / lightning.ai: a link; headless: the path is logged
