#!/usr/bin/env python
"""Rebuild the embedded offline default: the Jargon File corpus and two tiny causal LMs trained on it.

What it writes (under ``--out``, default ``colab_helpers/embedded``), every file atomically:

    corpus/train.txt.gz, corpus/validation.txt.gz   paragraphs separated by blank lines, gzip with mtime=0
    corpus/SOURCE.md                                origin, licence notice, how the split was made
    models/embedded-gpt2/                           GPT2Config, 4 layers, 4 heads, width 128
    models/embedded-llama/                          LlamaConfig, 4 layers, 8 query / 2 key-value heads
        config.json, generation_config.json, model.safetensors (float16),
        tokenizer.json, tokenizer_config.json, training.json

and the figures table in ``docs/embedded-models.md``.

Usage (about 5-6 minutes on an idle 2-core CPU machine; more when it is shared):

    HF_HUB_OFFLINE=1 python scripts/build_embedded.py            # everything
    python scripts/build_embedded.py --only corpus                # corpus only
    python scripts/build_embedded.py --only llama --steps 50      # a quick retrain of one model
    python scripts/build_embedded.py --only corpus --jargon PATH  # the Jargon File from somewhere else

The corpus comes from the file ``jargon.txt.gz`` of Debian's package ``jargon-text`` (``apt-get install
jargon-text``), which is public domain; ``--jargon`` names that file, and without it the script asks ``dpkg``
where the package put it. Rebuilding only a model reads the corpus already built, not the Jargon File. Training
is seeded and runs on the CPU with a fixed data order: a rebuild on the same machine and torch version gives the
same numbers; elsewhere the last bits of the weights may differ.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from colab_helpers.runtime.files import atomic_write_bytes, atomic_write_text  # noqa: E402

logger = logging.getLogger("build_embedded")

# ---- settings ------------------------------------------------------------------------------------------
JARGON_PACKAGE = "jargon-text"  # Debian's package of the Jargon File 4.4.7
JARGON_FILE = "jargon.txt.gz"  # the file of that package the corpus is cleaned from; its "copyright" sits beside it
JARGON_INSTALL = f"`apt-get install -y {JARGON_PACKAGE}` on Debian or Ubuntu"
VALIDATION_EVERY = 20  # paragraph i goes to validation when i % 20 == 19 (5 %), else to train
MIN_WORDS = 6  # shorter paragraphs (index entries, headings) are dropped
VOCAB_SIZE = 2048
EOS = "<|endoftext|>"  # the only special token: bos, eos and pad, id 0
BLOCK_SIZE = 128  # training sequence length (the models accept up to 256 positions)
BATCH_SIZE = 32
DEFAULT_STEPS = 350  # 2-3 minutes per model on an idle machine
DEFAULT_SEED = 1234
LEARNING_RATE = 3e-3
WARMUP_STEPS = 30
MIN_LR_RATIO = 0.1  # cosine decays to 10 % of the peak
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0
THREADS = 1  # the build machine is shared: 2 threads thrash there under load (2.5x slower than 1 at load 5)
DOCS_PATH = REPO_ROOT / "docs" / "embedded-models.md"

# Typographic characters mapped to ASCII so the tokenizer spends its 2048 entries on English.
_TRANSLATE = str.maketrans(
    {
        "\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u00b4": "'",
        "\u00a0": " ", "\u2014": "--", "\u2212": "-", "\u00b7": "-", "\u2022": "*",
        "\u2192": "->", "\u00d7": "x", "\u223c": "~",
    }
)  # fmt: skip
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_BOX_DRAWING = re.compile("[\u2500-\u257f]")  # tables and rules: dropped
_HEADWORD = re.compile(r"^:(?P<word>[^:]+):\s*(?P<rest>.*)$")  # ":baroque: adj."
_CROSS_REF = re.compile(r"\{\{?([^{}]*)\}\}?")  # "{elephantine}", "{{VAX}}" -> "elephantine", "VAX"
_SENTENCE_END = ('.', '!', '?', '"', "'", ')', ']', ':', ';')


@dataclass(frozen=True)
class ModelRecipe:
    """One embedded model: its name, architecture and the config keyword arguments."""

    name: str
    architecture: str  # "gpt2" | "llama"
    config: dict[str, Any]


RECIPES: dict[str, ModelRecipe] = {
    "gpt2": ModelRecipe(
        name="embedded-gpt2",
        architecture="gpt2",
        config=dict(
            vocab_size=VOCAB_SIZE, n_positions=256, n_embd=128, n_layer=4, n_head=4,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=0, eos_token_id=0, pad_token_id=0,
        ),
    ),
    "llama": ModelRecipe(
        name="embedded-llama",
        architecture="llama",
        config=dict(
            vocab_size=VOCAB_SIZE, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
            num_attention_heads=8, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
            tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        ),
    ),
}  # fmt: skip


# ---- corpus --------------------------------------------------------------------------------------------
def clean_jargon(raw: str) -> list[str]:
    """Return the Jargon File's prose as clean one-line paragraphs, in file order.

    Headword lines (``:baroque: adj.``) are joined to the definition that follows them; cross-reference
    braces are removed; tables (box drawing) and short lines (table of contents, index) are dropped.
    """
    text = unicodedata.normalize("NFC", raw.replace("\r\n", "\n")).translate(_TRANSLATE)
    text = _CONTROL.sub("", text)
    paragraphs: list[str] = []
    pending = ""  # a headword waiting for its definition
    for block in re.split(r"\n[ \t]*\n", text):
        if _BOX_DRAWING.search(block):
            pending = ""
            continue
        paragraph = " ".join(block.split())
        if not paragraph:
            continue
        headword = _HEADWORD.match(paragraph)
        if headword and len(paragraph) < 120:
            pending = f"{headword['word'].strip()}: {headword['rest']}".rstrip() + " "
            continue
        paragraph = _CROSS_REF.sub(r"\1", pending + paragraph)
        pending = ""
        words = len(paragraph.split())
        if words < MIN_WORDS or (words < 12 and not paragraph.endswith(_SENTENCE_END)):
            continue
        paragraphs.append(paragraph)
    return paragraphs


def split_paragraphs(paragraphs: list[str]) -> tuple[list[str], list[str]]:
    """Return (train, validation): every ``VALIDATION_EVERY``-th paragraph goes to validation."""
    train = [p for i, p in enumerate(paragraphs) if i % VALIDATION_EVERY != VALIDATION_EVERY - 1]
    validation = [p for i, p in enumerate(paragraphs) if i % VALIDATION_EVERY == VALIDATION_EVERY - 1]
    return train, validation


def gzip_bytes(text: str) -> bytes:
    """Return ``text`` gzipped with mtime 0 and no file name, so equal text gives equal bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as handle:
        handle.write(text.encode("utf-8"))
    return buffer.getvalue()


