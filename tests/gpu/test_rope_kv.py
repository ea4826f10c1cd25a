"""The fused RoPE + KV write (radixrt/attention/rope_kv_cuda.py) compiled on CUDA, against its
torch reference, and the FlashInfer backend's start-up check."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
pytest.importorskip("triton")

from radixrt.attention import rope_kv_cuda  # noqa: E402

DEV = torch.device("cuda")


PDL = [False, True] if rope_kv_cuda.pdl_supported(DEV) else [False]


@pytest.mark.parametrize("pdl", PDL)
@pytest.mark.parametrize(("hq", "hk", "d", "t"), [(32, 8, 128, 1), (32, 8, 128, 300),
                                                  (9, 3, 64, 17)])
def test_matches_reference_on_views_of_one_projection(hq: int, hk: int, d: int, t: int,
                                                      pdl: bool) -> None:
    g = torch.Generator(device=DEV).manual_seed(t)
    qkv = torch.randn(t, (hq + 2 * hk) * d, generator=g, device=DEV).to(torch.bfloat16)
    q = qkv[:, : hq * d].view(t, hq, d)
    k = qkv[:, hq * d: (hq + hk) * d].view(t, hk, d)
    v = qkv[:, (hq + hk) * d:].view(t, hk, d)
    pos = torch.randint(0, 4000, (t,), generator=g, device=DEV).to(torch.int32)
    inv = 1.0 / (500000.0 ** (torch.arange(0, d, 2, device=DEV).float() / d))
    freqs = torch.outer(torch.arange(4096, device=DEV).float(), inv)
    cos_sin = torch.cat([freqs.cos(), freqs.sin()], -1)
    slots = torch.randperm(2 * t + 16, generator=g, device=DEV)[:t]
    want = torch.zeros(2, 2 * t + 16, hk, d, device=DEV, dtype=torch.bfloat16)
    got = want.clone()
    want_q = rope_kv_cuda.reference(pos, q.clone(), k, v, cos_sin, want[0], want[1], slots)
    kv_before = qkv[:, hq * d:].clone()
    assert rope_kv_cuda.usable(q, k, v, got[0], cos_sin)
    rope_kv_cuda.rope_and_write(pos, q, k, v, cos_sin, got[0], got[1], slots, pdl=pdl)
    # Both round float32 to bfloat16 to nearest even; the products may differ by an ulp.
    torch.testing.assert_close(q, want_q, atol=2e-2, rtol=2**-7)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2**-7)
    assert torch.equal(got[1], want[1])
    assert torch.equal(qkv[:, hq * d:], kv_before)


def test_check_passes_at_the_8b_head_shape() -> None:
    assert rope_kv_cuda.check(DEV, torch.bfloat16, 32, 8, 128) == "fused"
    assert rope_kv_cuda.check(DEV, torch.bfloat16, 4, 2, 96) == "off (head_dim not a power of two)"
    assert rope_kv_cuda.check_pdl(DEV, torch.bfloat16, 32, 8, 128) == (PDL == [False, True])
