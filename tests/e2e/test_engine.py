"""radixrt.Engine: the real processes (tokenizer, scheduler, worker) over ZeroMQ, no HTTP."""

from __future__ import annotations

import numpy as np
import pytest

from radixrt import Engine
from radixrt.sampling_params import InvalidRequestError

GREEDY = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}


@pytest.fixture(scope="module")
def default_engine(default_model_dir):
    with Engine(str(default_model_dir), dtype="float32", max_total_tokens=8192) as engine:
        yield engine


def test_four_turn_conversation_reuses_the_whole_history(default_engine) -> None:
    page = default_engine.config.page_size
    messages: list[dict] = []
    prev_tokens = 0
    for turn, question in enumerate(["What is the capital of France?", "And of Germany?",
                                     "Which of the two is bigger?", "Thank you!"]):
        messages.append({"role": "user", "content": question})
        out = default_engine.chat(messages, {"temperature": 0, "max_new_tokens": 24})
        meta = out["meta_info"]
        if turn == 0:
            assert "Paris" in out["text"]
        else:
            # Everything said before (prompt + reply, minus the reply's last token whose KV
            # was never computed) is reused, down to a page boundary.
            assert meta["cached_tokens"] == (prev_tokens - 1) // page * page
        prev_tokens = meta["prompt_tokens"] + meta["completion_tokens"]
        messages.append({"role": "assistant", "content": out["text"]})
    stats = default_engine.get_stats()
    assert stats.running == 0 and stats.pages_protected == 0
    assert stats.pages_free + stats.pages_evictable == stats.pages_total
    # A flush answers with what it freed: the whole conversation's cached pages.
    assert default_engine.flush_cache() == stats.pages_evictable > 0
    after = default_engine.get_stats()
    assert after.pages_free == after.pages_total and after.pages_evictable == 0


def test_input_forms_and_errors(default_engine) -> None:
    one = default_engine.generate("The capital of France is", GREEDY)
    assert one["meta_info"]["completion_tokens"] == 12
    assert one["meta_info"]["finish_reason"] == "length"
    ids = default_engine.generate(input_ids=[1, 504, 3575, 282], sampling_params=GREEDY)
    assert len(ids["output_ids"]) == 12
    batch = default_engine.generate(["Hello", "The sky is"], [GREEDY, {**GREEDY, "max_new_tokens": 3}])
    assert [len(b["output_ids"]) for b in batch] == [12, 3]
    scored = default_engine.generate(input_ids=[1, 504, 3575, 282],
                                     sampling_params={"max_new_tokens": 0, "prompt_logprobs": 0})
    lps = scored["meta_info"]["input_token_logprobs"]
    assert scored["output_ids"] == [] and lps[0] is None and len(lps) == 4
    assert all(v < 0 for v in lps[1:])
    vectors = default_engine.encode(["The capital of France is", "Paris"])
    one = default_engine.encode(input_ids=[1, 504, 3575, 282])
    assert vectors.shape == (2, 576) and one.shape == (576,)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert np.allclose(default_engine.encode("Paris"), vectors[1], atol=1e-4)
    with pytest.raises(InvalidRequestError, match="temperature"):
        default_engine.generate("x", {"temperature": -1})


def test_cache_on_equals_cache_off_concurrent(make_tiny_model) -> None:
    """Prompts reusing cached prefixes give the tokens they give computed whole. Both
    engines run --deterministic (float32 weights on the one-order dense kernel): a prefix
    hit changes how a prompt's rows are grouped into steps, and the default kernels' rounding
    would follow that, which on a random-weight model can flip a near tie."""
    path = str(make_tiny_model("llama"))
    rng = np.random.default_rng(0)
    systems = [rng.integers(3, 49152, 80).tolist() for _ in range(3)]
    prompts = [systems[i % 3] + rng.integers(3, 49152, 5 + i % 7).tolist() for i in range(30)]
    results = []
    for disable in (False, True):
        with Engine(path, dtype="float32", max_total_tokens=4096, page_size=8,
                    disable_radix_cache=disable, deterministic=True) as engine:
            assert engine.config.deterministic
            results.append(engine.generate(input_ids=prompts, sampling_params=GREEDY))
    on, off = results
    assert [o["output_ids"] for o in on] == [o["output_ids"] for o in off]
    assert sum(o["meta_info"]["cached_tokens"] for o in on) >= 27 * 80 // 8 * 8 * 0.9
    assert all(o["meta_info"]["cached_tokens"] == 0 for o in off)


def test_overlap_on_equals_off(default_model_dir) -> None:
    """Overlap scheduling through the real processes: same tokens, texts and endings as the
    plain loop (EOS stops, stop strings the tokenizer ends with an abort, lengths, seeded
    sampling, chunked prefill under a small pool), and every page back at the end.

    Which requests share a step depends on timing here (arrivals, the tokenizer's aborts), in
    either mode; the default kernels' rounding depends on the rows beside a request, enough
    to flip a seeded sample now and then (a CI run did), so both engines run --deterministic,
    whose kernels do not (tests/unit/test_deterministic.py)."""
    prompts = ["The capital of France is", "Write a haiku about the sea.",
               "List three colors:", "1, 2, 3, 4,", "Tell me a joke.", "def fib(n):",
               "The quick brown fox", "Translate 'cat' to French:"]
    params = [{"temperature": 0, "max_new_tokens": 24},
              {"temperature": 0, "max_new_tokens": 30, "stop": ["\n"]},
              {"temperature": 0.8, "top_p": 0.9, "seed": 7, "max_new_tokens": 16},
              {"temperature": 0, "max_new_tokens": 1},
              {"temperature": 0, "max_new_tokens": 20, "stop": [","]},
              {"temperature": 0.7, "top_k": 20, "seed": 3, "max_new_tokens": 12,
               "frequency_penalty": 0.3},
              {"temperature": 0, "max_new_tokens": 18, "min_new_tokens": 4},
              {"temperature": 0, "max_new_tokens": 2}]
    results = []
    for disable in (True, False):
        with Engine(str(default_model_dir), dtype="float32", max_total_tokens=512,
                    chunked_prefill_size=8, disable_overlap_schedule=disable,
                    deterministic=True) as engine:
            assert engine.config.overlap_schedule is not disable and engine.config.deterministic
            results.append(engine.generate(prompts, params))
            stats = engine.get_stats()
            assert stats.running == 0 and stats.pages_protected == 0
            assert stats.pages_free + stats.pages_evictable == stats.pages_total
    off, on = results
    assert [o["output_ids"] for o in on] == [o["output_ids"] for o in off]
    assert [o["text"] for o in on] == [o["text"] for o in off]
    assert [o["meta_info"]["finish_reason"] for o in on] == [
        o["meta_info"]["finish_reason"] for o in off]
    assert any(o["meta_info"]["finish_reason"] == "stop" for o in on)
