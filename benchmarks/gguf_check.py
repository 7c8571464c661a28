"""GGUF in the real llama.cpp: SmolLM2-135M-Instruct unpruned and compressed to 75%, exported as GGUF (f16, q8_0),
loaded by llama.cpp (built by `make llama-cpp`), compared with the model in memory.

Reports, per file: next-token agreement with the in-memory model (greedy next token at every position of held-out
text, teacher-forced), generation tokens/s (llama-bench: 128 tokens, prompt 32, 1 thread, 5 runs), size on disk. Writes
benchmarks/gguf_check.json and the "GGUF" section of docs/deployment-results.md.

    make gguf-check            (or: python benchmarks/gguf_check.py [--quick])

Needs the llama.cpp build in .cache/llama-cpp (LLAMA_CPP_DIR to point elsewhere); offline.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP_DIR = Path(os.environ.get("LLAMA_CPP_DIR", ROOT / ".cache" / "llama-cpp"))
RESULTS = Path(__file__).with_name("gguf_check.json")
DOC = ROOT / "docs" / "deployment-results.md"
SECTION = "## GGUF"
TARGET = 0.75  # compressed model: share of parameters kept
AGREEMENT_GOAL = 0.95
SPEEDUP_GOAL = 1.25


def llama_cpp_available() -> bool:
    """True when `make llama-cpp` has built the binding and llama-bench."""
    return (LLAMA_CPP_DIR / "python" / "llama_cpp" / "lib").is_dir() and _bench_binary().is_file()


def _bench_binary() -> Path:
    return LLAMA_CPP_DIR / "build" / "bin" / "llama-bench"


def _binding() -> Any:
    path = str(LLAMA_CPP_DIR / "python")
    if path not in sys.path:
        sys.path.insert(0, path)
    import llama_cpp

    return llama_cpp


def llama_cpp_logits(gguf_file: str | Path, rows: list[list[int]], threads: int = 1) -> list[Any]:
    """Logits (numpy ``[tokens, vocab]``) that llama.cpp computes for each row of token ids, one context per file."""
    import numpy as np

    llama = _binding().Llama(model_path=str(gguf_file), n_ctx=max(len(r) for r in rows) + 8, logits_all=True,
                             n_threads=threads, n_batch=512, verbose=False)  # fmt: skip
    out = []
    for row in rows:
        llama.reset()
        llama.eval(row)
        out.append(np.array(llama.scores[: len(row)], dtype=np.float32))
    llama.close()
    return out


def bench_tokens_per_s(files: list[Path], threads: int = 1, tokens: int = 128) -> dict[str, dict[str, float]]:
    """llama-bench's prompt (32 tokens) and generation (``tokens``) speeds, tokens/s, on ``threads`` threads:
    ``{file: {"prompt": .., "generate": ..}}``. One call for every file, so that they run close together in time."""
    command = [str(_bench_binary()), "-p", "32", "-n", str(tokens), "-t", str(threads), "-r", "5", "-o", "json"]
    for file in files:
        command += ["-m", str(file)]
    rows = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    speeds: dict[str, dict[str, float]] = {str(file): {} for file in files}
    for r in rows:
        speeds[r["model_filename"]]["prompt" if r["n_prompt"] else "generate"] = float(r["avg_ts"])
    return speeds


def agreement(model: Any, gguf_file: Path, rows: list[list[int]]) -> dict[str, float]:
    """Share of positions where llama.cpp's next token equals the in-memory model's; max logit error / logit scale."""
    import torch

    ours = []
    with torch.no_grad():
        for row in rows:
            ours.append(model(torch.tensor([row])).logits[0].float().numpy())
    theirs = llama_cpp_logits(gguf_file, rows)
    same = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(ours, theirs))
    total = sum(len(r) for r in rows)
    error = max(float(abs(a - b).max() / abs(a).max()) for a, b in zip(ours, theirs))
    return {"agreement": same / total, "positions": total, "relative_logit_error": error}


def hf_logit_error(model: Any, tokenizer: Any, folder: Path, rows: list[list[int]]) -> float:
    """Export ``model`` as a transformers folder, load it in a Python where colab_helpers cannot be imported, and
    return the largest logit difference over the logits' scale."""
    import torch

    from colab_helpers.deploy.export import export_model

    export_model(model, folder / "hf", tokenizer=tokenizer)
    torch.save(torch.tensor(rows), folder / "ids.pt")
    code = ("import sys, torch; sys.modules['colab_helpers'] = None\n"
            "from transformers import AutoModelForCausalLM\n"
            "m = AutoModelForCausalLM.from_pretrained('hf', trust_remote_code=True, dtype=torch.float32).eval()\n"
            "with torch.no_grad(): torch.save(m(torch.load('ids.pt')).logits, 'out.pt')\n")  # fmt: skip
    subprocess.run([sys.executable, "-I", "-c", code], check=True, cwd=folder)
    with torch.no_grad():
        ours = model(torch.tensor(rows)).logits
    return float((torch.load(folder / "out.pt") - ours).abs().max() / ours.abs().max())


