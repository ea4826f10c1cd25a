"""--deterministic: a request's logits do not depend on what runs beside it, nor on how its
prompt was cut into chunks (which the scheduler decides by load). Driven on the server's CPU
setup (the default model's int4 weights, cpu attention, the flat loop), one request's logits
alone against the same request in batches of other decodes and prefills, above SMALL_M rows,
past the attention's key split and cut into other chunks, compared bit for bit."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch

from radixrt.config import EngineConfig, build_engine_config
from radixrt.models import cpu_flat, fused, quant
from radixrt.server_args import add_engine_args, engine_config_from_args
from radixrt.testing.batches import batch_from_chunks
from radixrt.testing.local_engine import LocalEngine
from radixrt.worker.model_runner import ModelRunner

if (not quant.native_available() or fused.native() is None) and os.environ.get(
        "RADIXRT_REQUIRE_NATIVE") != "1":
    pytest.skip("the native CPU extensions are not built", allow_module_level=True)


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


def test_logits_do_not_depend_on_the_batch(runner: ModelRunner) -> None:
    flat = cpu_flat.flat_layers(runner.model)
    assert flat is not None and flat.invariant  # what the server runs, in its invariant mode
    g = torch.Generator().manual_seed(0)
    lens = (20, 30, 25, 10)
    prompts = [torch.randint(3, 40000, (n,), generator=g).tolist() for n in lens]
    pages = {i: list(range(16 * i, 16 * i + 16)) for i in range(4)}
    steps_before = flat.steps
    alone = [forward(runner, [i], [0], [p], {i: pages[i]})[-1] for i, p in enumerate(prompts)]
    # All four prompts in one step: 85 rows, above SMALL_M (the default would switch to the
    # blocked GEMM there).
    together = forward(runner, [0, 1, 2, 3], [0] * 4, prompts)
    for i in range(4):
        assert torch.equal(together[i], alone[i]), i
    # A prompt split into other chunks, its last chunk beside a decode row.
    forward(runner, [0], [0], [prompts[0][:7]])
    split = forward(runner, [0, 1], [7, 30], [prompts[0][7:], [5]])
    assert torch.equal(split[0], alone[0])
    # One decode row alone, then beside 1-3 others (every tile size of the kernels).
    solo = forward(runner, [0], [20], [[7]])[0]
    for n in (2, 3, 4):
        rows = forward(runner, list(range(n)), [20, *lens[1:n]], [[7]] + [[9]] * (n - 1))
        assert torch.equal(rows[0], solo), n
    assert flat.steps - steps_before == 11  # every step above ran the flat loop


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


def test_outputs_repeat_under_other_schedules(runner: ModelRunner) -> None:
    """The promise end to end, through the scheduler: the same requests one at a time, all
    at once, in 8-token prefill chunks, with overlap, and in a pool so small that requests
    are retracted and recomputed give the same tokens and the same logprobs, bit for bit:
    greedy and seeded sampled requests alike."""
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 40000, (n,), generator=g).tolist() for n in (21, 37, 9, 30, 26)]
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
    for options in ({"quantization": "none"}, {"attention_backend": "torch"}):
        with pytest.raises(ValueError, match="--deterministic needs the CPU with int4 or int8"):
            build_engine_config(str(default_model_dir), device="cpu", deterministic=True,
                                **options)
    with pytest.raises(ValueError, match="this is device cpu, quantization none"):
        EngineConfig(model_path=str(default_model_dir), deterministic=True)
