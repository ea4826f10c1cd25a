"""radixrt's Triton kernels for CUDA run by Triton's interpreter on the CPU, against torch:
the one-token GEMV (radixrt/models/gemv_cuda.py) with its fused prologues and the model path
that uses them, and the fused RoPE + KV write (radixrt/attention/rope_kv_cuda.py) with the
FlashInfer backend's use of it. tests/gpu runs the same kernels compiled on CUDA.

Not collected by the suite itself: Triton reads TRITON_INTERPRET when it is first imported
(its library functions, tl.sum among them, are decorated then), so
test_triton_kernels_interpreted.py runs this file in a fresh pytest with the variable set.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.nn import functional as F

from radixrt.models import gemv_cuda
from radixrt.testing.compare import rel_err

# Not a CUDA test: Triton's interpreter runs the kernel with numpy. Rows and columns that are
# no multiple of the blocks check the masks.
SHAPES = [(50, 130), (96, 256)]


@pytest.fixture(autouse=True, scope="module")
def interpreted() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", (
        "run through test_triton_kernels_interpreted.py")
    assert gemv_cuda._load_kernel() is not None, "triton is a test dependency"


def silu_mul_reference(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(gate_up.dtype)


@pytest.mark.parametrize(("n", "k"), SHAPES)
@pytest.mark.parametrize("cfg", [(4, 64, 4), (16, 32, 4)])
def test_gemv_matches_linear(n: int, k: int, cfg: tuple[int, int, int]) -> None:
    torch.manual_seed(n + k)
    w = torch.randn(n, k)
    x = torch.randn(1, k)
    y = gemv_cuda.gemv(x, w, cfg)
    assert y.shape == (1, n)
    torch.testing.assert_close(y, F.linear(x, w), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("n", "k"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_silu_mul_matches_activation_then_linear(n: int, k: int,
                                                       dtype: torch.dtype) -> None:
    torch.manual_seed(k)
    w = (torch.randn(n, k) / k**0.5).to(dtype)
    gate_up = torch.randn(1, 2 * k).to(dtype)
    got = gemv_cuda.gemv(gate_up, w, (8, 64, 4), silu_mul=True)
    # The unfused path: the activation rounded to the dtype, then the product in float32.
    want = F.linear(silu_mul_reference(gate_up).float(), w.float())
    assert got.dtype == dtype
    assert rel_err(got, want) < (1e-6 if dtype == torch.float32 else 8e-3)


def test_input_width_is_checked() -> None:
    w = torch.randn(8, 32)
    with pytest.raises(ValueError, match=r"\(1, 32\) .*silu_mul"):
        gemv_cuda.gemv(torch.randn(1, 32), w, (4, 32, 4), silu_mul=True)
    with pytest.raises(ValueError, match=r"\(1, 64\)"):
        gemv_cuda.gemv(torch.randn(1, 64), w, (4, 32, 4))
    with pytest.raises(ValueError, match="residual"):
        gemv_cuda.gemv_rms_norm(torch.randn(1, 32), torch.randn(1, 16), torch.ones(32), 1e-6,
                                w, (4, 32, 4))


@pytest.mark.parametrize(("n", "k"), SHAPES)
@pytest.mark.parametrize("add", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_rms_norm_matches_norm_then_linear(n: int, k: int, add: bool,
                                                 dtype: torch.dtype) -> None:
    from radixrt.models.layers import RMSNorm

    torch.manual_seed(n * k)
    norm = RMSNorm(k, 1e-5).to(dtype)
    torch.nn.init.normal_(norm.weight, 1.0, 0.2)
    linear = torch.nn.Linear(k, n, bias=False).to(dtype)
    x = torch.randn(1, k).to(dtype)
    r = torch.randn(1, k).to(dtype) if add else None
    want, want_r = gemv_cuda.norm_linear(norm, linear, x.clone(),
                                         r.clone() if r is not None else None)
    x0 = x.clone()
    got, got_r = gemv_cuda.gemv_rms_norm(x, r, norm.weight, norm.eps, linear.weight,
                                         (16, 64, 4))
    assert torch.equal(x, x0)  # inputs untouched
    # The residual stream as stored. Triton's interpreter truncates float32 -> bfloat16
    # (a GPU rounds to nearest even), hence one bfloat16 ulp there.
    if dtype == torch.float32:
        assert torch.equal(got_r, want_r)
    else:
        torch.testing.assert_close(got_r, want_r, atol=0, rtol=2**-7)
    assert rel_err(got, want) < (1e-5 if dtype == torch.float32 else 1e-2)


def test_norm_linear_fuses_one_token_only() -> None:
    from radixrt.models.layers import RMSNorm

    torch.manual_seed(3)
    norm = RMSNorm(64, 1e-6)
    linear = torch.nn.Linear(64, 40, bias=False)
    fused = gemv_cuda.GemvLinear(linear, (8, 32, 4), prologue="rms_norm")
    calls = spy_launches()
    try:
        for t in (1, 3):
            x, r = torch.randn(t, 64), torch.randn(t, 64)
            want, want_r = gemv_cuda.norm_linear(norm, linear, x.clone(), r.clone())
            got, got_r = gemv_cuda.norm_linear(norm, fused, x.clone(), r.clone())
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(got_r, want_r)
    finally:
        gemv_cuda._launch = calls.real  # type: ignore[assignment]
    assert calls.kinds == ["rms_norm"]  # the one-token call only
    with pytest.raises(ValueError, match="prologue"):
        gemv_cuda.GemvLinear(linear, (8, 32, 4), prologue="gelu")


class spy_launches:  # noqa: N801 - used as a function
    """Records what each GEMV launch fused, in place of gemv_cuda._launch."""

    def __init__(self) -> None:
        self.kinds: list[str | None] = []
        self.real = gemv_cuda._launch

        def launch(*args: object, **kw: object) -> object:
            self.kinds.append("silu_mul" if kw.get("silu_mul") else
                              "rms_norm" if kw.get("norm_weight") is not None else None)
            return self.real(*args, **kw)  # type: ignore[arg-type]

        gemv_cuda._launch = launch  # type: ignore[assignment]


def test_mlp_down_projection_takes_gate_up_in_one_kernel(make_tiny_model) -> None:
    """The model's MLP with its down projection swapped for a fused GemvLinear: one token
    goes through the fused kernel, more tokens through F.linear, both as the plain MLP."""
    from radixrt.models.config import ModelConfig
    from radixrt.models.llama import MLP
    from radixrt.models.parallel import TensorParallel

    cfg = ModelConfig.from_dir(make_tiny_model("llama"))
    torch.manual_seed(0)
    mlp = MLP(cfg, TensorParallel())
    for p in mlp.parameters():
        torch.nn.init.normal_(p, std=cfg.hidden_size**-0.5)
    x1, x3 = torch.randn(1, cfg.hidden_size), torch.randn(3, cfg.hidden_size)
    want1, want3 = mlp(x1), mlp(x3)
    mlp.down_proj = gemv_cuda.GemvLinear(mlp.down_proj, (8, 64, 4), prologue="silu_mul")
    calls = spy_launches()
    try:
        got1, got3 = mlp(x1), mlp(x3)
    finally:
        gemv_cuda._launch = calls.real  # type: ignore[assignment]
    assert calls.kinds == ["silu_mul"]  # the one-token call only
    torch.testing.assert_close(got1, want1, atol=1e-5, rtol=1e-4)
    assert torch.equal(got3, want3)
    assert set(mlp.state_dict()) == {"gate_up_proj.weight", "down_proj.weight"}


def test_whole_model_step_with_every_prologue_fused(make_tiny_model) -> None:
    """A one-token decode step of a tiny model through the module path (the one CUDA runs)
    with each projection a GemvLinear fusing what the model's linear_prologues() names:
    the same logits as with the GEMVs switched off (F.linear after the separate ops)."""
    from radixrt.config import EngineConfig
    from radixrt.models import cpu_flat
    from radixrt.testing.batches import batch_from_chunks
    from radixrt.worker.model_runner import ModelRunner

    path = make_tiny_model("llama", num_hidden_layers=2)
    runner = ModelRunner(EngineConfig(model_path=str(path), device="cpu", dtype="float32",
                                      attention_backend="torch", page_size=4,
                                      max_total_tokens=256, max_running_requests=2))
    model = runner.model
    prologues = model.linear_prologues()
    assert sorted(k for k, _ in prologues.values()).count("rms_norm") == 2 * 2 + 1
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear and child.bias is None:
                kind = prologues.get(child, (None, None))[0]
                # Wide row blocks: the interpreter runs one program at a time.
                setattr(parent, name, gemv_cuda.GemvLinear(child, (256, 128, 4), kind))
                swapped += 1
    assert swapped == 4 * 2 + 1
    was_flat = cpu_flat.enabled
    cpu_flat.enabled = False  # the module path, as on CUDA
    calls = spy_launches()
    try:
        prompt = batch_from_chunks([0], [0], [[5, 9, 11, 300, 7]], {0: [0, 1]})
        runner._apply_updates(prompt)
        runner.forward(prompt)
        # Five tokens: F.linear in the layers; the logits are one row, so lm_head fuses.
        assert calls.kinds == ["rms_norm"]
        calls.kinds.clear()
        step = batch_from_chunks([0], [5], [[17]], {})
        fused = runner.forward(step).clone()
        gemv_cuda.enabled = False
        try:
            plain = runner.forward(step)
        finally:
            gemv_cuda.enabled = True
    finally:
        cpu_flat.enabled = was_flat
        gemv_cuda._launch = calls.real  # type: ignore[assignment]
    per_layer = ["rms_norm", None, "rms_norm", "silu_mul"]  # qkv, o, gate_up, down
    assert calls.kinds == per_layer * 2 + ["rms_norm"]
    torch.testing.assert_close(fused, plain, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- RoPE + KV write


def rope_case(t: int, hq: int, hk: int, d: int, dtype: torch.dtype, seed: int = 0
              ) -> tuple[torch.Tensor, ...]:
    """One qkv projection output [T, (hq + 2 hk) d] with q, k, v as views into it (as the
    model passes them), positions, a cos/sin table, distinct slots and a zeroed [2, S, hk, d]
    cache pair."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(t, (hq + 2 * hk) * d, generator=g).to(dtype)
    q = qkv[:, : hq * d].view(t, hq, d)
    k = qkv[:, hq * d: (hq + hk) * d].view(t, hk, d)
    v = qkv[:, (hq + hk) * d:].view(t, hk, d)
    pos = torch.randint(0, 500, (t,), generator=g)
    inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2).float() / d))
    freqs = torch.outer(torch.arange(512).float(), inv)
    cos_sin = torch.cat([freqs.cos(), freqs.sin()], -1)
    slots = torch.randperm(4 * t, generator=g)[:t]
    cache = torch.zeros(2, 4 * t, hk, d, dtype=dtype)
    return qkv, q, k, v, pos, cos_sin, slots, cache


