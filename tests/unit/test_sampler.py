"""Sampler: each parameter does what it says, on real logits tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from radixrt.ipc.messages import NewSlot
from radixrt.sampling_params import SamplingParams
from radixrt.worker.sampler import Sampler, truncate_rows

V = 50


def sampler_with(*params: SamplingParams, eos: tuple[int, ...] = (2,), how: str = "auto",
                 **kw) -> Sampler:
    s = Sampler(V, torch.device("cpu"), seed=0, draw=how)
    for i, p in enumerate(params):
        s.add(NewSlot(i, p, eos_ids=eos, **kw))
    return s


def logits(rows: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, V, generator=g) * 3


def draw(p: SamplingParams, n: int, x: torch.Tensor, how: str = "auto") -> list[int]:
    s = sampler_with(p, how=how)
    return [int(s.sample(x, [0]).next_ids[0]) for _ in range(n)]


def test_greedy_is_argmax() -> None:
    x = logits(3)
    s = sampler_with(*(SamplingParams(temperature=0),) * 3)
    assert s.sample(x, [0, 1, 2]).next_ids.tolist() == x.argmax(-1).tolist()


def test_model_dtype_logits() -> None:
    """The model hands its own dtype (bf16 on CUDA): greedy rows argmax it as it is, the
    rest see it as float32 (logprobs, sampling, penalties), as if it had come as float32."""
    x = logits(3).to(torch.bfloat16)
    s = sampler_with(*(SamplingParams(temperature=0),) * 3)
    assert s.sample(x, [0, 1, 2]).next_ids.tolist() == x.float().argmax(-1).tolist()
    for p in (SamplingParams(temperature=0, logprobs=True),
              SamplingParams(temperature=0.8, seed=3),
              SamplingParams(temperature=0, frequency_penalty=0.5)):
        got = sampler_with(p).sample(x[:1], [0])
        want = sampler_with(p).sample(x[:1].float(), [0])
        assert got.next_ids.tolist() == want.next_ids.tolist(), p
        if p.logprobs:
            assert got.logprobs is not None and got.logprobs.dtype == torch.float32
            assert torch.equal(got.logprobs, want.logprobs)


HOW = pytest.mark.parametrize("how", ["race", "cdf"])  # both draws run on a CPU


@HOW
def test_same_seed_same_tokens_regardless_of_batch(how: str) -> None:
    x = logits(1)
    p = SamplingParams(temperature=1.5, seed=42)
    alone = draw(p, 20, x, how)
    s = sampler_with(SamplingParams(temperature=1.0), p, how=how)  # slot 1 shares the batch
    together = [int(s.sample(torch.cat([x, x]), [0, 1]).next_ids[1]) for _ in range(20)]
    assert alone == together
    assert draw(SamplingParams(temperature=1.5, seed=43), 20, x, how) != alone
    assert len(set(alone)) > 1  # it does sample


@HOW
def test_top_k_top_p_min_p_restrict_support(how: str) -> None:
    x = logits(1, seed=1)
    order = x[0].argsort(descending=True).tolist()
    top3 = set(order[:3])
    assert set(draw(SamplingParams(temperature=1, top_k=3, seed=1), 200, x, how)) <= top3
    assert draw(SamplingParams(temperature=1, top_k=1, seed=1), 5, x, how) == [order[0]] * 5
    probs = torch.softmax(x[0], -1)
    sorted_p = probs[order]
    k = int((sorted_p.cumsum(0) - sorted_p < 0.5).sum())
    assert set(draw(SamplingParams(temperature=1, top_p=0.5, seed=2), 200, x, how)) \
        <= set(order[:k])
    allowed = {i for i in range(V) if probs[i] >= 0.3 * probs.max()}
    assert set(draw(SamplingParams(temperature=1, min_p=0.3, seed=3), 200, x, how)) <= allowed


@HOW
def test_sampling_follows_the_distribution(how: str) -> None:
    x = torch.log(torch.tensor([[0.7, 0.2, 0.1] + [1e-9] * (V - 3)]))
    counts = np.bincount(draw(SamplingParams(temperature=1.0, seed=5), 2000, x, how),
                         minlength=V)
    assert abs(counts[0] / 2000 - 0.7) < 0.05 and abs(counts[1] / 2000 - 0.2) < 0.05


def test_logit_bias_and_min_tokens() -> None:
    x = logits(1)
    assert draw(SamplingParams(temperature=0, logit_bias={7: 100.0}), 3, x) == [7, 7, 7]
    x2 = x.clone()
    x2[0, 2] = 100.0  # EOS is the favourite
    s = sampler_with(SamplingParams(temperature=0, min_new_tokens=2))
    got = [int(s.sample(x2, [0]).next_ids[0]) for _ in range(3)]
    assert got[0] != 2 and got[1] != 2 and got[2] == 2


def test_penalties() -> None:
    x = torch.zeros(1, V)
    x[0, 5], x[0, 6] = 2.0, 1.9
    # Frequency penalty: after picking 5 once, 6 wins.
    assert draw(SamplingParams(temperature=0, frequency_penalty=0.5), 2, x) == [5, 6]
    assert draw(SamplingParams(temperature=0, presence_penalty=0.5), 2, x) == [5, 6]
    assert draw(SamplingParams(temperature=0), 2, x) == [5, 5]
    # Repetition penalty covers prompt tokens too.
    s = sampler_with(SamplingParams(temperature=0, repetition_penalty=1.2),
                     prompt_ids=np.array([5], np.int32))
    assert int(s.sample(x, [0]).next_ids[0]) == 6


def test_logprobs_are_the_models_distribution() -> None:
    x = logits(2)
    s = sampler_with(SamplingParams(temperature=0, logprobs=True, top_logprobs=3),
                     SamplingParams(temperature=0))
    out = s.sample(x, [0, 1])
    ref = torch.log_softmax(x[0], -1)
    assert torch.allclose(out.logprobs[0], ref[out.next_ids[0]])
    vals, ids = ref.topk(3)
    assert out.top_ids[0].tolist() == ids.tolist()
    assert torch.allclose(out.top_logprobs[0], vals)


def test_tiny_top_p_keeps_the_top_token() -> None:
    """top_p of 1e-46 (0 in float32) or any tiny value: the most likely token, never NaNs."""
    x = logits(1, seed=4)
    top = int(x[0].argmax())
    for top_p in (1e-46, 1e-300, 5e-324, 1e-8):
        assert draw(SamplingParams(temperature=1, top_p=top_p, seed=1), 5, x) == [top] * 5
        assert draw(SamplingParams(temperature=0.7, top_p=top_p, top_k=10, min_p=0.1,
                                   seed=2), 5, x) == [top] * 5


def one_row_reference(p: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """Truncation of one row, written plainly (the per-row loop the batched ops replaced)."""
    if min_p > 0.0:
        p = torch.where(p < min_p * p.max(), torch.zeros_like(p), p)
    order = sorted(range(p.numel()), key=lambda i: -float(p[i]))
    if 0 < top_k < p.numel():
        for i in order[top_k:]:
            p[i] = 0.0
    if top_p < 1.0:
        total, seen = float(p.sum()), 0.0
        for n, i in enumerate(order):
            if n > 0 and seen / total >= top_p:
                p[i] = 0.0
            seen += float(p[i])
    return p / p.sum()


@given(st.lists(st.tuples(st.integers(-1, V + 5), st.sampled_from([1.0, 0.9, 0.5, 0.05, 1e-46]),
                          st.sampled_from([0.0, 0.05, 0.3])), min_size=1, max_size=6),
       st.integers(0, 2**31 - 1))
@settings(max_examples=60, deadline=None)
def test_batched_truncation_matches_each_row_alone(params, seed) -> None:  # type: ignore[no-untyped-def]
    """Every row of one batched call equals that row truncated alone by the plain reference
    (same support; probabilities within float rounding), whatever its neighbours ask for."""
    x = torch.softmax(logits(len(params), seed), dim=-1)
    got = truncate_rows(x.clone(), [k for k, _, _ in params], [p for _, p, _ in params],
                        [m for _, _, m in params])
    for i, (k, p, m) in enumerate(params):
        want = one_row_reference(x[i].clone(), k, p, m)
        assert torch.equal(got[i] > 0, want > 0), (i, k, p, m)
        torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-7)
        assert got[i].argmax() == x[i].argmax()  # the top token always stays


def reference_processors(x: torch.Tensor, p: SamplingParams, prompt: list[int],
                         generated: list[int], eos: tuple[int, ...]) -> torch.Tensor:
    """One row, written out plainly: repetition, frequency and presence penalties, logit bias,
    then the min-tokens ban."""
    row = x.clone()
    counts = torch.zeros(V)
    for t in generated:
        counts[t] += 1
    if p.repetition_penalty != 1.0:
        for t in set(prompt) | set(generated):
            v = row[t]
            row[t] = v / p.repetition_penalty if v > 0 else v * p.repetition_penalty
    row -= p.frequency_penalty * counts
    row -= p.presence_penalty * (counts > 0).float()
    for t, b in p.logit_bias.items():
        row[int(t)] += b
    if len(generated) < p.min_new_tokens:
        for t in set(p.stop_token_ids) | (set() if p.ignore_eos else set(eos)):
            row[t] = float("-inf")
    return row


row_params = st.builds(
    SamplingParams, temperature=st.just(0.0),
    repetition_penalty=st.sampled_from([1.0, 1.3, 0.8]),
    frequency_penalty=st.sampled_from([0.0, 0.4, -0.2]),
    presence_penalty=st.sampled_from([0.0, 0.7]),
    logit_bias=st.dictionaries(st.integers(0, V - 1), st.floats(-5, 5), max_size=3),
    min_new_tokens=st.integers(0, 3), stop_token_ids=st.lists(st.integers(0, V - 1), max_size=2),
    ignore_eos=st.booleans())


@settings(max_examples=60, deadline=None)
@given(st.lists(row_params, min_size=1, max_size=5), st.integers(0, 1000), st.integers(1, 4))
def test_batched_processors_match_each_row_alone(params, seed, steps) -> None:  # type: ignore[no-untyped-def]
    """Penalties, bias and bans for the whole batch in one set of tensor ops (penalty rows
    in a shared matrix, reused across requests) equal the plain per-row computation, step
    after step, including a request that resumes with tokens it generated before."""
    rng = np.random.default_rng(seed)
    s = Sampler(V, torch.device("cpu"), seed=0)
    s.add(NewSlot(9, SamplingParams(temperature=0, frequency_penalty=1.0), eos_ids=(2,)))
    s.remove(9)  # its penalty row is reused below, and must come back clean
    prompts, generated = [], []
    for i, p in enumerate(params):
        prompt = rng.integers(0, V, 6).tolist()
        prev = rng.integers(0, V, int(rng.integers(0, 3))).tolist()
        prompts.append(prompt)
        generated.append(list(prev))
        s.add(NewSlot(i, p, prompt_ids=np.array(prompt, np.int32), eos_ids=(2,),
                      output_ids=np.array(prev, np.int32)))
    slots = list(range(len(params)))[::-1]  # batch order differs from slot order
    for _ in range(steps):
        x = logits(len(slots), seed=int(rng.integers(1000)))
        states = [s.slots[i] for i in slots]
        got = s._apply_processors(x.clone(), slots, states) if s._any_processor(states) else x
        for r, i in enumerate(slots):
            ref = reference_processors(x[r], params[i], prompts[i], generated[i], (2,))
            assert torch.allclose(got[r], ref, atol=1e-5, equal_nan=True), (i, params[i])
        out = s.sample(x, slots)
        for r, i in enumerate(slots):
            generated[i].append(int(out.next_ids[r]))


@HOW
def test_zero_probability_tokens_are_never_drawn(how: str) -> None:
    """Masked (-inf) tokens between and around likely ones, over many draws in a batch of
    rows: neither draw gives them anything, and the rest follow the row."""
    x = torch.full((4, V), float("-inf"))
    allowed = [0, 7, 8, 30, V - 2]
    x[:, allowed] = torch.tensor([0.0, 1.0, -1.0, 2.0, 0.5])
    s = sampler_with(*(SamplingParams(temperature=1.0),) * 4, how=how)
    ids = np.concatenate([s.sample(x, [0, 1, 2, 3]).next_ids.numpy() for _ in range(1500)])
    counts = np.bincount(ids, minlength=V)
    assert set(np.flatnonzero(counts)) == set(allowed)
    p = torch.softmax(x[0], -1).numpy()
    assert np.abs(counts / len(ids) - p).max() < 0.03


def test_draw_is_checked() -> None:
    assert Sampler(V, torch.device("cpu")).draw == "cdf"
    with pytest.raises(ValueError, match="draw must be one of"):
        Sampler(V, torch.device("cpu"), draw="gumbel")
    with pytest.raises(ValueError, match="CPU only"):
        Sampler(V, torch.device("meta"), draw="cdf")


def test_wide_rows_truncate_as_a_full_sort_would() -> None:
    """Rows wider than the top-p candidate sets: peaked rows are cut from the first 256
    candidates, flatter ones need the 4096 set or the full sort; rows with no limit, min-p
    alone or a large top-k share the batch. Each row equals the plain reference."""
    v = 6000
    g = torch.Generator().manual_seed(3)
    scales = [6.0, 6.0, 1.5, 0.05, 6.0, 1.5, 0.05, 6.0]
    params = [(0, 0.9, 0.0), (50, 0.9, 0.0), (0, 0.9, 0.0), (0, 0.9, 0.0), (0, 1.0, 0.0),
              (0, 1.0, 0.05), (5000, 0.95, 0.0), (200, 0.8, 0.0)]
    x = torch.softmax(torch.randn(len(scales), v, generator=g)
                      * torch.tensor(scales)[:, None], dim=-1)
    # Peaked rows only (the 256 candidates), with the medium ones (4096), then all (a sort).
    for rows in ([0, 1, 4, 7], [0, 1, 2, 4, 5, 7], list(range(len(params)))):
        sub = [params[i] for i in rows]
        got = truncate_rows(x[rows].clone(), *(list(c) for c in zip(*sub)))
        for j, (i, (k, p, m)) in enumerate(zip(rows, sub)):
            want = one_row_reference(x[i].clone(), k, p, m)
            assert torch.equal(got[j] > 0, want > 0), (i, k, p, m)
            torch.testing.assert_close(got[j], want, rtol=1e-4, atol=1e-7)
    # Top-k alone beside a row with no limit: that row keeps every token.
    got = truncate_rows(x[:2].clone(), [5, 0], [1.0, 1.0], [0.0, 0.0])
    assert int((got[0] > 0).sum()) == 5
    torch.testing.assert_close(got[1], x[1] / x[1].sum())
