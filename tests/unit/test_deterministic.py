"""--deterministic: a request's logits do not depend on what runs beside it, nor on how its
prompt was cut into chunks (which the scheduler decides by load). Driven on the server's CPU
setup (the default model's int4 weights, cpu attention, the flat loop) and on float32 /
bfloat16 checkpoints (the module path, radixrt._dense_cpu's linears), one request's logits
alone against the same request in batches of other decodes and prefills, above SMALL_M rows,
past the attention's key split and cut into other chunks, compared bit for bit."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from radixrt.config import EngineConfig, build_engine_config
from radixrt.models import cpu_flat, dense_cpu
from radixrt.server_args import add_engine_args, engine_config_from_args
from radixrt.testing.batches import batch_from_chunks
from radixrt.testing.local_engine import LocalEngine
from radixrt.testing.native import require_native
from radixrt.worker.model_runner import ModelRunner

require_native("radixrt._quant_cpu", "radixrt._layers_cpu", "radixrt._dense_cpu")


@pytest.fixture(scope="module")
def runner(default_model_dir: Path) -> ModelRunner:
    cfg = build_engine_config(str(default_model_dir), device="cpu", dtype="float32",
                              max_total_tokens=8192, deterministic=True)
    assert (cfg.quantization, cfg.attention_backend, cfg.deterministic) == ("int4", "cpu", True)
    return ModelRunner(cfg)


def forward(runner: ModelRunner, slots: list[int], starts: list[int], chunks: list[list[int]],
            pages: dict[int, list[int]] | None = None) -> torch.Tensor:
    batch = batch_from_chunks(slots, starts, chunks, pages)
    runner._apply_updates(batch)
    return runner.forward(batch)


@pytest.fixture(scope="module")
def float_runners(make_tiny_model) -> dict[str, ModelRunner]:
    """Float checkpoints: untied llama in float32, qwen2 (q/k/v biases, a tied lm_head) in
    float32, qwen3 (per-head q/k norms) in bfloat16; and a bf16 llama checkpoint in float32
    (its matrices kept bf16)."""
    out = {}
    for arch, saved, dtype in (("llama", "float32", "float32"), ("qwen2", "float32", "float32"),
                               ("qwen3", "float32", "bfloat16"),
                               ("llama", "bfloat16", "float32")):
        cfg = build_engine_config(str(make_tiny_model(arch, save_dtype=saved)), device="cpu",
                                  dtype=dtype, max_total_tokens=8192, deterministic=True)
        assert (cfg.quantization, cfg.attention_backend) == ("none", "cpu")
        name = f"{arch}-{dtype}" if saved == "float32" else f"{arch}-{saved}-as-{dtype}"
        out[name] = ModelRunner(cfg)
    assert out["llama-bfloat16-as-float32"].model.lm_head.weight.dtype is torch.bfloat16
    return out


def check_batch_invariance(runner: ModelRunner, vocab: int) -> None:
    """Four prompts alone, then together (85 rows: above SMALL_M, where the default kernels
    switch), one cut into other chunks beside a decode row, and a decode row beside 1-3
    others (every row tile of the kernels): the same logits, bit for bit."""
    g = torch.Generator().manual_seed(0)
    lens = (20, 30, 25, 10)
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lens]
    pages = {i: list(range(16 * i, 16 * i + 16)) for i in range(4)}
    alone = [forward(runner, [i], [0], [p], {i: pages[i]})[-1] for i, p in enumerate(prompts)]
    together = forward(runner, [0, 1, 2, 3], [0] * 4, prompts)
    for i in range(4):
        assert torch.equal(together[i], alone[i]), i
    forward(runner, [0], [0], [prompts[0][:7]])
    split = forward(runner, [0, 1], [7, 30], [prompts[0][7:], [5]])
    assert torch.equal(split[0], alone[0])
    solo = forward(runner, [0], [20], [[7]])[0]
    for n in (2, 3, 4):
        rows = forward(runner, list(range(n)), [20, *lens[1:n]], [[7]] + [[9]] * (n - 1))
        assert torch.equal(rows[0], solo), n


def test_logits_do_not_depend_on_the_batch(runner: ModelRunner) -> None:
    flat = cpu_flat.flat_layers(runner.model)
    assert flat is not None and flat.invariant  # what the server runs, in its invariant mode
    steps_before = flat.steps
    check_batch_invariance(runner, 40000)
    assert flat.steps - steps_before == 11  # every step above ran the flat loop


@pytest.mark.parametrize("name", ["llama-float32", "qwen2-float32", "qwen3-bfloat16",
                                  "llama-bfloat16-as-float32"])
def test_float_weights_do_not_depend_on_the_batch(float_runners: dict[str, ModelRunner],
                                                  name: str) -> None:
    runner = float_runners[name]
    linears = [m for m in runner.model.modules() if isinstance(m, torch.nn.Linear)]
    assert not linears  # every one replaced by a DenseLinear on the kernel for every call
    assert isinstance(runner.model.lm_head, dense_cpu.DenseLinear)
    assert all(m.batch_invariant for m in runner.model.modules()
               if isinstance(m, dense_cpu.DenseLinear))
    if runner.model.config.tie_word_embeddings:  # replaced without untying
        assert runner.model.lm_head.weight is runner.model.embed_tokens.weight
    # llama with float32 activations (fp32 or bf16 matrices) runs the flat loop, as the
    # server would; biases (qwen2), q/k norms
    # and bfloat16 (qwen3) the module path.
    flat = cpu_flat.flat_layers(runner.model)
    assert (flat is not None) == name.startswith("llama")
    steps_before = flat.steps if flat else 0
    check_batch_invariance(runner, 49152)
    if flat:
        assert flat.invariant and flat.steps - steps_before == 11


@pytest.mark.parametrize("x_dtype, w_dtype", [(torch.float32, torch.float32),
                                              (torch.bfloat16, torch.bfloat16),
                                              (torch.float32, torch.bfloat16),
                                              (torch.float32, torch.float16)])
def test_dense_kernel_one_order_for_every_row(x_dtype: torch.dtype,
                                              w_dtype: torch.dtype) -> None:
    """radixrt._dense_cpu against float64 and against itself: each row the same alone, in
    any split of the rows, on one thread or two, and in the portable loops (the same order
    with fmaf) as in the AVX2 kernel; K with and without a tail of 8."""
    g = torch.Generator().manual_seed(4)
    threads = torch.get_num_threads()
    for k in (576, 1536, 37):
        w = torch.randn(203, k, generator=g).to(w_dtype)
        x = torch.randn(70, k, generator=g).to(x_dtype)
        y = dense_cpu.matmul(x, w)
        ref = x.double() @ w.double().T
        assert (y.double() - ref).abs().max() < 1e-5 * k ** 0.5 * ref.abs().max()
        assert torch.equal(dense_cpu.matmul(x, w, portable=True), y)
        assert torch.equal(torch.cat([dense_cpu.matmul(x[i:i + 1], w) for i in range(70)]), y)
        parts = [x[:3], x[3:5], x[5:6], x[6:47], x[47:]]
        assert torch.equal(torch.cat([dense_cpu.matmul(p, w) for p in parts]), y)
        torch.set_num_threads(1)
        try:
            assert torch.equal(dense_cpu.matmul(x, w), y)
        finally:
            torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="both float32, both bfloat16 or float32 x 16-bit"):
        dense_cpu.matmul(x.to(torch.bfloat16), w.float())


def test_long_context_any_chunking_and_neighbours(runner: ModelRunner) -> None:
    """Past the attention's key split (INVARIANT_CHUNK keys): one prompt prefilled in one
    step and in uneven chunks (a one-token chunk runs as a decode row), then decoded alone
    and beside longer requests (which, by default, would change how its keys are split and
    merged), gives the same logits."""
    g = torch.Generator().manual_seed(2)
    prompt = torch.randint(3, 40000, (600,), generator=g).tolist()
    others = [torch.randint(3, 40000, (900,), generator=g).tolist() for _ in range(2)]
    pages = {10: list(range(64, 104)), 11: list(range(104, 144)),
             12: list(range(144, 204)), 13: list(range(204, 264))}
    whole = forward(runner, [10], [0], [prompt], {10: pages[10]})[-1]
    cuts = [0, 1, 8, 300, 301, 600]
    for i, (a, b) in enumerate(zip(cuts, cuts[1:])):
        last = forward(runner, [11], [a], [prompt[a:b]], {11: pages[11]} if i == 0 else None)
    assert torch.equal(last[-1], whole)
    for slot in (12, 13):
        forward(runner, [slot], [0], [others[slot - 12]], {slot: pages[slot]})
    solo = forward(runner, [10], [600], [[7]])[0]
    beside = forward(runner, [11, 12, 13], [600, 900, 900], [[7], [9], [9]])[0]
    assert torch.equal(beside, solo)


def check_schedules(runner: ModelRunner, vocab: int) -> None:
    """The promise end to end, through the scheduler: the same requests one at a time, all
    at once, in 8-token prefill chunks, with overlap, and in a pool so small that requests
    are retracted and recomputed give the same tokens and the same logprobs, bit for bit:
    greedy and seeded sampled requests alike."""
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (21, 37, 9, 30, 26)]
    params = [{"temperature": 0, "max_new_tokens": 24},
              {"temperature": 0.9, "top_p": 0.9, "seed": 7, "max_new_tokens": 24},
              {"temperature": 0.8, "top_k": 40, "seed": 3, "max_new_tokens": 20,
               "frequency_penalty": 0.5},
              {"temperature": 1.0, "min_p": 0.05, "seed": 11, "max_new_tokens": 22},
              {"temperature": 0, "max_new_tokens": 18, "repetition_penalty": 1.3}]
    for p in params:
        p.update(logprobs=True, ignore_eos=True)
    schedules = {"together": ({}, None, False), "one at a time": ({"max_running_requests": 1},
                                                                  None, False),
                 "8-token chunks": ({"chunked_prefill_size": 8}, None, False),
                 "overlap": ({"chunked_prefill_size": 8}, None, True),
                 "retraction": ({"chunked_prefill_size": 16}, 6, False)}
    results = {}
    for name, (kw, pages, overlap) in schedules.items():
        eng = LocalEngine(runner.config.replace(**kw), runner, num_pages=pages, overlap=overlap)
        for i, (p, sp) in enumerate(zip(prompts, params)):
            eng.add(f"r{i}", p, sp)
        eng.run(check=True)
        results[name] = [(eng.outputs[f"r{i}"].output_ids, eng.outputs[f"r{i}"].logprobs)
                         for i in range(len(prompts))]
        if name == "retraction":
            assert eng.scheduler.stats.retractions > 0
    ref = results.pop("together")
    assert all(len(ids) == sp["max_new_tokens"] for (ids, _), sp in zip(ref, params))
    for name, got in results.items():
        assert got == ref, name


def test_outputs_repeat_under_other_schedules(runner: ModelRunner) -> None:
    check_schedules(runner, 40000)


def test_float_outputs_repeat_under_other_schedules(float_runners: dict[str, ModelRunner]
                                                    ) -> None:
    check_schedules(float_runners["qwen2-float32"], 49152)


def test_flat_loop_equals_module_path_in_invariant_mode(runner: ModelRunner) -> None:
    """The module path (taken where the flat loop declines) is invariant the same way: its
    QuantizedLinears route every row count to the same kernel."""
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(3, 40000, (40,), generator=g).tolist()
    pages = {5: list(range(280, 284))}
    got = []
    for flat in (True, False):
        was = cpu_flat.enabled
        cpu_flat.enabled = flat
        try:
            got.append(forward(runner, [5], [0], [prompt], pages if flat else None))
        finally:
            cpu_flat.enabled = was
    assert torch.equal(got[0], got[1])


def test_flag_and_where_it_is_refused(default_model_dir: Path) -> None:
    p = argparse.ArgumentParser()
    add_engine_args(p)
    args = p.parse_args(["--model", str(default_model_dir), "--device", "cpu",
                         "--deterministic"])
    assert engine_config_from_args(args).deterministic
    assert not engine_config_from_args(p.parse_args(["--model", str(default_model_dir),
                                                     "--device", "cpu"])).deterministic
    # Where radixrt has no batch-invariant kernels it says so rather than promise it, from
    # the flags and from a hand-built config alike.
    for options in ({"attention_backend": "torch"}, {"quantization": "none", "tp_size": 2}):
        with pytest.raises(ValueError, match="--deterministic needs the CPU, the cpu attention"):
            build_engine_config(str(default_model_dir), device="cpu", deterministic=True,
                                **options)
    with pytest.raises(ValueError, match="this is device cuda, quantization none"):
        EngineConfig(model_path=str(default_model_dir), device="cuda", deterministic=True)
    # float weights have their kernel: accepted
    assert build_engine_config(str(default_model_dir), device="cpu", quantization="none",
                               deterministic=True).deterministic
