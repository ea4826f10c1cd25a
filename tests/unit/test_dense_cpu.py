"""The float linears' route on the CPU (radixrt/models/dense_cpu.py): which calls take
radixrt's dense kernel, the per-CPU probe that decides it, and the logits through the kernel
against Hugging Face transformers. (Its one summation order: tests/unit/test_deterministic.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForCausalLM

from radixrt.config import EngineConfig
from radixrt.models import dense_cpu
from radixrt.testing.batches import batch_from_chunks
from radixrt.testing.native import require_native
from radixrt.worker.model_runner import ModelRunner

require_native("radixrt._dense_cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_calls_up_to_kernel_rows_take_the_kernel(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    linear = nn.Linear(96, 40, bias=True).to(dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(40, 96, generator=g))
        linear.bias.copy_(torch.randn(40, generator=g))
    dense = dense_cpu.DenseLinear(linear, kernel_rows=4, batch_invariant=False)
    assert dense.weight is linear.weight and dense.bias is linear.bias
    x = torch.randn(2, 2, 96, generator=g).to(dtype)  # 4 rows: the kernel
    want = (dense_cpu.matmul(x.reshape(4, 96), linear.weight) + linear.bias.float()).to(dtype)
    assert torch.equal(dense(x), want.reshape(2, 2, 40))
    x5 = torch.randn(5, 96, generator=g).to(dtype)  # 5 rows: torch
    assert torch.equal(dense(x5), F.linear(x5, linear.weight, linear.bias))
    dense.batch_invariant = True  # every call through the kernel
    want5 = (dense_cpu.matmul(x5, linear.weight) + linear.bias.float()).to(dtype)
    assert torch.equal(dense(x5), want5)


def test_install_replaces_plain_linears_only() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 4)))
    tied = model[0].weight
    assert dense_cpu.install(model, kernel_rows=16) == 2
    assert isinstance(model[0], dense_cpu.DenseLinear) and model[0].weight is tied
    assert isinstance(model[2][0], dense_cpu.DenseLinear) and model[2][0].kernel_rows == 16
    assert dense_cpu.float_linears(model) == []
    half = nn.Sequential(nn.Linear(8, 8).half())
    assert dense_cpu.install(half, kernel_rows=16) == 0  # float16: left to torch
    with pytest.raises(ValueError, match="no batch-invariant kernel for torch.float16"):
        dense_cpu.install(half, 0, batch_invariant=True)


def test_verdict_is_the_prefix_of_wins() -> None:
    assert dense_cpu.verdict({1: (1, 2), 4: (2, 3), 16: (5, 4), 64: (1, 9)}) == 4
    assert dense_cpu.verdict({1: (3, 2), 4: (1, 3)}) == 0  # a clear loss ends it
    assert dense_cpu.verdict({1: (1, 2), 4: (99, 100)}) == 1  # a tie is not a win...
    assert dense_cpu.verdict({1: (100, 99), 4: (1, 3), 16: (9, 8)}) == 4  # ...nor a loss
    assert dense_cpu.verdict({1: (1, 2), 256: (7, 9)}) == dense_cpu.UNLIMITED
    assert dense_cpu.verdict({1: (1, 2), 256: (8, 9)}) == 256  # won, but not clearly
    assert dense_cpu.verdict({1: (1, 2), 64: (1, 9)}) == 64  # cut short: no extrapolation


def test_probe_measures_once_and_caches(make_tiny_model, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dense_cpu.ROWS_ENV, raising=False)
    path = make_tiny_model("llama")
    rows = dense_cpu.kernel_rows(path, torch.float32, cache_dir=tmp_path)
    entries = json.loads((tmp_path / dense_cpu.CACHE_FILE).read_text())
    (key, entry), = entries.items()
    assert key.endswith("| float32") and entry["kernel_rows"] == rows
    assert set(entry["us"]) == {str(r) for r in dense_cpu.PROBE_ROWS}
    # A pass over max_pass_seconds ends the probe there.
    assert list(dense_cpu.measure([(64, 64)], torch.float32, max_pass_seconds=0)) == [1]
    assert rows == dense_cpu.verdict({int(r): tuple(v) for r, v in entry["us"].items()})
    entry["kernel_rows"] = 12345  # a second start reads the verdict, measures nothing
    (tmp_path / dense_cpu.CACHE_FILE).write_text(json.dumps({key: entry}))
    assert dense_cpu.kernel_rows(path, torch.float32, cache_dir=tmp_path) == 12345
    monkeypatch.setenv(dense_cpu.ROWS_ENV, "7")
    assert dense_cpu.kernel_rows(path, torch.float32, cache_dir=tmp_path) == 7


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_logits_through_the_kernel_match_transformers(make_tiny_model, arch: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Every call on the kernel (prefill of 107 rows and decode alike): the model runner's
    logits against transformers' float32 forward."""
    monkeypatch.setenv(dense_cpu.ROWS_ENV, str(dense_cpu.UNLIMITED))
    path = make_tiny_model(arch)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    runner = ModelRunner(EngineConfig(model_path=str(path), page_size=16, max_total_tokens=4096,
                                      max_running_requests=8, attention_backend="cpu"))
    dense = [m for m in runner.model.modules() if isinstance(m, dense_cpu.DenseLinear)]
    assert dense and all(m.kernel_rows == dense_cpu.UNLIMITED for m in dense)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 49152, n).tolist() for n in (37, 5, 64, 1)]
    pages = {s: list(range(13 * s, 13 * s + 13)) for s in range(4)}
    fb = batch_from_chunks([0, 1, 2, 3], [0] * 4, seqs, pages)
    runner._apply_updates(fb)
    logits = runner.forward(fb)
    for i, ids in enumerate(seqs):
        with torch.no_grad():
            ref = hf(torch.tensor([ids])).logits[0, -1].float()
        assert (logits[i] - ref).abs().max() < 2e-4
