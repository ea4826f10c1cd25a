"""Prompt logprobs (SamplingParams.prompt_logprobs; /v1/completions echo + logprobs), driven
through the scheduler and model runner in one process and checked against transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radixrt.config import EngineConfig
from radixrt.ipc.messages import GenerateReq
from radixrt.sampling_params import InvalidRequestError, SamplingParams
from radixrt.scheduler.batch_builder import build_batch
from radixrt.scheduler.request import Chunk, Request
from radixrt.testing.local_engine import LocalEngine
from radixrt.worker.model_runner import ModelRunner

PARAMS = {"temperature": 0, "max_new_tokens": 3, "ignore_eos": True, "prompt_logprobs": 2}


@pytest.fixture(scope="module")
def tiny(make_tiny_model):
    return str(make_tiny_model("llama"))


@pytest.fixture(scope="module")
def runner(tiny):
    return ModelRunner(EngineConfig(model_path=tiny, page_size=4, max_total_tokens=8192,
                                    dtype="float32"))


@pytest.fixture(scope="module")
def hf(tiny):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()


def hf_logprobs(hf, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocab] log-softmax of transformers' logits at every position."""
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)


def prompts() -> list[list[int]]:
    rng = np.random.default_rng(5)
    out = [rng.integers(3, 49152, n).tolist() for n in (41, 9, 1, 2, 23)]
    out.append(out[0][:32] + [7, 8, 9])  # its first 32 tokens are in the cache by then
    return out


@pytest.mark.parametrize("overlap", [False, True], ids=["plain", "overlap"])
def test_prompt_logprobs_match_transformers(tiny, runner, hf, overlap: bool) -> None:
    """Every prompt token's logprob and top-2 equal transformers', in 8-token chunks, for a
    prompt whose prefix is cached (computed again: the cache keeps no logits) and for
    one- and two-token prompts; the outputs are those of the same requests without them."""
    cfg = EngineConfig(model_path=tiny, page_size=4, chunked_prefill_size=8, dtype="float32")
    eng = LocalEngine(cfg, runner, overlap=overlap)
    ps = prompts()
    eng.generate(ps[:1], {"max_new_tokens": 1})  # ps[0]'s prefix is cached now
    with_lp = eng.generate(ps, PARAMS, check=True)
    plain = LocalEngine(cfg, runner).generate(ps, {**PARAMS, "prompt_logprobs": None})
    for p, got, ref in zip(ps, with_lp, plain, strict=True):
        assert got.output_ids == ref.output_ids and ref.prompt_logprobs is None
        lp = got.prompt_logprobs
        assert lp is not None and lp.ids == p and len(lp.logprobs) == len(p) - 1
        want = hf_logprobs(hf, p)
        targets = torch.tensor(p[1:], dtype=torch.long)
        expect = want[torch.arange(len(p) - 1), targets]
        torch.testing.assert_close(torch.tensor(lp.logprobs), expect, atol=2e-4, rtol=0)
        assert lp.top is not None and len(lp.top) == len(p) - 1
        for row, (top, ref_row) in enumerate(zip(lp.top, want[:-1], strict=True)):
            vals, ids = ref_row.topk(2)
            assert [t for t, _ in top] == ids.tolist(), row
            torch.testing.assert_close(torch.tensor([v for _, v in top]), vals, atol=2e-4,
                                       rtol=0)
    assert with_lp[-1].cached_tokens == 0  # bypassed the cached prefix
    s = eng.scheduler
    s.check_integrity()
    assert s.allocator.num_free + s.cache.evictable_pages == s.num_pages


def test_without_top_no_alternatives(tiny, runner) -> None:
    eng = LocalEngine(EngineConfig(model_path=tiny, page_size=4), runner)
    (out,) = eng.generate([[5, 6, 7, 8, 9]], {**PARAMS, "prompt_logprobs": 0})
    assert out.prompt_logprobs is not None and out.prompt_logprobs.top is None
    assert len(out.prompt_logprobs.logprobs) == 4
    assert all(v <= 0 for v in out.prompt_logprobs.logprobs)


