"""Hand-built ForwardBatches for tests and benchmarks that drive a ModelRunner directly."""

from __future__ import annotations

import numpy as np

from radixrt.ipc.messages import ForwardBatch, NewSlot
from radixrt.sampling_params import SamplingParams


def batch_from_chunks(slots: list[int], starts: list[int], chunks: list[list[int]],
                      pages: dict[int, list[int]] | None = None, step: int = 0) -> ForwardBatch:
    """A batch where every request samples: request slots[i] feeds chunks[i] at positions
    starts[i]...; `pages` registers new slots (greedy) with their whole page list."""
    pages = pages or {}
    return ForwardBatch(
        step=step, slots=np.array(slots, np.int32), start_pos=np.array(starts, np.int32),
        num_new=np.array([len(c) for c in chunks], np.int32),
        input_ids=np.concatenate([np.array(c, np.int32) for c in chunks]),
        sample=np.ones(len(slots), bool),
        page_slots=np.array(list(pages), np.int32),
        page_offsets=np.zeros(len(pages), np.int32),
        page_lens=np.array([len(p) for p in pages.values()], np.int32),
        page_ids=np.array([x for p in pages.values() for x in p], np.int32),
        new_slots=[NewSlot(s, SamplingParams(temperature=0)) for s in slots if s in pages],
    )
