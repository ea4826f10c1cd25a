"""Attention-backend interface: plan once per step, then forward once per layer.

The model calls `backend.forward(q, k, v, layer_id)` for its flattened tokens; the backend
writes the new k/v into the KV pool at `meta.out_slots` and attends each token to its
request's cached prefix plus the new tokens up to itself (causal).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from radixrt.attention.staging import Uploader, upload_each


@dataclass
class AttentionMetadata:
    """The batch's shape as every backend sees it (built by the model runner, on device).

    Request i owns new tokens [cu_new[i], cu_new[i+1]) of the flattened batch; they sit at
    positions start_pos[i] .. start_pos[i] + num_new[i] - 1, and attend to positions
    0 .. start_pos[i] + num_new[i] - 1 whose KV lives at pages page_table[i, :num_pages[i]].
    """

    batch_size: int
    start_pos: torch.Tensor  # int32 [B] (device)
    num_new: torch.Tensor  # int32 [B]
    seq_lens: torch.Tensor  # int32 [B] = start_pos + num_new
    cu_new: torch.Tensor  # int32 [B+1]
    page_table: torch.Tensor  # int32 [B, max_pages]: each request's pages (row of the slot table)
    out_slots: torch.Tensor  # int64 [T]: KV slot (page * page_size + offset) of each new token
    page_size: int
    # Host copies, so planning never syncs with the device.
    start_pos_host: list[int]
    num_new_host: list[int]
    is_decode: bool  # every request has exactly one new token
    max_seq_len: int
    # The pages each request reads as CSR lists (FlashInfer's paged-KV input), built on the
    # host from the host page table for backends that want them (None otherwise): request i
    # reads pages kv_indices[kv_indptr_host[i]:kv_indptr_host[i+1]], the last one holding
    # kv_last_page_len_host[i] (1..page_size) of its tokens.
    kv_indptr_host: np.ndarray | None = None  # int32 [B+1]
    kv_indices: torch.Tensor | None = None  # int32 [kv_indptr_host[-1]] (in the one upload)
    kv_last_page_len_host: np.ndarray | None = None  # int32 [B]


def build_metadata(start_pos: np.ndarray, num_new: np.ndarray, page_rows: np.ndarray,
                   page_size: int, device: torch.device | str = "cpu"
                   ) -> tuple[AttentionMetadata, torch.Tensor]:
    """Metadata and flat positions of a batch from host arrays (copied to the device).

    page_rows [B, >= pages of the longest request]: each request's page ids.
    """
    meta, positions, _ = build_step_inputs(start_pos, num_new, page_rows, page_size,
                                           upload_each(device))
    return meta, positions


def build_step_inputs(start_pos: np.ndarray, num_new: np.ndarray, page_rows: np.ndarray,
                      page_size: int, upload: Uploader, extra: Sequence[np.ndarray] = (),
                      page_lists: bool = True
                      ) -> tuple[AttentionMetadata, torch.Tensor, list[torch.Tensor]]:
    """build_metadata, with every array of the step (its own and `extra`, e.g. token ids)
    going to the device through one `upload` call (radixrt/attention/staging.py).
    page_lists: also the CSR page lists (the backend's `wants_page_lists`)."""
    ps = page_size
    num_new = np.asarray(num_new, dtype=np.int64)
    start = np.asarray(start_pos, dtype=np.int64)
    cu = np.zeros(len(num_new) + 1, dtype=np.int64)
    np.cumsum(num_new, out=cu[1:])
    # Position of every new token: start[i] + 0..num_new[i]-1.
    req_of_tok = np.repeat(np.arange(len(num_new)), num_new)
    positions = start[req_of_tok] + (np.arange(cu[-1]) - cu[req_of_tok])
    seq_lens = start + num_new
    n_pages = int(-(-seq_lens.max() // ps)) if len(seq_lens) else 0
    table = np.asarray(page_rows)[:, :n_pages]
    out_slots = table[req_of_tok, positions // ps].astype(np.int64) * ps + positions % ps
    i32 = np.int32
    kv_indptr = kv_last_page_len = None
    csr: list[np.ndarray] = []  # the page ids, uploaded with the rest
    if page_lists:
        pages = -(-seq_lens // ps)
        kv_indptr = np.zeros(len(num_new) + 1, dtype=i32)
        np.cumsum(pages, out=kv_indptr[1:])
        kv_last_page_len = (seq_lens - (pages - 1) * ps).astype(i32)
        csr = [table[np.arange(n_pages) < pages[:, None]].astype(i32)]  # row by row: CSR order
    t_start, t_new, t_seq, t_cu, t_table, t_slots, t_pos, *t_rest = upload([
        start.astype(i32), num_new.astype(i32), seq_lens.astype(i32), cu.astype(i32),
        np.ascontiguousarray(table, dtype=i32), out_slots, positions, *csr, *extra])
    kv_indices = t_rest[0] if csr else None
    t_extra = t_rest[len(csr):]
    meta = AttentionMetadata(
        batch_size=len(num_new), start_pos=t_start, num_new=t_new, seq_lens=t_seq,
        cu_new=t_cu, page_table=t_table, out_slots=t_slots, page_size=ps,
        start_pos_host=start.tolist(),
        num_new_host=num_new.tolist(),
        is_decode=bool(len(num_new)) and int(num_new.max()) == 1,
        max_seq_len=int(seq_lens.max()) if len(seq_lens) else 0,
        kv_indptr_host=kv_indptr, kv_indices=kv_indices, kv_last_page_len_host=kv_last_page_len,
    )
    return meta, t_pos, t_extra


class Rope(Protocol):
    """The model's rotary embedding as a backend sees it (models/layers.py RotaryEmbedding)."""

    # [max_pos, head_dim] float32, cos half then sin half, on the device (None on CPU).
    cos_sin: torch.Tensor | None

    def __call__(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]: ...


class AttentionBackend(ABC):
    """Attention over the paged KV pool: `plan(meta)` once per step (host-side work, e.g. index
    tensors or kernel plans), then `forward(q, k, v, layer_id)` per layer, which also writes the
    step's new K/V into the pool.

    Graph hooks (the model runner's one graph runner serves any backend through them): a
    backend whose forward is capturable once planned sets `supports_cuda_graph`, sizes its
    fixed buffers in `init_capture`, and plans a batch of a captured size into them in
    `prepare_for_capture` / `prepare_for_replay`. The metadata passed there is already padded
    to the captured size and its `out_slots` is the graph runner's static buffer. The defaults
    just plan, which is what an eager replay (tests, CPU) needs.
    """

    supports_cuda_graph = False
    # True: plan() reads the metadata's CSR page lists (built on the host only then).
    wants_page_lists = False

    def init_capture(self, max_batch_size: int, max_pages_per_req: int) -> None:  # noqa: B027
        """Allocate whatever fixed buffers captured decode batches up to max_batch_size read."""

    def prepare_for_capture(self, meta: AttentionMetadata) -> None:
        """Plan a (padded, dummy) decode batch of a size about to be captured."""
        self.plan(meta)

    def prepare_for_replay(self, meta: AttentionMetadata) -> None:
        """Plan a real decode batch, padded to a captured size, into that size's buffers."""
        self.plan(meta)

    @abstractmethod
    def plan(self, meta: AttentionMetadata) -> None:
        """Prepare for one step (index arrays, wrapper plans). Called once per step."""

    @abstractmethod
    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int
    ) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hkv, D] of the new tokens -> attention output [T, Hq, D]."""

    def forward_rope(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                     v: torch.Tensor, layer_id: int, rope: Rope) -> torch.Tensor:
        """forward() of q and k before RoPE: rotated here first. A backend may rotate them
        as it writes the pool (one kernel instead of two); q, k may be changed in place."""
        q, k = rope(positions, q, k)
        return self.forward(q, k, v, layer_id)
