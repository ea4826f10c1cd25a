"""bench/bench_ipc.py runs end to end: codec rows for the three per-step messages and a
socket round trip through a real echo process."""

from __future__ import annotations

import re

import pytest

from bench import bench_ipc


def test_bench_ipc_reports_codec_and_socket(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_ipc.main(["--batch", "2", "--context", "40", "--reps", "40"]) == 0
    out = capsys.readouterr().out
    for name in ("ForwardBatch", "StepResult", "TokenOutBatch"):
        row = re.search(rf"\| {name} \| ([\d.]+) \| ([\d.]+) \|", out)
        assert row and float(row[1]) > 0 and float(row[2]) > 0, out
    trip = re.search(r"at 40 tokens (\d+) / (\d+); one-byte frame (\d+) / (\d+)", out)
    assert trip and 0 < int(trip[1]) <= int(trip[2]) and 0 < int(trip[3]) <= int(trip[4]), out
