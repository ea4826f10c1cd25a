"""Our model runner's logits and greedy tokens against Hugging Face transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from radixrt.config import EngineConfig
from radixrt.testing.batches import batch_from_chunks
from radixrt.testing.local_engine import LocalEngine
from radixrt.worker.model_runner import ModelRunner

TOL = 2e-4  # fp32: our math differs from HF only by summation order
# torch is the reference backend; cpu is radixrt's own kernels (csrc/attention_cpu.cpp).
BACKENDS = ["torch", "cpu"]


def hf_last_logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float()


def step(runner: ModelRunner, slots: list[int], starts: list[int], chunks: list[list[int]],
         pages: dict[int, list[int]] | None = None) -> torch.Tensor:
    """One forward: request slots[i] feeds chunks[i] at positions starts[i]...; logits of each."""
    fb = batch_from_chunks(slots, starts, chunks, pages)
    runner._apply_updates(fb)
    return runner.forward(fb)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("page_size", [1, 16])
def test_logits_match_transformers(make_tiny_model, arch: str, page_size: int,
                                   backend: str) -> None:
    path = make_tiny_model(arch)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    runner = ModelRunner(EngineConfig(model_path=str(path), page_size=page_size,
                                      max_total_tokens=4096, max_running_requests=8,
                                      attention_backend=backend))
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 49152, n).tolist() for n in (37, 5, 64, 1)]
    # Disjoint pages per request, deliberately out of order.
    per_req = 200 // page_size + 1
    pages = {s: list(range((s + 1) * per_req - 1, s * per_req - 1, -1)) for s in range(4)}
    # 1. Batched prefill, ragged lengths.
    logits = step(runner, [0, 1, 2, 3], [0] * 4, seqs, pages)
    for i, ids in enumerate(seqs):
        assert (logits[i] - hf_last_logits(hf, ids)).abs().max() < TOL
    # 2. Decode step for all four.
    nxt = [[int(logits[i].argmax())] for i in range(4)]
    logits = step(runner, [0, 1, 2, 3], [len(s) for s in seqs], nxt)
    for i in range(4):
        seqs[i] = seqs[i] + nxt[i]
        assert (logits[i] - hf_last_logits(hf, seqs[i])).abs().max() < TOL
    # 3. Mixed: two prefill chunks on top of their cached prefix + two decodes.
    more = [rng.integers(0, 49152, n).tolist() for n in (20, 1, 9, 1)]
    logits = step(runner, [0, 1, 2, 3], [len(s) for s in seqs], more)
    for i in range(4):
        seqs[i] = seqs[i] + more[i]
        assert (logits[i] - hf_last_logits(hf, seqs[i])).abs().max() < TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_warm_up_writes_only_the_scratch_page(make_tiny_model, backend: str) -> None:
    """The runner's start-up prefill (it builds FlashInfer's kernels on CUDA) leaves every
    real page of the KV pool as it was (zeros): its tokens went to the scratch page."""
    runner = ModelRunner(EngineConfig(model_path=str(make_tiny_model("llama")), page_size=4,
                                      max_total_tokens=256, max_running_requests=4,
                                      attention_backend=backend))
    pool = runner.pool
    assert runner.warm_up_seconds > 0
    assert runner.start_seconds["warm-up: a prefill and a decode step"] == pytest.approx(
        runner.warm_up_seconds, abs=0.01)
    real = pool.scratch_page * pool.shape.page_size  # slots below it belong to real pages
    for cache in (*pool.k_cache, *pool.v_cache):  # [slots, kv heads, head dim] views
        assert not cache[:real].any()
    assert all(cache[real : real + 3].any() for cache in pool.k_cache)


def test_greedy_generation_matches_transformers_on_tiny_model(make_tiny_model) -> None:
    path = make_tiny_model("qwen3")
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    engine = LocalEngine(EngineConfig(model_path=str(path), page_size=4, max_total_tokens=2048))
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 49152, n).tolist() for n in (3, 17, 40)]
    outs = engine.generate(prompts, {"temperature": 0, "max_new_tokens": 16,
                                     "ignore_eos": True}, check=True)
    for p, o in zip(prompts, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p)),
                              max_new_tokens=16, do_sample=False, eos_token_id=None,
                              pad_token_id=0)[0, len(p):].tolist()
        assert o.output_ids == ref


CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a radix tree is in one sentence.",
    "List three prime numbers.",
    "How do I reverse a list in Python?",
]


@pytest.fixture(scope="module")
def default_model_reference(default_model_dir):  # type: ignore[no-untyped-def]
    """The chat prompts' token ids and HF generate's 32 greedy tokens for each (fp32)."""
    tok = AutoTokenizer.from_pretrained(default_model_dir)
    hf = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    texts = [tok.apply_chat_template([{"role": "user", "content": q}],
                                     add_generation_prompt=True, tokenize=False)
             for q in CHAT_PROMPTS]
    prompts = [tok(t, add_special_tokens=False).input_ids for t in texts]
    refs = []
    for p in prompts:
        with torch.no_grad():
            # An explicit mask: HF would otherwise mask every pad id (2 = <|im_end|>, which
            # chat prompts contain) out of the prompt.
            refs.append(hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p)),
                                    max_new_tokens=32, do_sample=False, eos_token_id=None,
                                    pad_token_id=2)[0, len(p):].tolist())
    return tok, prompts, refs


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_model_greedy_matches_transformers(default_model_dir, default_model_reference,
                                                   backend: str) -> None:
    """5 chat prompts x 32 new tokens, fp32: exactly HF generate's token ids."""
    tok, prompts, refs = default_model_reference
    engine = LocalEngine(EngineConfig(model_path=str(default_model_dir), dtype="float32",
                                      page_size=16, max_total_tokens=8192,
                                      attention_backend=backend))
    outs = engine.generate(prompts, {"temperature": 0, "max_new_tokens": 32, "ignore_eos": True},
                           check=True)
    for o, ref in zip(outs, refs):
        assert o.output_ids == ref, tok.decode(o.output_ids) + " != " + tok.decode(ref)
    assert "Paris" in tok.decode(outs[0].output_ids)


def test_start_stages_say_when_they_begin_and_how_long_on_cuda(caplog) -> None:
    """A CUDA start-up stage may compile kernels for minutes: it logs before and after (with
    its seconds); on CPU, where the stages take milliseconds, it says nothing."""
    from radixrt.worker.model_runner import start_stage

    seconds: dict[str, float] = {}
    with caplog.at_level("INFO", logger="radixrt"):
        with start_stage(torch.device("cpu"), "timing", seconds):
            pass
        assert not caplog.records and list(seconds) == ["timing"]
        with start_stage(torch.device("cuda"), "timing one-token GEMVs"):  # no device needed
            assert [r.getMessage() for r in caplog.records] == ["timing one-token GEMVs ..."]
    assert caplog.records[-1].getMessage().startswith("timing one-token GEMVs: 0.0 s")
