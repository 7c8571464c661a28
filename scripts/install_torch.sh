#!/usr/bin/env bash
# Install torch into the venv whose python is $1, unless it imports already. torch is installed first and alone:
# any later requirement that admits a newer torch would otherwise pull a build pip picks for itself.
#   TORCH            the requirement (default torch==2.13.0, the version the suite is tested with)
#   PIP_TORCH_ARGS   extra pip arguments for it; when set, they decide where torch comes from
#   TORCH_CPU_INDEX  the CPU wheel index tried on machines without CUDA (default PyTorch's own)
# Why the CPU index: on Linux, PyPI's torch wheel is the CUDA build, which pulls the nvidia-* libraries with it
# (torch 2.13.0: a 502 MiB wheel, 2.6 GiB of downloads in all); the CPU wheel is 183 MiB.
set -euo pipefail
py=${1:?usage: install_torch.sh VENV_PYTHON}
torch_req=${TORCH:-torch==2.13.0}
cpu_index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

if "$py" -c "import torch" 2>/dev/null; then
  exit 0
fi
if [ -n "${PIP_TORCH_ARGS:-}" ]; then
  # shellcheck disable=SC2086  # word splitting is the point: several pip arguments
  "$py" -m pip install -q ${PIP_TORCH_ARGS} "$torch_req"
elif command -v nvidia-smi >/dev/null 2>&1; then
  "$py" -m pip install -q "$torch_req"  # a CUDA machine: PyPI's CUDA build is the one wanted
elif "$py" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1] + '/torch/', timeout=5)" "$cpu_index" 2>/dev/null; then
  "$py" -m pip install -q --index-url "$cpu_index" "$torch_req"
else
  echo "install_torch: no CUDA here and the CPU wheel index $cpu_index is unreachable, so $torch_req comes from" \
       "pip's own indexes. Where they hold only PyPI, that is the CUDA build (about 2.6 GiB of downloads)." \
       "To take the CPU wheel from elsewhere: make TORCH_CPU_INDEX=URL, or PIP_TORCH_ARGS='--index-url URL'." >&2
  "$py" -m pip install -q "$torch_req"
fi
"$py" -W ignore -c "import torch; print('install_torch: torch', torch.__version__, '(CUDA ' + torch.version.cuda + ')' if torch.version.cuda else '(CPU build)')"
