"""--dtype auto on CPU: a measured bf16-vs-fp32 probe, cached per CPU, torch and shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from radixrt import dtype_probe
from radixrt.config import resolve_dtype


def test_probe_measures_once_then_reads_its_cache(tmp_path: Path, make_tiny_model,  # noqa: ANN001
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_tiny_model("llama")
    calls: list[list] = []
    real = dtype_probe.measure

    def counted(shapes: list) -> dict[str, float]:
        calls.append(shapes)
        return real(shapes, reps=1)

    monkeypatch.setattr(dtype_probe, "measure", counted)
    first = dtype_probe.cpu_dtype(path, cache_dir=tmp_path)
    assert first in ("float32", "bfloat16")
    # The tiny model's projections: qkv (4+2+2 heads x 16), o, gate_up, down.
    assert calls == [[(128, 64), (64, 64), (256, 64), (64, 128)]]
    data = json.loads((tmp_path / dtype_probe.CACHE_FILE).read_text())
    (key, entry), = data.items()
    assert key == dtype_probe.probe_key(calls[0]) and "torch" in key
    assert entry["dtype"] == first and set(entry["us"]) == {"float32", "bfloat16"}
    # The verdict follows the measurement.
    faster = "bfloat16" if entry["us"]["bfloat16"] < 0.9 * entry["us"]["float32"] else "float32"
    assert first == faster
    assert dtype_probe.cpu_dtype(path, cache_dir=tmp_path) == first
    assert len(calls) == 1  # read from the cache, not measured again
    # Another model (other shapes) gets its own entry.
    dtype_probe.cpu_dtype(None, cache_dir=tmp_path)
    assert len(calls) == 2 and len(json.loads((tmp_path / dtype_probe.CACHE_FILE).read_text())) == 2


def test_resolve_dtype_uses_the_cached_verdict(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A cached entry decides `auto` (here a hand-written bfloat16 verdict, which this test
    machine would not have measured necessarily); explicit names pass through."""
    monkeypatch.setenv("RADIXRT_CACHE_DIR", str(tmp_path))
    key = dtype_probe.probe_key(dtype_probe.model_shapes(None))
    (tmp_path / dtype_probe.CACHE_FILE).write_text(json.dumps({key: {"dtype": "bfloat16"}}))
    monkeypatch.setattr(dtype_probe, "measure", lambda shapes: pytest.fail("measured"))
    assert resolve_dtype("auto", "cpu") == "bfloat16"
    assert resolve_dtype("auto", "cuda") == "bfloat16"
    assert resolve_dtype("float32", "cpu") == "float32"
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float8", "cpu")


def test_reading_the_cache_imports_no_torch(tmp_path: Path) -> None:
    """The frontend resolves `auto` from the cache without importing torch."""
    key = dtype_probe.probe_key(dtype_probe.model_shapes(None))
    (tmp_path / dtype_probe.CACHE_FILE).write_text(json.dumps({key: {"dtype": "float32"}}))
    code = ("import sys; from radixrt.config import resolve_dtype; "
            "print(resolve_dtype('auto', 'cpu'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60,
                         env={**os.environ, "RADIXRT_CACHE_DIR": str(tmp_path)})
    assert out.stdout.split() == ["float32", "False"], out.stderr


def test_cpu_signature_names_the_deciding_flags() -> None:
    sig = dtype_probe.cpu_signature()
    assert "{" in sig and "}" in sig
    flags = open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n", 1)[0].split()
    assert ("avx512_bf16" in sig) == ("avx512_bf16" in flags)
    assert ("amx_bf16" in sig) == ("amx_bf16" in flags)
