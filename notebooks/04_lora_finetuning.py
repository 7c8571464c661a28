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
# `RESUME = True` and it continues where it stopped.

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
RESULTS_DIR: str = "results/04_lora_finetuning"  # checkpoints, adapter, merged model, plots and the bundle
MODEL: str = "auto"  # "auto": gpt2 with the hub, else embedded-gpt2; any catalog/hub name or local path
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
PROMPT: str = "A hacker is"  # prompt for generations before / after

# %%
import colab_helpers as ch

results_dir = ch.ensure_writable_dir(RESULTS_DIR)
config = ch.FineTuneConfig(r=LORA_R, alpha=LORA_ALPHA, learning_rate=LEARNING_RATE, max_steps=STEPS,
                           micro_batch_size=MICRO_BATCH_SIZE, seq_len=SEQ_LEN, load_in_4bit=QLORA,
                           early_stopping_patience=EARLY_STOPPING or None,
                           output_dir=str(results_dir / "training"), resume=RESUME).with_intervals(evaluations=10)
if SMOKE:
    MODEL, DATASET, config = ch.smoke_model(MODEL), ch.SMOKE_DATASET, config.smoke()
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
evaluate = dict(seq_len=config.seq_len, max_tokens=ch.SMOKE_EVAL_TOKENS if SMOKE else 20000)
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
adapter_dir = ch.save_adapter(result.model, results_dir / "adapter")
merged_dir = ch.save_merged(result.model, tokenizer, results_dir / "merged-model")
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
