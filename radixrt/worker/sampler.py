"""Sampling on the worker: grammar masks, penalties, logit bias, min-tokens,
temperature/top-k/top-p/min-p, per-request seeds and logprobs, each for all rows of a step in
batched tensor ops (penalties: radixrt/worker/penalties.py). Nothing here reads a device
tensor on the host, so a launched step never waits for the one in flight.

Per-request seeded sampling is a pure function of (seed, tokens generated so far): the noise
generator is reseeded every step from both, so a request's output never depends on what else
shares its batch, and a retracted request resumes with the same draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from radixrt.attention.staging import to_device
from radixrt.grammar.mask import apply_bitmask
from radixrt.ipc.messages import NewSlot
from radixrt.sampling_params import SamplingParams
from radixrt.worker.argmax_cuda import ArgMax, torch_argmax
from radixrt.worker.penalties import PenaltyRows, apply_entries


@dataclass
class SlotState:
    params: SamplingParams
    eos_ids: tuple[int, ...]
    num_generated: int = 0
    bias_ids: np.ndarray | None = None  # logit bias, host copies (uploaded per step)
    bias_vals: np.ndarray | None = None
    min_mask_ids: np.ndarray | None = None  # ids barred until min_new_tokens
    extra: dict = field(default_factory=dict)


@dataclass
class SampleOutput:
    next_ids: torch.Tensor  # int64 [S]
    logprobs: torch.Tensor | None  # float32 [S]
    top_ids: torch.Tensor | None  # int64 [S, K]
    top_logprobs: torch.Tensor | None


class Sampler:
    """Per-slot sampling state on the worker (penalties, bias, seeds) and the batched sampling
    of one step's logits rows, with logprobs when asked."""

    DRAWS = ("auto", "race", "cdf")

    def __init__(self, vocab_size: int, device: torch.device, seed: int = 0,
                 draw: str = "auto", argmax: ArgMax = torch_argmax) -> None:
        """draw: how a row's token is drawn from its probabilities. `race` (argmax of p / E,
        E ~ Exp(1): no host sync, a noise draw per vocabulary entry), `cdf` (one uniform per
        row against the running sum), `auto`: cdf on a CPU, race elsewhere. argmax: the
        row-wise argmax to use (worker/argmax_cuda.py picks one for CUDA)."""
        if draw not in self.DRAWS:
            raise ValueError(f"draw must be one of {', '.join(self.DRAWS)}, not {draw!r}")
        if draw == "cdf" and device.type != "cpu":
            raise ValueError("draw='cdf' runs on a CPU only (it relies on an in-order cumsum)")
        self.vocab_size = vocab_size
        self.device = device
        self.argmax = argmax
        self.draw = draw if draw != "auto" else ("cdf" if device.type == "cpu" else "race")
        self.slots: dict[int, SlotState] = {}
        self.rng = torch.Generator(device=device)
        self.rng.manual_seed(seed)
        self._row_gen = torch.Generator(device=device)
        self.penalties = PenaltyRows(vocab_size, device)

    # ------------------------------------------------------------------ slot lifecycle
    def add(self, new: NewSlot) -> None:
        p = new.sampling
        st = SlotState(params=p, eos_ids=new.eos_ids)
        prev = new.output_ids if new.output_ids is not None else np.zeros(0, np.int32)
        st.num_generated = len(prev)
        if p.needs_penalties:
            prompt = new.prompt_ids if p.repetition_penalty != 1.0 else None
            self.penalties.add(new.slot, np.asarray(prev), prompt, p.frequency_penalty,
                               p.presence_penalty)
        if p.logit_bias:
            st.bias_ids = np.array([int(t) for t in p.logit_bias], dtype=np.int64)
            st.bias_vals = np.array(list(p.logit_bias.values()), dtype=np.float32)
        if p.min_new_tokens > 0:
            barred = set(p.stop_token_ids) | (set() if p.ignore_eos else set(new.eos_ids))
            if barred:
                st.min_mask_ids = np.array(sorted(barred), dtype=np.int64)
        self.slots[new.slot] = st

    def remove(self, slot: int) -> None:
        self.slots.pop(slot, None)
        self.penalties.remove(slot)

    # ------------------------------------------------------------------ sampling
    def sample(self, logits: torch.Tensor, slots: list[int],
               mask: tuple[torch.Tensor, torch.Tensor] | None = None) -> SampleOutput:
        """logits [S, V] (any float dtype: the model's) for the rows that sample, in the
        order of `slots`.

        mask (rows, packed int32 bitmasks): the grammar's allowed tokens for those rows, applied
        first, so every sampling method and the logprobs see the masked distribution.
        """
        states = [self.slots[s] for s in slots]
        if (mask is not None or not all(st.params.greedy for st in states)
                or any(st.params.logprobs for st in states) or self._any_processor(states)):
            logits = logits.float()
        # else: greedy rows with nothing to apply argmax the model's dtype as it is (exact; on
        # CUDA a float32 copy of a batch-128 block of bf16 logits costs more than the argmax).
        if mask is not None:
            logits = apply_bitmask(logits, *mask)
        raw = logits
        if self._any_processor(states):
            logits = self._apply_processors(logits.clone(), slots, states)
        temps = [st.params.temperature for st in states]
        greedy = [st.params.greedy for st in states]
        if all(greedy):
            next_ids = self.argmax(logits)
        else:
            next_ids = self._sample_random(logits, states, temps, greedy)
        out = SampleOutput(next_ids, None, None, None)
        want_lp = [i for i, st in enumerate(states) if st.params.logprobs]
        if want_lp:
            out = self._logprobs(raw, next_ids, states, want_lp, out)
        self._advance(slots, states, next_ids)
        return out

    @staticmethod
    def _any_processor(states: list[SlotState]) -> bool:
        return any(st.params.needs_penalties or st.bias_ids is not None or
                   (st.min_mask_ids is not None and st.num_generated < st.params.min_new_tokens)
                   for st in states)

    def _apply_processors(self, logits: torch.Tensor, slots: list[int],
                          states: list[SlotState]) -> torch.Tensor:
        """Penalties, then logit bias, then min-tokens bans: each once for all its rows."""
        pen = [i for i, st in enumerate(states) if st.params.needs_penalties]
        if pen:
            ps = [states[i].params for i in pen]
            self.penalties.apply(logits, pen, [slots[i] for i in pen],
                                 [p.repetition_penalty for p in ps])
        bias = [i for i, st in enumerate(states) if st.bias_ids is not None]
        if bias:
            apply_entries(logits, bias, [states[i].bias_ids for i in bias],  # type: ignore[misc]
                          [states[i].bias_vals for i in bias])  # type: ignore[misc]
        ban = [i for i, st in enumerate(states) if st.min_mask_ids is not None
               and st.num_generated < st.params.min_new_tokens]
        if ban:
            apply_entries(logits, ban, [states[i].min_mask_ids for i in ban],  # type: ignore[misc]
                          None)
        return logits

    def _sample_random(self, logits: torch.Tensor, states: list[SlotState], temps: list[float],
                       greedy: list[bool]) -> torch.Tensor:
        """Every row in batched tensor ops (per-row temperature, top-k, top-p, min-p); only
        rows with a seed draw their noise one by one, from a generator seeded by (seed,
        tokens generated) so that they do not depend on the rest of the batch."""
        dev = logits.device
        t = to_device([1.0 if g else tt for g, tt in zip(greedy, temps)], torch.float32, dev)
        probs = torch.softmax(logits / t[:, None], dim=-1)
        cut = [i for i, st in enumerate(states) if not greedy[i] and (
            st.params.top_k > 0 or st.params.top_p < 1.0 or st.params.min_p > 0.0)]
        if cut:
            params = [states[i].params for i in cut]
            rows = to_device(cut, torch.long, dev)
            probs[rows] = truncate_rows(probs[rows], [p.top_k for p in params],
                                        [p.top_p for p in params], [p.min_p for p in params])
        seeded = [i for i, st in enumerate(states) if not greedy[i] and st.params.seed is not None]
        if self.draw == "cdf":
            sampled = self._inverse_cdf(probs, states, seeded)
        else:
            # Exponential race: argmax(p / E) with E ~ Exp(1) samples from p; no host sync.
            noise = torch.empty_like(probs).exponential_(generator=self.rng)
            for i in seeded:
                self._reseed_row(states[i])
                noise[i].exponential_(generator=self._row_gen)
            sampled = self.argmax(probs / noise)
        if not any(greedy):
            return sampled
        greedy_ids = self.argmax(logits)
        mask = to_device(greedy, torch.bool, dev)
        return torch.where(mask, greedy_ids, sampled)

    def _reseed_row(self, st: SlotState) -> None:
        self._row_gen.manual_seed((st.params.seed * 1_000_003 + st.num_generated) % 2**63)

    def _inverse_cdf(self, probs: torch.Tensor, states: list[SlotState],
                     seeded: list[int]) -> torch.Tensor:
        """One uniform per row against the row's running sum. On a CPU this is 0.5 ms for 16
        rows of 49k where the exponential race (a noise draw per vocabulary entry) took 31 ms.
        The CPU cumsum runs in order, so a zero-probability token (masked, truncated) has an
        empty interval and is never drawn (a parallel scan on a GPU may not keep that)."""
        cdf = probs.cumsum(dim=-1)
        u = torch.rand(probs.shape[0], 1, generator=self.rng)
        for i in seeded:
            self._reseed_row(states[i])
            u[i] = torch.rand(1, generator=self._row_gen)
        total = cdf[:, -1:].contiguous()
        ids = torch.searchsorted(cdf, u * total, right=True)
        # u * total can round up to total: take the last token with mass (where cdf first
        # reaches the total) instead of running off the end.
        last = torch.searchsorted(cdf, total, right=False)
        return torch.minimum(ids, last).squeeze(1)

    def _logprobs(self, raw: torch.Tensor, next_ids: torch.Tensor, states: list[SlotState],
                  rows: list[int], out: SampleOutput) -> SampleOutput:
        # Logprobs of the model's own distribution (before penalties and temperature), as
        # vLLM reports them by default; a grammar's mask is already applied.
        rows_t = to_device(rows, torch.long, raw.device)
        lp = torch.log_softmax(raw[rows_t], dim=-1)
        S = raw.shape[0]
        logprobs = torch.zeros(S, dtype=torch.float32, device=raw.device)
        logprobs[rows_t] = lp.gather(1, next_ids[rows_t, None]).squeeze(1)
        k = max(st.params.top_logprobs for st in states)
        top_ids = top_lp = None
        if k > 0:
            vals, ids = lp.topk(k, dim=-1)
            top_ids = torch.full((S, k), -1, dtype=torch.long, device=raw.device)
            top_lp = torch.zeros(S, k, dtype=torch.float32, device=raw.device)
            top_ids[rows_t], top_lp[rows_t] = ids, vals
        return SampleOutput(out.next_ids, logprobs, top_ids, top_lp)

    def _advance(self, slots: list[int], states: list[SlotState],
                 next_ids: torch.Tensor) -> None:
        pen = []
        for i, st in enumerate(states):
            st.num_generated += 1
            if st.params.needs_penalties:
                pen.append(i)
        if pen:
            self.penalties.advance([slots[i] for i in pen], pen, next_ids)