def _models(quick: bool) -> dict[str, tuple[Any, Any]]:
    """The unpruned model and its compression to TARGET (calibrated on the embedded corpus)."""
    import copy

    import torch

    from colab_helpers import compress, load_model
    from colab_helpers.evaluation import load_text_dataset, tokenize_texts

    model, tokenizer = load_model("embedded-llama" if quick else "smollm2-135m-instruct", device="cpu")
    data = load_text_dataset("embedded")
    seq, rows = 64, 16
    ids = tokenize_texts(tokenizer, data.train, max_tokens=rows * seq)[: rows * seq].view(rows, seq)
    batches = [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in ids.split(4)]
    compressed = copy.deepcopy(model)
    compress(compressed, batches[:2], TARGET, eval_batches=batches[2:], progress=False)
    return {"unpruned": (model, tokenizer), f"compressed {TARGET:.0%}": (compressed, tokenizer)}


def _held_out(tokenizer: Any, count: int = 8, length: int = 64) -> list[list[int]]:
    from colab_helpers.evaluation import load_text_dataset, tokenize_texts

    ids = tokenize_texts(tokenizer, load_text_dataset("embedded").validation, max_tokens=count * length)
    return ids[: count * length].view(count, length).tolist()


def run(quick: bool = False, threads: int = 1) -> dict[str, Any]:
    """Export, load in llama.cpp, measure; return the results (also written to RESULTS and DOC)."""
    from colab_helpers.deploy.export import export_model
    from colab_helpers.runtime.files import atomic_write_text

    if not llama_cpp_available():
        raise SystemExit(f"llama.cpp is not built in {LLAMA_CPP_DIR}: run `make llama-cpp` first")
    rows_out, hf_error = [], float("nan")
    with tempfile.TemporaryDirectory() as folder:
        for name, (model, tokenizer) in _models(quick).items():
            held_out = _held_out(tokenizer)
            for quant in ("f16", "q8_0"):
                started = time.perf_counter()
                result = export_model(model, Path(folder) / f"{name.split()[0]}-{quant}.gguf", format="gguf",
                                      quant=quant, tokenizer=tokenizer)  # fmt: skip
                row = {"model": name, "quant": quant, "architecture": _gguf_arch(result.path),
                       "parameters": result.parameters, "bytes": result.bytes,
                       "export_s": time.perf_counter() - started}  # fmt: skip
                row |= agreement(model, Path(result.path), held_out)
                rows_out.append(row | {"file": result.path})
                print(json.dumps(row), flush=True)
            if name != "unpruned":
                hf_error = hf_logit_error(model, tokenizer, Path(folder), held_out)
        speeds = bench_tokens_per_s([Path(r["file"]) for r in rows_out], threads)
        for row in rows_out:
            row |= {f"{k}_tokens_per_s": v for k, v in speeds[row.pop("file")].items()}
    hf_check = {"name": "compressed hf export: max logit difference / scale", "target": 1e-4, "measured": hf_error,
                "passed": hf_error <= 1e-4}  # fmt: skip
    results = {"quick": quick, "threads": threads, "cores": os.cpu_count(), "load_average": os.getloadavg()[0],
               "rows": rows_out, "checks": [*_checks(rows_out), hf_check],
               "hf_export_relative_logit_error": hf_error}  # fmt: skip
    if not quick:  # the toy model's figures say nothing about deployment: printed, not recorded
        atomic_write_text(RESULTS, json.dumps(results, indent=2) + "\n")
        write_section(results)
    return results


