# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · Ship it: export, serve and load-test the smaller model
#
# **What you'll get:** the compressed model **exported** as a folder plain `transformers` loads (or as GGUF for
# llama.cpp), the unpruned and the compressed model each **served** over an OpenAI-compatible HTTP API
# (`/v1/completions`, `/v1/chat/completions`, streaming, batching, Prometheus `/metrics`) started in the background
# inside this notebook, a **load test** of both at rising concurrency (time to first token, inter-token and
# end-to-end latency at p50 / p95 / p99, output tokens/s, requests shed), the server's own metrics over the test,
# the figures side by side, one HTML report, and one zip to download.
#
# The point of a smaller model is that it serves faster and cheaper: notebook 08 measured speed one request at a
# time; this one measures it under load. Everything stays on this machine: the load test only talks to
# `127.0.0.1`. The same steps from a shell: `python -m colab_helpers export | serve | loadtest | report`.
#
# `SMOKE=True` runs it on the embedded toy model in seconds (mechanics only).

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
SMOKE: bool = False  # embedded toy model, a few short requests: seconds end to end
RESULTS_DIR: str = "results/deployment"  # everything this notebook writes (models/, data/, figures/, reports/), and the bundle
MODEL: str = "smollm2-135m-instruct"  # the unpruned model (offline from its wheel); any catalog/hub name or local path
COMPRESSED_FROM: str = "results/08_compress"  # the newest */model folder here is served; none: MODEL is compressed now
TARGET_PARAMS: float = 0.75  # share of the parameters kept when compressing here (no recovery: speed only)
EXPORT_FORMAT: str = "hf"  # "hf": a folder plain transformers loads; "gguf": for llama.cpp (needs its converter)
CONCURRENCY: list = [1, 2, 4, 8, 16]  # requests in flight at once, one load-test level each
REQUESTS_PER_LEVEL: int = 32  # requests sent at each level
MAX_SECONDS: float = 120.0  # a level starts no new request after this many seconds
MAX_TOKENS: int = 64  # tokens generated per request
ENDPOINT: str = "completions"  # "completions" or "chat"
READY_TIMEOUT: float = 600.0  # seconds to wait for a server to load its model

# %%
from pathlib import Path

from IPython.display import Image

import colab_helpers as ch
from colab_helpers.deploy import LoadTestConfig, levels_table, run_load_test
from colab_helpers.deploy.report import batching_table, ratio_table

results = Path(RESULTS_DIR)
model = "embedded-llama" if SMOKE else MODEL  # the toy llama: heads, MLP channels and layers to compress
load = LoadTestConfig(concurrency=tuple(CONCURRENCY), requests_per_level=REQUESTS_PER_LEVEL, max_seconds=MAX_SECONDS,
                      max_tokens=MAX_TOKENS, endpoint=ENDPOINT)
if SMOKE:
    load = load.smoke()
load

# %% [markdown]
# ## 1. The compressed model
# The newest model notebook 08 saved (`COMPRESSED_FROM/*/model`) when there is one; else `MODEL` compressed here to
# `TARGET_PARAMS` across heads, MLP channels and layers, without recovery (serving speed depends on the shapes,
# not on the weights' values). A `save_pruned` folder either way.

# %%
compressed_dir = ch.deploy.model_to_serve(model, results / "models" / "compressed", target_params=TARGET_PARAMS,
                                          search=None if SMOKE else COMPRESSED_FROM)
compressed_dir

# %% [markdown]
# ## 2. Export
# `"hf"`: a folder `transformers.AutoModelForCausalLM.from_pretrained` loads without colab_helpers installed (the
# removed weights stay removed); `"gguf"`: a file llama.cpp and Ollama load.

# %%
exported = ch.deploy.export_model(compressed_dir, results / "models" / f"compressed-{EXPORT_FORMAT}", format=EXPORT_FORMAT)
exported

# %% [markdown]
# ## 3. The unpruned model under load
# The server starts in the background (a free port on 127.0.0.1), loads the model and answers `/health` when ready;
# the load test then runs every concurrency level against it, sampling its `/metrics` meanwhile. Leaving the
# `with` block stops the server.

# %%
with ch.deploy.start_server(model) as server:
    server.wait_ready(timeout=READY_TIMEOUT)
    unpruned = run_load_test(server.url, load, label="unpruned")
unpruned.save(results / "data")
levels_table([unpruned])

# %% [markdown]
# ## 4. The compressed model under the same load

# %%
with ch.deploy.start_server(str(compressed_dir)) as server:
    server.wait_ready(timeout=READY_TIMEOUT)
    compressed = run_load_test(server.url, load, label="compressed")
compressed.save(results / "data")
levels_table([compressed])

# %% [markdown]
# ## 5. Side by side
# Compressed over unpruned at each concurrency: output tokens/s (above 1 is faster) and p99 end-to-end latency
# (below 1 is better); then each server's batching gain, its tokens/s over its own at concurrency 1.

# %%
runs = {"unpruned": unpruned, "compressed": compressed}
ratio_table(runs, "unpruned").round(3)

# %%
batching_table(runs).round(3)

# %% [markdown]
# ## 6. Figures and the report
# Throughput and latency against concurrency, then what the servers reported about themselves during the test
# (requests waiting, sequences decoding, batch size, memory). Both are also in one HTML page under `reports/`.

# %%
report_path = ch.deploy.write_deployment_report(runs, results)
Image(results / "figures" / "serving.png")

# %%
Image(results / "figures" / "monitoring.png")

# %% [markdown]
# ## 7. Download
# The results, figures and report in one zip (model weights stay out unless `include_weights=True`).

# %%
bundle_path = ch.bundle(results)
ch.download(bundle_path)  # Colab: a browser download; Jupyter / lightning.ai: a link; headless: the path is logged