def _publish(path: Path) -> Path:
    """Make ``path`` world-readable (0644 files, 0755 dirs; temp files start private) and return it."""
    path.chmod(0o755 if path.is_dir() else 0o644)
    return path


def read_split(out: Path, split: str) -> list[str]:
    """Return the paragraphs of a built split (``train`` or ``validation``)."""
    with gzip.open(out / "corpus" / f"{split}.txt.gz", "rt", encoding="utf-8") as handle:
        return [p for p in handle.read().split("\n\n") if p.strip()]


def find_jargon() -> Path | None:
    """Return where Debian's ``jargon-text`` package put ``jargon.txt.gz`` (asked of ``dpkg``), or None."""
    try:
        listed = subprocess.run(["dpkg", "-L", JARGON_PACKAGE], capture_output=True, text=True, check=False)
    except OSError:  # no dpkg: not a Debian-based system
        return None
    paths = [Path(line) for line in listed.stdout.splitlines() if line.endswith("/" + JARGON_FILE)]
    return next((path for path in paths if path.is_file()), None)


def build_corpus(out: Path, jargon: Path) -> dict[str, Any]:
    """Write the corpus splits and SOURCE.md under ``out/corpus`` from ``jargon`` (jargon.txt.gz); return figures."""
    if not jargon.is_file():
        raise FileNotFoundError(
            f"{jargon} not found: pass the Jargon File, the file {JARGON_FILE} of Debian's {JARGON_PACKAGE} package "
            f"(install it with {JARGON_INSTALL}; `dpkg -L {JARGON_PACKAGE}` shows where it is)"
        )
    with gzip.open(jargon, "rt", encoding="utf-8") as handle:
        raw = handle.read()
    paragraphs = clean_jargon(raw)
    train, validation = split_paragraphs(paragraphs)
    corpus_dir = out / "corpus"
    figures: dict[str, Any] = {"paragraphs": len(paragraphs)}
    for split, items in (("train", train), ("validation", validation)):
        text = "\n\n".join(items) + "\n"
        data = gzip_bytes(text)
        _publish(atomic_write_bytes(corpus_dir / f"{split}.txt.gz", data))
        figures[split] = {"paragraphs": len(items), "chars": len(text), "gz_bytes": len(data)}
        logger.info("corpus %s: %d paragraphs, %d chars, %d bytes gzipped", split, len(items), len(text), len(data))
    copyright_file = jargon.with_name("copyright")  # Debian's copyright file, beside the text in the package
    copyright_text = copyright_file.read_text(encoding="utf-8") if copyright_file.is_file() else ""
    _publish(atomic_write_text(corpus_dir / "SOURCE.md", _source_md(figures, raw, copyright_text)))
    return figures


