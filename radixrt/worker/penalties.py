"""Penalties, logit bias and min-tokens bans for all rows of a step in batched tensor ops.

The frequency and presence penalties a request's generated tokens come to (kept up to date
as tokens are sampled, so a step subtracts one matrix instead of recomputing it from counts
over the whole vocabulary), which tokens it has generated (a token's presence penalty
applies once) and the seen set (repetition penalty: prompt or generated tokens) live in one
[rows, vocab] matrix each, one row per request that uses penalties. A
step gathers its rows, applies every penalty at once and adds the sampled tokens with
scatters on the device: no per-row loop, and the sampled ids are never read on the host
(which would wait for the step in flight). Host-side inputs (row numbers, per-row
parameters, bias entries) go up through pinned, non-blocking copies.
"""

from __future__ import annotations

import numpy as np
import torch

from radixrt.attention.staging import to_device


class PenaltyRows:
    """The penalty matrices of the requests that use penalties (see module doc)."""

    def __init__(self, vocab_size: int, device: torch.device) -> None:
        self.vocab_size = vocab_size
        self.device = device
        self.generated = torch.zeros(0, vocab_size, dtype=torch.bool, device=device)
        # frequency * count + presence * (count > 0), per row
        self.offset = torch.zeros(0, vocab_size, dtype=torch.float32, device=device)
        self.seen = torch.zeros(0, vocab_size, dtype=torch.bool, device=device)
        self.params = np.zeros((0, 2), np.float32)  # per row: frequency, presence
        self.row_of: dict[int, int] = {}  # slot -> row
        self.free: list[int] = []

    def _grow(self) -> None:
        n = self.generated.shape[0]
        more = max(4, n)  # doubling: few reallocations however many requests come
        dev, V = self.device, self.vocab_size
        self.generated = torch.cat([self.generated,
                                    torch.zeros(more, V, dtype=torch.bool, device=dev)])
        self.offset = torch.cat([self.offset, torch.zeros(more, V, device=dev)])
        self.seen = torch.cat([self.seen, torch.zeros(more, V, dtype=torch.bool, device=dev)])
        self.params = np.concatenate([self.params, np.zeros((more, 2), np.float32)])
        self.free.extend(range(n + more - 1, n - 1, -1))

    def add(self, slot: int, generated: np.ndarray, prompt: np.ndarray | None,
            frequency: float = 0.0, presence: float = 0.0) -> None:
        """Register `slot` with its frequency and presence penalties, the tokens it already
        generated (a resumed request) and, for the repetition penalty, its prompt."""
        if not self.free:
            self._grow()
        row = self.free.pop()
        self.row_of[slot] = row
        self.params[row] = (frequency, presence)
        self.offset[row].zero_()
        self.generated[row].zero_()
        self.seen[row].zero_()
        if len(generated):
            ids = to_device(generated, torch.long, self.device)
            counts = torch.bincount(ids, minlength=self.vocab_size).float()
            torch.mul(counts, frequency, out=self.offset[row])
            self.offset[row].add_((counts > 0).float(), alpha=presence)
            self.generated[row, ids] = True
            self.seen[row, ids] = True
        if prompt is not None and len(prompt):
            self.seen[row, to_device(prompt, torch.long, self.device)] = True

    def remove(self, slot: int) -> None:
        row = self.row_of.pop(slot, None)
        if row is not None:
            self.free.append(row)

    def apply(self, logits: torch.Tensor, positions: list[int], slots: list[int],
              repetition: list[float]) -> None:
        """Penalise logits rows `positions` (those of `slots`) in place."""
        dev = logits.device
        row_ids = [self.row_of[s] for s in slots]
        rows = to_device(row_ids, torch.long, dev)
        # Every row penalised (the usual case): work on the logits in place, no gather.
        pos = None if positions == list(range(logits.shape[0])) else \
            to_device(positions, torch.long, dev)
        x = logits if pos is None else logits[pos]
        if any(r != 1.0 for r in repetition):
            rep = to_device(repetition, torch.float32, dev)[:, None]
            penalised = torch.where(x > 0, x / rep, x * rep)
            x.copy_(torch.where(self.seen[rows], penalised, x))
        if self.params[row_ids].any():
            x.sub_(self.offset[rows])
        if pos is not None:
            logits[pos] = x

    def advance(self, slots: list[int], positions: list[int], next_ids: torch.Tensor) -> None:
        """Count the tokens sampled at `positions` for `slots` (all on the device) and add
        their frequency penalty, and the presence penalty where a token is new."""
        dev = next_ids.device
        row_ids = [self.row_of[s] for s in slots]
        rows = to_device(row_ids, torch.long, dev)
        ids = next_ids[to_device(positions, torch.long, dev)]
        params = to_device(self.params[row_ids], torch.float32, dev)  # [R, 2]
        new = ~self.generated[rows, ids]
        self.offset[rows, ids] += params[:, 0] + params[:, 1] * new.float()
        self.generated[rows, ids] = True
        self.seen[rows, ids] = True


def apply_entries(logits: torch.Tensor, positions: list[int], ids: list[np.ndarray],
                  values: list[np.ndarray] | None) -> None:
    """logits[positions[i], ids[i]] += values[i] for every row i at once (values None: set
    to -inf, the min-tokens ban)."""
    n = [len(a) for a in ids]
    if not sum(n):
        return
    dev = logits.device
    rr = to_device(np.repeat(np.asarray(positions, np.int64), n), torch.long, dev)
    cc = to_device(np.concatenate(ids).astype(np.int64), torch.long, dev)
    if values is None:
        logits[rr, cc] = float("-inf")
    else:
        vals = to_device(np.concatenate(values).astype(np.float32), torch.float32, dev)
        logits.index_put_((rr, cc), vals, accumulate=True)
