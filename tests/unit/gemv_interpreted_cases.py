"""The one-token Triton GEMV (radixrt/models/gemv_cuda.py) run by Triton's interpreter on the
CPU: its arithmetic, the fused SiLU-and-mul input, and the MLP path that uses it, against
torch. tests/gpu/test_gemv.py runs the same kernels compiled on CUDA and what `install` picks.

Not collected by the suite itself: Triton reads TRITON_INTERPRET when it is first imported
(its library functions, tl.sum among them, are decorated then), so test_gemv_interpreted.py
runs this file in a fresh pytest with the variable set.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.nn import functional as F

from radixrt.models import gemv_cuda

# Not a CUDA test: Triton's interpreter runs the kernel with numpy. Rows and columns that are
# no multiple of the blocks check the masks.
SHAPES = [(50, 130), (96, 256)]


@pytest.fixture(autouse=True, scope="module")
def interpreted() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "run through test_gemv_interpreted.py"
    assert gemv_cuda._load_kernel() is not None, "triton is a test dependency"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


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