@pytest.mark.parametrize("overlap", [False, True], ids=["plain", "overlap"])
def test_prompt_logprobs_through_retraction(tiny, runner, overlap: bool) -> None:
    """A pool too small for the batch: requests are retracted and redo their prefill from
    the cache; each prompt's logprobs still come once, whole, equal to a roomy run's."""
    rng = np.random.default_rng(3)
    prefix = rng.integers(3, 49152, 20).tolist()
    ps = [prefix + rng.integers(3, 49152, int(rng.integers(2, 30))).tolist() for _ in range(24)]
    params = {**PARAMS, "max_new_tokens": 32, "prompt_logprobs": 1}
    base = EngineConfig(model_path=tiny, page_size=4, chunked_prefill_size=16, dtype="float32")
    roomy = LocalEngine(base, runner).generate(ps, params)
    small = LocalEngine(base, runner, num_pages=30, overlap=overlap)
    tight = small.generate(ps, params, check=True)
    assert small.scheduler.stats.retractions > 0
    for a, b in zip(roomy, tight, strict=True):
        assert a.output_ids == b.output_ids
        assert a.prompt_logprobs is not None and b.prompt_logprobs is not None
        np.testing.assert_allclose(a.prompt_logprobs.logprobs, b.prompt_logprobs.logprobs,
                                   atol=2e-4)
        assert [[t for t, _ in row] for row in a.prompt_logprobs.top or []] == \
            [[t for t, _ in row] for row in b.prompt_logprobs.top or []]
    s = small.scheduler
    assert s.allocator.num_free + s.cache.evictable_pages == s.num_pages


@pytest.mark.parametrize("overlap", [False, True], ids=["plain", "overlap"])
def test_zero_new_tokens_is_prefill_only(tiny, runner, overlap: bool) -> None:
    """max_new_tokens 0: the prompt is computed (its logprobs when asked, its KV into the
    cache for the next request) and nothing is generated."""
    eng = LocalEngine(EngineConfig(model_path=tiny, page_size=4), runner, overlap=overlap)
    p = list(range(100, 140))
    eng.add("scored", p, {**PARAMS, "max_new_tokens": 0})
    eng.add("warmed", p[:20] + [1, 2, 3, 4, 5], {"max_new_tokens": 0})
    eng.run(check=True)
    scored, warmed = eng.outputs["scored"], eng.outputs["warmed"]
    assert scored.output_ids == [] and scored.finish_reason == "length"
    assert scored.prompt_logprobs is not None and len(scored.prompt_logprobs.logprobs) == 39
    assert warmed.output_ids == [] and warmed.prompt_logprobs is None
    # (the cache takes whole pages of all but the last prompt token: 24 of 25)
    (again,) = eng.generate([p[:20] + [1, 2, 3, 4, 5, 6]], {"max_new_tokens": 1}, check=True)
    assert again.cached_tokens == 24 and len(again.output_ids) == 1
    assert eng.scheduler.stats.generated_tokens == 1


def test_abort_during_prefill_frees_everything(tiny, runner) -> None:
    eng = LocalEngine(EngineConfig(model_path=tiny, page_size=4, chunked_prefill_size=8),
                      runner)
    eng.add("a", list(range(3, 60)), PARAMS)
    eng.step()  # the first 8-token chunk
    eng.scheduler.abort("a")
    eng.run(check=True)
    out = eng.outputs["a"]
    assert out.finish_reason == "abort" and out.prompt_logprobs is None
    s = eng.scheduler
    assert s.allocator.num_free + s.cache.evictable_pages == s.num_pages


def test_batch_rows_and_targets() -> None:
    """A chunk's rows are the flat indices of the prompt positions it computes, up to the
    prompt's second-to-last; the targets are the tokens after them."""
    sp = SamplingParams(prompt_logprobs=1)
    a = Request("a", np.arange(100, 110, dtype=np.int32), sp, slot=0)
    b = Request("b", np.arange(200, 203, dtype=np.int32), SamplingParams(), slot=1)
    batch = build_batch(1, [Chunk(b, 3), Chunk(a, 4)], (), [])
    assert batch.prompt_lp_rows.tolist() == [3, 4, 5, 6]
    assert batch.prompt_lp_targets.tolist() == [101, 102, 103, 104]
    assert batch.prompt_lp_num.tolist() == [0, 4] and batch.prompt_lp_top == 1
    a.num_computed = 4
    batch = build_batch(2, [Chunk(a, 6)], (), [])
    # positions 4..8 (the last prompt position predicts the first output token instead)
    assert batch.prompt_lp_rows.tolist() == [0, 1, 2, 3, 4]
    assert batch.prompt_lp_targets.tolist() == [105, 106, 107, 108, 109]
    assert not a.wants_prompt_logprobs
    assert build_batch(3, [Chunk(b, 3)], (), []).prompt_lp_rows is None


def test_prompt_logprobs_range() -> None:
    for bad in (-1, 21):
        with pytest.raises(InvalidRequestError) as info:
            SamplingParams(prompt_logprobs=bad).validate(100)
        assert info.value.param == "prompt_logprobs"
    req = GenerateReq("x", [1, 2], SamplingParams(prompt_logprobs=20))
    req.sampling.validate(100)