@pytest.mark.parametrize(("hq", "hk", "d"), [(8, 2, 64), (4, 4, 32), (2, 1, 128)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_and_write_matches_rope_then_index_copy(hq: int, hk: int, d: int,
                                                     dtype: torch.dtype) -> None:
    from radixrt.attention import rope_kv_cuda
    from radixrt.models.fused_cuda import torch_rope

    qkv, q, k, v, pos, cos_sin, slots, cache = rope_case(5, hq, hk, d, dtype, seed=d)
    k0, v0 = k.clone(), v.clone()
    # The model's unfused path: torch RoPE (the reference of FlashInfer's kernel), then the
    # pool's write.
    half = d // 2
    want_q, want_k = torch_rope(pos, q.clone(), k.clone(), cos_sin[:, :half], cos_sin[:, half:])
    want = cache.clone()
    want[0].index_copy_(0, slots, want_k)
    want[1].index_copy_(0, slots, v)
    assert rope_kv_cuda.usable(q, k, v, cache[0], cos_sin)
    got_q = rope_kv_cuda.rope_and_write(pos, q, k, v, cos_sin, cache[0], cache[1], slots)
    assert got_q.data_ptr() == qkv.data_ptr()  # q rotated in place, inside the qkv rows
    # float32 agrees to rounding; the interpreter truncates to bfloat16 (one ulp).
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-2,
                                                                        "rtol": 2**-7}
    torch.testing.assert_close(q, want_q, **tol)
    torch.testing.assert_close(cache, want, **tol)
    assert torch.equal(cache[1], want[1])  # v is copied, not computed
    assert torch.equal(k, k0) and torch.equal(v, v0)  # the projection's k and v untouched
    untouched = torch.ones(cache.shape[1], dtype=torch.bool)
    untouched[slots] = False
    assert not cache[:, untouched].any()


def test_rope_and_write_reference_and_guards() -> None:
    from radixrt.attention import rope_kv_cuda

    _, q, k, v, pos, cos_sin, slots, cache = rope_case(4, 4, 2, 32, torch.float32)
    ref_cache = cache.clone()
    ref_q = rope_kv_cuda.reference(pos, q.clone(), k, v, cos_sin, ref_cache[0], ref_cache[1],
                                   slots)
    rope_kv_cuda.rope_and_write(pos, q, k, v, cos_sin, cache[0], cache[1], slots)
    torch.testing.assert_close(q, ref_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cache, ref_cache, atol=1e-5, rtol=1e-5)
    empty = q[:0]
    assert rope_kv_cuda.rope_and_write(pos[:0], empty, k[:0], v[:0], cos_sin, cache[0],
                                       cache[1], slots[:0]) is empty
    # What it does not take: a head_dim that is no power of two, mixed dtypes, no table.
    odd = torch.zeros(2, 4, 24)
    assert not rope_kv_cuda.usable(odd, odd, odd, torch.zeros(8, 4, 24), cos_sin)
    assert not rope_kv_cuda.usable(q, k, v, cache[0].to(torch.bfloat16), cos_sin)
    assert not rope_kv_cuda.usable(q, k, v, cache[0], None)
    assert rope_kv_cuda.check(torch.device("cpu"), torch.float32, 4, 2, 32) == "off (not CUDA)"
    # check's comparison itself (what a CUDA backend runs at start), on this CPU.
    for dtype in (torch.float32, torch.bfloat16):
        assert rope_kv_cuda.compare(torch.device("cpu"), dtype, 8, 2, 64) == ""
    assert rope_kv_cuda.compare(torch.device("cpu"), torch.float32, 8, 2, 64, tol=0.0) \
        .startswith("rel err")


def test_flashinfer_backend_rotates_and_writes_in_one_kernel(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """FlashInferAttentionBackend.forward_rope with the fused kernel (forced on: check()
    needs CUDA) against the base class's RoPE then forward(), over FlashInfer stand-ins that
    attend per the documented API (test_flashinfer_plan.py's)."""
    import sys
    import types
    from types import SimpleNamespace

    import numpy as np
    from test_flashinfer_plan import _FakeDecode, _FakePrefill

    from radixrt.attention import rope_kv_cuda
    from radixrt.attention.base import build_metadata
    from radixrt.attention.flashinfer_backend import FlashInferAttentionBackend
    from radixrt.kvcache.pool import KVPool, KVPoolShape

    fake = types.ModuleType("flashinfer")
    fake.BatchDecodeWithPagedKVCacheWrapper = _FakeDecode  # type: ignore[attr-defined]
    fake.BatchPrefillWithPagedKVCacheWrapper = _FakePrefill  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flashinfer", fake)
    hq, hk, d, ps = 8, 2, 32, 4
    shape = KVPoolShape(1, 16, ps, hk, d)
    pools = [KVPool(shape, torch.bfloat16, "cpu") for _ in range(2)]
    backends = [FlashInferAttentionBackend(p, SimpleNamespace(num_heads=hq), None)  # type: ignore[arg-type]
                for p in pools]
    assert backends[0].rope_kv == "off (not CUDA)"
    backends[0].rope_kv = "fused"
    calls: list[int] = []
    real = rope_kv_cuda.rope_and_write
    monkeypatch.setattr(rope_kv_cuda, "rope_and_write",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    # A prefill of 6 and 3 tokens, then a decode step of both.
    steps = [(np.array([0, 0]), np.array([6, 3])), (np.array([6, 3]), np.array([1, 1]))]
    pages = np.array([[0, 1, 2], [5, 6, 7]])
    _, q0, k0, v0, _, cos_sin, _, _ = rope_case(9, hq, hk, d, torch.bfloat16)
    from radixrt.models.fused_cuda import torch_rope

    class TableRope:  # the model's RotaryEmbedding as a backend sees it (base.Rope)
        def __init__(self) -> None:
            self.cos_sin = cos_sin

        def __call__(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
            return torch_rope(positions, q, k, cos_sin[:, : d // 2], cos_sin[:, d // 2:])

    rope = TableRope()
    for i, (start, new) in enumerate(steps):
        meta, positions = build_metadata(start, new, pages, ps)
        t = int(new.sum())
        outs = []
        for b in backends:
            b.plan(meta)
            q, k, v = q0[:t].clone(), k0[:t].clone(), v0[:t].clone()
            # The second backend's check() said "off": RoPE, then forward() (the base class).
            outs.append(b.forward_rope(positions, q, k, v, 0, rope))
            assert len(calls) == i + 1  # the fused kernel ran for the first backend only
        torch.testing.assert_close(outs[0].float(), outs[1].float(), atol=3e-2, rtol=3e-2)
    assert len(calls) == 2
    torch.testing.assert_close(pools[0].kv_cache[0].float(), pools[1].kv_cache[0].float(),
                               atol=2e-2, rtol=2**-7)


# ----------------------------------------------------------------------------- the GEMM probe


@pytest.mark.parametrize("m", [2, 17])
def test_probe_gemm_matches_linear_in_every_config(m: int) -> None:
    """bench/gpu_gemm.py's Triton tile GEMM (timed against cuBLAS on a GPU lease): every
    config over shapes that are no multiple of its tiles. float32 only: Triton 3.9's
    interpreter returned ~1e11 for this tl.dot in bfloat16 (an interpreter limitation; the
    GEMV kernels, without tl.dot, agree in bfloat16); on a GPU the probe checks each config
    against F.linear in bfloat16 before timing it."""
    from bench import gpu_gemm

    torch.manual_seed(m)
    w = torch.randn(72, 200) / 200**0.5
    x = torch.randn(m, 200)
    ref = F.linear(x, w)
    for cfg in gpu_gemm.GEMM_CONFIGS:
        y = gpu_gemm.triton_gemm(x, w, cfg)
        assert y.shape == (m, 72)
        assert rel_err(y, ref) < 1e-5, cfg


def test_choose_swaps_what_it_reports_and_keeps_the_step(make_tiny_model) -> None:
    """gemv_cuda.install's measuring and swapping (choose), driven on the CPU with a wall-clock
    timer and the GEMV forced to win (min_gain -1e9): every projection asked for becomes a
    GemvLinear with a prologue its role allows, and a one-token step gives the logits it gave
    before (the lm_head is left out: 49152 rows are slow to interpret)."""
    import time

    from radixrt.config import EngineConfig
    from radixrt.models import cpu_flat
    from radixrt.testing.batches import batch_from_chunks
    from radixrt.worker.model_runner import ModelRunner

    path = make_tiny_model("llama", num_hidden_layers=2)
    runner = ModelRunner(EngineConfig(model_path=str(path), device="cpu", dtype="float32",
                                      attention_backend="torch", page_size=4,
                                      max_total_tokens=256, max_running_requests=2))
    prompt = batch_from_chunks([0], [0], [[5, 9, 11, 300, 7]], {0: [0, 1]})
    step = batch_from_chunks([0], [5], [[17]], {})

    def timer(fn, weights: list[torch.Tensor]) -> float:  # noqa: ANN001
        fn(weights[0])
        t = time.perf_counter()
        for w in weights:
            fn(w)
        return (time.perf_counter() - t) / len(weights)

    roles = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    allowed = {"qkv_proj": {None, "rms_norm"}, "o_proj": {None},
               "gate_up_proj": {None, "rms_norm"}, "down_proj": {None, "silu_mul"}}
    was_flat = cpu_flat.enabled
    cpu_flat.enabled = False  # the module path, as on CUDA
    try:
        runner._apply_updates(prompt)
        runner.forward(prompt)
        before = runner.forward(step)
        status = gemv_cuda.choose(runner.model, torch.device("cpu"), -1e9, timer, roles)
        assert set(status) == roles and all(v.startswith("gemv") for v in status.values()), (
            status)
        for layer in runner.model.layers:
            for role, m in (("qkv_proj", layer.self_attn.qkv_proj),
                            ("o_proj", layer.self_attn.o_proj),
                            ("gate_up_proj", layer.mlp.gate_up_proj),
                            ("down_proj", layer.mlp.down_proj)):
                assert isinstance(m, gemv_cuda.GemvLinear) and m.prologue in allowed[role]
                assert status[role].startswith("gemv+" if m.prologue else "gemv ")
        assert type(runner.model.lm_head) is torch.nn.Linear
        after = runner.forward(step)
    finally:
        cpu_flat.enabled = was_flat
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- two-pass argmax


@pytest.mark.parametrize("v", [100, 2 * 4096 + 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_argmax_matches_torch(v: int, dtype: torch.dtype) -> None:
    from radixrt.worker import argmax_cuda

    torch.manual_seed(v)
    x = torch.randn(3, v).to(dtype)
    assert torch.equal(argmax_cuda.row_argmax(x), x.argmax(-1))
    # Strided rows (a view with a longer row stride) read in place.
    wide = torch.randn(3, v + 5).to(dtype)
    assert torch.equal(argmax_cuda.row_argmax(wide[:, :v]), wide[:, :v].argmax(-1))


def test_row_argmax_ties_and_edges_as_torch() -> None:
    from radixrt.worker import argmax_cuda

    v = 2 * 4096 + 17  # three pieces, the last one short
    x = torch.zeros(5, v)
    x[0, [5000, 8200]] = 3.0  # a tie across pieces: the first
    x[1, [10, 11]] = 3.0  # a tie inside a piece: the first
    x[2] = float("-inf")  # nothing allowed: index 0, as torch
    x[3, v - 1] = 1.0  # the last column of the short last piece
    x[4, 4095] = 2.0  # a piece's last column
    got = argmax_cuda.row_argmax(x)
    assert got.tolist() == x.argmax(-1).tolist() == [5000, 10, 0, v - 1, 4095]
    assert got.dtype == torch.int64
    assert argmax_cuda.row_argmax(torch.zeros(0, 7)).shape == (0,)


# ----------------------------------------------------------------------------- GEMV prefetch


@pytest.mark.parametrize("k", [100, 1000])
@pytest.mark.parametrize("prologue", [None, "silu_mul", "rms_norm", "add_rms_norm"])
def test_gemv_with_weights_loaded_up_front_matches(k: int, prologue: str | None) -> None:
    """The PDL variant's arithmetic (its first prefetch_width columns loaded before the rest,
    the interpreter has no PDL itself): the same results as the plain GEMV's."""
    from radixrt.models import fused_cuda

    cfg = (16, 32, 1)
    assert gemv_cuda.prefetch_width(cfg, k) == (256 if k == 1000 else 128)  # 1000: then a loop
    torch.manual_seed(k)
    n = 40
    w = torch.randn(n, k) / k**0.5
    g = 1 + 0.1 * torch.randn(k)
    x = torch.randn(1, 2 * k if prologue == "silu_mul" else k)
    r = torch.randn(1, k) if prologue == "add_rms_norm" else None
    kw: dict = {}
    if prologue == "silu_mul":
        kw = {"silu_mul": True}
        h = silu_mul_reference(x)
    elif prologue is not None:
        kw = {"norm_weight": g, "eps": 1e-5, "residual": r}
        h = fused_cuda.rms_norm(x + r if r is not None else x, g, 1e-5)
    else:
        h = x
    y, summed = gemv_cuda._launch(x, w, cfg, prefetch=True, **kw)
    torch.testing.assert_close(y, F.linear(h, w), atol=1e-4, rtol=1e-4)
    if r is not None:
        assert summed is not None and torch.equal(summed, x + r)
    plain, _ = gemv_cuda._launch(x, w, cfg, **kw)
    torch.testing.assert_close(y, plain, atol=1e-5, rtol=1e-5)


def test_warm_up_compiles_every_variant_and_says_so() -> None:
    said = gemv_cuda.warm_up(torch.device("cpu"), k=64)
    assert said == f"{len(gemv_cuda.CONFIGS)} configs x 4 prologues, no PDL here"


def test_pdl_is_not_claimed_without_a_cuda_device() -> None:
    # Asked on a machine without CUDA (the GPU tests ask at import): False, no error.
    assert not gemv_cuda.pdl_supported(torch.device("cuda"))
    assert not gemv_cuda.pdl_supported(torch.device("cpu"))
