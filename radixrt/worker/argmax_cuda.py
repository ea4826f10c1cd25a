"""Greedy sampling's argmax over the vocabulary on CUDA, in two passes, where it measures faster.

torch.argmax over one row of 128k logits took 37 us of GPU time in every batch-1 decode step
of the H200 profile (docs/benchmarks.md), where reading the row's 256 KB takes well under
one. Here the first pass splits each row into BLOCK-wide pieces, one program per piece
(its maximum and the first index reaching it), and the second picks the best piece per row:
the first index of the row's maximum, as torch.argmax returns. `pick` times both by their GPU
time (replayed from a CUDA graph: the worker launches the sampler while the device runs the
step before, so its host time hides and its GPU time adds to the step) at one row and at
many, and keeps torch's where the two passes are not faster at both;
RADIXRT_TRITON_ARGMAX=0 turns it off.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from radixrt.models.cuda_timing import time_calls
from radixrt.triton_jit import LazyKernel

ENV = "RADIXRT_TRITON_ARGMAX"
BLOCK = 4096  # elements per first-pass program: 32 programs per row of a 128k vocabulary
MIN_GAIN = 0.1
ArgMax = Callable[[torch.Tensor], torch.Tensor]


def _define(triton: Any, tl: Any) -> Any:
    @triton.jit
    def piece_max(x_ptr, val_ptr, idx_ptr, V, stride, PIECES,  # noqa: ANN001
                  BLOCK: tl.constexpr):
        row = tl.program_id(0)
        piece = tl.program_id(1)
        cols = piece * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * stride + cols, mask=cols < V,
                    other=float("-inf")).to(tl.float32)
        best = tl.max(x, axis=0)
        # The first column reaching the maximum (columns past V hold -inf: never first
        # unless the whole piece is -inf, and then column 0 of the piece is). A NaN matches
        # nothing: some index in range, not torch's (the NaN's).
        first = tl.min(tl.where(x == best, cols, V + BLOCK), axis=0)
        first = tl.minimum(first, V - 1)
        tl.store(val_ptr + row * PIECES + piece, best)
        tl.store(idx_ptr + row * PIECES + piece, first)

    @triton.jit
    def best_piece(val_ptr, idx_ptr, out_ptr, PIECES, P2: tl.constexpr):
        row = tl.program_id(0)
        p = tl.arange(0, P2)
        vals = tl.load(val_ptr + row * PIECES + p, mask=p < PIECES, other=float("-inf"))
        best = tl.max(vals, axis=0)
        piece = tl.min(tl.where(vals == best, p, P2), axis=0)  # earlier pieces: lower index
        piece = tl.minimum(piece, PIECES - 1)
        tl.store(out_ptr + row, tl.load(idx_ptr + row * PIECES + piece).to(tl.int64))

    return piece_max, best_piece


_load = LazyKernel(_define)


def row_argmax(x: torch.Tensor) -> torch.Tensor:
    """x [B, V] (any float dtype) -> int64 [B]: torch.argmax(x, -1) in two passes."""
    loaded = _load()
    if loaded is None:
        raise RuntimeError("the two-pass argmax needs the triton package")
    triton, (piece_max, best_piece) = loaded
    if x.dim() != 2 or x.stride(-1) != 1:
        x = x.reshape(-1, x.shape[-1]).contiguous()
    rows, v = x.shape
    pieces = triton.cdiv(v, BLOCK)
    vals = torch.empty((rows, pieces), dtype=torch.float32, device=x.device)
    idx = torch.empty((rows, pieces), dtype=torch.int32, device=x.device)
    out = torch.empty(rows, dtype=torch.int64, device=x.device)
    if rows == 0:
        return out
    piece_max[(rows, pieces)](x, vals, idx, v, x.stride(0), pieces, BLOCK=BLOCK, num_warps=8)
    best_piece[(rows,)](vals, idx, out, pieces, P2=max(16, triton.next_power_of_2(pieces)))
    return out


def torch_argmax(x: torch.Tensor) -> torch.Tensor:
    return x.argmax(dim=-1)


def _time(fn: ArgMax, x: torch.Tensor) -> float:
    """GPU seconds per call (graph-replayed)."""
    return time_calls(lambda t: fn(t), [x] * 8, graphs=True, reps=5)


def pick(vocab_size: int, device: torch.device, dtype: torch.dtype = torch.bfloat16,
         rows: tuple[int, ...] = (1, 64)) -> tuple[ArgMax, str]:
    """(the argmax to sample with, why): the two passes where they agree with torch and are
    MIN_GAIN faster at every row count in `rows`, else torch's."""
    if device.type != "cuda" or os.environ.get(ENV, "1") == "0":
        return torch_argmax, "torch.argmax"
    if _load() is None:
        return torch_argmax, "torch.argmax (no triton)"
    notes = []
    try:
        for n in rows:
            x = torch.randn(n, vocab_size, device=device).to(dtype)
            x[:, vocab_size // 3] = x.max() + 1  # a known answer, off the block edges
            if not torch.equal(row_argmax(x), torch_argmax(x)):
                return torch_argmax, "torch.argmax (the two passes disagreed)"
            t_torch, t_two = _time(torch_argmax, x), _time(row_argmax, x)
            notes.append(f"{n} rows: {t_two * 1e6:.1f} vs {t_torch * 1e6:.1f} us")
            if t_two > (1 - MIN_GAIN) * t_torch:
                return torch_argmax, "torch.argmax (" + "; ".join(notes) + ")"
    except Exception as e:  # a failed build or launch: torch's
        return torch_argmax, f"torch.argmax (two passes failed: {type(e).__name__}: {e})"
    return row_argmax, "two-pass argmax (" + "; ".join(notes) + ")"