def _source_md(figures: dict[str, Any], raw: str, copyright_text: str) -> str:
    """Return the text of corpus/SOURCE.md."""
    version = re.search(r"\(version ([0-9.]+)\)", raw)
    # the copyright file ends by naming where Debian systems keep the GPL's text: a file our users need not have,
    # and the GPL covers only Debian's packaging scripts, which are not shipped here
    kept = [p for p in copyright_text.strip().split("\n\n") if not p.startswith("On Debian GNU/Linux systems")]
    notice = "\n".join(f"> {line}".rstrip() for line in "\n\n".join(kept).splitlines())
    return f"""# Embedded corpus: the Jargon File

- **What**: *The Jargon File*, version {version[1] if version else "4.4.7"} (29 Dec 2003), edited by Eric S. Raymond:
  a lexicon of hacker slang with essays and folklore. About 1.3 MB of English prose after cleaning.
- **Where it came from**: the file `{JARGON_FILE}` of the Debian package `{JARGON_PACKAGE}`, which took it from
  <http://www.catb.org/~esr/jargon/>.
- **Licence**: public domain. The File itself says: "This document (the Jargon File) is in the public domain,
  to be freely used, shared, and modified. There are (by intention) no legal restraints on what you can do with
  it, but there are traditions about its proper use to which many hackers are quite strongly attached. Please
  extend the courtesy of proper citation when you quote the File, ideally with a version number". Cite it as
  "Jargon File 4.4.7". (Debian's packaging scripts, not shipped here, are GPL.)

## How the text was cleaned (`scripts/build_embedded.py`, `clean_jargon`)
1. Unicode NFC; typographic quotes, dashes, non-breaking spaces and a few symbols mapped to ASCII; control
   characters removed.
2. Split into paragraphs at blank lines; each paragraph's lines joined with single spaces.
3. Paragraphs with box-drawing characters (tables, rules) dropped.
4. Headword lines such as `:baroque: adj.` joined to the definition that follows (`baroque: adj. ...`);
   cross-reference braces removed (`{{elephantine}}` -> `elephantine`).
5. Paragraphs of fewer than {MIN_WORDS} words, or fewer than 12 words without closing punctuation (table of
   contents, index, headings), dropped.

## Split
Deterministic, by paragraph, in file order: paragraph *i* (0-based, after cleaning) goes to **validation**
when `i % {VALIDATION_EVERY} == {VALIDATION_EVERY - 1}`, else to **train** (about 95 / 5). No paragraph is in both.

| split | paragraphs | characters | gzip bytes |
|---|---:|---:|---:|
| train | {figures["train"]["paragraphs"]} | {figures["train"]["chars"]} | {figures["train"]["gz_bytes"]} |
| validation | {figures["validation"]["paragraphs"]} | {figures["validation"]["chars"]} | {figures["validation"]["gz_bytes"]} |

Files: `train.txt.gz`, `validation.txt.gz`: UTF-8, paragraphs separated by one blank line, gzip with mtime 0
(a rebuild is byte-identical).

## Debian's copyright file for the package
Without its closing paragraph, which names where Debian systems keep the GPL's text.

{notice}
"""


