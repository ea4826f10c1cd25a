"""bench.client against the real HF baseline server (a subprocess) on a tiny random model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.client import OpenAIClient, Progress, RequestRecord, RunResult, run_workload
from bench.metrics import summarize
from bench.servers import ServerProcess, free_port, hf_baseline_cmd
from bench.workloads import Session, Workload, multi_turn, shared_prefix


@pytest.fixture(scope="module")
def hf_server(make_tiny_model: Callable[..., Path],
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    model = make_tiny_model("llama")
    port = free_port()
    log = tmp_path_factory.mktemp("hf-baseline") / "server.log"
    server = ServerProcess("hf", hf_baseline_cmd(str(model), port), port, log,
                           ready_path="/v1/models", startup_timeout=120)
    with server:
        yield server
    assert server.proc is not None and server.proc.returncode is not None


def run(server: ServerProcess, workload: Workload, **kw: object) -> list[RequestRecord]:
    async def go() -> list[RequestRecord]:
        async with OpenAIClient(server.base_url, **kw) as client:  # type: ignore[arg-type]
            assert client.model == "default"
            return (await run_workload(client, workload, Progress(workload.name,
                                                                  workload.num_requests))).records
    return asyncio.run(go())


def test_multi_turn_chat_streams(hf_server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    w = multi_turn(num_clients=2, num_rounds=3, first_turn_tokens=40, turn_tokens=12,
                   output_tokens=6, request_rate=20.0, seed=1)
    records = run(hf_server, w)
    assert len(records) == 6 and all(r.ok for r in records), [r.error for r in records]
    for r in records:
        assert r.completion_tokens == 6  # ignore_eos: always max_tokens
        assert r.cached_tokens == 0 and r.finish_reason == "length"
        assert r.ttft is not None and 0 < r.ttft <= r.latency
        assert r.chunk_times == sorted(r.chunk_times) and r.end_time >= r.chunk_times[-1]
        assert r.output_text
    # Each round re-sends the conversation, the server's real replies included.
    by_sid: dict[str, list[RequestRecord]] = {}
    for r in records:
        by_sid.setdefault(r.sid, []).append(r)
    for rs in by_sid.values():
        rs.sort(key=lambda r: r.turn)
        assert [r.turn for r in rs] == [0, 1, 2]
        for a, b in zip(rs, rs[1:], strict=False):
            assert b.send_time >= a.end_time  # rounds are sequential
            assert b.prompt_tokens is not None and a.prompt_tokens is not None
            assert b.prompt_tokens >= a.prompt_tokens + 6 + 10
    assert "[multi_turn] 6/6 requests" in capsys.readouterr().err


def test_completions_and_summary(hf_server: ServerProcess) -> None:
    w = Workload(name="c", description="", sessions=tuple(
        Session(sid=f"s{i}", api="completions", turns=(f"Hello number {i}, tell me",),
                max_tokens=5) for i in range(4)), max_concurrency=4, request_rate=None, seed=0)
    records = run(hf_server, w)
    assert all(r.ok and r.completion_tokens == 5 for r in records)
    # One request at a time behind the lock: the sends overlap, the answers queue.
    ends = sorted(r.end_time for r in records)
    assert max(r.send_time for r in records) < ends[0]
    s = summarize(RunResult("c", records, max(ends), 0.0))
    assert s["completed"] == 4 and s["cache_hit_rate"] == 0.0 and s["output_tokens"] == 20


def test_errors_are_recorded(hf_server: ServerProcess) -> None:
    # The tiny model has 2048 positions: this max_tokens cannot fit -> HTTP 400, not a crash;
    # the conversation's next round is skipped, not sent.
    w = Workload(name="bad", description="", sessions=(
        Session(sid="x", api="chat", turns=("hi", "again"), max_tokens=5000),
        Session(sid="y", api="completions", turns=("fine",), max_tokens=2)),
        max_concurrency=2, request_rate=None, seed=0)
    records = {(r.sid, r.turn): r for r in run(hf_server, w)}
    assert records[("x", 0)].error is not None and records[("x", 0)].error.startswith("HTTP 400")
    assert records[("x", 1)].error == "skipped: round 0 failed"
    assert records[("y", 0)].ok


def test_shared_prefix_against_server(hf_server: ServerProcess) -> None:
    w = shared_prefix(num_groups=2, prompts_per_group=2, system_tokens=64, question_tokens=16,
                      output_tokens=3, max_concurrency=4, seed=3)
    records = run(hf_server, w, ignore_eos=True)
    assert len(records) == 4 and all(r.ok for r in records)
    # Same group -> same system prompt -> same prompt length up to the question's few tokens.
    assert all(r.prompt_tokens is not None and r.prompt_tokens > 64 for r in records)


def test_suite_against_a_peer(hf_server: ServerProcess, tmp_path: Path) -> None:
    """run_suite end to end (workloads, metrics, JSON, docs, figures) with the server as peer."""
    import json

    from bench.report import NOTES_BEGIN, NOTES_END
    from bench.run_suite import main

    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"old\n{NOTES_BEGIN}\nkept notes\n{NOTES_END}\n")
    sizes = ["--set", "multi_turn.num_clients=2", "--set", "multi_turn.num_rounds=2",
             "--set", "multi_turn.first_turn_tokens=32", "--set", "multi_turn.turn_tokens=8",
             "--set", "multi_turn.output_tokens=3", "--set", "multi_turn.request_rate=null",
             "--set", "unique.num_prompts=2", "--set", "unique.prompt_tokens=16",
             "--set", "unique.output_tokens=3"]
    rc = main(["--quick", "--systems", "peer", "--peer-url", hf_server.base_url,
               "--peer-name", "tiny-hf", "--workloads", "multi_turn,unique",
               "--model", str(Path(hf_server.cmd[hf_server.cmd.index("--model") + 1])),
               "--results-dir", str(tmp_path / "results"), "--docs", str(docs),
               "--figures-dir", str(tmp_path / "figures"), *sizes])
    assert rc == 0
    suite = json.loads((tmp_path / "results" / "suite.json").read_text())
    assert [(s["system"], s["workload"], s["completed"]) for s in suite["summaries"]] == [
        ("tiny-hf", "multi_turn", 4), ("tiny-hf", "unique", 2)]
    run = json.loads((tmp_path / "results" / "tiny-hf__unique.json").read_text())
    assert len(run["run"]["records"]) == 2 and run["summary"]["output_tokens"] == 6
    text = docs.read_text()
    assert "| tiny-hf | multi_turn | 4 / 4 |" in text and "kept notes" in text
    assert "![throughput](figures/throughput.png)" in text
    assert (tmp_path / "figures" / "ttft_by_round.png").is_file()