# Candidate widths for top-p on a CPU: the kept prefix is usually short, and a partial top-k
# of 256 entries of a 49k row is ~15x cheaper than sorting it (docs/benchmarks.md); a wider
# try, then a full sort, when the candidates do not reach some row's top_p. Knowing that
# reads a tensor on the host, so on CUDA (where the sort is cheap, and a host read would
# make the launched step wait for the one in flight) it is the full sort at once.
TOP_P_WIDTHS = (256, 4096)


def truncate_rows(p: torch.Tensor, top_k: list[int], top_p: list[float], min_p: list[float]
                  ) -> torch.Tensor:
    """Zero the tail of each probability row (min-p, then top-k, then top-p over what is left)
    and renormalise; one set of batched ops for all rows. top_k <= 0: no limit; top_p >= 1:
    none; the most likely token always stays (a top_p that underflows to 0 in float32, such
    as 1e-46, would otherwise keep nothing and sample from NaNs; vLLM keeps it too)."""
    dev, v = p.device, p.shape[-1]
    ks = [k if 0 < k < v else v for k in top_k]
    if any(m > 0.0 for m in min_p):
        thr = to_device(min_p, p.dtype, dev)[:, None] * p.amax(-1, keepdim=True)
        p = torch.where(p < thr, torch.zeros_like(p), p)
    finite = max((k for k in ks if k < v), default=0)
    if all(tp >= 1.0 for tp in top_p):
        if not finite:  # min-p alone
            return p / p.sum(-1, keepdim=True)
        vals, idx = p.topk(finite, dim=-1)  # top-k alone: no need to sort the whole row
        out = _keep(p, vals, idx, ks, top_p, None)
        assert out is not None
        return out
    widths = TOP_P_WIDTHS if dev.type == "cpu" else ()
    for width in (*(w for w in widths if finite <= w < v), v):
        if width < v:
            vals, idx = p.topk(width, dim=-1)
        else:
            vals, idx = p.sort(dim=-1, descending=True)
        # A row's top-p mass is of what its top-k leaves: the whole row when k is unlimited.
        full = to_device([k == v for k in ks], torch.bool, dev)[:, None]
        total = torch.where(full, p.sum(-1, keepdim=True), _top_k_mass(vals, ks))
        out = _keep(p, vals, idx, ks, top_p, total)
        if out is not None:
            return out
    raise AssertionError("a full sort always reaches top_p")