# ---- tokenizer -----------------------------------------------------------------------------------------
def train_tokenizer(train: list[str]) -> Any:
    """Return a byte-level BPE ``PreTrainedTokenizerFast`` (vocab ``VOCAB_SIZE``) trained on ``train``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(train, trainer=trainer)
    if tokenizer.token_to_id(EOS) != 0:
        raise RuntimeError(f"{EOS} must be token 0, got {tokenizer.token_to_id(EOS)}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=None,
        model_max_length=256,
        padding_side="left",  # decoder-only generation of a padded batch needs left padding
        clean_up_tokenization_spaces=False,
    )


def token_stream(tokenizer: Any, paragraphs: list[str]) -> Any:
    """Return one 1-D LongTensor: each paragraph preceded by the end-of-text token."""
    import torch

    ids: list[int] = []
    # the backend tokenizer directly: no "longer than model_max_length" warning for long paragraphs
    for encoding in tokenizer.backend_tokenizer.encode_batch(paragraphs, add_special_tokens=False):
        ids.append(tokenizer.eos_token_id)
        ids.extend(encoding.ids)
    return torch.tensor(ids, dtype=torch.long)


def to_blocks(stream: Any, block_size: int) -> Any:
    """Return the stream cut into non-overlapping rows of ``block_size`` tokens (the tail is dropped)."""
    rows = stream.numel() // block_size
    return stream[: rows * block_size].view(rows, block_size)


# ---- training ------------------------------------------------------------------------------------------
def build_model(recipe: ModelRecipe, seed: int) -> Any:
    """Return a freshly initialised model of ``recipe``, seeded, in float32 and train mode."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    config_cls = {"gpt2": GPT2Config, "llama": LlamaConfig}[recipe.architecture]
    config = config_cls(**recipe.config)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def perplexity(model: Any, blocks: Any, batch_size: int = BATCH_SIZE) -> float:
    """Return exp(mean next-token loss) of ``model`` over ``blocks`` (every token weighted equally)."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, blocks.shape[0], batch_size):
            batch = blocks[start : start + batch_size]
            loss = model(input_ids=batch, attention_mask=torch.ones_like(batch), labels=batch).loss
            tokens = batch.numel() - batch.shape[0]  # the first token of each row has no target
            total += loss.item() * tokens
            count += tokens
    model.train(was_training)
    return math.exp(total / count)


def _lr_at(step: int, steps: int) -> float:
    """Return the learning-rate multiplier: linear warm-up, then cosine down to ``MIN_LR_RATIO``."""
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
    return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_model(
    recipe: ModelRecipe,
    train_blocks: Any,
    val_blocks: Any,
    *,
    steps: int,
    seed: int,
    batch_size: int = BATCH_SIZE,
    lr: float = LEARNING_RATE,
) -> tuple[Any, dict[str, Any]]:
    """Train ``recipe`` from a seeded init for ``steps`` AdamW steps; return (model, training figures)."""
    import torch
    from tqdm.auto import tqdm

    model = build_model(recipe, seed)
    untrained_ppl = perplexity(model, val_blocks)
    logger.info("%s: %d parameters, untrained validation perplexity %.1f", recipe.name, model.num_parameters(), untrained_ppl)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_at(step, steps))
    order = torch.Generator().manual_seed(seed)  # the data order depends on the seed only
    permutation = torch.randperm(train_blocks.shape[0], generator=order)
    cursor = 0
    losses: list[float] = []
    model.train()
    started = time.perf_counter()
    progress = tqdm(range(steps), desc=recipe.name, unit="step", mininterval=2.0)
    for _ in progress:
        if cursor + batch_size > permutation.numel():  # next epoch, new seeded order
            permutation, cursor = torch.randperm(train_blocks.shape[0], generator=order), 0
        batch = train_blocks[permutation[cursor : cursor + batch_size]]
        cursor += batch_size
        loss = model(input_ids=batch, attention_mask=torch.ones_like(batch), labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    train_seconds = time.perf_counter() - started
    model.eval()
    trained_ppl = perplexity(model, val_blocks)
    tail = losses[-max(1, min(50, len(losses))) :]
    figures = {
        "name": recipe.name,
        "architecture": recipe.architecture,
        "parameters": model.num_parameters(),
        "seed": seed,
        "steps": steps,
        "batch_size": batch_size,
        "block_size": BLOCK_SIZE,
        "tokens_seen": steps * batch_size * BLOCK_SIZE,
        "train_tokens": int(train_blocks.numel()),
        "epochs": round(steps * batch_size / train_blocks.shape[0], 2),
        "optimizer": {"name": "AdamW", "lr": lr, "betas": [0.9, 0.95], "weight_decay": WEIGHT_DECAY,
                      "schedule": f"linear warm-up {WARMUP_STEPS} steps, cosine to {MIN_LR_RATIO} x lr",
                      "grad_clip": GRAD_CLIP},
        "train_seconds": round(train_seconds, 1),
        "threads": torch.get_num_threads(),
        "train_loss_first": round(losses[0], 4),
        "train_loss_last50": round(sum(tail) / len(tail), 4),
        "validation_tokens": int(val_blocks.numel()),
        "validation_perplexity_trained": round(trained_ppl, 2),
        "validation_perplexity_untrained": round(untrained_ppl, 2),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }  # fmt: skip
    logger.info("%s: trained in %.0f s, validation perplexity %.1f (untrained %.1f)", recipe.name, train_seconds, trained_ppl, untrained_ppl)
    return model, figures


def save_model(model: Any, tokenizer: Any, figures: dict[str, Any], target: Path) -> None:
    """Save model (float16 safetensors), tokenizer and training.json into ``target``, replacing it atomically."""
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.bos_token_id = tokenizer.bos_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.to(torch.float16).save_pretrained(staging, safe_serialization=True)
        model.to(torch.float32)
        tokenizer.save_pretrained(staging)
        _portable_tokenizer_class(staging / "tokenizer_config.json")
        (staging / "training.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        figures["size_bytes"] = sum(f.stat().st_size for f in staging.iterdir())
        (staging / "training.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
        for path in (staging, *staging.iterdir()):
            _publish(path)
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _portable_tokenizer_class(path: Path) -> None:
    """Name the tokenizer class ``PreTrainedTokenizerFast``: every transformers version knows it.

    transformers 5 writes ``TokenizersBackend``, which 4.x cannot resolve; in 5.x the two are the same class.
    """
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---- docs ----------------------------------------------------------------------------------------------
def write_docs(out: Path, command: str, build_seconds: float, ran: str) -> None:
    """Write docs/embedded-models.md from the training.json files and corpus found under ``out``."""
    rows = []
    for recipe in RECIPES.values():
        record = out / "models" / recipe.name / "training.json"
        if record.exists():
            rows.append(json.loads(record.read_text(encoding="utf-8")))
    corpus_bytes = sum(f.stat().st_size for f in (out / "corpus").glob("*.txt.gz"))
    total_bytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    table = "\n".join(
        f"| `{r['name']}` | {r['architecture']} | {r['parameters']:,} | {r['size_bytes'] / 1e6:.2f} MB "
        f"| {r['steps']} | {r['tokens_seen']:,} ({r['epochs']} epochs) | {r['train_seconds']:.0f} s "
        f"| {r['train_loss_last50']:.2f} | **{r['validation_perplexity_trained']:.1f}** "
        f"| {r['validation_perplexity_untrained']:.0f} |"
        for r in rows
    )
    seed = rows[0]["seed"] if rows else DEFAULT_SEED
    text = DOCS_TEMPLATE.format(
        table=table or "| (no model built yet) |",
        corpus_mb=corpus_bytes / 1e6,
        total_mb=total_bytes / 1e6,
        command=command,
        build_seconds=build_seconds,
        ran=ran,
        seed=seed,
        vocab=VOCAB_SIZE,
        block=BLOCK_SIZE,
        batch=rows[0]["batch_size"] if rows else BATCH_SIZE,
        lr=rows[0]["optimizer"]["lr"] if rows else LEARNING_RATE,
        warmup=WARMUP_STEPS,
        min_lr=MIN_LR_RATIO,
        wd=WEIGHT_DECAY,
        clip=GRAD_CLIP,
        threads=rows[0]["threads"] if rows else THREADS,
        torch=rows[0]["torch"] if rows else "?",
    )
    _publish(atomic_write_text(DOCS_PATH, text))
    logger.info("wrote %s", DOCS_PATH)


DOCS_TEMPLATE = """# Embedded offline models and corpus

