"""radixrt's Triton kernels for CUDA, checked on a CPU: triton_kernels_cases.py in a fresh
pytest under Triton's interpreter (see that file for why a fresh process)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_triton_kernels_under_the_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "",
         str(HERE / "triton_kernels_cases.py")],
        cwd=HERE.parents[1], env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 46 and "skipped" not in out, out[-2000:]
