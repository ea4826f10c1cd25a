"""Overlap scheduling: step N+1 is scheduled before step N's tokens are back. Outputs must
equal the plain loop's exactly (stops, lengths, aborts, retraction, chunked prefill, sampling
state) and no page may leak; driven in one process on a tiny random-weight model."""

from __future__ import annotations

import os

import numpy as np
import pytest

from radixrt.config import EngineConfig
from radixrt.ipc.messages import PENDING_TOKEN
from radixrt.testing.local_engine import LocalEngine, LocalOutput
from radixrt.worker.model_runner import ModelRunner

PS = 4


@pytest.fixture(scope="module")
def tiny(make_tiny_model):
    return str(make_tiny_model("llama"))


@pytest.fixture(scope="module")
def runner(tiny):
    return ModelRunner(EngineConfig(model_path=tiny, page_size=PS, max_total_tokens=8192,
                                    max_running_requests=64))


def engine(tiny, runner, overlap: bool, **kw) -> LocalEngine:
    cfg = EngineConfig(model_path=tiny, page_size=PS, max_running_requests=64, **kw)
    pages = -(-kw["max_total_tokens"] // PS) if "max_total_tokens" in kw else None
    return LocalEngine(cfg, runner, num_pages=pages, overlap=overlap)


def assert_all_free(eng: LocalEngine) -> None:
    s = eng.scheduler
    s.check_integrity()
    assert not s.running and not s.waiting and not s.steps_in_flight
    assert s.cache.protected_pages == 0
    assert s.allocator.num_free + s.cache.evictable_pages == s.num_pages


def mixed_workload(n: int, seed: int) -> list[tuple[list[int], dict]]:
    """Prompts sharing prefixes, with every kind of ending and sampling state."""
    rng = np.random.default_rng(seed)
    prefix = rng.integers(3, 49152, 24).tolist()
    kinds = [
        {"temperature": 0, "max_new_tokens": 9, "ignore_eos": True},
        {"temperature": 0, "max_new_tokens": 1, "ignore_eos": True},
        {"temperature": 0, "max_new_tokens": 2},
        {"temperature": 0.9, "top_p": 0.8, "top_k": 50, "seed": 11, "max_new_tokens": 7},
        {"temperature": 0.7, "min_p": 0.05, "seed": 5, "max_new_tokens": 6,
         "frequency_penalty": 0.5, "repetition_penalty": 1.2},
        {"temperature": 0, "max_new_tokens": 8, "logprobs": True, "top_logprobs": 3,
         "logit_bias": {"7": 4.0}},
    ]
    out = []
    for i in range(n):
        own = rng.integers(3, 49152, int(rng.integers(2, 40))).tolist()
        out.append(((prefix if i % 2 else []) + own, dict(kinds[i % len(kinds)])))
    return out


def run(eng: LocalEngine, work: list[tuple[list[int], dict]]) -> list[LocalOutput]:
    for i, (p, sp) in enumerate(work):
        eng.add(f"r{i}", p, sp)
    eng.run(check=True)
    return [eng.outputs[f"r{i}"] for i in range(len(work))]


def same(a: list[LocalOutput], b: list[LocalOutput], cached: bool = True) -> None:
    """Same tokens, endings and logprobs; the same cache hits unless `cached` is False
    (under memory pressure overlap frees pages a step later relative to admission, so who
    finds what in the cache may differ, never the tokens)."""
    for x, y in zip(a, b, strict=True):
        assert x.output_ids == y.output_ids
        assert (x.finish_reason, x.error) == (y.finish_reason, y.error)
        assert not cached or x.cached_tokens == y.cached_tokens
        np.testing.assert_allclose(x.logprobs, y.logprobs, rtol=1e-5, atol=1e-5)


def stop_ids_of(outs: list[LocalOutput]) -> dict[int, int]:
    """A stop token for some requests: their 3rd greedy token (an early stop mid-run)."""
    return {i: o.output_ids[2] for i, o in enumerate(outs) if len(o.output_ids) > 3}


@pytest.mark.parametrize("kw", [
    {},  # roomy
    {"chunked_prefill_size": 16},  # prompts split over steps
    {"max_total_tokens": 4 * 20, "chunked_prefill_size": 32},  # retraction
    {"context_length": 40},  # the context ends requests
], ids=["plain", "chunked", "retract", "context"])
def test_overlap_equals_plain_loop(tiny, runner, kw: dict) -> None:
    work = mixed_workload(18, seed=1)
    ref = run(engine(tiny, runner, False), work)
    # Some greedy requests stop on a token they produce mid-run: the overlapped step after the
    # stop is dropped.
    for i, tok in stop_ids_of(ref).items():
        if work[i][1]["temperature"] == 0:
            work[i][1]["stop_token_ids"] = [tok]
    plain_eng, over_eng = engine(tiny, runner, False, **kw), engine(tiny, runner, True, **kw)
    plain, over = run(plain_eng, work), run(over_eng, work)
    same(plain, over, cached="max_total_tokens" not in kw)
    assert any(o.finish_reason == "stop" for o in over)
    assert_all_free(plain_eng)
    assert_all_free(over_eng)
    if "max_total_tokens" in kw:
        assert over_eng.scheduler.stats.retractions > 0
    if "context_length" in kw:
        assert any(len(p) + len(o.output_ids) == 40 for (p, _), o in zip(work, over))


def test_pending_token_placeholder_and_no_wasted_step(tiny, runner) -> None:
    """The second step is built before the first's token is known: it feeds PENDING_TOKEN,
    which the runner resolves to the token it sampled; a request that surely ends by length
    is not scheduled again, so overlap runs no more steps than the plain loop."""
    sp = {"temperature": 0, "max_new_tokens": 4, "ignore_eos": True}
    prompt = list(range(3, 14))
    ref_eng = engine(tiny, runner, False)
    (ref,) = run(ref_eng, [(prompt, sp)])
    eng = engine(tiny, runner, True)
    eng.add("a", prompt, sp)
    s = eng.scheduler
    first = s.schedule()
    eng.pipeline.send(first)
    r = s.requests["a"]
    assert r.num_pending == 1 and r.num_computed == len(prompt)
    second = s.schedule()
    assert second.input_ids.tolist() == [PENDING_TOKEN]
    assert second.start_pos.tolist() == [len(prompt)]
    eng.pipeline.send(second)
    assert r.num_pending == 2 and s.steps_in_flight == 2
    eng.record(s.process_result(eng._launched.popleft().result()))  # noqa: SLF001
    assert r.num_pending == 1 and eng.outputs["a"].output_ids == ref.output_ids[:1]
    eng.run(check=True)
    assert eng.outputs["a"].output_ids == ref.output_ids
    assert s.stats.steps == ref_eng.scheduler.stats.steps == 4
    assert_all_free(eng)


def test_abort_while_steps_in_flight(tiny, runner) -> None:
    """An abort lands while a step for the request is in flight: its late token is dropped,
    its pages return, the others are unaffected."""
    sp = {"temperature": 0, "max_new_tokens": 30, "ignore_eos": True}
    prompts = [list(range(3, 20)), list(range(40, 61))]
    (ref_a, ref_b) = run(engine(tiny, runner, False), [(p, sp) for p in prompts])
    eng = engine(tiny, runner, True)
    eng.add("a", prompts[0], sp)
    eng.add("b", prompts[1], sp)
    for _ in range(5):
        eng.step()
    assert eng.scheduler.steps_in_flight == 1
    eng.scheduler.abort("a")
    eng.run(check=True)
    a, b = eng.outputs["a"], eng.outputs["b"]
    assert a.finish_reason == "abort" and 0 < len(a.output_ids) < 30
    assert a.output_ids == ref_a.output_ids[: len(a.output_ids)]
    assert b.output_ids == ref_b.output_ids
    assert_all_free(eng)


def test_config_flag_and_default() -> None:
    import argparse  # noqa: PLC0415

    from radixrt.server_args import add_engine_args  # noqa: PLC0415

    cfg = EngineConfig(model_path="x", device="cpu")
    assert cfg.disable_overlap_schedule is None
    assert EngineConfig(model_path="x", device="cuda").overlap_schedule
    # CPU: on only when the worker leaves a core to the scheduler (measured, see config.py).
    assert not cfg.overlap_schedule
    assert cfg.replace(num_threads=1).overlap_schedule is ((os.cpu_count() or 1) > 1)
    assert not cfg.replace(disable_overlap_schedule=True).overlap_schedule
    assert cfg.replace(disable_overlap_schedule=False).overlap_schedule
    p = argparse.ArgumentParser()
    add_engine_args(p)
    assert p.parse_args(["--disable-overlap-schedule"]).disable_overlap_schedule is True
    assert p.parse_args(["--enable-overlap-schedule"]).disable_overlap_schedule is False
    assert p.parse_args([]).disable_overlap_schedule is None
