"""Batch building: one step's chunks become the ForwardBatch sent to the worker(s)."""

from __future__ import annotations

import numpy as np

from radixrt.ipc.messages import PENDING_TOKEN, ForwardBatch, NewSlot
from radixrt.scheduler.request import Chunk, Request

_NO_IDS = np.zeros(0, np.int32)
_PENDING = np.full(1, PENDING_TOKEN, np.int32)


def build_batch(step: int, chunks: list[Chunk], eos_ids: tuple[int, ...],
                freed_slots: list[int]) -> ForwardBatch:
    """A ForwardBatch sized by what changed: each request's new tokens, the page-table rows
    that went stale (`dirty_from` on), and the sampling state of newly registered slots.

    A decode sends its last output token only; a prefill chunk its slice of fill_ids. A
    decode whose input is still being sampled by the step in flight (overlap scheduling) sends
    PENDING_TOKEN: the worker puts in the token it sampled last for that slot.
    """
    B = len(chunks)
    slots = np.empty(B, np.int32)
    start = np.empty(B, np.int32)
    num_new = np.empty(B, np.int32)
    sample = np.empty(B, bool)
    ids, new_slots = [], []
    p_slots, p_offs, p_lens, p_ids = [], [], [], []
    extras = []  # (batch row, chunk) of requests with prompt logprobs or embeddings
    for i, (r, n) in enumerate(chunks):
        if r.extras is not None:
            extras.append((i, r, n))
        slots[i], start[i], num_new[i] = r.slot, r.num_computed, n
        sample[i] = r.num_computed + n == r.fill_len
        if r.num_computed == r.known_len:
            ids.append(_PENDING)
        elif n == 1 and r.output_ids and r.num_computed == r.known_len - 1:
            ids.append(np.asarray(r.output_ids[-1:], np.int32))
        else:
            ids.append(r.fill_ids(r.num_computed + n)[r.num_computed :])
        if not r.registered:
            s = r.sampling
            new_slots.append(NewSlot(
                r.slot, s,
                prompt_ids=r.prompt_ids if s.repetition_penalty != 1.0 else None,
                eos_ids=eos_ids,
                output_ids=np.asarray(r.output_ids, np.int32) if r.output_ids else None))
            r.registered = True
        if r.dirty_from < len(r.pages):
            p_slots.append(r.slot)
            p_offs.append(r.dirty_from)
            p_lens.append(len(r.pages) - r.dirty_from)
            p_ids.append(r.pages[r.dirty_from :])
            r.dirty_from = len(r.pages)
    batch = ForwardBatch(
        step=step, slots=slots, start_pos=start, num_new=num_new,
        input_ids=np.concatenate(ids).astype(np.int32), sample=sample,
        page_slots=np.asarray(p_slots, np.int32), page_offsets=np.asarray(p_offs, np.int32),
        page_lens=np.asarray(p_lens, np.int32),
        page_ids=np.concatenate(p_ids).astype(np.int32) if p_ids else _NO_IDS,
        new_slots=new_slots, freed_slots=freed_slots,
    )
    if extras:
        _add_extras(batch, extras)
    return batch


def _add_extras(batch: ForwardBatch, extras: list[tuple[int, Request, int]]) -> None:
    """The rows of the prompt positions whose logits the chunks compute for their prompt
    logprobs (positions lo..hi-1 give tokens lo+1..hi), with those tokens; and the last
    prompt token's row of each embedding request's final chunk."""
    first_row = np.concatenate([[0], np.cumsum(batch.num_new)[:-1]])
    lp_num = np.zeros(batch.batch_size, np.int32)
    rows, targets, top = [], [], 0
    embed_rows, embed_of = [], []
    for i, r, n in extras:
        assert r.extras is not None
        if r.extras.embed and batch.sample[i]:
            embed_rows.append(int(first_row[i]) + n - 1)
            embed_of.append(i)
        lo, hi = r.prompt_lp_span(n)
        if hi <= lo:
            continue
        lp_num[i] = hi - lo
        row0 = int(first_row[i]) - r.num_computed
        rows.append(np.arange(row0 + lo, row0 + hi, dtype=np.int32))
        targets.append(r.prompt_ids[lo + 1 : hi + 1])
        top = max(top, r.sampling.prompt_logprobs or 0)
        r.extras.prompt_lp_next = hi
    if embed_rows:
        batch.embed_rows = np.asarray(embed_rows, np.int32)
        batch.embed_of = np.asarray(embed_of, np.int32)
    if rows:
        batch.prompt_lp_rows = np.concatenate(rows)
        batch.prompt_lp_targets = np.concatenate(targets).astype(np.int32)
        batch.prompt_lp_num, batch.prompt_lp_top = lp_num, top
