"""The flat CPU forward (radixrt/models/cpu_flat.py) against the module path it replaces: the
same kernels in the same order, so the logits must be equal bit for bit; and the cases it
must hand back to the module path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from radixrt.config import build_engine_config
from radixrt.models import cpu_flat, dense_cpu, quant
from radixrt.testing.batches import batch_from_chunks
from radixrt.testing.native import require_native
from radixrt.worker.model_runner import ModelRunner

require_native("radixrt._quant_cpu", "radixrt._layers_cpu", "radixrt._dense_cpu")


@pytest.fixture(scope="module")
def served_runner(default_model_dir: Path) -> ModelRunner:
    """What the server runs on a CPU: int4 weights, cpu attention, float32 activations."""
    cfg = build_engine_config(str(default_model_dir), device="cpu", dtype="float32",
                              max_total_tokens=2048)
    assert (cfg.quantization, cfg.attention_backend) == ("int4", "cpu")
    return ModelRunner(cfg)


def logits(runner: ModelRunner, flat: bool, slots: list[int], starts: list[int],
           chunks: list[list[int]], pages: dict[int, list[int]] | None) -> torch.Tensor:
    batch = batch_from_chunks(slots, starts, chunks, pages)
    runner._apply_updates(batch)
    enabled = cpu_flat.enabled
    cpu_flat.enabled = flat
    try:
        return runner.forward(batch)
    finally:
        cpu_flat.enabled = enabled


def test_flat_forward_equals_module_path_bitwise(served_runner: ModelRunner) -> None:
    flat = cpu_flat.flat_layers(served_runner.model)
    assert flat is not None
    ran: list[int] = []
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 40000, (n,), generator=g).tolist() for n in (45, 20)]
    pages = {0: list(range(0, 16)), 1: list(range(16, 32))}
    # Each step runs twice over the same pages (the second rewrites the same K/V): flat,
    # then modules. Token counts: 45 (above quant.SMALL_M: the blocked GEMM), then 20 + 1
    # and a mix of prefill and decode rows (the small-M kernels).
    steps = [([0], [0], [prompts[0]], {0: pages[0]}),
             ([1, 0], [0, 45], [prompts[1], [7]], {1: pages[1]}),
             ([0, 1], [46, 20], [[11, 12, 13, 14], [9]], None)]
    for slots, starts, chunks, pg in steps:
        before = flat.steps
        want_flat = logits(served_runner, True, slots, starts, chunks, pg)
        ran.append(flat.steps - before)
        want_mod = logits(served_runner, False, slots, starts, chunks, pg)
        ran.append(flat.steps - before)
        assert torch.equal(want_flat, want_mod), (slots, (want_flat - want_mod).abs().max())
    assert ran == [1, 1] * len(steps)  # each flat step ran flat, each module step did not


def test_flat_forward_on_dense_weights_equals_module_path(make_tiny_model,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """A float32 checkpoint whose linears take radixrt's dense kernel (DenseLinear) runs
    flat too, bit for bit as its modules do; a step above the kernel's row limit (torch's
    matmul) takes the module path."""
    monkeypatch.setenv(dense_cpu.ROWS_ENV, "24")
    cfg = build_engine_config(str(make_tiny_model("llama")), device="cpu", dtype="float32",
                              max_total_tokens=2048)
    runner = ModelRunner(cfg)
    flat = cpu_flat.flat_layers(runner.model)
    assert flat is not None and flat.dense_rows == 24 and not flat.invariant
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 49152, (n,), generator=g).tolist() for n in (20, 30)]
    steps = [([0], [0], [prompts[0]], {0: list(range(0, 8))}),  # 20 rows: flat
             ([1, 0], [0, 20], [prompts[1], [7]], {1: list(range(8, 16))}),  # 31: modules
             ([0, 1], [21, 30], [[11, 12, 13], [9]], None)]  # 4 rows: flat
    ran = []
    for slots, starts, chunks, pg in steps:
        before = flat.steps
        want_flat = logits(runner, True, slots, starts, chunks, pg)
        ran.append(flat.steps - before)
        want_mod = logits(runner, False, slots, starts, chunks, pg)
        assert torch.equal(want_flat, want_mod), (slots, (want_flat - want_mod).abs().max())
    assert ran == [1, 0, 1]


def test_flat_forward_declines_what_it_does_not_cover(served_runner: ModelRunner,
                                                      make_tiny_model) -> None:  # noqa: ANN001
    model = served_runner.model
    flat = cpu_flat.flat_layers(model)
    assert flat is not None
    x = torch.zeros(40, model.config.hidden_size)
    pos = torch.arange(40)
    # The plan is for another token count, or the backend is not the cpu one.
    assert flat.run(x, pos, served_runner.attn) is None
    assert flat.run(x, pos, object()) is None  # type: ignore[arg-type]
    # A benchmark's forced linear route goes through the modules.
    planned = served_runner.attn.num_tokens
    quant.set_linear_path("blas")
    try:
        served_runner.attn.num_tokens = 40
        assert flat.run(x, pos, served_runner.attn) is None
    finally:
        quant.set_linear_path("auto")
        served_runner.attn.num_tokens = planned
    # Models with what the flat loop leaves out get no flat runner: biases (qwen2), float
    # weights on torch's nn.Linear, bfloat16 weights.
    from radixrt.models.loader import load_model

    qwen = load_model(make_tiny_model("qwen2"), torch.float32, "cpu", quantization="int4")
    assert cpu_flat.FlatCpuLayers.build(qwen) is None
    dense = load_model(make_tiny_model("llama"), torch.float32, "cpu")
    assert cpu_flat.FlatCpuLayers.build(dense) is None
    bf16 = load_model(make_tiny_model("llama"), torch.bfloat16, "cpu")
    dense_cpu.install(bf16, kernel_rows=64)
    assert cpu_flat.FlatCpuLayers.build(bf16) is None
