"""Group-32 quantized weights (CPU): int4 with GGUF Q4_1's math, int8 with Q8_0's.

int4: per 32 weights of a row an fp16 scale d and minimum m, w = d * q + m, q in 0..15;
      packed as qs uint8 [N, K/2] (byte i of a group: weight i low nibble, i + 16 high),
      d and m float16 [N, K/32]. Exactly GGUF's Q4_1 block, split into three arrays.
int8: per 32 weights an fp16 scale d, w = d * q, q int8; qs int8 [N, K], d float16 [N, K/32].
      Exactly GGUF's Q8_0 block.

The matmuls run in radixrt._quant_cpu (csrc/quant_cpu.cpp): up to SMALL_M activation rows
straight from the packed weights (fp32 activations, AVX2 where the CPU has it); above that,
on AVX2, a blocked fp32 GEMM that dequantizes the weights while it packs them; elsewhere the
weights are dequantized tile by tile into an fp32 scratch and torch's BLAS does the matmul
(bench/bench_quant_linear.py measures them all).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

GROUP = 32
BITS = {"int4": 4, "int8": 8}
# Activation rows up to which the packed-weight kernel beats dequantize + BLAS (measured with
# bench/bench_quant_linear.py; see docs/benchmarks.md).
SMALL_M = 32
# fp32 weight elements dequantized per BLAS call above SMALL_M (bounds the scratch: 16 MiB).
TILE_ELEMS = 1 << 22


def _ext():  # noqa: ANN202 - the pybind11 module
    """radixrt._quant_cpu, imported after torch so that it shares torch's libgomp."""
    try:
        from radixrt import _quant_cpu
    except ImportError as e:
        raise RuntimeError(
            "quantized weights need the native extension radixrt._quant_cpu: build it with "
            "`pip install -e .` or `python setup.py build_ext --inplace`") from e
    return _quant_cpu


def native_available() -> bool:
    try:
        _ext()
    except RuntimeError:
        return False
    return True


