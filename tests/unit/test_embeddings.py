"""Embeddings (GenerateReq.embed): the last prompt token's final hidden state, normalized,
driven through the scheduler and model runner in one process, checked against transformers'
last_hidden_state on the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radixrt.config import EngineConfig
from radixrt.testing.local_engine import LocalEngine

PREFILL_ONLY = {"max_new_tokens": 0}


@pytest.mark.parametrize("overlap", [False, True], ids=["plain", "overlap"])
def test_embeddings_match_transformers(make_tiny_model, overlap: bool) -> None:
    """In 16-token chunks, beside a generating request, and after a cached prefix (only the
    rest is computed: the embedding is the same)."""
    from transformers import AutoModel

    path = str(make_tiny_model("qwen3"))
    hf = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    eng = LocalEngine(EngineConfig(model_path=path, page_size=4, max_total_tokens=2048,
                                   chunked_prefill_size=16, dtype="float32"), overlap=overlap)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 49000, n).tolist() for n in (40, 9, 1)]
    prompts.append(prompts[0][:30] + [5, 6])
    eng.add("gen", prompts[0], {"max_new_tokens": 3, "temperature": 0})
    for i, p in enumerate(prompts):
        eng.add(f"e{i}", p, PREFILL_ONLY, embed=True)
    eng.run(check=True)
    for i, p in enumerate(prompts):
        out = eng.outputs[f"e{i}"]
        with torch.no_grad():
            h = hf(torch.tensor([p])).last_hidden_state[0, -1]
        want = torch.nn.functional.normalize(h, dim=-1).numpy()
        assert out.output_ids == [] and out.finish_reason == "length"
        assert out.embedding is not None and out.embedding.dtype == np.float32
        np.testing.assert_allclose(out.embedding, want, atol=1e-5)
    assert eng.outputs["e3"].cached_tokens > 0
    assert len(eng.outputs["gen"].output_ids) == 3 and eng.outputs["gen"].embedding is None
    s = eng.scheduler
    assert s.allocator.num_free + s.cache.evictable_pages == s.num_pages
