"""Prompt logprobs and embeddings on CUDA (FlashInfer, graphs on, bf16) against the same
requests on the CPU (float32): the rows gathered beside the sampling rows and the hidden
states taken before the final norm's fused add must be the same on the device path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

from radixrt.config import EngineConfig  # noqa: E402
from radixrt.testing.local_engine import LocalEngine  # noqa: E402


def run(path: str, device: str, dtype: str) -> dict:
    eng = LocalEngine(EngineConfig(model_path=path, device=device, dtype=dtype, page_size=16,
                                   max_total_tokens=8192, chunked_prefill_size=64))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 49000, n).tolist() for n in (150, 20, 2)]
    for i, p in enumerate(prompts):
        eng.add(f"lp{i}", p, {"max_new_tokens": 4, "temperature": 0, "prompt_logprobs": 3})
        eng.add(f"e{i}", p, {"max_new_tokens": 0}, embed=True)
    return eng.run(check=True)


def test_prompt_logprobs_and_embeddings_match_the_cpu(make_tiny_model) -> None:
    path = str(make_tiny_model("qwen3"))
    gpu, cpu = run(path, "cuda", "bfloat16"), run(path, "cpu", "float32")
    for i in range(3):
        g, c = gpu[f"lp{i}"].prompt_logprobs, cpu[f"lp{i}"].prompt_logprobs
        assert g is not None and c is not None and g.ids == c.ids
        # bf16 against float32: logprobs of a few units, within a few percent
        np.testing.assert_allclose(g.logprobs, c.logprobs, rtol=5e-2, atol=5e-2)
        ge, ce = gpu[f"e{i}"].embedding, cpu[f"e{i}"].embedding
        assert ge is not None and ce is not None and ge.shape == ce.shape
        cos = float(np.dot(ge, ce) / (np.linalg.norm(ge) * np.linalg.norm(ce)))
        assert cos > 0.999 and abs(float(np.linalg.norm(ge)) - 1) < 1e-3
