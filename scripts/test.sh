#!/usr/bin/env bash
# One command: install radixrt with its test tools, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
# Build the default model directory once, with progress, before the tests time anything.
python -m radixrt.default_model
RADIXRT_REQUIRE_NATIVE=1 python -m pytest -q "$@"
