"""The decode step's GEMMs alone, by BLAS library and weight layout (a probe for issue 11).

On the H200 the five projections of a Llama-3-8B decode step read their weights at 69 % of
the card's bandwidth at batch 128 and ~81 % at batch 1 (cuBLAS's own kernel picks, from the
step profile). This times each projection shape at a few batch sizes through

  linear/cublas    F.linear(x, W) with W [out, in] (what the model runs), torch's default
  linear/cublaslt  the same with torch.backends.cuda.preferred_blas_library("cublaslt")
  matmul/cublas    x @ Wt with Wt [in, out] contiguous (the other operand order)
  gemv/triton      at batch 1, radixrt/models/gemv_cuda.py's GEMV, its best block config
  gemm/triton      at batch > 1, a plain Triton tile GEMM (tl.dot, one M tile covering the
                   batch), its best of GEMM_CONFIGS: whether a kernel of ours could read the
                   weights faster than cuBLAS's picks at these skinny shapes

and reports microseconds and the weight bytes read per second. Weights rotate among copies
worth > 4x the card's L2, so no call reads weights another call left in L2, and the calls are
replayed from a CUDA graph (as decode steps run them: no Python launch cost in the figure).

    python bench/gpu_gemm.py [--batches 1,128] [--json out.json]     # on a CUDA machine
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from torch.nn import functional as F

from radixrt.models import gemv_cuda
from radixrt.triton_jit import LazyKernel

LLAMA3_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
             "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256}
ROTATE_BYTES = 4 * 60 * 2**20  # > 4x an H100/H200 L2 (50-60 MiB)


def projection_shapes(f: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """name -> (out features, in features) of a Llama decoder's matmuls."""
    h, d = f["hidden_size"], f["head_dim"]
    q, kv = f["num_attention_heads"] * d, f["num_key_value_heads"] * d
    return {"qkv": (q + 2 * kv, h), "o": (h, q), "gate_up": (2 * f["intermediate_size"], h),
            "down": (h, f["intermediate_size"]), "lm_head": (f["vocab_size"], h)}


def _time(fn: Any, weights: list[torch.Tensor], device: torch.device, reps: int) -> float:
    """Seconds per fn(w), cycling through `weights`: on CUDA replayed from a CUDA graph, as
    decode steps run (no Python launch cost in the figure); on a CPU, plainly."""
    if device.type == "cuda":
        return gemv_cuda.time_calls(fn, weights, graphs=True, reps=reps)
    t = time.perf_counter()
    for _ in range(reps):
        for w in weights:
            fn(w)
    return (time.perf_counter() - t) / (reps * len(weights))


def _variants(x: torch.Tensor, ws: list[torch.Tensor], wts: list[torch.Tensor]
              ) -> dict[str, tuple[str, Any, list[torch.Tensor]]]:
    """variant -> (BLAS library, call on one weight copy, the copies it cycles through)."""
    def linear(w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w)

    def matmul(wt: torch.Tensor) -> torch.Tensor:
        return x @ wt

    return {"linear/cublas": ("cublas", linear, ws), "linear/cublaslt": ("cublaslt", linear, ws),
            "matmul/cublas": ("cublas", matmul, wts)}


# (BLOCK_N, BLOCK_K, pipeline stages, warps): narrow N tiles put 128 programs on the 4096-row
# projections (132 SMs on an H100/H200); deep K pipelines keep weight loads in flight.
GEMM_CONFIGS = ((32, 128, 4, 4), (64, 64, 4, 4), (64, 128, 4, 4), (64, 128, 3, 8),
                (128, 64, 4, 8), (32, 256, 3, 4))


def _define_gemm(triton: Any, tl: Any) -> Any:
    @triton.jit
    def gemm(x_ptr, w_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,  # noqa: ANN001
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # y[M, N] = x[M, K] @ w[N, K]^T, fp32 accumulation; program (n, m) owns one tile.
        rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :],
                        mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
            w = tl.load(w_ptr + rn[None, :] * stride_wn + kk[:, None],
                        mask=(rn[None, :] < N) & (kk[:, None] < K), other=0.0)
            acc = tl.dot(x, w, acc)
        tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :],
                 acc.to(y_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))

    return gemm


_gemm_kernel = LazyKernel(_define_gemm)


def triton_gemm(x: torch.Tensor, w: torch.Tensor, config: tuple[int, int, int, int]
                ) -> torch.Tensor:
    """x [M, K] @ w[N, K]^T with the tile GEMM above (M <= 128: one M tile)."""
    loaded = _gemm_kernel()
    if loaded is None:
        raise RuntimeError("the Triton GEMM needs the triton package")
    triton, kernel = loaded
    m, k = x.shape
    n = w.shape[0]
    block_n, block_k, stages, warps = config
    block_m = max(16, triton.next_power_of_2(m))  # tl.dot wants >= 16 rows
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    kernel[(triton.cdiv(n, block_n), triton.cdiv(m, block_m))](
        x, w, y, m, n, k, x.stride(0), w.stride(0), y.stride(0), BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_K=block_k, num_stages=stages, num_warps=warps)
    return y


