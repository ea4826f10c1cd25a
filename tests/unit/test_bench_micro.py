"""The micro-benchmarks still run against the current scheduler and detokenizer APIs."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import bench_detokenizer, bench_sampler, bench_scheduler
from radixrt.worker import sampler


def test_bench_scheduler_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_scheduler.main(["--batch-sizes", "1,4", "--steps", "5", "--prompt-len", "40"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n| ") == 4  # 2 batch sizes x cache on/off
    d = bench_scheduler.decode_steady(4, 40, 5, cache=True)
    assert d["us_per_step"] > 0 and d["us_per_token"] == pytest.approx(d["us_per_step"] / 4)


def test_bench_detokenizer_agrees_with_full_decode(default_model_dir: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # main() fails on any difference between incremental, naive and full decoding.
    assert bench_detokenizer.main(["--model", str(default_model_dir), "--lengths", "50,333",
                                   "--min-time", "0"]) == 0
    assert "| 333 |" in capsys.readouterr().out


def test_bench_sampler_runs_against_a_baseline_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_sampler.main(["--batches", "1,3", "--vocab", "600", "--reps", "2",
                               "--baseline-sampler", sampler.__file__]) == 0
    out = capsys.readouterr().out
    assert "| baseline ms | race ms | cdf ms |" in out
    assert out.count("\n| 3 | ") == len(bench_sampler.SETTINGS)