The package ships a small English corpus and two tiny causal language models that we trained on it, so that
every notebook runs with no network at all (the Hugging Face Hub unreachable, `HF_HUB_OFFLINE=1`, a CI
machine). They are the `"auto"` choice when the hub cannot be reached:

```python
from colab_helpers import load_model, load_text_dataset
model, tokenizer = load_model("embedded-gpt2")   # or "embedded-llama"; float32, eval mode
data = load_text_dataset("embedded")             # .train / .validation: lists of paragraphs
```

They are toys: they write Jargon-File-flavoured English of a sort, nowhere near GPT-2. They are meant for
exercising the pipeline (head importance, pruning, LoRA recovery, plots) in seconds on a CPU, with
perplexities that move for real reasons, not for judging pruning methods.

## The corpus
*The Jargon File* 4.4.7 (public domain), from the Debian package `jargon-text`, cleaned to plain paragraphs
and split deterministically by paragraph: every 20th paragraph (index % 20 == 19) to validation, the rest to
train (about 95 / 5). Details, licence notice and split sizes: `colab_helpers/embedded/corpus/SOURCE.md`.
Compressed size {corpus_mb:.2f} MB.

## The models
Both use the same byte-level BPE tokenizer (the `tokenizers` library), trained on the train split:
{vocab} entries, one special token `<|endoftext|>` (id 0) used as bos, eos and pad. `load_model` sets
`padding_side="left"`, the right side for batched generation with a decoder-only model (attention masks make
it harmless for loss computation too). No bos token is added to encoded text: in training every paragraph was
preceded by `<|endoftext|>`, so prepend it yourself to start "at a paragraph boundary" if you like.

