"""Scheduling rules, driven in one process (no sockets) on a tiny random-weight model."""

from __future__ import annotations

import numpy as np
import pytest

from radixrt.config import EngineConfig
from radixrt.sampling_params import SamplingParams
from radixrt.scheduler.policy import SchedulePolicy
from radixrt.scheduler.request import ReqState, Request
from radixrt.testing.local_engine import LocalEngine
from radixrt.worker.model_runner import ModelRunner

GREEDY = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}


@pytest.fixture(scope="module")
def tiny(make_tiny_model):
    return str(make_tiny_model("llama"))


@pytest.fixture(scope="module")
def runner(tiny):
    # One runner (weights + a big pool) shared by schedulers of every size: a scheduler only
    # ever hands out pages below its own num_pages.
    return ModelRunner(EngineConfig(model_path=tiny, page_size=4, max_total_tokens=16384,
                                    max_running_requests=128))


def engine(tiny, runner, overlap: bool | None = None, **kw) -> LocalEngine:
    kw.setdefault("max_running_requests", 128)
    cfg = EngineConfig(model_path=tiny, page_size=4, **kw)
    # With max_total_tokens, pretend the shared runner's pool is that small.
    pages = -(-kw["max_total_tokens"] // 4) if "max_total_tokens" in kw else None
    return LocalEngine(cfg, runner, num_pages=pages, overlap=overlap)


# Tests that drive schedule() / process_result() by hand use the plain loop (one step in
# flight at most); the others run with overlap scheduling on and off.
OVERLAP = pytest.mark.parametrize("overlap", [False, True], ids=["plain", "overlap"])


def shared_prompts(n: int, prefix_len: int = 48, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    groups = [rng.integers(3, 49152, prefix_len).tolist() for _ in range(3)]
    return [groups[i % 3] + rng.integers(3, 49152, int(rng.integers(1, 20))).tolist()
            for i in range(n)]


def assert_all_free(eng: LocalEngine) -> None:
    s = eng.scheduler
    s.check_integrity()
    assert not s.running and not s.waiting
    assert s.cache.protected_pages == 0
    assert s.allocator.num_free + s.cache.evictable_pages == s.num_pages


@pytest.fixture(scope="module")
def cpu_runner(tiny):
    """The same runner on radixrt's own CPU attention kernels (shared-prefix decodes are
    grouped there too)."""
    return ModelRunner(EngineConfig(model_path=tiny, page_size=4, max_total_tokens=16384,
                                    max_running_requests=128, attention_backend="cpu"))


@pytest.mark.parametrize("runner_name", ["runner", "cpu_runner"])
def test_cache_on_equals_cache_off(tiny, runner_name: str, request) -> None:
    runner = request.getfixturevalue(runner_name)
    prompts = shared_prompts(24)
    on = engine(tiny, runner).generate(prompts, GREEDY, check=True)
    off_eng = engine(tiny, runner, disable_radix_cache=True)
    off = off_eng.generate(prompts, GREEDY, check=True)
    assert [o.output_ids for o in on] == [o.output_ids for o in off]
    assert sum(o.cached_tokens for o in on) > 0
    assert sum(o.cached_tokens for o in off) == 0
    assert_all_free(off_eng)
    assert off_eng.scheduler.allocator.num_free == off_eng.scheduler.num_pages


@OVERLAP
def test_tiny_pool_many_requests(tiny, runner, overlap: bool) -> None:
    """64 concurrent requests into room for ~4: all finish, same outputs, nothing leaks."""
    prompts = shared_prompts(64, prefix_len=20, seed=3)
    big = engine(tiny, runner).generate(prompts, GREEDY)
    small_eng = engine(tiny, runner, overlap, max_total_tokens=4 * 40)
    small = small_eng.generate(prompts, GREEDY, check=True)
    assert [o.output_ids for o in small] == [o.output_ids for o in big]
    assert all(o.finish_reason == "length" for o in small)
    assert_all_free(small_eng)
    assert small_eng.scheduler.stats.retractions > 0


@OVERLAP
def test_request_states_through_retraction(tiny, runner, overlap: bool) -> None:
    """WAITING -> RUNNING -> RETRACTED -> RUNNING -> FINISHED, seen from outside."""
    eng = engine(tiny, runner, overlap, max_total_tokens=4 * 40)
    s = eng.scheduler
    for i, p in enumerate(shared_prompts(24, prefix_len=20, seed=3)):
        eng.add(f"q{i}", p, GREEDY)
    reqs = list(s.waiting)
    assert {r.state for r in reqs} == {ReqState.WAITING}
    seen: dict[str, list[ReqState]] = {r.rid: [] for r in reqs}
    while s.has_work:
        eng.step()
        s.check_integrity()
        for r in reqs:
            if not seen[r.rid] or seen[r.rid][-1] is not r.state:
                seen[r.rid].append(r.state)
    assert all(states[-1] is ReqState.FINISHED for states in seen.values())
    redone = [st for st in seen.values() if ReqState.RETRACTED in st]
    assert redone and all(st[st.index(ReqState.RETRACTED) + 1] is ReqState.RUNNING
                          for st in redone)
    assert [eng.outputs[r.rid].output_ids for r in reqs] == [
        o.output_ids for o in engine(tiny, runner).generate([r.prompt_ids.tolist() for r in reqs],
                                                            GREEDY)]
    assert_all_free(eng)


@OVERLAP
def test_conversation_reuses_previous_turns(tiny, runner, overlap: bool) -> None:
    eng = engine(tiny, runner, overlap)
    rng = np.random.default_rng(7)
    history: list[int] = []
    prev_len = 0
    for turn in range(4):
        history += rng.integers(3, 49152, 10 + 3 * turn).tolist()
        (out,) = eng.generate([history], GREEDY, check=True)
        if turn:
            assert out.cached_tokens == prev_len // 4 * 4
        history += out.output_ids
        prev_len = len(history) - 1  # the last output token has no KV yet
    assert_all_free(eng)


def test_chunked_prefill_respects_budget(tiny, runner) -> None:
    eng = engine(tiny, runner, False, chunked_prefill_size=16)
    rng = np.random.default_rng(1)
    long_prompt = rng.integers(3, 49152, 70).tolist()
    eng.add("long", long_prompt, GREEDY)
    eng.add("short", rng.integers(3, 49152, 5).tolist(), GREEDY)
    sizes = []
    while eng.scheduler.has_work:
        batch = eng.scheduler.schedule()
        if batch is None:
            eng.scheduler.collect_outputs()
            continue
        sizes.append(int(batch.num_new.sum()))
        assert batch.num_new.sum() <= 16 or batch.num_new.max() == 1
        eng.record(eng.scheduler.process_result(eng.runner.step(batch)))
    assert sizes[:5] == [16, 16, 16, 16, 11]  # 70 = 4 chunks of 16 + 6 (+5 of "short")
    ref = engine(tiny, runner).generate([long_prompt], GREEDY)[0]
    assert eng.outputs["long"].output_ids == ref.output_ids


def test_prefill_and_decode_share_a_step(tiny, runner) -> None:
    eng = engine(tiny, runner, False, chunked_prefill_size=64)
    eng.add("a", list(range(3, 13)), GREEDY)
    eng.step()  # a prefills
    eng.add("b", list(range(20, 40)), GREEDY)
    batch = eng.scheduler.schedule()
    assert sorted(batch.num_new.tolist()) == [1, 20]
    eng.scheduler.process_result(eng.runner.step(batch))
    eng.run(check=True)
    assert_all_free(eng)


def test_in_batch_prefix_dedup(tiny, runner) -> None:
    """Siblings with the same new prefix wait for the first to populate the tree."""
    eng = engine(tiny, runner, False)
    prefix = list(range(100, 164))
    for i in range(4):
        eng.add(f"s{i}", prefix + [7, 8, i + 9], GREEDY)
    first = eng.scheduler.schedule()
    assert len(first.slots) == 1  # only one computes the shared prefix
    eng.scheduler.process_result(eng.runner.step(first))
    eng.run(check=True)
    cached = [eng.outputs[f"s{i}"].cached_tokens for i in range(4)]
    assert cached[0] == 0 and all(c == 64 for c in cached[1:])


def test_namespaces_never_share(tiny, runner) -> None:
    eng = engine(tiny, runner)
    p = list(range(200, 260))
    eng.add("a", p, GREEDY, cache_salt="alice")
    eng.run(check=True)
    eng.add("b", p, GREEDY, cache_salt="bob")
    eng.add("c", p, GREEDY, cache_salt="alice")
    eng.run(check=True)
    assert eng.outputs["b"].cached_tokens == 0
    assert eng.outputs["c"].cached_tokens == 56
    assert eng.outputs["a"].output_ids == eng.outputs["b"].output_ids


@OVERLAP
def test_abort_waiting_and_running(tiny, runner, overlap: bool) -> None:
    eng = engine(tiny, runner, overlap, max_running_requests=1)
    eng.add("run", list(range(3, 30)), {**GREEDY, "max_new_tokens": 50})
    eng.add("wait", list(range(3, 20)), GREEDY)
    eng.step()
    eng.step()
    eng.scheduler.abort("wait")
    eng.scheduler.abort("run")
    eng.step()
    assert eng.outputs["run"].finish_reason == "abort"
    assert eng.outputs["wait"].finish_reason == "abort"
    assert 0 < len(eng.outputs["run"].output_ids) < 50
    eng.scheduler.abort("run")  # twice: ignored
    eng.scheduler.abort("nope")  # unknown: ignored
    assert_all_free(eng)


def test_lpm_ordering_and_aging() -> None:
    def req(rid: str, arrival: float) -> Request:
        return Request(rid, np.zeros(4, np.int32), SamplingParams(), arrival=arrival)

    a, b, c = req("a", 0.0), req("b", 1.0), req("c", 2.0)
    prefix = {"a": 0, "b": 64, "c": 32}
    lpm = SchedulePolicy("lpm", max_wait_s=10.0)
    assert [r.rid for r in lpm.order([a, b, c], lambda r: prefix[r.rid], now=3.0)] == ["b", "c", "a"]
    # a has waited past max_wait_s: it goes first despite no prefix match.
    assert [r.rid for r in lpm.order([a, b, c], lambda r: prefix[r.rid], now=10.5)] == ["a", "b", "c"]
    fcfs = SchedulePolicy("fcfs")
    assert [r.rid for r in fcfs.order([c, b, a], lambda r: prefix[r.rid], now=3.0)] == ["a", "b", "c"]


def test_lpm_admits_longest_match_first(tiny, runner) -> None:
    eng = engine(tiny, runner, False, chunked_prefill_size=24)
    warm = list(range(300, 340))
    eng.add("warm", warm + [1], GREEDY)
    eng.run()
    eng.add("cold", list(range(500, 520)), GREEDY)
    eng.add("hot", warm + [5, 6], GREEDY)
    batch = eng.scheduler.schedule()
    first = eng.scheduler._batch  # noqa: SLF001
    assert first[0].req.rid == "hot"
    eng.scheduler.process_result(eng.runner.step(batch))
    eng.run(check=True)


def test_rejects_prompts_that_cannot_fit(tiny, runner) -> None:
    eng = engine(tiny, runner, max_total_tokens=64)
    eng.add("big", list(range(3, 100)), GREEDY)
    eng.add("empty", [], GREEDY)
    eng.run()
    assert "larger than the KV cache" in eng.outputs["big"].error
    assert "empty" in eng.outputs["empty"].error
    assert_all_free(eng)


@OVERLAP
def test_stop_token_and_min_tokens(tiny, runner, overlap: bool) -> None:
    eng = engine(tiny, runner, overlap)
    p = list(range(3, 20))
    (free_run,) = eng.generate([p], {**GREEDY, "max_new_tokens": 6})
    stop_tok = free_run.output_ids[2]
    (stopped,) = eng.generate([p], {**GREEDY, "stop_token_ids": [stop_tok]})
    assert stopped.output_ids == free_run.output_ids[:3] and stopped.finish_reason == "stop"
    (held,) = eng.generate([p], {**GREEDY, "stop_token_ids": [stop_tok], "min_new_tokens": 5})
    assert len(held.output_ids) >= 5
    assert stop_tok not in held.output_ids[:5]


def test_debug_log_says_what_each_step_held(tiny, runner, caplog: pytest.LogCaptureFixture
                                            ) -> None:
    eng = engine(tiny, runner, overlap=False, chunked_prefill_size=16)
    with caplog.at_level("DEBUG", logger="radixrt"):
        eng.generate([list(range(3, 27)), list(range(30, 35))],
                     {**GREEDY, "max_new_tokens": 3})
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    # 24 + 5 prompt tokens in 16-token chunks: [16], then [8, 5] (the first prompt's rest
    # and the second), then decodes only.
    head = "one-token chunks (decodes), prefill chunks"
    assert steps[0].startswith(f"step 1: 0 {head} [16], forward ")
    assert steps[1].startswith(f"step 2: 0 {head} [8, 5], forward ")
    assert steps[2].startswith(f"step 3: 2 {head} [], forward ")
    assert_all_free(eng)
