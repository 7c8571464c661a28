# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Which model fits here?
#
# **What you'll get:** a one-line summary of this runtime; a catalog of the small causal language models
# people prune and fine-tune on Colab (GPT-2, OPT, Pythia, SmolLM2, Qwen2.5, TinyLlama, Llama 3.2, BLOOM, and the
# two embedded offline models) with their estimated memory for inference, LoRA and QLoRA; the largest model
# that fits this runtime, with the reason; that model loaded and generating text.
#
# Offline (no Hugging Face Hub) the pick falls back to the embedded model, so *Run all* always works.

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
SMOKE: bool = False  # embedded tiny model on CPU, seconds end to end
RESULTS_DIR: str = "results/02_model_picking"  # where the tables and the bundle go
MODE: str = "lora"  # what you plan to do: "inference", "lora", "qlora" or "full"
BATCH_SIZE: int = 4  # sequences per step you plan to use
SEQ_LEN: int = 256  # tokens per sequence you plan to use
SAFETY: float = 0.8  # plan for this share of the free memory
MAX_PARAMS: float = 0.0  # cap on model size in parameters (0 = none; on a CPU try 150e6)
PROMPT: str = "The hacker culture"  # prompt for the generation check

# %%
import colab_helpers as ch

results_dir = ch.runtime.ensure_writable_dir(RESULTS_DIR)
env = ch.detect_environment()
print(env.summary())

# %% [markdown]
# ## 1. The catalog, with memory estimates
# Estimated peak memory in GB for inference, LoRA and QLoRA at your batch size and sequence length
# (weights, gradients, optimizer state, activations and runtime overhead; see `docs/memory-estimates.md` for
# how close the estimates come to measured peaks).

# %%
catalog = ch.models.catalog_table(batch_size=BATCH_SIZE, seq_len=SEQ_LEN)
catalog[["model", "family", "params", "layers", "heads", "kv_heads", "inference_gb", "lora_gb", "qlora_gb", "licence"]]

# %% [markdown]
# ## 2. The pick
# The largest catalog model whose estimate fits in `SAFETY` of the free memory (GPU memory on a GPU, RAM
# otherwise). Without the hub only the embedded models are candidates.

# %%
pick = ch.pick_model(MODE, batch_size=BATCH_SIZE, seq_len=SEQ_LEN, safety=SAFETY, max_params=MAX_PARAMS or None)
pick

# %% [markdown]
# ## 3. Where the memory goes
# The estimate of the picked model, part by part.

# %%
pick.estimate

# %% [markdown]
# ## 4. Load it and generate
# `load_model` picks the dtype from the hardware (bf16 on recent GPUs, fp16 on a T4, fp32 on a CPU).

# %%
model_name = "embedded-gpt2" if SMOKE else pick.name
model, tokenizer = ch.load_model(model_name, load_in_4bit=MODE == "qlora")
with ch.track_peak_memory() as peak:
    generation = ch.safe_generate(model, tokenizer, PROMPT, max_new_tokens=12 if SMOKE else 40, seed=0)
generation

# %% [markdown]
# ## 5. Save and download

# %%
ch.save_results(results_dir, environment=env, pick={"name": pick.name, "reason": pick.reason},
                estimate=pick.estimate, generation=generation, peak_memory=peak)
catalog.to_csv(results_dir / "catalog.csv", index=False)
bundle_path = ch.bundle(results_dir)
ch.download(bundle_path)  # Colab: a browser download; Jupyter / lightning.ai: a link; headless: the path is logged
