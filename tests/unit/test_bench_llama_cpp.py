"""The llama.cpp peer of the benchmark suite, without building llama.cpp: the llama-server
command line the suite runs, the slot context it asks for, the build's AMX guard, the skip when
the binary is missing, and a real llama-server stream (recorded from the built server) parsed
by the client."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import pytest

from bench import llama_cpp, run_suite
from bench.client import OpenAIClient, RequestRecord, chat_messages
from bench.report import render_docs
from bench.workloads import build_workloads

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="module")
def tok(default_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(default_model_dir))


def cpu_peer_args(*extra: str) -> Any:
    return run_suite.parse_args(["--preset", "cpu-peer", "--systems", "radixrt,llamacpp",
                                 *extra])


def test_command_line(tok: Any) -> None:
    args = cpu_peer_args()
    assert args.preset == "cpu-peer" and args.system_list == ["radixrt", "llamacpp"]
    # radixrt with its own defaults against llama-server; older presets keep float32.
    assert args.dtype == "auto" and run_suite.parse_args(["--quick"]).dtype == "float32"
    workloads = build_workloads(args.workload_list, args.preset, 0, tok)
    cmd, ctx = llama_cpp.peer_cmd(Path("/opt/llama-server"), Path("/m/model.gguf"), args,
                                  workloads, tok)
    # 4 slots of 2048 tokens each (-c is shared out: slot context = -c / -np), 2 threads,
    # everything else llama-server's defaults (prompt cache and RAM prompt cache on).
    assert ctx == 2048
    assert cmd(port=8123) == ["/opt/llama-server", "-m", "/m/model.gguf", "-np", "4", "-t", "2",
                              "-c", "8192", "--host", "127.0.0.1", "--port", "8123"]
    args = cpu_peer_args("--llamacpp-slots", "2", "--llamacpp-threads", "1",
                         "--llamacpp-ctx-per-slot", "4096", "--llamacpp-args", "--cache-ram 0")
    cmd, ctx = llama_cpp.peer_cmd(Path("b"), Path("g"), args, workloads, tok)
    assert cmd(port=1) == ["b", "-m", "g", "-np", "2", "-t", "1", "-c", "8192", "--host",
                           "127.0.0.1", "--port", "1", "--cache-ram", "0"]
    with pytest.raises(SystemExit):
        cpu_peer_args("--quick")  # --quick is --preset quick


def test_slot_context_fits_every_request(tok: Any) -> None:
    """The context the suite gives a slot holds each request's whole chat-templated prompt plus
    its reply, with the earlier replies at their full max_tokens."""
    workloads = build_workloads(["shared_prefix", "multi_turn", "rag", "unique"], "cpu-peer", 0,
                                tok)

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    ctx = llama_cpp.slot_context(workloads, count, margin=1.0, floor=0)
    longest = 0
    for w in workloads:
        for s in w.sessions:
            n = len(s.turns) - 1
            if s.api == "chat":
                # A reply of max_tokens words is max_tokens tokens (one token per word).
                replies = [" ".join(["river"] * s.max_tokens)] * n
                prompt = tok.apply_chat_template(chat_messages(s, n, replies),
                                                 add_generation_prompt=True, tokenize=False)
                need = count(prompt) + s.max_tokens
            else:
                need = count(s.turns[0]) + s.max_tokens
            longest = max(longest, need)
            assert need <= ctx, (w.name, s.sid, need, ctx)
    assert ctx < 1.3 * longest  # an estimate that fits, not a blanket over-allocation
    # The suite's default adds a margin and never goes below 2048.
    assert llama_cpp.slot_context(workloads, count) == 2048
    assert llama_cpp.slot_context(workloads, count, floor=0) % 256 == 0


def test_missing_binary_is_skipped_with_the_build_command(
        tok: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADIXRT_LLAMA_CPP_DIR", str(tmp_path / "none"))
    assert llama_cpp.build_info() is None
    args = cpu_peer_args("--workloads", "unique", "--results-dir", str(tmp_path / "r"))
    workloads = build_workloads(["unique"], "cpu-peer", 0, tok)
    system = run_suite.run_system("llamacpp", workloads, args, "unused", tok)
    assert system.error is not None and system.error.startswith("skipped: ")
    assert "python -m bench.llama_cpp build" in system.error
    assert str(tmp_path / "none") in system.error and not system.summaries
    # The docs' Systems table says so.
    suite = {"command": "x", "started": "a", "finished": "b", "runtime_s": 1.0, "seed": 0,
             "preset": "cpu-peer", "model": "m", "dtype": "float32", "machine": {},
             "systems": [{"name": "llamacpp", "error": system.error}], "workloads": [],
             "summaries": [], "targets": [], "agreement": []}
    text = render_docs(suite, [], tmp_path / "benchmarks.md", "")
    assert "| llamacpp | – | – | skipped: llama-server" in text
    # An explicit binary that is not there is an error of its own.
    args = cpu_peer_args("--llamacpp-bin", str(tmp_path / "nope"))
    assert llama_cpp.peer_paths(args) == f"{tmp_path / 'nope'} does not exist"


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 AMX flags")
def test_no_amx_flags_beat_march(tmp_path: Path) -> None:
    """GGML_NATIVE compiles with -march=native, which turns AMX on where the CPU has it; the
    -mno-amx-* flags the build adds must win whatever -march says (gcc and clang agree)."""
    import shutil
    import subprocess

    cc = shutil.which("cc")
    assert cc is not None
    assert llama_cpp.compiler_accepts(llama_cpp.NO_AMX_FLAGS)

    def defines(*flags: str) -> str:
        return subprocess.run([cc, *flags, "-dM", "-E", "-x", "c", "-"], input="",
                              capture_output=True, text=True, check=True).stdout

    assert "__AMX_INT8__" in defines("-march=sapphirerapids")
    for order in (("-march=sapphirerapids", *llama_cpp.NO_AMX_FLAGS),
                  (*llama_cpp.NO_AMX_FLAGS, "-march=sapphirerapids")):
        d = defines(*order)
        assert "__AMX_INT8__" not in d and "__AMX_TILE__" not in d and "__AMX_BF16__" not in d
    args = llama_cpp.cmake_args(tmp_path / "s", tmp_path / "b", "Ninja", True)
    assert f"-DCMAKE_C_FLAGS={' '.join(llama_cpp.NO_AMX_FLAGS)}" in args
    assert "-DLLAMA_USE_PREBUILT_UI=OFF" in args and "-DGGML_AMX_INT8=OFF" in args
    assert "-DFETCHCONTENT_FULLY_DISCONNECTED=ON" in args


def test_recorded_llama_server_stream() -> None:
    """A real streamed chat reply of the built llama-server (tests/data/llama_server_stream.json,
    recorded with ignore_eos and max_tokens 16, after a first request with the same system
    prompt): the client reads every token, the exact completion count, and the cached tokens
    from usage.prompt_tokens_details."""
    recorded = json.loads((DATA / "llama_server_stream.json").read_text())
    for req in recorded["requests"]:
        rec = RequestRecord(workload="w", sid="s", turn=0, api=req["api"])
        parts: list[str] = []
        done = False
        for i, line in enumerate(req["lines"]):
            done = OpenAIClient.stream_line(rec, line, float(i), parts)
            if done:
                break
        assert done and rec.error is None
        body = req["body"]
        assert body["ignore_eos"] is True and body["temperature"] == 0.0
        assert rec.completion_tokens == body["max_tokens"] == req["usage"]["completion_tokens"]
        assert rec.prompt_tokens == req["usage"]["prompt_tokens"]
        assert rec.cached_tokens == req["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert rec.cached_tokens == req["timings"]["cache_n"]
        assert rec.prompt_tokens == req["timings"]["cache_n"] + req["timings"]["prompt_n"]
        assert "".join(parts) == req["text"] and len(rec.chunk_times) > 0
    first, second = recorded["requests"]
    # The second request repeats the first one's system prompt: llama-server reused it.
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] >= 100