def _top_k_mass(vals: torch.Tensor, ks: list[int]) -> torch.Tensor:
    rank = torch.arange(vals.shape[-1], device=vals.device)
    k = to_device(ks, torch.long, vals.device)[:, None]
    return torch.where(rank[None, :] < k, vals, torch.zeros_like(vals)).sum(-1, keepdim=True)


def _keep(p: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor, ks: list[int],
          top_p: list[float], total: torch.Tensor | None) -> torch.Tensor | None:
    """The rows cut to the sorted candidates (vals, idx) under top-k, then top-p of `total`;
    None when the candidates do not reach some row's top_p (a wider set is needed). Rows with
    neither limit keep p as it is."""
    dev, v = p.device, p.shape[-1]
    rank = torch.arange(vals.shape[-1], device=dev)
    vals = torch.where(rank[None, :] < to_device(ks, torch.long, dev)[:, None], vals,
                       torch.zeros_like(vals))
    if total is not None:
        normed = vals / total
        cum = normed.cumsum(-1)
        # The smallest prefix reaching top_p (compared in float64: 1e-46 is 0 in float32).
        tp = to_device(top_p, torch.float64, dev)[:, None]
        unlimited = tp >= 1.0
        if vals.shape[-1] < v and not bool(((cum[:, -1:].double() >= tp) | unlimited).all()):
            return None
        keep = ((cum - normed).double() < tp) | unlimited
        keep[:, 0] = True
        vals = torch.where(keep, vals, torch.zeros_like(vals))
    out = torch.zeros_like(p).scatter_(-1, idx, vals)
    if vals.shape[-1] < v:  # rows with no top-k and no top-p keep every token
        untouched = to_device([k == v and tp >= 1.0 for k, tp in zip(ks, top_p)], torch.bool,
                              dev)[:, None]
        out = torch.where(untouched, p, out)
    return out / out.sum(-1, keepdim=True)


