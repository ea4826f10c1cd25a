"""The fused CPU layers (radixrt._layers_cpu) against the torch reference in layers.py."""

from __future__ import annotations

import pytest
import torch

from radixrt.models import fused
from radixrt.models.config import ModelConfig
from radixrt.models.layers import RMSNorm, RotaryEmbedding
from radixrt.testing.native import require_native

require_native("radixrt._layers_cpu")


def reference_norm(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + norm.eps)
    return norm.weight * xf.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,dim", [(1, 64), (4, 576), (37, 100), (300, 1024)])
def test_rmsnorm_with_residual_matches_torch(dtype: torch.dtype, rows: int, dim: int) -> None:
    g = torch.Generator().manual_seed(rows * dim)
    norm = RMSNorm(dim, 1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(dim, generator=g) * 0.5 + 1)
    x = (torch.randn(rows, dim, generator=g) * 3).to(dtype)
    res = torch.randn(rows, dim, generator=g).to(dtype)
    want_res = res + x
    want = reference_norm(norm, want_res)
    with torch.inference_mode():
        got, got_res = norm.add_forward(x, res.clone())
        plain = norm(x)
    assert torch.equal(got_res, want_res)  # the residual add rounds exactly as torch's
    # Only the sum of squares is ordered differently: within a rounding step of the dtype.
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    torch.testing.assert_close(plain, reference_norm(norm, x), rtol=tol, atol=tol)


def rope_config(head_dim: int) -> ModelConfig:
    return ModelConfig(architecture="LlamaForCausalLM", hidden_size=head_dim * 4,
                       intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=2,
                       head_dim=head_dim, vocab_size=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None,
                       tie_word_embeddings=False, attention_bias=False, qk_norm=False,
                       eos_token_ids=(0,), bos_token_id=None, torch_dtype=None)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_rope_in_place_equals_torch_bitwise(dtype: torch.dtype, head_dim: int) -> None:
    rope = RotaryEmbedding(rope_config(head_dim), torch.device("cpu"))
    g = torch.Generator().manual_seed(head_dim)
    t = 23
    # q and k as views of one fused qkv row, as the model has them.
    qkv = torch.randn(t, (4 + 2 + 2) * head_dim, generator=g).to(dtype)
    q = qkv[:, : 4 * head_dim].view(t, 4, head_dim)
    k = qkv[:, 4 * head_dim : 6 * head_dim].view(t, 2, head_dim)
    pos = torch.randint(0, 4096, (t,), generator=g)
    cos, sin = rope.cos[pos].unsqueeze(1), rope.sin[pos].unsqueeze(1)

    def ref(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(dtype)

    want_q, want_k = ref(q), ref(k)
    v_before = qkv[:, 6 * head_dim :].clone()
    got_q, got_k = rope(pos, q, k)
    assert got_q.data_ptr() == q.data_ptr()  # in place
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
    assert torch.equal(qkv[:, 6 * head_dim :], v_before)  # v untouched


def test_fused_refuses_what_it_cannot_take() -> None:
    x = torch.randn(4, 64)
    assert fused.usable(x)
    assert not fused.usable(x.to(torch.float16))
    assert not fused.usable(x.t())  # last dim strided
    assert not fused.usable(x, x.to(torch.bfloat16))  # mixed dtypes
