"""radixrt._quant_cpu against a plain-torch reference: dequantize the packed weights with
torch ops (quant.dequantize_ref), then matmul. Also round-to-nearest quantization and the
extension's input checks.

Without the extension built these tests skip, unless RADIXRT_REQUIRE_NATIVE=1 (CI), where
they fail.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radixrt.models import quant
from radixrt.models.quant import QuantWeight, dequantize_ref, quant_matmul, quantize_rtn
from radixrt.testing.native import require_native

require_native("radixrt._quant_cpu")

HAS_AVX2 = quant.native_available() and quant._ext().has_avx2()
PATHS = ["auto", "f32", "portable", "invariant", "blas"] + (["i8", "blocked"] if HAS_AVX2 else [])


def random_weight(n: int, k: int, bits: int, seed: int) -> QuantWeight:
    """Random packed weights with every code (q 0..15 / -128..127) and random fp16 scales."""
    g = torch.Generator().manual_seed(seed)
    nb = k // 32
    d = (torch.rand(n, nb, generator=g) * 0.02 + 1e-4).half()
    if bits == 4:
        qs = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=g)
        m = (torch.rand(n, nb, generator=g) * 0.2 - 0.1).half()
        return QuantWeight(4, qs, d, m)
    qs = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    return QuantWeight(8, qs, d)


def i8_bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """|y_i8 - y| bound of the int8-activation path: each activation moves by at most half
    its group's step max|x|/127, so |dy| <= sum_k |W[n, k]| * step(k) / 2."""
    m, k = x.shape
    step = x.reshape(m, k // 32, 32).abs().amax(-1) / 127
    return (step.repeat_interleave(32, dim=1) / 2) @ w.abs().T


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.one_of(st.integers(1, 9), st.integers(10, 70)), k_groups=st.integers(1, 12),
       n=st.integers(1, 67), bits=st.sampled_from([4, 8]), path=st.sampled_from(PATHS),
       threads=st.sampled_from([1, 2]), seed=st.integers(0, 2**16))
def test_matmul_matches_dequantize_then_matmul(m: int, k_groups: int, n: int, bits: int,
                                               path: str, threads: int, seed: int) -> None:
    k = 32 * k_groups
    if path == "blocked":
        n = -(-n // quant.PANEL) * quant.PANEL  # its panels are 16 columns wide
    w = random_weight(n, k, bits, seed)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(seed + 1)) * 3
    wf = dequantize_ref(w)
    ref = x.double() @ wf.double().T
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = quant_matmul(x, w, path)
    finally:
        torch.set_num_threads(before)
    assert y.shape == (m, n) and y.dtype == torch.float32
    # fp32 paths: only the summation order differs from the reference.
    tol = 1e-5 * (x.abs().double() @ wf.abs().double().T) + 1e-6
    if path == "i8":
        tol = tol + i8_bound(x, wf).double() * 1.001
    assert ((y.double() - ref).abs() <= tol).all(), (y.double() - ref).abs().max()


