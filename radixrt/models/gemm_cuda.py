"""Decode-batch linears on CUDA through the cuBLASLt algorithm that measures fastest on the card.

cuBLAS runs the one algorithm its heuristic ranks first for a shape. For a decode step's
skinny GEMMs (M = the batch; N and K in the thousands) that pick leaves bandwidth unused: on
the H200 at batch 128 it reads the o projection's weights at 2.4 TB/s and qkv's at 3.0, and
splits down's K in two with a reduce kernel after it, where the card gives 4.8
(docs/benchmarks.md). cuBLASLt's heuristic returns a ranked list of algorithms (tile shapes,
split-K factors, ...); which one is fastest depends on card and shape, so nothing is assumed:
when a CUDA model runner with decode graphs starts, `install` times, for every projection and
every batch size a graph is captured at, the first MAX_ALGOS algorithms of that list against
F.linear, replayed from a CUDA graph and cycling through the layers' own weights (as many
layers as exceed 4x the L2, so no timing reads weights the last one left there). A
projection runs an algorithm at a batch size only where it beats F.linear by MIN_GAIN and
agrees with it; everything else stays F.linear.

The calls go through FlashInfer's cuBLASLt module (built by its JIT once per machine):
`algorithms` lists a shape's algorithms, `run` calls one by its rank. RADIXRT_LT_GEMM=0 turns
this off.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F

from radixrt.models.cuda_timing import cold_cycle, retime_winner, time_calls

ENV = "RADIXRT_LT_GEMM"
logger = logging.getLogger("radixrt")
MAX_ALGOS = 16  # of cuBLASLt's ranked list (each timing is a few ms at start)
MIN_GAIN = 0.03  # an algorithm must be this much faster than F.linear to be used
WORKSPACE_BYTES = 32 * 2**20  # cuBLASLt's split-K partials; offered to the heuristic too
ALGO_BYTES, ALGOS_LISTED = 64, 100  # cublasLtMatmulAlgo_t's size; how many to ask for
enabled = True  # False: tuned linears run F.linear (benchmarks' A/B; read per call)
_unavailable: str | None = None  # why this process cannot build the cuBLASLt module


class GemmLibrary(Protocol):
    """What install needs of cuBLASLt: a shape's ranked algorithms, and a call of one."""

    def algorithms(self, x: torch.Tensor, weight: torch.Tensor) -> int:
        """How many algorithms the heuristic ranks for x [M, K] @ weight[N, K]^T."""
        ...

    def run(self, x: torch.Tensor, weight: torch.Tensor, algo: int) -> torch.Tensor:
        """x @ weight^T by the algorithm of that rank."""
        ...


class CublasLt:
    """FlashInfer's cuBLASLt module on one device, with each shape's algorithm list cached."""

    def __init__(self, device: torch.device) -> None:
        from flashinfer.jit.gemm import gen_mm_bf16_cublaslt_module

        self.module = gen_mm_bf16_cublaslt_module().build_and_load()
        self.device = device
        self.workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        with torch.cuda.device(device):
            # torch's cuBLAS handle serves as the cuBLASLt one, as FlashInfer's own runner
            # passes it.
            self.handle = torch.cuda.current_blas_handle()
        self._lists: dict[tuple[int, int, int], tuple[torch.Tensor, int]] = {}

    def _list(self, x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, int]:
        m, k = x.shape
        n = weight.shape[0]
        key = (m, n, k)
        if key not in self._lists:
            buf = torch.empty(ALGOS_LISTED * ALGO_BYTES, dtype=torch.uint8)
            out = torch.empty((m, n), dtype=x.dtype, device=x.device)
            count = int(self.module.mm_bf16_cublaslt_get_algos(
                x, weight, None, out, self.workspace, self.handle, buf))
            self._lists[key] = (buf, count)
        return self._lists[key]

    def algorithms(self, x: torch.Tensor, weight: torch.Tensor) -> int:
        return self._list(x, weight)[1]

    def run(self, x: torch.Tensor, weight: torch.Tensor, algo: int) -> torch.Tensor:
        x = x.contiguous()
        buf, count = self._list(x, weight)
        if not 0 <= algo < count:
            raise ValueError(f"algorithm {algo} of {count} for {tuple(x.shape)} x "
                             f"{tuple(weight.shape)}")
        out = torch.empty((x.shape[0], weight.shape[0]), dtype=x.dtype, device=x.device)
        self.module.mm_bf16_cublaslt_run_with_algo(x, weight, None, out, self.workspace,
                                                   self.handle, buf, algo)
        return out


class Tuned:
    """A projection's chosen algorithm per batch size (rows of x), and the library."""

    def __init__(self, library: GemmLibrary, algos: dict[int, int]) -> None:
        self.library = library
        self.algos = algos


def linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module's bias-free projection of x: by its tuned algorithm for x's row count where
    install chose one, else F.linear."""
    tuned: Tuned | None = getattr(module, "lt_gemm", None)
    if tuned is not None and enabled and x.dim() == 2 and x.dtype == module.weight.dtype:
        algo = tuned.algos.get(x.shape[0])
        if algo is not None:
            return tuned.library.run(x, module.weight, algo)
    return F.linear(x, module.weight)


class LtLinear(nn.Module):
    """A bias-free nn.Linear whose calls at tuned batch sizes run the tuned algorithm (same
    weight Parameter, same state-dict names)."""

    def __init__(self, linear_module: nn.Linear, tuned: Tuned) -> None:
        super().__init__()
        self.weight = linear_module.weight
        self.lt_gemm = tuned

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(self, x)


# A projection as install finds it: (parent module, attribute name, the module).
Member = tuple[nn.Module, str, nn.Module]


def projections(model: nn.Module, also: tuple[type, ...] = ()) -> dict[str, list[Member]]:
    """The model's bias-free nn.Linear children, and its children of the `also` types,
    grouped by attribute name (a role: every layer's qkv_proj, ...)."""
    groups: dict[str, list[Member]] = {}
    for parent in model.modules():
        for name, child in parent.named_children():
            plain = type(child) is nn.Linear and child.bias is None
            if plain or isinstance(child, also):
                groups.setdefault(name, []).append((parent, name, child))
    return groups


# Seconds per call of fn, cycling through the weights (time_calls on CUDA).
Timer = Callable[[Callable[[torch.Tensor], torch.Tensor], list[torch.Tensor]], float]


@torch.inference_mode()
def install(model: nn.Module, device: torch.device, batch_sizes: list[int],
            min_gain: float = MIN_GAIN) -> dict[str, str]:
    """Give each projection the cuBLASLt algorithm that beats F.linear by min_gain at each of
    batch_sizes above 1 (see the module docstring). Returns projection -> what it runs at
    which batch size, for the log."""
    sizes = sorted({b for b in batch_sizes if b > 1})
    if device.type != "cuda" or os.environ.get(ENV, "1") == "0" or not sizes:
        return {}
    t0 = time.perf_counter()
    global _unavailable
    if _unavailable is None:
        try:
            library = CublasLt(device)
        except Exception as e:  # no flashinfer, no compiler: cuBLAS's own picks stay
            # Said once per process: every later runner would only fail the same build again.
            _unavailable = f"F.linear (FlashInfer's cuBLASLt module: {type(e).__name__}: {e})"
    if _unavailable is not None:
        return {"all": _unavailable}
    status = choose(model, library, sizes, min_gain,
                    lambda fn, weights: time_calls(fn, cold_cycle(weights), graphs=True))
    logger.info("cuBLASLt algorithms timed at batch sizes %s in %.1f s", sizes,
                time.perf_counter() - t0)
    return status


@torch.inference_mode()
def choose(model: nn.Module, library: GemmLibrary, sizes: list[int], min_gain: float,
           timer: Timer, max_algos: int = MAX_ALGOS) -> dict[str, str]:
    """install's measurements and swaps with any library and timer (the tests drive it on a
    CPU with stand-ins)."""
    from radixrt.models.gemv_cuda import GemvLinear  # it calls `linear` beyond one token

    status: dict[str, str] = {}
    for role, members in projections(model, also=(GemvLinear,)).items():
        weights = [m.weight for _, _, m in members]
        w0 = weights[0]
        if any(w.shape != w0.shape or w.dtype != w0.dtype for w in weights):
            status[role] = "F.linear (mixed shapes)"
            continue
        if w0.dtype != torch.bfloat16 or any(not w.is_contiguous() for w in weights):
            status[role] = "F.linear (the cuBLASLt module takes packed bfloat16 weights)"
            continue
        algos: dict[int, int] = {}
        notes: list[str] = []
        for m in sizes:
            try:
                picked = _pick(library, weights, m, min_gain, timer, max_algos)
            except Exception as e:  # a failed call: this size keeps F.linear
                notes.append(f"{m}: F.linear ({type(e).__name__}: {e})")
                logger.warning("cuBLASLt algorithms for %s at batch %d: %s", role, m, e)
                continue
            algo, t, base = picked
            if algo is not None:
                algos[m] = algo
                notes.append(f"{m}: algo {algo} {t * 1e6:.1f} us vs {base * 1e6:.1f}")
            else:
                notes.append(f"{m}: F.linear {base * 1e6:.1f} us vs {t * 1e6:.1f}")
        shape = "x".join(map(str, w0.shape))
        status[role] = f"({shape}) " + "; ".join(notes)
        if not algos:
            continue
        tuned = Tuned(library, algos)
        for parent, name, module in members:
            if type(module) is nn.Linear:
                setattr(parent, name, LtLinear(module, tuned))
            else:
                module.lt_gemm = tuned
    return status


def _pick(library: GemmLibrary, weights: list[torch.Tensor], m: int, min_gain: float,
          timer: Timer, max_algos: int) -> tuple[int | None, float, float]:
    """(the rank of the algorithm to use at m rows or None, its time, F.linear's time)."""
    w0 = weights[0]
    x = torch.randn(m, w0.shape[1], device=w0.device, dtype=w0.dtype)
    ref = F.linear(x, w0).float()
    base = timer(lambda w: F.linear(x, w), weights)
    best: tuple[float, int] | None = None
    for algo in range(min(library.algorithms(x, w0), max_algos)):
        try:
            got = library.run(x, w0, algo).float()
        except Exception:  # an algorithm may refuse the shape at run time
            continue
        if float((got - ref).norm() / ref.norm().clamp_min(1e-12)) > 1e-2:
            continue
        t = timer(lambda w, algo=algo: library.run(x, w, algo), weights)
        if best is None or t < best[0]:
            best = (t, algo)
    if best is None:
        return None, float("inf"), base
    algo = best[1]
    t, base = retime_winner(timer, weights, lambda w: F.linear(x, w),
                            lambda w: library.run(x, w, algo), base)
    return (algo if t < (1 - min_gain) * base else None), t, base
