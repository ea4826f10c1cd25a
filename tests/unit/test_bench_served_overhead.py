"""bench.bench_served_overhead against a real radixrt server on a tiny random model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from bench import bench_served_overhead


def test_served_step_is_split_into_forward_exposed_and_each_process_cpu(
        make_tiny_model: Callable[..., Path], tmp_path: Path) -> None:
    model = make_tiny_model("llama")
    out = tmp_path / "served.json"
    assert bench_served_overhead.main([
        "--model", str(model), "--batch-sizes", "1,2", "--output", "64", "--rounds", "1",
        "--nice", "frontend=1", "--log", str(tmp_path / "server.log"),
        "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["batch"] for r in rows] == [1, 2]
    for r in rows:
        # 64 tokens per stream: at least 63 decode steps (both streams share them at batch 2).
        assert r["steps"] >= 63
        assert 0 < r["forward_ms"] < r["served_ms"]
        assert r["exposed_ms"] >= 0
        # /proc found the worker by its module (its main thread ran every step) and this
        # client; the other roles' columns are there, however small.
        assert r["cpu_ms worker main"] > 0 and r["cpu_ms client"] > 0
        assert all(r[f"cpu_ms {c}"] >= 0 for c in bench_served_overhead.COLUMNS)