@pytest.mark.parametrize("bits", [4, 8])
def test_model_shapes_and_large_m_tiles(bits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default model's shapes (K 576 and 1536) and the tiled BLAS route (tiles smaller
    than the matrix), against the reference."""
    for n, k in [(960, 576), (576, 1536)]:
        w = random_weight(n, k, bits, n)
        wf = dequantize_ref(w)
        for m in (1, 4, 33):
            x = torch.randn(m, k)
            torch.testing.assert_close(quant_matmul(x, w), x @ wf.T, rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(quant, "TILE_ELEMS", 100 * 576)  # 100-row tiles of a 960-row matrix
    w = random_weight(960, 576, bits, 7)
    x = torch.randn(40, 576)
    torch.testing.assert_close(quant_matmul(x, w, "blas"), x @ dequantize_ref(w).T)


@pytest.mark.skipif(not HAS_AVX2, reason="the blocked GEMM needs AVX2")
@pytest.mark.parametrize("bits", [4, 8])
def test_blocked_gemm_across_blocks(bits: int) -> None:
    """The blocked GEMM over several row blocks (144 rows), K blocks (320) and threads, with
    partial tiles; "auto" takes it above SMALL_M rows."""
    for n, k, m in [(960, 576, 301), (576, 1536, 150), (48, 96, 33)]:
        w = random_weight(n, k, bits, n + m)
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
        wf = dequantize_ref(w)
        ref = x.double() @ wf.double().T
        tol = 1e-5 * (x.abs().double() @ wf.abs().double().T) + 1e-6
        for path in ("blocked", "auto"):
            y = quant_matmul(x, w, path)
            assert ((y.double() - ref).abs() <= tol).all(), (path, n, k, m)
    with pytest.raises(ValueError, match="multiple of 16"):
        quant_matmul(torch.randn(40, 64), random_weight(24, 64, bits, 0), "blocked")
    w = random_weight(24, 64, bits, 0)  # "auto" falls back to dequantize + BLAS there
    x = torch.randn(40, 64)
    torch.testing.assert_close(quant_matmul(x, w), x @ dequantize_ref(w).T)


@pytest.mark.parametrize("bits", [4, 8])
def test_invariant_path_rows_do_not_depend_on_the_batch(bits: int) -> None:
    """The "invariant" path (--deterministic) gives each row the same bits alone, in any
    tile position and beside any number of rows, above SMALL_M too, on 1 or 2 threads; and
    QuantizedLinear with batch_invariant routes every row count through it. The default
    small-M route is not held to this: its tiles of 1-4 rows sum in orders of their own."""
    k, n = 576, 200  # n not a multiple of 2 x threads' slices: odd weight-row remainders
    w = random_weight(n, k, bits, 3)
    x = torch.randn(150, k, generator=torch.Generator().manual_seed(4))
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            alone = torch.cat([quant_matmul(x[i:i + 1], w, "invariant") for i in range(150)])
            for m in (2, 3, 4, 5, 7, 8, 9, 33, 64, 65, 150):
                assert torch.equal(quant_matmul(x[:m], w, "invariant"), alone[:m]), (threads, m)
            # A row at every tile position: shift the batch by one row at a time.
            for shift in range(1, 4):
                assert torch.equal(quant_matmul(x[shift:shift + 8], w, "invariant"),
                                   alone[shift:shift + 8])
    finally:
        torch.set_num_threads(before)
    layer = quant.QuantizedLinear(w)
    layer.batch_invariant = True
    for m in (1, 4, 40):  # the decode fast path and the general route (above SMALL_M)
        assert torch.equal(layer(x[:m]), alone[:m]), m
    layer.batch_invariant = False
    assert torch.equal(layer(x[:1]), quant_matmul(x[:1], w))  # back to the default route


@pytest.mark.parametrize("bits", [4, 8])
def test_native_dequantize_is_exact(bits: int) -> None:
    w = random_weight(37, 96, bits, 3)
    assert torch.equal(quant.dequantize(w), dequantize_ref(w))
    assert torch.equal(quant.dequantize(w, slice(5, 9)), dequantize_ref(w)[5:9])


def test_embedding_lookup_dequantizes_the_rows() -> None:
    w = random_weight(50, 64, 8, 5)
    emb = quant.QuantizedEmbedding(w, torch.float32)
    ids = torch.tensor([[3, 0, 49], [7, 7, 1]])
    assert torch.equal(emb(ids), dequantize_ref(w)[ids])
    with pytest.raises(IndexError):  # C++ out_of_range
        emb(torch.tensor([50]))


@pytest.mark.parametrize("bits", [4, 8])
def test_rtn_round_trip_error(bits: int) -> None:
    """Round to nearest: every weight within half a step of its group's grid (plus the fp16
    rounding of the scales), and the grid spans each group's range."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g) * torch.rand(64, 1, generator=g)
    w[0, :32] = 0.0  # an all-zero group must not divide by zero
    q = quantize_rtn(w, bits)
    q.validate()
    err = (dequantize_ref(q) - w).abs().reshape(64, 8, 32).amax(-1)
    step = q.d.float()
    amax = w.abs().reshape(64, 8, 32).amax(-1)
    assert (err <= step / 2 + 2e-3 * amax + 1e-7).all()
    assert err[0, 0] == 0
    if bits == 8:
        assert q.qs.abs().max() == 127  # scale = max|w| / 127
    else:
        assert q.qs.min() == 0  # packed nibbles of q = 0 (the group minimum) occur
        assert torch.equal(dequantize_ref(q)[0, :32], torch.zeros(32))


def test_bad_inputs_are_clear_errors() -> None:
    w = random_weight(8, 64, 4, 0)
    with pytest.raises(ValueError, match="float32"):
        quant_matmul(torch.randn(2, 64, dtype=torch.float64), w)
    with pytest.raises(ValueError, match=r"\[M, 64\]"):
        quant_matmul(torch.randn(2, 32), w)
    with pytest.raises(ValueError, match="path"):
        quant_matmul(torch.randn(2, 64), w, "fast")
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_rtn(torch.randn(4, 40), 4)
    with pytest.raises(ValueError, match="field qs"):
        QuantWeight(4, w.qs.view(torch.int8), w.d, w.m).validate()
    ext = quant._ext()
    y = torch.empty(2, 8)
    with pytest.raises(ValueError, match="multiple of 32"):  # C++ invalid_argument
        ext.gemm_q4(y.data_ptr(), 2, 40, w.qs.data_ptr(), w.d.data_ptr(), w.m.data_ptr(), 8,
                    y.data_ptr())
    with pytest.raises(ValueError, match="null"):
        ext.gemm_q8(0, 2, 64, w.qs.data_ptr(), w.d.data_ptr(), 8, y.data_ptr())


def test_shares_torch_openmp_runtime() -> None:
    """Imported after torch, the extension maps no second libgomp (one thread pool)."""
    code = ("import torch; from radixrt.models import quant; quant._ext(); "
            "libs = {l.split()[-1] for l in open('/proc/self/maps') if 'gomp' in l}; "
            "print(len(libs), sorted(libs))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120, cwd=os.getcwd())
    assert out.stdout.startswith("1 "), out.stdout