# Rows of logits turned into log-probabilities at a time: bounds the float32 copy a long
# prompt's prompt logprobs need.
PROMPT_LOGPROB_ROWS = 256


def prompt_logprobs(logits: torch.Tensor, targets: torch.Tensor, top: int) -> SampleOutput:
    """Logprobs of the target tokens under rows of raw logits (the model's own distribution:
    no temperature, penalties or bias, as for output logprobs), with the `top` most likely
    tokens of each row: the prompt logprobs of a prefill chunk. next_ids holds the targets."""
    P = logits.shape[0]
    lps = torch.empty(P, dtype=torch.float32, device=logits.device)
    top_ids = torch.empty((P, top), dtype=torch.long, device=logits.device) if top else None
    top_lps = torch.empty((P, top), dtype=torch.float32, device=logits.device) if top else None
    for a in range(0, P, PROMPT_LOGPROB_ROWS):
        b = min(P, a + PROMPT_LOGPROB_ROWS)
        lp = torch.log_softmax(logits[a:b].float(), dim=-1)
        lps[a:b] = lp.gather(1, targets[a:b, None]).squeeze(1)
        if top_ids is not None and top_lps is not None:
            top_lps[a:b], top_ids[a:b] = lp.topk(top, dim=-1)
    return SampleOutput(targets, lps, top_ids, top_lps)
