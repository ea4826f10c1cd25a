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
    return float((a.float() - b.float()).norm() / b.float().norm())


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
    with pytest.raises(ValueError, match=r"width 32 .*silu_mul"):
        gemv_cuda.gemv(torch.randn(1, 32), w, (4, 32, 4), silu_mul=True)
    with pytest.raises(ValueError, match="width 64"):
        gemv_cuda.gemv(torch.randn(1, 64), w, (4, 32, 4))


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
    assert gemv_cuda._takes_gate_up(mlp, "down_proj", mlp.down_proj)
    assert not gemv_cuda._takes_gate_up(mlp, "gate_up_proj", mlp.gate_up_proj)
    calls: list[bool] = []
    real = gemv_cuda.gemv

    def spy(x: torch.Tensor, w: torch.Tensor, config: tuple[int, int, int],
            silu_mul: bool = False) -> torch.Tensor:
        calls.append(silu_mul)
        return real(x, w, config, silu_mul)

    mlp.down_proj = gemv_cuda.GemvLinear(mlp.down_proj, (8, 64, 4), silu_mul=True)
    try:
        gemv_cuda.gemv = spy  # type: ignore[assignment]
        got1, got3 = mlp(x1), mlp(x3)
    finally:
        gemv_cuda.gemv = real  # type: ignore[assignment]
    assert calls == [True]  # the one-token call only
    torch.testing.assert_close(got1, want1, atol=1e-5, rtol=1e-4)
    assert torch.equal(got3, want3)
    assert set(mlp.state_dict()) == {"gate_up_proj.weight", "down_proj.weight"}
