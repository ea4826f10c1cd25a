"""Attention in plain torch (CPU, and the reference for every device).

Decodes run as one padded batch: each request's keys are gathered from the pool by slot index
and masked past its length. Prefill chunks run one request at a time (they are few per step
and compute-bound); a chunk with no cached prefix attends to its own k/v without a gather.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from radixrt.attention.base import AttentionBackend, AttentionMetadata
from radixrt.attention.cascade import SharedGroup, attend_with_lse, find_shared_prefixes, merge
from radixrt.kvcache.pool import KVPool


class TorchAttentionBackend(AttentionBackend):
    """Pure-torch attention (CPU and reference on any device): decodes as one padded batch,
    with cascade attention for decodes sharing leading pages; prefill chunks per request."""

    def __init__(self, pool: KVPool, num_heads: int, head_dim: int) -> None:
        self.pool = pool
        self.num_heads = num_heads
        self.scale = head_dim**-0.5
        self.meta: AttentionMetadata | None = None

    def plan(self, meta: AttentionMetadata) -> None:
        self.meta = meta
        ps = meta.page_size
        num_new = meta.num_new_host
        self.decode_rows = [i for i, n in enumerate(num_new) if n == 1]
        self.prefill_rows = [i for i, n in enumerate(num_new) if n > 1]
        device = meta.page_table.device
        # Decode group: each request's pages (padded with the scratch page), gathered whole:
        # a page is page_size contiguous rows, so this copies in large blocks. Leading pages
        # that several requests share (one radix-cache prefix) are gathered once per group.
        self.shared_groups: list[SharedGroup] = []
        if self.decode_rows:
            rows = torch.tensor(self.decode_rows, device=device)
            seq = meta.seq_lens[rows].long()
            seq_host = np.array([meta.start_pos_host[i] + 1 for i in self.decode_rows])
            n_pages = -(-int(seq_host.max()) // ps)
            table = meta.page_table[rows][:, :n_pages].long()
            groups, shared = find_shared_prefixes(table.cpu().numpy(), seq_host, ps)
            if groups:
                self.shared_groups = [
                    SharedGroup(torch.as_tensor(r, device=device), table[r[0], :c].clone())
                    for r, c in groups]
                # Each row's own pages start after its shared ones.
                start = torch.as_tensor(shared, device=device)
                n_pages = int(max(-(-seq_host // ps) - shared))
                col = start[:, None] + torch.arange(n_pages, device=device)[None, :]
                table = meta.page_table[rows].long().gather(
                    1, col.clamp(max=meta.page_table.shape[1] - 1))
                seq = seq - start * ps
            pos = torch.arange(n_pages * ps, device=device)
            valid_page = torch.arange(n_pages, device=device)[None, :] * ps < seq[:, None]
            self.decode_pages = torch.where(valid_page, table,
                                            torch.full_like(table, self.pool.scratch_page))
            self.decode_mask = (pos[None, :] < seq[:, None])[:, None, None, :]  # [B,1,1,L]
            self.decode_token_idx = meta.cu_new[rows].long()
        # Prefill group: per request, token range and (when it has a prefix) key slots.
        self.prefill_plans = []
        cu = meta.cu_new.tolist() if self.prefill_rows else []
        for i in self.prefill_rows:
            start, n = meta.start_pos_host[i], num_new[i]
            key_slots = mask = None
            if start > 0:
                pos = torch.arange(start + n, device=device)
                key_slots = meta.page_table[i, pos // ps].long() * ps + pos % ps
                q_pos = torch.arange(start, start + n, device=device)
                mask = pos[None, :] <= q_pos[:, None]  # causal with an offset
            self.prefill_plans.append((cu[i], n, key_slots, mask))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int) -> torch.Tensor:
        meta = self.meta
        assert meta is not None, "plan() must run before forward()"
        self.pool.write(layer_id, meta.out_slots, k, v)
        k_cache, v_cache = self.pool.k_cache[layer_id], self.pool.v_cache[layer_id]
        if meta.is_decode:
            return self._decode(q, layer_id)
        out = torch.empty_like(q)
        if self.decode_rows:
            idx = self.decode_token_idx
            out[idx] = self._decode(q[idx], layer_id)
        for t0, n, key_slots, mask in self.prefill_plans:
            # 4-D [1, H, n, D]: torch's CPU flash kernel only takes batched inputs (3-D ones
            # fall back to the math path, ~8x slower at 1k tokens).
            qi = q[t0 : t0 + n].transpose(0, 1).unsqueeze(0)
            if key_slots is None:
                ki = k[t0 : t0 + n].to(k_cache.dtype).to(qi.dtype).transpose(0, 1).unsqueeze(0)
                vi = v[t0 : t0 + n].to(v_cache.dtype).to(qi.dtype).transpose(0, 1).unsqueeze(0)
                o = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=self.scale,
                                                   enable_gqa=True)
            else:
                ki = k_cache[key_slots].transpose(0, 1).unsqueeze(0).to(qi.dtype)
                vi = v_cache[key_slots].transpose(0, 1).unsqueeze(0).to(qi.dtype)
                o = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=self.scale,
                                                   enable_gqa=True)
            out[t0 : t0 + n] = o[0].transpose(0, 1)
        return out

    def _decode(self, q: torch.Tensor, layer_id: int) -> torch.Tensor:
        # q [B, H, D] -> [B, H, 1, D]; keys [B, P, ps, Hkv, D] -> [B, Hkv, P*ps, D]
        b, h, d = q.shape
        kp, vp = self.pool.k_pages(layer_id), self.pool.v_pages(layer_id)
        keys = kp.index_select(0, self.decode_pages.flatten()).view(
            b, -1, kp.shape[2], d).transpose(1, 2).to(q.dtype)
        values = vp.index_select(0, self.decode_pages.flatten()).view(
            b, -1, kp.shape[2], d).transpose(1, 2).to(q.dtype)
        if not self.shared_groups:
            o = F.scaled_dot_product_attention(
                q.view(b, h, 1, d), keys, values, attn_mask=self.decode_mask,
                scale=self.scale, enable_gqa=True)
            return o.squeeze(2)
        hkv = keys.shape[1]
        qg = q.view(b, hkv, h // hkv, d)  # query heads grouped by the KV head they read
        out, lse = attend_with_lse(qg, keys, values, self.decode_mask, self.scale)
        for g in self.shared_groups:
            ks = kp.index_select(0, g.pages).flatten(0, 1).transpose(0, 1).to(q.dtype)
            vs = vp.index_select(0, g.pages).flatten(0, 1).transpose(0, 1).to(q.dtype)
            n = len(g.rows)
            qs = qg[g.rows].permute(1, 0, 2, 3).reshape(1, hkv, -1, d)  # all group queries
            o_s, lse_s = attend_with_lse(qs, ks.unsqueeze(0), vs.unsqueeze(0), None, self.scale)
            o_s = o_s.view(hkv, n, -1, d).permute(1, 0, 2, 3)
            lse_s = lse_s.view(hkv, n, -1, 1).permute(1, 0, 2, 3)
            out[g.rows] = merge(o_s, lse_s, out[g.rows], lse[g.rows])
        return out.reshape(b, h, d)
