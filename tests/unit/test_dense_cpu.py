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
from radixrt.models import cpu_flat, dense_cpu
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


# ------------------------------------------------------------------- bf16 checkpoints


@pytest.mark.parametrize("w_dtype", dense_cpu.NARROW)
def test_float32_activations_times_16bit_weights_are_the_widened_weights_product(
        w_dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    for rows, k in ((1, 96), (5, 101), (17, 64)):
        x = torch.randn(rows, k, generator=g)
        w = torch.randn(37, k, generator=g).to(w_dtype)
        y = dense_cpu.matmul(x, w)
        assert torch.equal(y, dense_cpu.matmul(x, w.float()))
        assert torch.equal(dense_cpu.matmul(x, w, portable=True), y)
    with pytest.raises(ValueError, match="float32 x 16-bit"):
        dense_cpu.matmul(x.to(torch.bfloat16), w.float())  # bf16 x, fp32 W: not a route
    linear = nn.Linear(96, 40, bias=True)
    linear.weight.data = linear.weight.data.to(w_dtype)
    dense = dense_cpu.DenseLinear(linear, kernel_rows=4, batch_invariant=False)
    x4, x9 = torch.randn(4, 96, generator=g), torch.randn(9, 96, generator=g)
    wide = linear.weight.float()
    assert torch.equal(dense(x4), dense_cpu.matmul(x4, wide) + linear.bias)  # the kernel
    assert torch.equal(dense(x9), F.linear(x9, wide, linear.bias))  # torch, widened


def test_float16_weights_widen_exactly_subnormals_included() -> None:
    """x = the identity picks each weight alone: y must be the weight widened, in the AVX2
    loads (F16C) and in the portable loops' software conversion alike."""
    specials = [0.0, -0.0, 2.0 ** -24, -(2.0 ** -24), 3 * 2.0 ** -20, 1023 * 2.0 ** -24,
                2.0 ** -14, 65504.0, -65504.0, 1.0, -1.5, 0.1, 1e-3]
    g = torch.Generator().manual_seed(9)
    w = torch.cat([torch.tensor(specials), torch.randn(64 - len(specials), generator=g) * 100])
    w = w.reshape(4, 16).to(torch.float16)
    eye = torch.eye(16)
    for portable in (False, True):
        y = dense_cpu.matmul(eye, w, portable=portable)
        assert torch.equal(y, w.float().T)  # (-0.0 sums to +0.0 with the other zeros)


def test_torch_route_widens_into_one_reused_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(5)
    a, b = (torch.randn(n, 64, generator=g).to(torch.bfloat16) for n in (48, 32))
    x = torch.randn(3, 64, generator=g)
    wa = dense_cpu._widened(a, torch.float32)
    assert torch.equal(wa, a.float())
    wb = dense_cpu._widened(b, torch.float32)  # smaller: the same buffer
    assert torch.equal(wb, b.float()) and wb.data_ptr() == wa.data_ptr()
    assert torch.equal(dense_cpu.torch_linear(x, a), F.linear(x, a.float()))
    monkeypatch.setattr(dense_cpu, "SCRATCH_MAX_BYTES", 48 * 64 * 4 - 1)
    wa2 = dense_cpu._widened(a, torch.float32)  # above the cap: a tensor of its own
    assert torch.equal(wa2, a.float()) and wa2.data_ptr() != wb.data_ptr()


def test_matrix_dtypes_come_from_the_headers(make_tiny_model) -> None:  # noqa: ANN001
    from radixrt.models.loader import safetensors_files

    f32 = safetensors_files(make_tiny_model("llama"))
    bf16 = safetensors_files(make_tiny_model("llama", save_dtype="bfloat16"))
    f16 = safetensors_files(make_tiny_model("llama", save_dtype="float16"))
    assert dense_cpu.checkpoint_matrix_dtypes(f32) == {"F32"}
    assert dense_cpu.checkpoint_matrix_dtypes(bf16) == {"BF16"}
    assert dense_cpu.checkpoint_matrix_dtypes(f16) == {"F16"}


def _runner(path: Path, **kw: object) -> ModelRunner:
    return ModelRunner(EngineConfig(model_path=str(path), page_size=16, max_total_tokens=4096,
                                    max_running_requests=8, attention_backend="cpu", **kw))


def _steps(runner: ModelRunner) -> list[torch.Tensor]:
    """A prefill of 107 rows, then decode steps of 4 rows and of 1: the logits of each."""
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 49152, n).tolist() for n in (37, 5, 64, 1)]
    pages = {s: list(range(13 * s, 13 * s + 13)) for s in range(4)}
    fb = batch_from_chunks([0, 1, 2, 3], [0] * 4, seqs, pages)
    runner._apply_updates(fb)
    out = [runner.forward(fb)]
    starts = [len(s) for s in seqs]
    for _ in range(3):
        fb = batch_from_chunks([0, 1, 2, 3], starts, [[7], [8], [9], [10]], None)
        runner._apply_updates(fb)
        out.append(runner.forward(fb))
        starts = [s + 1 for s in starts]
    fb = batch_from_chunks([2], [starts[2]], [[11]], None)
    runner._apply_updates(fb)
    out.append(runner.forward(fb))
    return out


@pytest.mark.parametrize("arch, saved", [("llama", torch.bfloat16), ("qwen3", torch.bfloat16),
                                         ("llama", torch.float16)])
def test_16bit_checkpoint_keeps_its_matrices_and_float32_results(
        make_tiny_model, arch: str, saved: torch.dtype,  # noqa: ANN001
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A bf16 / fp16 checkpoint served in float32 stores its linear and embedding matrices as
    published (half the bytes) and computes what the float32 copy computes, bit for bit: on
    the kernel (decode rows, flat loop where the model allows it) and on torch's route (the
    107-row prefill, above the kernel's limit); and close to transformers."""
    monkeypatch.setenv(dense_cpu.ROWS_ENV, "16")
    path = make_tiny_model(arch, save_dtype=str(saved).removeprefix("torch."))
    kept = _runner(path)
    model = kept.model
    assert model.embed_tokens.weight.dtype is saved
    assert model.lm_head.weight.dtype is saved
    linears = [m for m in model.modules() if isinstance(m, dense_cpu.DenseLinear)]
    assert linears and all(m.weight.dtype is saved for m in linears)
    assert model.norm.weight.dtype is torch.float32
    monkeypatch.setenv(dense_cpu.WEIGHTS_ENV, "1")
    wide = _runner(path)
    assert wide.model.lm_head.weight.dtype is torch.float32
    flat = cpu_flat.flat_layers(model)
    warm_up_steps = flat.steps if flat is not None else 0  # the runner's start-up prefill
    ours, theirs = _steps(kept), _steps(wide)
    for a, b in zip(ours, theirs):
        assert a.dtype is torch.float32 and torch.equal(a, b)
    # qwen3 has q/k norms, which the flat loop does not run
    assert (flat is not None and flat.steps - warm_up_steps == 4) == (arch == "llama")
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 49152, 37).tolist()
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0, -1].float()
    assert (ours[0][0] - ref).abs().max() < 2e-4