@dataclass
class QuantWeight:
    """A packed [N, K] weight; `m` only for int4."""

    bits: int
    qs: torch.Tensor
    d: torch.Tensor
    m: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        n = self.qs.shape[0]
        return n, self.qs.shape[1] * (2 if self.bits == 4 else 1)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qs, self.d, self.m) if t is not None)

    def rows(self, index: torch.Tensor | slice) -> QuantWeight:
        """The rows `index` (rows permute freely: groups run along the input dim)."""
        return QuantWeight(self.bits, self.qs[index].contiguous(), self.d[index].contiguous(),
                           None if self.m is None else self.m[index].contiguous())

    def validate(self) -> None:
        n, k = self.shape
        if self.bits not in (4, 8) or k % GROUP:
            raise ValueError(f"bad quantized weight: bits {self.bits}, K {k}")
        want = {"qs": (torch.uint8 if self.bits == 4 else torch.int8, (n, k * self.bits // 8)),
                "d": (torch.float16, (n, k // GROUP))}
        if self.bits == 4:
            want["m"] = (torch.float16, (n, k // GROUP))
        for name, (dtype, shape) in want.items():
            t = getattr(self, name)
            if t is None or t.dtype != dtype or tuple(t.shape) != shape or not t.is_contiguous() \
                    or t.device.type != "cpu":
                raise ValueError(f"quantized weight field {name}: want contiguous CPU {dtype} "
                                 f"{shape}, got {None if t is None else (t.dtype, tuple(t.shape))}")

    @staticmethod
    def cat(parts: list[QuantWeight]) -> QuantWeight:
        """Row-wise concatenation (fused qkv / gate_up projections)."""
        bits = {p.bits for p in parts}
        if len(bits) != 1:
            raise ValueError(f"cannot fuse weights of different bit widths {sorted(bits)}")
        m = None if parts[0].m is None else torch.cat([p.m for p in parts])  # type: ignore[misc]
        return QuantWeight(bits.pop(), torch.cat([p.qs for p in parts]),
                           torch.cat([p.d for p in parts]), m)


# --------------------------------------------------------------------------- quantization


def quantize_rtn(w: torch.Tensor, bits: int) -> QuantWeight:
    """Round-to-nearest group-32 quantization of a [N, K] weight (llama.cpp's Q4_1 / Q8_0
    math). Scales are rounded to fp16 first and q computed from the rounded scales, so the
    stored (d, m, q) reproduce w as closely as fp16 scales allow."""
    n, k = w.shape
    if k % GROUP:
        raise ValueError(f"input dim {k} is not a multiple of {GROUP}")
    g = w.detach().float().reshape(n, k // GROUP, GROUP)
    if bits == 8:
        d = (g.abs().amax(-1) / 127).half()
        inv = torch.where(d.float() > 0, 1 / d.float(), torch.zeros((), dtype=torch.float32))
        q = torch.round(g * inv[..., None]).clamp(-127, 127).to(torch.int8)
        return QuantWeight(8, q.reshape(n, k), d)
    if bits != 4:
        raise ValueError(f"bits must be 4 or 8, not {bits}")
    lo, hi = g.amin(-1), g.amax(-1)
    m = lo.half()
    d = ((hi - m.float()) / 15).half()
    inv = torch.where(d.float() > 0, 1 / d.float(), torch.zeros((), dtype=torch.float32))
    q = torch.round((g - m.float()[..., None]) * inv[..., None]).clamp(0, 15).to(torch.uint8)
    packed = q[..., :16] | (q[..., 16:] << 4)
    return QuantWeight(4, packed.reshape(n, k // 2).contiguous(), d, m)


def dequantize_ref(w: QuantWeight) -> torch.Tensor:
    """fp32 [N, K] in plain torch: the reference the kernels are tested against."""
    n, k = w.shape
    if w.bits == 8:
        q = w.qs.reshape(n, k // GROUP, GROUP).float()
        return (q * w.d.float()[..., None]).reshape(n, k)
    b = w.qs.reshape(n, k // GROUP, 16)
    q = torch.cat([b & 15, b >> 4], dim=-1).float()
    assert w.m is not None
    return (q * w.d.float()[..., None] + w.m.float()[..., None]).reshape(n, k)


def dequantize(w: QuantWeight, rows: slice | None = None, out: torch.Tensor | None = None
               ) -> torch.Tensor:
    """fp32 rows of w (all by default) with the native kernel, into `out` if given."""
    ext = _ext()
    part = w if rows is None else QuantWeight(w.bits, w.qs[rows], w.d[rows],
                                              None if w.m is None else w.m[rows])
    n, k = part.shape
    if out is None:
        out = torch.empty(n, k, dtype=torch.float32)
    threads = torch.get_num_threads()
    if w.bits == 4:
        ext.dequant_q4(part.qs.data_ptr(), part.d.data_ptr(), part.m.data_ptr(),  # type: ignore[union-attr]
                       n, k, out.data_ptr(), threads)
    else:
        ext.dequant_q8(part.qs.data_ptr(), part.d.data_ptr(), n, k, out.data_ptr(), threads)
    return out


# --------------------------------------------------------------------------- matmul

_scratch: torch.Tensor | None = None


def _scratch_tensor(numel: int) -> torch.Tensor:
    """One fp32 scratch shared by every layer (the worker runs one layer at a time)."""
    global _scratch
    if _scratch is None or _scratch.numel() < numel:
        _scratch = torch.empty(numel, dtype=torch.float32)
    return _scratch[:numel]


# Kernel paths of radixrt._quant_cpu (see csrc/quant_cpu.cpp), plus "blas" (dequantize + BLAS).
# "invariant": one summation order per row whatever the row count (EngineConfig.deterministic).
KERNEL_PATHS = {"auto": 0, "f32": 1, "i8": 2, "portable": 3, "blocked": 4, "invariant": 5}
# Columns of W per panel of the blocked GEMM: it needs N a multiple of this.
PANEL = 16
# The path QuantizedLinear uses for calls of more than _linear_min_rows rows; benchmarks
# switch it (set_linear_path) to compare kernels.
_linear_path = "auto"
_linear_min_rows = 0


def set_linear_path(path: str, min_rows: int = 0) -> None:
    """Route QuantizedLinear calls of more than `min_rows` rows through `path` (see
    quant_matmul), the others through "auto"; "auto" for all by default."""
    global _linear_path, _linear_min_rows
    if path != "blas" and path not in KERNEL_PATHS:
        raise ValueError(f"unknown path {path!r}")
    _linear_path, _linear_min_rows = path, min_rows


def set_batch_invariant(model: nn.Module, on: bool = True) -> int:
    """Route every QuantizedLinear of `model` through the batch-invariant kernel (or back);
    returns how many there are."""
    count = 0
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            m.batch_invariant = on
            count += 1
    return count


_has_avx2: bool | None = None  # the CPU's answer, asked once


def _blocked_ok(n: int) -> bool:
    """Whether the blocked large-M GEMM runs here (AVX2 and N a multiple of PANEL)."""
    global _has_avx2
    if _has_avx2 is None:
        _has_avx2 = bool(_ext().has_avx2())
    return _has_avx2 and n % PANEL == 0


def quant_matmul(x: torch.Tensor, w: QuantWeight, path: str = "auto") -> torch.Tensor:
    """y [M, N] fp32 = x [M, K] fp32 @ W^T. path "auto": the packed-weight kernel (fp32
    activations) up to SMALL_M rows, else the blocked GEMM where it runs (AVX2, N a multiple
    of 16), else dequantize + BLAS; "f32" / "i8" / "portable" / "blocked" force that kernel,
    "blas" the dequantize + BLAS route."""
    n, k = w.shape
    if x.dim() != 2 or x.shape[1] != k or x.dtype != torch.float32 or x.device.type != "cpu":
        raise ValueError(f"quant_matmul: x must be CPU float32 [M, {k}], got {x.dtype} "
                         f"{tuple(x.shape)} on {x.device}")
    if path != "blas" and path not in KERNEL_PATHS:
        raise ValueError(f"unknown path {path!r}")
    x = x.contiguous()
    rows = x.shape[0]
    if path == "auto" and rows > SMALL_M and _blocked_ok(n):
        return _native_matmul(x, w, KERNEL_PATHS["blocked"])
    if path == "blas" or (path == "auto" and rows > SMALL_M):
        tile = max(1, TILE_ELEMS // k)
        if tile >= n:
            return x @ dequantize(w, out=_scratch_tensor(n * k).view(n, k)).T
        y = torch.empty(rows, n, dtype=torch.float32)
        for a in range(0, n, tile):
            b = min(n, a + tile)
            wt = dequantize(w, slice(a, b), out=_scratch_tensor((b - a) * k).view(b - a, k))
            y[:, a:b] = x @ wt.T
        return y
    return _native_matmul(x, w, KERNEL_PATHS[path])


def _native_matmul(x: torch.Tensor, w: QuantWeight, code: int = 0) -> torch.Tensor:
    """radixrt._quant_cpu's kernel `code` on a contiguous fp32 [M, K] x (checked by the
    caller)."""
    ext = _ext()
    (rows, k), n = x.shape, w.qs.shape[0]
    y = torch.empty(rows, n, dtype=torch.float32)
    threads = torch.get_num_threads()
    if w.bits == 4:
        ext.gemm_q4(x.data_ptr(), rows, k, w.qs.data_ptr(), w.d.data_ptr(),
                    w.m.data_ptr(), n, y.data_ptr(), threads, code)  # type: ignore[union-attr]
    else:
        ext.gemm_q8(x.data_ptr(), rows, k, w.qs.data_ptr(), w.d.data_ptr(), n, y.data_ptr(),
                    threads, code)
    return y


# --------------------------------------------------------------------------- modules


class QuantizedLinear(nn.Module):
    """nn.Linear with a packed weight; activations in any float dtype, computed in fp32."""

    def __init__(self, weight: QuantWeight, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        weight.validate()
        self.bits = weight.bits
        self.out_features, self.in_features = weight.shape
        self.register_buffer("qs", weight.qs)
        self.register_buffer("d", weight.d)
        self.register_buffer("m", weight.m)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(),
                                                           requires_grad=False)

    # Batch-invariant: every call, whatever its row count, through the kernel that sums each
    # row in one order (set_batch_invariant), so a row's output does not depend on the rows
    # beside it. Off: the fastest kernel per row count, whose orders differ.
    batch_invariant = False

    @property
    def weight_q(self) -> QuantWeight:
        return QuantWeight(self.bits, self.qs, self.d, self.m)

    def _decode_call(self) -> tuple:
        """(kernel, trailing args) of the packed-weight kernel on this module's buffers, kept
        while the buffers stay where they are: a decode step calls 120 of these layers, and
        looking buffers up through nn.Module costs more than the arithmetic of some."""
        qs = self._buffers["qs"]
        cached = self.__dict__.get("_decode")
        if cached is None or cached[0] != qs.data_ptr():
            ext = _ext()
            n = self.out_features
            if self.bits == 4:
                args = (qs.data_ptr(), self._buffers["d"].data_ptr(),
                        self._buffers["m"].data_ptr(), n)
                cached = (qs.data_ptr(), ext.gemm_q4, args)
            else:
                cached = (qs.data_ptr(), ext.gemm_q8, (qs.data_ptr(),
                                                         self._buffers["d"].data_ptr(), n))
            self.__dict__["_decode"] = cached
        return cached

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dtype is torch.float32 and self.bias is None and x.dim() == 2
                and (x.shape[0] <= SMALL_M or self.batch_invariant) and x.is_contiguous()
                and (_linear_path == "auto" or x.shape[0] <= _linear_min_rows)
                and x.shape[1] == self.in_features and x.device.type == "cpu"):
            # Decode: straight to the packed-weight kernel (what _native_matmul does).
            _, kernel, args = self._decode_call()
            rows = x.shape[0]
            y = torch.empty(rows, self.out_features, dtype=torch.float32)
            kernel(x.data_ptr(), rows, self.in_features, *args, y.data_ptr(),
                   torch.get_num_threads(), KERNEL_PATHS["invariant"] if self.batch_invariant
                   else 0)
            return y
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features).float()
        path = _linear_path if flat.shape[0] > _linear_min_rows else "auto"
        if self.batch_invariant and path == "auto":
            path = "invariant"
        y = quant_matmul(flat, self.weight_q, path)
        if self.bias is not None:
            y += self.bias.float()
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"int{self.bits}, group={GROUP}, bias={self.bias is not None}")


class QuantizedEmbedding(nn.Module):
    """Token embedding looked up from an int8 table (only the looked-up rows are expanded)."""

    def __init__(self, weight: QuantWeight, dtype: torch.dtype) -> None:
        super().__init__()
        weight.validate()
        if weight.bits != 8:
            raise ValueError("QuantizedEmbedding needs an int8 table")
        self.num_embeddings, self.embedding_dim = weight.shape
        self.dtype = dtype
        self.register_buffer("qs", weight.qs)
        self.register_buffer("d", weight.d)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1).to(torch.int64).contiguous()
        out = torch.empty(flat.numel(), self.embedding_dim, dtype=torch.float32)
        _ext().embed_q8(flat.data_ptr(), flat.numel(), self.qs.data_ptr(), self.d.data_ptr(),
                        self.num_embeddings, self.embedding_dim, out.data_ptr())
        return out.to(self.dtype).reshape(*ids.shape, self.embedding_dim)


def quantize_model(model: nn.Module, bits: int) -> nn.Module:
    """Replace every nn.Linear by a round-to-nearest QuantizedLinear of `bits`, in place.

    lm_head goes to int8 whatever `bits` is (the output layer is the most sensitive one;
    llama.cpp keeps it at 6-8 bits too). A tied embedding becomes an int8 lookup table shared
    with lm_head; an untied one stays dense (a lookup reads only a few rows per step).
    """
    head = getattr(model, "lm_head", None)
    emb = getattr(model, "embed_tokens", None)
    tied = isinstance(head, nn.Linear) and isinstance(emb, nn.Embedding) \
        and head.weight is emb.weight
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        w = quantize_rtn(module.weight.data, 8 if module is head else bits)
        bias = None if module.bias is None else module.bias.data.float()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child,
                QuantizedLinear(w, bias))
        module.weight = None  # type: ignore[assignment]  # free the dense copy now
    if tied:
        lm = model.lm_head
        assert isinstance(lm, QuantizedLinear) and isinstance(emb, nn.Embedding)
        model.embed_tokens = QuantizedEmbedding(lm.weight_q, emb.weight.dtype)
    return model
