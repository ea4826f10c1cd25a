"""Attention-backend interface: plan once per step, then forward once per layer.

The model calls `backend.forward(q, k, v, layer_id)` for its flattened tokens; the backend
writes the new k/v into the KV pool at `meta.out_slots` and attends each token to its
request's cached prefix plus the new tokens up to itself (causal).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


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


class AttentionBackend(ABC):
    """Attention over the paged KV pool: `plan(meta)` once per step (host-side work, e.g. index
    tensors or kernel plans), then `forward(q, k, v, layer_id)` per layer, which also writes the
    step's new K/V into the pool."""

    @abstractmethod
    def plan(self, meta: AttentionMetadata) -> None:
        """Prepare for one step (index arrays, wrapper plans). Called once per step."""

    @abstractmethod
    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int
    ) -> torch.Tensor:
        """q [T, Hq, D], k/v [T, Hkv, D] of the new tokens -> attention output [T, Hq, D]."""
