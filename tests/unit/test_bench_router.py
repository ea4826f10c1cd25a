"""bench/bench_router.py's report: its table, and the docs section it owns."""

from __future__ import annotations

from pathlib import Path

from bench.bench_router import ROUTER_BEGIN, ROUTER_END, render, update_docs

RESULT = {
    "started": 0.0, "argv": ["--clients", "4"], "model": "M", "dtype": "float32",
    "threads_per_replica": 1,
    "workload": {"description": "4 clients x 2 rounds"},
    "rows": [
        {"setup": "one replica", "ok": 8, "sent": 8, "cache_hit_rate": 0.6,
         "hit_rate_rounds_2plus": 0.8, "ttft_p50_ms": 100.0, "duration_s": 5.0,
         "vs_one_replica": 1.0},
        {"setup": "two replicas, cache_aware", "ok": 8, "sent": 8, "cache_hit_rate": 0.58,
         "hit_rate_rounds_2plus": 0.78, "hit_rate_by_round": [0.1, 0.78], "ttft_p50_ms": 80.0, "duration_s": 4.0,
         "vs_one_replica": 0.58 / 0.6, "per_replica": [5.0, 4.0],
         "decisions": {"prefix_match": 4.0, "short_match": 4.0}},
    ],
    "kill": {"done_at_kill": 4, "sent": 8, "in_flight_at_kill": 2.0, "failed": 2,
             "failed_before_output": 1, "failed_status": ["502"], "failed_mid_stream": 1,
             "skipped": 1, "ok": 5, "sent_after_kill": 2, "failed_after_kill": 0,
             "errors": ["HTTP 502: replica failed"], "per_replica": [6.0, 3.0]},
}


def test_render_reports_every_run() -> None:
    text = render(RESULT)
    assert ("| two replicas, cache_aware | 8 / 8 | 58.0% | 97% | 78.0% | 10% / 78% | 80 | 4.0 "
            "| 5 / 4 |") in text
    assert "prefix_match 4, short_match 4" in text
    assert "2 requests were in flight" in text and "2 requests sent after the kill, 0 failed" \
        in text
    assert "1 with an OpenAI-style error answer (502) before any output, 1 with an error " \
        "event" in text


def test_update_docs_owns_only_its_block(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# B\n\n<!-- notes:begin -->\nnotes\n<!-- notes:end -->\n\n## Reproduce\n")
    update_docs(docs, "first")
    text = docs.read_text()
    # Inside run_suite's notes block (which run_suite carries over when it regenerates).
    assert text.index(ROUTER_BEGIN) < text.index("<!-- notes:end -->")
    assert "first" in text and "notes\n" in text and text.endswith("## Reproduce\n")
    update_docs(docs, "second")
    text = docs.read_text()
    assert "first" not in text and text.count(ROUTER_BEGIN) == 1 and text.count(ROUTER_END) == 1
    assert "second" in text and "## Reproduce" in text