- `embedded-gpt2`: `GPT2Config`, 4 layers, 4 heads of width 32 (n_embd 128), 256 positions, dropout off,
  tied input/output embeddings (GPT-2's default).
- `embedded-llama`: `LlamaConfig`, 4 layers, hidden 128, grouped-query attention with 8 query heads and 2
  key/value heads (head_dim 16), SwiGLU MLP of width 344, RoPE, RMSNorm, tied embeddings, 256 positions.

Weights are stored as float16 safetensors (to keep the package small) and loaded as float32.

| model | architecture | parameters | size on disk | steps | tokens seen | training time | train loss (last 50 steps) | validation perplexity, trained | validation perplexity, untrained |
|---|---|---:|---:|---:|---:|---:|---:|---:|---:|
{table}

"Untrained" is the same architecture at its random initialisation with the same seed, i.e. the starting
point of training; it sits near the vocabulary size ({vocab}), as it should. Perplexity is measured on
non-overlapping {block}-token blocks of the validation split's token stream. All embedded assets together:
{total_mb:.2f} MB.

## Training recipe
Seed {seed} (`torch.manual_seed` before initialisation; a seeded `torch.Generator` fixes the data order),
CPU (torch threads: {threads}), float32. Train split tokenised into one stream (each paragraph preceded by
`<|endoftext|>`), cut into non-overlapping blocks of {block} tokens, shuffled each epoch; batch {batch}.
AdamW (lr {lr}, betas 0.9/0.95, weight decay {wd} on matrices only), {warmup} warm-up steps then cosine decay
to {min_lr} x lr, gradient clipping at {clip}. Built with torch {torch}. Per-model figures (loss, time,
perplexities, versions) are in each model's `training.json`.

## Rebuilding
```bash
apt-get install -y jargon-text        # the corpus source (Debian/Ubuntu)
{command}
```
`--jargon PATH` names the Jargon File (default: where `dpkg -L jargon-text` says it is),
`--only corpus|gpt2|llama` rebuilds one part, `--steps N` changes the training length, `--seed S` the seed,
`--batch-size`, `--lr` and `--threads` the rest of the recipe, `--out DIR` the output directory (the docs
table is rewritten only for the package's own directory). Every file is written atomically. The corpus files are byte-identical on
every rebuild; the weights are reproducible on the same machine and torch version (other CPUs may differ in
the last bits). The last run, `{ran}`, took {build_seconds:.0f} s here, training times in the table
included, on a 2-core CPU machine shared with other jobs (on an idle one expect about 2-3 minutes a model).

## Licence
The corpus is public domain (the Jargon File's own notice; please cite "Jargon File 4.4.7"). The tokenizer
and both models were trained by this project from scratch on that corpus and are released under the project's
MIT licence.
"""


# ---- main ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """Parse arguments, rebuild the requested parts, return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps per model")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed for initialisation and data order")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "colab_helpers" / "embedded", help="output directory")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="sequences of %d tokens per step" % BLOCK_SIZE)
    parser.add_argument("--lr", type=float, default=LEARNING_RATE, help="peak AdamW learning rate")
    parser.add_argument("--threads", type=int, default=THREADS, help="torch CPU threads (the build machine is shared)")
    parser.add_argument("--only", choices=["corpus", "gpt2", "llama"], help="rebuild only this part")
    parser.add_argument("--jargon", type=Path, help=f"the corpus source: {JARGON_FILE} of Debian's {JARGON_PACKAGE} "
                        f"package (default: where `dpkg -L {JARGON_PACKAGE}` says it is)")
    args = parser.parse_args(argv)
    for flag, value in (("--steps", args.steps), ("--batch-size", args.batch_size), ("--threads", args.threads)):
        if value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")
    if not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if args.only in (None, "corpus"):
        args.jargon = args.jargon or find_jargon()
        if args.jargon is None:
            parser.error(f"the corpus source was not found: install the Jargon File with {JARGON_INSTALL}, or pass "
                         f"the path of its {JARGON_FILE} with --jargon PATH")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    started = time.perf_counter()
    out: Path = args.out.resolve()
    if args.only in (None, "corpus"):
        build_corpus(out, args.jargon)
    if args.only != "corpus":
        import torch

        torch.set_num_threads(args.threads)
        train, validation = read_split(out, "train"), read_split(out, "validation")
        tokenizer = train_tokenizer(train)
        train_blocks = to_blocks(token_stream(tokenizer, train), BLOCK_SIZE)
        val_blocks = to_blocks(token_stream(tokenizer, validation), BLOCK_SIZE)
        logger.info("tokens: train %d blocks, validation %d blocks of %d", train_blocks.shape[0], val_blocks.shape[0], BLOCK_SIZE)
        for key in ([args.only] if args.only else list(RECIPES)):
            recipe = RECIPES[key]
            model, figures = train_model(
                recipe, train_blocks, val_blocks, steps=args.steps, seed=args.seed, batch_size=args.batch_size, lr=args.lr
            )
            save_model(model, tokenizer, figures, out / "models" / recipe.name)
    if out == (REPO_ROOT / "colab_helpers" / "embedded").resolve():
        changed = [
            f"--{flag} {value}"
            for flag, value, default in (
                ("steps", args.steps, DEFAULT_STEPS),
                ("seed", args.seed, DEFAULT_SEED),
                ("batch-size", args.batch_size, BATCH_SIZE),
                ("lr", args.lr, LEARNING_RATE),
                ("threads", args.threads, THREADS),
            )
            if value != default
        ]
        command = " ".join(["HF_HUB_OFFLINE=1 python scripts/build_embedded.py", *changed])
        ran = "python scripts/build_embedded.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_docs(out, command, time.perf_counter() - started, ran.strip())
    logger.info("done in %.0f s", time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
