"""A bfloat16 checkpoint through the real server and the official client: served in float32,
it keeps its matrices bf16 (half the memory) and answers with transformers' greedy tokens on
the same weights. The model is the default one rounded to bf16, as its upstream release is."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from openai import OpenAI
from transformers import AutoModelForCausalLM, AutoTokenizer

from bench.model_16bit import copy_16bit

if TYPE_CHECKING:
    from conftest import ServerProcess

pytestmark = pytest.mark.timeout(300)

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Water boils at"]
TOKENS = 24


@pytest.fixture(scope="module")
def bf16_dir(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_16bit(default_model_dir, tmp_path_factory.mktemp("smollm2-bf16"))


@pytest.fixture(scope="module")
def server(bf16_dir: Path, launch_server: Callable[..., ServerProcess]) -> ServerProcess:
    return launch_server("--model", str(bf16_dir), "--dtype", "float32",
                         "--max-total-tokens", "4096")


def test_greedy_completions_match_transformers(bf16_dir: Path, server: ServerProcess) -> None:
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    ours = [client.completions.create(model="default", prompt=p, max_tokens=TOKENS,
                                      temperature=0).choices[0].text for p in PROMPTS]
    tok = AutoTokenizer.from_pretrained(bf16_dir)
    hf = AutoModelForCausalLM.from_pretrained(bf16_dir, dtype=torch.float32).eval()
    theirs = []
    for p in PROMPTS:
        ids = tok(p, return_tensors="pt").input_ids
        with torch.no_grad():
            out = hf.generate(ids, max_new_tokens=TOKENS, do_sample=False,
                              pad_token_id=tok.eos_token_id)
        theirs.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    assert ours == theirs
    assert all(len(t) > 20 for t in ours)  # real continuations
    log = server.log()  # the worker's: what it loaded and how the linears run
    assert "matrices kept bfloat16" in log and "bfloat16 matrices, float32 math" in log
