"""Shared-prefix ("cascade") decode attention for the torch backend.

Requests that reuse one radix-cache prefix point at the very same KV pages. Gathering those
pages once per request is what a CPU decode step spends most of its time on (the gather is
memory-bound), so decodes that share leading pages are grouped: the shared pages are gathered
once and attended by all of the group's queries together, each request's own tail is attended
separately, and the two partial results are merged exactly through their log-sum-exps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Below this many shared pages a group saves too little gathering to pay for its extra ops.
MIN_SHARED_PAGES = 4


@dataclass
class SharedGroup:
    rows: torch.Tensor  # int64 [G]: positions within the decode batch
    pages: torch.Tensor  # int64 [num_pages]: the shared leading pages


def find_shared_prefixes(page_rows: np.ndarray, seq_lens: np.ndarray, page_size: int,
                         min_pages: int = MIN_SHARED_PAGES) -> tuple[list[tuple[np.ndarray, int]],
                                                                     np.ndarray]:
    """Group rows by their first page; a group shares its leading equal pages.

    Returns [(rows, num_shared_pages)] and, per row, how many leading pages are shared. Only
    pages every row of the group has fully written count, and each row keeps at least its
    last token outside the shared part.
    """
    shared = np.zeros(len(page_rows), np.int64)
    groups: list[tuple[np.ndarray, int]] = []
    if len(page_rows) < 2 or page_rows.shape[1] == 0:
        return groups, shared
    first = page_rows[:, 0]
    uniq, counts = np.unique(first, return_counts=True)
    for page in uniq[counts >= 2]:
        rows = np.nonzero(first == page)[0]
        sub = page_rows[rows]
        equal = (sub == sub[0]).all(axis=0)
        common = int(np.argmin(equal)) if not equal.all() else len(equal)
        common = min(common, int(((seq_lens[rows] - 1) // page_size).min()))
        if common >= min_pages:
            groups.append((rows, common))
            shared[rows] = common
    return groups, shared


def attend_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                    scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q [N, Hkv, R, D] (R query rows per KV head), k/v [N, Hkv, L, D] -> out, lse [N, Hkv, R, 1]."""
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    p = torch.exp(s - m)
    denom = p.sum(dim=-1, keepdim=True)
    return torch.matmul(p, v) / denom, m + denom.log()


def merge(o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor, lse2: torch.Tensor
          ) -> torch.Tensor:
    """Combine two attention results over disjoint key sets."""
    lse = torch.logaddexp(lse1, lse2)
    return o1 * torch.exp(lse1 - lse) + o2 * torch.exp(lse2 - lse)
