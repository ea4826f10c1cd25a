"""Sampling on the worker: grammar masks, penalties, logit bias, min-tokens,
temperature/top-k/top-p/min-p, per-request seeds and logprobs. Rows with default settings take vectorised fast paths.

Per-request seeded sampling is a pure function of (seed, tokens generated so far): the noise
generator is reseeded every step from both, so a request's output never depends on what else
shares its batch, and a retracted request resumes with the same draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from radixrt.grammar.mask import apply_bitmask
from radixrt.ipc.messages import NewSlot
from radixrt.sampling_params import SamplingParams


@dataclass
class SlotState:
    params: SamplingParams
    eos_ids: tuple[int, ...]
    num_generated: int = 0
    # Penalty state, only for requests that use penalties.
    counts: torch.Tensor | None = None  # float32 [V]: generated-token counts
    seen: torch.Tensor | None = None  # bool [V]: prompt or generated (repetition penalty)
    bias_ids: torch.Tensor | None = None
    bias_vals: torch.Tensor | None = None
    min_mask_ids: torch.Tensor | None = None  # ids barred until min_new_tokens
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

    def __init__(self, vocab_size: int, device: torch.device, seed: int = 0) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self.slots: dict[int, SlotState] = {}
        self.rng = torch.Generator(device=device)
        self.rng.manual_seed(seed)
        self._row_gen = torch.Generator(device=device)

    # ------------------------------------------------------------------ slot lifecycle
    def add(self, new: NewSlot) -> None:
        p = new.sampling
        st = SlotState(params=p, eos_ids=new.eos_ids)
        prev = new.output_ids if new.output_ids is not None else np.zeros(0, np.int32)
        st.num_generated = len(prev)
        V, dev = self.vocab_size, self.device
        if p.needs_penalties:
            st.counts = torch.zeros(V, dtype=torch.float32, device=dev)
            if len(prev):
                st.counts.index_add_(0, torch.as_tensor(prev, dtype=torch.long, device=dev),
                                     torch.ones(len(prev), device=dev))
            if p.repetition_penalty != 1.0:
                st.seen = st.counts > 0
                if new.prompt_ids is not None and len(new.prompt_ids):
                    st.seen[torch.as_tensor(new.prompt_ids, dtype=torch.long, device=dev)] = True
        if p.logit_bias:
            st.bias_ids = torch.tensor([int(t) for t in p.logit_bias], dtype=torch.long, device=dev)
            st.bias_vals = torch.tensor(list(p.logit_bias.values()), dtype=torch.float32, device=dev)
        if p.min_new_tokens > 0:
            barred = set(p.stop_token_ids) | (set() if p.ignore_eos else set(new.eos_ids))
            if barred:
                st.min_mask_ids = torch.tensor(sorted(barred), dtype=torch.long, device=dev)
        self.slots[new.slot] = st

    def remove(self, slot: int) -> None:
        self.slots.pop(slot, None)

    # ------------------------------------------------------------------ sampling
    def sample(self, logits: torch.Tensor, slots: list[int],
               mask: tuple[torch.Tensor, torch.Tensor] | None = None) -> SampleOutput:
        """logits float32 [S, V] for the rows that sample, in the order of `slots`.

        mask (rows, packed int32 bitmasks): the grammar's allowed tokens for those rows, applied
        first, so every sampling method and the logprobs see the masked distribution.
        """
        states = [self.slots[s] for s in slots]
        if mask is not None:
            logits = apply_bitmask(logits, *mask)
        raw = logits
        logits = self._apply_processors(logits.clone() if self._any_processor(states) else logits,
                                        states)
        temps = [st.params.temperature for st in states]
        greedy = [st.params.greedy for st in states]
        if all(greedy):
            next_ids = logits.argmax(dim=-1)
        else:
            next_ids = self._sample_random(logits, states, temps, greedy)
        out = SampleOutput(next_ids, None, None, None)
        want_lp = [i for i, st in enumerate(states) if st.params.logprobs]
        if want_lp:
            out = self._logprobs(raw, next_ids, states, want_lp, out)
        self._advance(states, next_ids)
        return out

    @staticmethod
    def _any_processor(states: list[SlotState]) -> bool:
        return any(st.counts is not None or st.bias_ids is not None or
                   (st.min_mask_ids is not None and st.num_generated < st.params.min_new_tokens)
                   for st in states)

    def _apply_processors(self, logits: torch.Tensor, states: list[SlotState]) -> torch.Tensor:
        for i, st in enumerate(states):
            p = st.params
            row = logits[i]
            if st.counts is not None:
                if st.seen is not None:
                    penalised = torch.where(row > 0, row / p.repetition_penalty,
                                            row * p.repetition_penalty)
                    row.copy_(torch.where(st.seen, penalised, row))
                if p.frequency_penalty:
                    row.sub_(p.frequency_penalty * st.counts)
                if p.presence_penalty:
                    row.sub_(p.presence_penalty * (st.counts > 0).float())
            if st.bias_ids is not None:
                row.index_add_(0, st.bias_ids, st.bias_vals)
            if st.min_mask_ids is not None and st.num_generated < p.min_new_tokens:
                row[st.min_mask_ids] = float("-inf")
        return logits

    def _sample_random(self, logits: torch.Tensor, states: list[SlotState], temps: list[float],
                       greedy: list[bool]) -> torch.Tensor:
        """Every row in batched tensor ops (per-row temperature, top-k, top-p, min-p); only
        rows with a seed draw their noise one by one, from a generator seeded by (seed,
        tokens generated) so that they do not depend on the rest of the batch."""
        dev = logits.device
        t = torch.tensor([1.0 if g else tt for g, tt in zip(greedy, temps)], device=dev)
        probs = torch.softmax(logits / t[:, None], dim=-1)
        cut = [i for i, st in enumerate(states) if not greedy[i] and (
            st.params.top_k > 0 or st.params.top_p < 1.0 or st.params.min_p > 0.0)]
        if cut:
            params = [states[i].params for i in cut]
            rows = torch.tensor(cut, device=dev)
            probs[rows] = truncate_rows(probs[rows], [p.top_k for p in params],
                                        [p.top_p for p in params], [p.min_p for p in params])
        # Exponential race: argmax(p / E) with E ~ Exp(1) samples from p.
        noise = torch.empty_like(probs).exponential_(generator=self.rng)
        for i, st in enumerate(states):
            if not greedy[i] and st.params.seed is not None:
                self._row_gen.manual_seed((st.params.seed * 1_000_003 + st.num_generated) % 2**63)
                noise[i].exponential_(generator=self._row_gen)
        sampled = (probs / noise).argmax(dim=-1)
        greedy_ids = logits.argmax(dim=-1)
        mask = torch.tensor(greedy, device=dev)
        return torch.where(mask, greedy_ids, sampled)

    def _logprobs(self, raw: torch.Tensor, next_ids: torch.Tensor, states: list[SlotState],
                  rows: list[int], out: SampleOutput) -> SampleOutput:
        # Logprobs of the model's own distribution (before penalties and temperature), as
        # vLLM reports them by default; a grammar's mask is already applied.
        lp = torch.log_softmax(raw[rows], dim=-1)
        S = raw.shape[0]
        logprobs = torch.zeros(S, dtype=torch.float32, device=raw.device)
        logprobs[rows] = lp.gather(1, next_ids[rows, None]).squeeze(1)
        k = max(st.params.top_logprobs for st in states)
        top_ids = top_lp = None
        if k > 0:
            vals, ids = lp.topk(k, dim=-1)
            top_ids = torch.full((S, k), -1, dtype=torch.long, device=raw.device)
            top_lp = torch.zeros(S, k, dtype=torch.float32, device=raw.device)
            top_ids[rows], top_lp[rows] = ids, vals
        return SampleOutput(out.next_ids, logprobs, top_ids, top_lp)

    def _advance(self, states: list[SlotState], next_ids: torch.Tensor) -> None:
        ids = None
        for i, st in enumerate(states):
            st.num_generated += 1
            if st.counts is not None:
                if ids is None:
                    ids = next_ids.tolist()
                st.counts[ids[i]] += 1
                if st.seen is not None:
                    st.seen[ids[i]] = True


def truncate_rows(p: torch.Tensor, top_k: list[int], top_p: list[float], min_p: list[float]
                  ) -> torch.Tensor:
    """Zero the tail of each probability row (min-p, then top-k, then top-p over what is left)
    and renormalise; one set of batched ops for all rows. top_k <= 0: no limit; top_p >= 1:
    none; the most likely token always stays (a top_p that underflows to 0 in float32, such
    as 1e-46, would otherwise keep nothing and sample from NaNs; vLLM keeps it too)."""
    dev, v = p.device, p.shape[-1]
    ks = [k if 0 < k < v else v for k in top_k]
    if any(m > 0.0 for m in min_p):
        thr = torch.tensor(min_p, dtype=p.dtype, device=dev)[:, None] * p.amax(-1, keepdim=True)
        p = torch.where(p < thr, torch.zeros_like(p), p)
    if all(tp >= 1.0 for tp in top_p) and max(ks) < v:
        vals, idx = p.topk(max(ks), dim=-1)  # top-k alone: no need to sort the whole row
    else:
        vals, idx = p.sort(dim=-1, descending=True)
    rank = torch.arange(vals.shape[-1], device=dev)
    vals = torch.where(rank[None, :] < torch.tensor(ks, device=dev)[:, None], vals,
                       torch.zeros_like(vals))
    if any(tp < 1.0 for tp in top_p):
        normed = vals / vals.sum(-1, keepdim=True)
        cum = normed.cumsum(-1)
        # The smallest prefix reaching top_p (compared in float64: 1e-46 is 0 in float32).
        tp = torch.tensor(top_p, dtype=torch.float64, device=dev)[:, None]
        keep = ((cum - normed).double() < tp) | (tp >= 1.0)
        keep[:, 0] = True
        vals = torch.where(keep, vals, torch.zeros_like(vals))
    out = torch.zeros_like(p).scatter_(-1, idx, vals)
    return out / out.sum(-1, keepdim=True)