def _gguf_arch(path: str) -> str:
    import gguf

    field = gguf.GGUFReader(path).fields["general.architecture"]
    return bytes(field.parts[field.data[0]]).decode()


def _checks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    checks = []
    for quant in ("f16", "q8_0"):
        base, small = (r for r in rows if r["quant"] == quant)
        speedup = small["generate_tokens_per_s"] / base["generate_tokens_per_s"]
        checks.append({"name": f"compressed {quant}: next-token agreement", "target": AGREEMENT_GOAL,
                       "measured": small["agreement"], "passed": small["agreement"] >= AGREEMENT_GOAL})  # fmt: skip
        checks.append({"name": f"compressed vs unpruned {quant}: generation tokens/s", "target": SPEEDUP_GOAL,
                       "measured": speedup, "passed": speedup >= SPEEDUP_GOAL})  # fmt: skip
    return checks


def write_section(results: dict[str, Any]) -> None:
    """Replace (or add) the GGUF section of docs/deployment-results.md, leaving the other sections as they are."""
    from colab_helpers.runtime.files import atomic_write_text

    lines = [SECTION, "", "Regenerated by `make gguf-check` (`benchmarks/gguf_check.py`"
             + (" --quick" if results["quick"] else "") + f"); llama.cpp on {results['threads']} thread(s) of "
             f"{results['cores']} CPU cores, 1-minute load average {results['load_average']:.1f} at the end (other "
             "work on the machine lowers every tokens/s alike: compare the ratios within one run). Agreement: "
             "llama.cpp's greedy next token equals the in-memory model's at each of 8 x 64 held-out positions "
             "(teacher-forced); tokens/s from llama-bench (prompt 32, generate 128, 5 runs, the four files in one "
             "call).", "",
             "| model | quant | GGUF arch | parameters | size (MB) | agreement | max logit error / scale "
             "| prompt tok/s | generate tok/s |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results["rows"]:
        lines.append(f"| {r['model']} | {r['quant']} | {r['architecture']} | {r['parameters']:,} | "
                     f"{r['bytes'] / 1e6:.1f} | {r['agreement']:.1%} | {r['relative_logit_error']:.3f} | "
                     f"{r['prompt_tokens_per_s']:.0f} | {r['generate_tokens_per_s']:.0f} |")  # fmt: skip
    lines += ["", f"The compressed model's transformers export (`--format hf`), loaded by plain transformers with "
              f"colab_helpers unimportable: largest logit difference / logit scale "
              f"{results['hf_export_relative_logit_error']:.1e} (goal <= 1e-4).", ""]
    lines += ["| check | target | measured | passed |", "|---|---|---|---|"]
    lines += [f"| {c['name']} | {c['target']} | {c['measured']:.3g} | {'yes' if c['passed'] else 'no'} |"
              for c in results["checks"]]  # fmt: skip
    text = DOC.read_text(encoding="utf-8") if DOC.is_file() else "# Deployment results\n\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |^<!-- |\Z)", re.S | re.M)
    section = "\n".join(lines) + "\n\n"
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    atomic_write_text(DOC, text.rstrip("\n") + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the embedded toy Llama instead of SmolLM2 (seconds)")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (default 1)")
    args = parser.parse_args()
    results = run(args.quick, args.threads)
    print(json.dumps(results["checks"], indent=2))
    return 0 if all(c["passed"] for c in results["checks"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
