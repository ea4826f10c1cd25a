"""bench.metrics on hand-made traces whose throughput, percentiles and hit rate are known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.client import RequestRecord, RunResult, arrival_delays
from bench.metrics import (
    markdown_table,
    peer_checks,
    peer_comparison,
    peer_table,
    percentile,
    plot_summaries,
    round_table,
    summarize,
    target_checks,
    targets_table,
)


def rec(sid: str, turn: int, send: float, chunks: list[float], end: float, prompt: int,
        completion: int, cached: int | None, error: str | None = None) -> RequestRecord:
    return RequestRecord(workload="w", sid=sid, turn=turn, api="chat", send_time=send,
                         chunk_times=chunks, end_time=end, prompt_tokens=prompt,
                         completion_tokens=completion, cached_tokens=cached, error=error)


def trace() -> RunResult:
    # Four requests over 10 s: TTFTs 0.1, 0.2, 0.3, 0.4 s; every chunk gap 0.05 s except
    # request d's 0.25 s gap; one failed request that must not count anywhere.
    records = [
        rec("a", 0, 0.0, [0.1, 0.15, 0.2], 0.2, 100, 3, 0),
        rec("a", 1, 1.0, [1.2, 1.25, 1.3], 1.3, 200, 3, 96),
        rec("b", 0, 2.0, [2.3, 2.35, 2.4], 2.4, 100, 3, 32),
        rec("b", 1, 9.0, [9.4, 9.45, 9.7], 10.0, 200, 3, 160),
        rec("c", 0, 3.0, [], 3.5, 0, 0, None, error="HTTP 500: boom"),
    ]
    return RunResult(workload="w", records=records, duration=10.0, started_at=0.0)


def test_throughput_and_counts() -> None:
    s = summarize(trace(), system="x")
    assert (s["completed"], s["failed"], s["num_requests"]) == (4, 1, 5)
    assert s["errors"] == ["HTTP 500: boom"]
    assert s["request_throughput"] == pytest.approx(0.4)
    assert s["input_tokens"] == 600 and s["output_tokens"] == 12
    assert s["input_throughput"] == pytest.approx(60.0)
    assert s["output_throughput"] == pytest.approx(1.2)
    assert s["total_token_throughput"] == pytest.approx(61.2)
    # (96 + 32 + 160) / (100 + 200 + 100 + 200)
    assert s["cache_hit_rate"] == pytest.approx(288 / 600)
    # E2E latencies 0.2 + 0.3 + 0.4 + 1.0 over 10 s
    assert s["concurrency"] == pytest.approx(0.19)


def test_latency_percentiles() -> None:
    s = summarize(trace())
    ttft = s["ttft_ms"]
    assert ttft["mean"] == pytest.approx(250.0)
    # Linear interpolation over [100, 200, 300, 400]: p50 = 250, p90 = 370, p99 = 397.
    assert (ttft["p50"], ttft["p90"], ttft["p99"]) == pytest.approx((250.0, 370.0, 397.0))
    # Gaps: seven of 50 ms and one of 250 ms.
    itl = s["itl_ms"]
    assert itl["p50"] == pytest.approx(50.0)
    assert itl["p99"] == pytest.approx(float(np.percentile([50] * 7 + [250], 99)))
    assert itl["mean"] == pytest.approx((7 * 50 + 250) / 8)
    # TPOT = (end - first chunk) / 2: 50, 50, 50, 300 ms
    assert s["tpot_ms"]["p50"] == pytest.approx(50.0)
    assert s["tpot_ms"]["mean"] == pytest.approx(112.5)
    assert s["e2e_ms"]["p50"] == pytest.approx(350.0)


def test_by_round() -> None:
    s = summarize(trace())
    r = s["ttft_by_round"]
    assert set(r) == {"0", "1"}
    assert r["0"]["count"] == 2 and r["0"]["p50"] == pytest.approx(200.0)  # 100, 300 ms
    assert r["1"]["p50"] == pytest.approx(300.0)  # 200, 400 ms
    assert r["0"]["cache_hit_rate"] == pytest.approx(32 / 200)
    assert r["1"]["cache_hit_rate"] == pytest.approx(256 / 400)
    assert s["ttft_rounds2plus_ms"]["p50"] == pytest.approx(300.0)


def test_edge_cases() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    empty = summarize(RunResult("w", [], 0.0, 0.0))
    assert empty["request_throughput"] == 0.0 and empty["ttft_ms"]["p50"] is None
    assert empty["cache_hit_rate"] is None
    # A server that reports no cached_tokens has no hit rate (not 0 %).
    r = rec("a", 0, 0.0, [0.1], 0.1, 10, 1, None)
    assert summarize(RunResult("w", [r], 1.0, 0.0))["cache_hit_rate"] is None
    # Without usage the output is counted in chunks.
    r.completion_tokens = None
    assert summarize(RunResult("w", [r], 1.0, 0.0))["output_tokens"] == 1


def test_records_round_trip_json() -> None:
    run = trace()
    back = RunResult.from_dict(json.loads(json.dumps(run.to_dict())))
    assert back == run


def test_arrivals() -> None:
    assert arrival_delays(3, None, 0) == [0.0, 0.0, 0.0]
    a = arrival_delays(2000, 4.0, 7)
    assert a == arrival_delays(2000, 4.0, 7) and a != arrival_delays(2000, 4.0, 8)
    assert a[0] == 0.0 and all(x < y for x, y in zip(a, a[1:], strict=False))
    # Poisson at 4/s: mean gap 0.25 s.
    assert np.mean(np.diff(a)) == pytest.approx(0.25, rel=0.1)


def summaries_for_targets() -> list[dict]:
    def s(system: str, workload: str, thr: float, ttft: float, later: float | None = None) -> dict:
        return {"system": system, "workload": workload, "output_throughput": thr,
                "ttft_ms": {"p50": ttft}, "ttft_rounds2plus_ms": None if later is None else {"p50": later}}

    return [s("radixrt", "multi_turn", 30.0, 100.0, 50.0), s("radixrt-nocache", "multi_turn", 10.0, 400.0, 300.0),
            s("radixrt", "unique", 10.4, 100.0), s("radixrt-nocache", "unique", 10.0, 100.0),
            s("radixrt", "shared_prefix", 20.0, 100.0), s("radixrt-nocache", "shared_prefix", 10.0, 200.0),
            s("hf", "unique", 2.0, 900.0)]


def test_target_checks() -> None:
    checks = {(c["workload"], c["metric"]): c for c in target_checks(summaries_for_targets())}
    mt = checks[("multi_turn", "throughput cache on / off")]
    assert mt["value"] == pytest.approx(3.0) and mt["passed"] is True
    assert checks[("multi_turn", "TTFT p50 rounds 2+, on / off")]["value"] == pytest.approx(1 / 6)
    assert checks[("shared_prefix", "throughput cache on / off")]["passed"] is False
    assert checks[("unique", "throughput cache on / off")]["passed"] is True  # 4 % faster
    slow = summaries_for_targets()
    slow[2]["output_throughput"] = 9.4  # 6 % slower than cache off
    assert [c["passed"] for c in target_checks(slow)
            if c["workload"] == "unique" and c["metric"] == "throughput cache on / off"] == [False]
    assert checks[("unique", "throughput radixrt / hf")]["value"] == pytest.approx(5.2)
    assert "**no**" in targets_table(list(checks.values()))


def test_tables_and_plots(tmp_path: Path) -> None:
    s1 = summarize(trace(), system="radixrt")
    s2 = summarize(trace(), system="hf")
    table = markdown_table([s1, s2])
    lines = table.splitlines()
    assert len(lines) == 4 and all(line.count("|") == 12 for line in lines)
    assert "| radixrt | w | 4 / 5 |" in table and "48 %" in table
    assert "Round 2" in round_table([s1, s2])
    files = plot_summaries([s1, s2], tmp_path)
    assert [f.name for f in files] == ["throughput.png", "ttft_by_round.png"]
    assert all(f.stat().st_size > 1000 for f in files)


def two_round_run(system_scale: float, cached: int, workload: str = "multi_turn") -> RunResult:
    """Two clients x 2 rounds of 4 tokens each; every time scaled by system_scale."""
    k = system_scale
    records = [
        RequestRecord(workload=workload, sid=sid, turn=turn, api="chat", send_time=k * t,
                      chunk_times=[k * (t + f), k * (t + f + 0.1), k * (t + f + 0.2),
                                   k * (t + f + 0.3)],
                      end_time=k * (t + f + 0.3), prompt_tokens=100 * (turn + 1),
                      completion_tokens=4, cached_tokens=0 if turn == 0 else cached)
        for sid, f in (("a", 0.2), ("b", 0.4)) for turn, t in ((0, 0.0), (1, 1.0))]
    return RunResult(workload=workload, records=records, duration=k * 2.0, started_at=0.0)


def test_peer_comparison_and_targets() -> None:
    """radixrt against llama-server from summaries the metrics code built: radixrt takes half
    the time everywhere (2.0x throughput, TTFT 0.5x)."""
    ours = [summarize(two_round_run(1.0, 190, wl), system="radixrt")
            for wl in ("multi_turn", "unique")]
    peer = [summarize(two_round_run(2.0, 100, wl), system="llamacpp")
            for wl in ("multi_turn", "unique")]
    rows = peer_comparison(ours + peer)
    assert [r["workload"] for r in rows] == ["multi_turn", "unique"]
    mt = rows[0]
    assert mt["throughput"] == pytest.approx((8.0, 4.0)) and mt["throughput_ratio"] == 2.0
    # Rounds 2+ only: TTFTs 0.2 / 0.4 s (ours), 0.4 / 0.8 s (peer) -> p50 300 vs 600 ms.
    assert mt["ttft_scope"] == "rounds 2+"
    assert mt["ttft_p50_ms"] == pytest.approx((300.0, 600.0)) and mt["ttft_ratio"] == 0.5
    assert mt["cache_hit_rate"] == pytest.approx((380 / 600, 200 / 600))
    assert mt["completion_tokens"] == (16, 16) and mt["prompt_tokens"] == (600, 600)
    assert rows[1]["ttft_scope"] == "all"

    checks = {(c["workload"], c["metric"]): c for c in target_checks(ours + peer)}
    thr = checks[("multi_turn", "throughput radixrt / llamacpp")]
    assert (thr["value"], thr["target"], thr["passed"]) == (2.0, ">= 2.0", True)
    ttft = checks[("multi_turn", "TTFT p50 rounds 2+, radixrt / llamacpp")]
    assert (ttft["value"], ttft["passed"]) == (0.5, False)  # needs <= 1/3
    assert checks[("unique", "throughput radixrt / llamacpp")]["target"] == ">= 1.0"
    assert ("unique", "TTFT p50 rounds 2+, radixrt / llamacpp") not in checks
    assert all(checks[(wl, "completion tokens radixrt / llamacpp")]["passed"]
               for wl in ("multi_turn", "unique"))

    # One reply cut short (or one request failed) breaks token parity.
    short = two_round_run(2.0, 100)
    short.records[0].completion_tokens = 3
    failed = two_round_run(2.0, 100)
    failed.records[0].error = "HTTP 500"
    for bad in (short, failed):
        rows = peer_comparison([ours[0], summarize(bad, system="llamacpp")])
        assert [c["passed"] for c in peer_checks(rows) if "completion" in c["metric"]] == [False]
    # A slower radixrt misses the bar.
    slow = peer_comparison([summarize(two_round_run(1.5, 190), system="radixrt"), peer[0]])
    assert [c["passed"] for c in peer_checks(slow) if "throughput" in c["metric"]] == [False]

    table = peer_table(peer_comparison(ours + peer))
    lines = table.splitlines()
    assert len(lines) == 4 and len({line.count("|") for line in lines}) == 1
    assert "| multi_turn | 8.0 / 4.0 | **2.00x** | 300 / 600 (rounds 2+) | 0.50 |" in table
    assert "63 % / 33 %" in table and "16 / 16" in table
    assert peer_table([]) == ""
