"""Tensor parallelism inside the model: which rank this is, and the collectives it needs.

Layout (Megatron-style, as SGLang and vLLM do it): q/k/v and gate/up are column-parallel
(each rank computes its heads / its slice of the MLP width), o_proj and down_proj are
row-parallel (each rank multiplies its input slice; an all-reduce sums the partial outputs),
the token embedding and lm_head are split over the vocabulary.

Logits: each rank computes the logits of its vocabulary slice and they are *gathered on rank 0
only*, which samples. No other rank needs a sampled token: the scheduler sends every rank the
next step's input ids, so rank 0 is the single source of randomness and nothing has to be kept
in sync (no per-request generators on every rank, no broadcast). A gather also moves 1/N of an
all-gather's bytes.

The collectives use torch.distributed's default group (gloo on CPU, NCCL on CUDA), which the
worker initialises (radixrt/worker/tp.py) before it builds the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class TensorParallel:
    """This process's place in the tensor-parallel group; size 1 makes every op a no-op."""

    rank: int = 0
    size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.size:
            raise ValueError(f"rank {self.rank} outside a group of {self.size}")

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum x over the ranks, in place (the row-parallel layers' partial outputs)."""
        if self.size > 1:
            import torch.distributed as dist

            dist.all_reduce(x)
        return x

    def agree_min(self, value: int) -> int:
        """The smallest of every rank's value (KV pool sizes: all ranks keep the same)."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.int64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def gather_vocab(self, local: torch.Tensor) -> torch.Tensor:
        """[S, V/N] logits of every rank -> [S, V] on rank 0 (other ranks get their own
        slice back, which they do not use)."""
        if self.size == 1:
            return local
        import torch.distributed as dist

        local = local.contiguous()
        parts = [torch.empty_like(local) for _ in range(self.size)] if self.rank == 0 else None
        dist.gather(local, parts, dst=0)
        return torch.cat(parts, dim=-1) if parts is not None else local


class VocabParallelEmbedding(nn.Embedding):
    """The rows [rank * V/N, (rank + 1) * V/N) of the embedding table. A token outside the
    slice looks up zeros; the all-reduce then sums in the one rank that holds it."""

    def __init__(self, vocab_size: int, dim: int, tp: TensorParallel) -> None:
        super().__init__(vocab_size // tp.size, dim)
        self.tp = tp
        self.vocab_start = tp.rank * (vocab_size // tp.size)
        # The activations' dtype where the table is stored narrower (a bf16 checkpoint run in
        # float32 on the CPU keeps its table as published): rows are widened as looked up.
        self.out_dtype: torch.dtype | None = None

    def reset_parameters(self) -> None:
        """No random init: the loader sets every weight, and torch's normal_ on the meta
        device imports torch._dynamo (~4 s of every start-up)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return self._widen(super().forward(ids))
        local = ids - self.vocab_start
        outside = (local < 0) | (local >= self.num_embeddings)
        out = self._widen(F.embedding(local.masked_fill(outside, 0), self.weight))
        return self.tp.all_reduce(out.masked_fill_(outside.unsqueeze(-1), 0))

    def _widen(self, rows: torch.Tensor) -> torch.Tensor:
        return rows if self.out_dtype is None else rows.to(self.out_dtype)