def _gemm_call(x: torch.Tensor, config: tuple[int, int, int, int]) -> Any:
    def call(w: torch.Tensor) -> torch.Tensor:
        return triton_gemm(x, w, config)

    return call


def _gemv_call(x: torch.Tensor, config: tuple[int, int, int]) -> Any:
    def call(w: torch.Tensor) -> torch.Tensor:
        return gemv_cuda.gemv(x, w, config)

    return call


def gemm_rows(fields: dict[str, Any], device: torch.device, dtype: torch.dtype = torch.bfloat16,
              batches: tuple[int, ...] = (1, 128), reps: int = 5) -> list[dict[str, Any]]:
    """One row per (projection, batch, variant): us per call and weight TB/s. (On a CPU,
    a plumbing check: the library switch does not apply there.)"""
    rows: list[dict[str, Any]] = []
    cuda = device.type == "cuda"
    lib = torch.backends.cuda.preferred_blas_library()
    try:
        for name, (n_out, n_in) in projection_shapes(fields).items():
            nbytes = n_out * n_in * torch.empty((), dtype=dtype).element_size()
            copies = max(2, -(-ROTATE_BYTES // nbytes))
            ws = [torch.randn(n_out, n_in, device=device, dtype=dtype) for _ in range(copies)]
            wts = [w.t().contiguous() for w in ws]
            for b in batches:
                x = torch.randn(b, n_in, device=device, dtype=dtype)
                for variant, (blas, fn, copies_of) in _variants(x, ws, wts).items():
                    if cuda:
                        torch.backends.cuda.preferred_blas_library(blas)
                    s = _time(fn, copies_of, device, reps)
                    rows.append({"gemm": name, "batch": b, "variant": variant,
                                 "us": round(s * 1e6, 2),
                                 "weight_TBps": float(f"{nbytes / s / 1e12:.4g}")})
                if cuda and b == 1 and gemv_cuda._load_kernel() is not None:
                    # The Triton GEMV the model runner may install: its best block config.
                    s, cfg = min((_time(_gemv_call(x, c), ws, device, reps), c)
                                 for c in gemv_cuda.CONFIGS)
                    rows.append({"gemm": name, "batch": b, "variant": "gemv/triton",
                                 "config": list(cfg), "us": round(s * 1e6, 2),
                                 "weight_TBps": float(f"{nbytes / s / 1e12:.4g}")})
                if cuda and 1 < b <= 128 and _gemm_kernel() is not None:
                    ref = F.linear(x, ws[0]).float()
                    best: tuple[float, tuple[int, int, int, int]] | None = None
                    for c in GEMM_CONFIGS:
                        try:
                            got = triton_gemm(x, ws[0], c).float()
                            if float((got - ref).norm() / ref.norm()) > 1e-2:
                                raise RuntimeError("disagrees with F.linear")
                            t = _time(_gemm_call(x, c), ws, device, reps)
                        except Exception as e:  # one config that does not build or fit
                            print(f"gpu_gemm: {name} bs={b} gemm {c}: {type(e).__name__}: {e}")
                            continue
                        if best is None or t < best[0]:
                            best = (t, c)
                    if best is not None:
                        rows.append({"gemm": name, "batch": b, "variant": "gemm/triton",
                                     "config": list(best[1]), "us": round(best[0] * 1e6, 2),
                                     "weight_TBps": float(f"{nbytes / best[0] / 1e12:.4g}")})
            ws.clear()
            wts.clear()
            if cuda:
                torch.cuda.empty_cache()
    finally:
        if cuda:
            torch.backends.cuda.preferred_blas_library(lib)
    return rows


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    out = ["| gemm | batch | " + " | ".join(f"{v} us (TB/s)" for v in variants) + " |",
           "|---|---|" + "---|" * len(variants)]
    keys = list(dict.fromkeys((r["gemm"], r["batch"]) for r in rows))
    for g, b in keys:
        cells = {r["variant"]: f"{r['us']} ({r['weight_TBps']})" for r in rows
                 if (r["gemm"], r["batch"]) == (g, b)}
        out.append(f"| {g} | {b} | " + " | ".join(cells.get(v, "-") for v in variants) + " |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python bench/gpu_gemm.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,128")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_gemm: needs CUDA")
        return 2
    rows = gemm_rows(LLAMA3_8B, torch.device("cuda"),
                     batches=tuple(int(b) for b in a.batches.split(",")))
    print("\n".join(markdown(rows)))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
