"""radixrt's CPU attention kernels (radixrt._attention_cpu) against the torch backend.

Property-based: ragged batches mixing decodes and prefill chunks (with and without a cached
prefix, some decodes sharing radix-cache pages), page sizes 1 and 16, GQA ratios 1/3/4,
head dims 64/128 (compile-time paths) and 32/80 (run-time path), every (model, KV) dtype pair,
every instruction set this CPU runs, one and several threads. A few long contexts (up to 8k)
run as fixed cases.

Tolerances (max abs difference of outputs whose magnitude is ~1): 1e-5 when the model dtype
is float32, whatever the KV dtype (both backends read the same stored values and compute in
float32; they differ by summation order and our exp2, ~1e-7 relative); 2.5e-2 for bfloat16
outputs (torch's bf16 SDPA rounds the scores/probabilities to bf16 on the way, ours keeps
float32 until the final rounding: a few bf16 ulps). The k/v written into the pool must be
identical.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radixrt.attention import cascade
from radixrt.attention.base import build_metadata
from radixrt.attention.torch_backend import TorchAttentionBackend
from radixrt.config import cpu_attention_available
from radixrt.kvcache.pool import KVPool, KVPoolShape

REQUIRE_NATIVE = os.environ.get("RADIXRT_REQUIRE_NATIVE") == "1"
if not cpu_attention_available():
    if REQUIRE_NATIVE:
        raise RuntimeError("RADIXRT_REQUIRE_NATIVE=1 but radixrt._attention_cpu is not built")
    pytest.skip("radixrt._attention_cpu is not built (python setup.py build_ext --inplace)",
                allow_module_level=True)

from radixrt import _attention_cpu as ext  # noqa: E402
from radixrt.attention.cpu_backend import CpuAttentionBackend  # noqa: E402

TYPES = [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
         (torch.bfloat16, torch.bfloat16)]
ISAS = ext.available_isas()


def tolerance(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 2.5e-2


@pytest.fixture(params=ISAS)
def isa(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    ext.set_isa(request.param)
    yield request.param
    ext.set_isa("auto")


def run_both(starts: list[int], num_new: list[int], ps: int, kv_heads: int, group: int,
             dim: int, dtype: torch.dtype, kv_dtype: torch.dtype, seed: int = 0,
             shared: dict[int, int] | None = None, threads: int = 2, min_chunk: int = 16,
             cascade_pages: int = 2, head_major: bool = False,
             invariant_chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor, KVPool, KVPool,
                                              CpuAttentionBackend]:
    """One step on the torch and the cpu backend, each on its own copy of one pool.

    shared: request -> number of leading pages it shares with request 0 (all fully written).
    head_major: the cpu backend's pool is head-major (the reference's stays token-major).
    invariant_chunk: --deterministic's plan (one-token units, keys cut at its multiples).
    """
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    need = [-(-(s + n) // ps) for s, n in zip(starts, num_new)]
    num_pages = sum(need) + 4
    perm = rng.permutation(num_pages)
    rows = np.zeros((len(need), max(need)), np.int32)
    pos = 0
    for i, n in enumerate(need):
        rows[i, :n] = perm[pos : pos + n]
        pos += n
    for i, c in (shared or {}).items():
        rows[i, :c] = rows[0, :c]
    meta, _ = build_metadata(np.array(starts), np.array(num_new), rows, ps)
    shape = KVPoolShape(1, num_pages, ps, kv_heads, dim)
    pools = [KVPool(shape, kv_dtype, "cpu"), KVPool(shape, kv_dtype, "cpu", head_major)]
    init_k = torch.randn(pools[0].k_cache[0].shape, generator=g).to(kv_dtype)
    init_v = torch.randn(pools[0].v_cache[0].shape, generator=g).to(kv_dtype)
    for p in pools:
        p.k_cache[0].copy_(init_k)
        p.v_cache[0].copy_(init_v)
    t = sum(num_new)
    heads = kv_heads * group
    q = torch.randn(t, heads, dim, generator=g).to(dtype)
    # k/v as the model passes them: k contiguous, v a strided view of a fused projection.
    k = torch.randn(t, kv_heads, dim, generator=g).to(dtype)
    fused = torch.randn(t, 3 * kv_heads * dim, generator=g).to(dtype)
    v = fused[:, kv_heads * dim : 2 * kv_heads * dim].view(t, kv_heads, dim)
    ref_backend = TorchAttentionBackend(pools[0], heads, dim)
    ref_backend.plan(meta)
    ref = ref_backend.forward(q, k, v, 0)
    cpu = CpuAttentionBackend(pools[1], heads, dim, dtype, num_threads=threads,
                              cascade_min_pages=cascade_pages)
    cpu.options.min_chunk = min_chunk
    cpu.options.min_parallel_work = 0  # small test batches still split and merge
    cpu.options.cascade_min_rows = 1  # and group any shared prefix
    cpu.options.invariant_chunk = invariant_chunk
    cpu.plan(meta)
    got = cpu.forward(q, k, v, 0)
    return got, ref, pools[1], pools[0], cpu


def check(got: torch.Tensor, ref: torch.Tensor, pool: KVPool, ref_pool: KVPool,
          dtype: torch.dtype) -> None:
    assert got.dtype == ref.dtype == dtype and got.shape == ref.shape
    err = (got.float() - ref.float()).abs().max().item()
    assert err <= tolerance(dtype), err
    assert torch.equal(pool.k_cache[0], ref_pool.k_cache[0])
    assert torch.equal(pool.v_cache[0], ref_pool.v_cache[0])


@st.composite
def batches(draw: st.DrawFn) -> dict:
    ps = draw(st.sampled_from([1, 16]))
    reqs = draw(st.lists(st.tuples(st.integers(0, 600), st.sampled_from([1, 1, 2, 7, 33, 70])),
                         min_size=1, max_size=5))
    starts = [s for s, _ in reqs]
    num_new = [n for _, n in reqs]
    # Decodes after request 0 may share its fully written leading pages (a radix prefix).
    shared = {}
    if num_new[0] == 1:
        for i in range(1, len(reqs)):
            full = min(starts[0], starts[i]) // ps
            if num_new[i] == 1 and full and draw(st.booleans()):
                shared[i] = draw(st.integers(1, full))
    return {"starts": starts, "num_new": num_new, "ps": ps, "shared": shared,
            "kv_heads": draw(st.sampled_from([1, 2, 3])),
            "group": draw(st.sampled_from([1, 3, 4])),
            "dim": draw(st.sampled_from([64, 128, 32, 80])),
            "types": draw(st.sampled_from(TYPES)),
            "threads": draw(st.sampled_from([1, 2, 3])),
            "min_chunk": draw(st.sampled_from([16, 64, 256])),
            "head_major": draw(st.booleans()),
            "invariant_chunk": draw(st.sampled_from([0, 0, 0, 16, 256])),
            "seed": draw(st.integers(0, 2**16))}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(b=batches())
def test_matches_torch_backend(isa: str, b: dict) -> None:
    dtype, kv_dtype = b["types"]
    got, ref, pool, ref_pool, _ = run_both(
        b["starts"], b["num_new"], b["ps"], b["kv_heads"], b["group"], b["dim"], dtype,
        kv_dtype, seed=b["seed"], shared=b["shared"], threads=b["threads"],
        min_chunk=b["min_chunk"], head_major=b["head_major"],
        invariant_chunk=b["invariant_chunk"])
    check(got, ref, pool, ref_pool, dtype)


@pytest.mark.parametrize(("dtype", "kv_dtype"), TYPES)
@pytest.mark.parametrize("ps", [1, 16])
def test_long_contexts(isa: str, dtype: torch.dtype, kv_dtype: torch.dtype, ps: int) -> None:
    """Decodes at 8k and 3k, and a prefill chunk on a 4k cached prefix, in one step (the
    served head-major pool when pages hold 16 tokens)."""
    got, ref, pool, ref_pool, cpu = run_both(
        [8191, 4000, 3000], [1, 64, 1], ps, 3, 3, 64, dtype, kv_dtype, seed=ps,
        min_chunk=256, head_major=ps == 16)
    check(got, ref, pool, ref_pool, dtype)
    # The long decodes were split over the threads and merged.
    assert cpu.plan_obj.num_partial_slots > 0


def test_invariant_plan_gives_a_token_the_same_bits_in_any_step(isa: str) -> None:
    """--deterministic's plan: a token's output is the same whether its request runs alone,
    beside others (another split of the step's work, two threads or one) or with its prompt
    cut into other chunks (a one-token chunk, which runs as a decode row, included), past
    several key cuts. (test_matches_torch_backend checks the plan against the reference.)"""
    g = torch.Generator().manual_seed(5)
    ps, hkv, group, dim = 16, 3, 3, 64
    pool = KVPool(KVPoolShape(1, 200, ps, hkv, dim), torch.bfloat16, "cpu", True)
    pool.k_cache[0].copy_(torch.randn(pool.k_cache[0].shape, generator=g))
    pool.v_cache[0].copy_(torch.randn(pool.v_cache[0].shape, generator=g))
    pages = {"a": np.arange(0, 48), "b": np.arange(48, 112), "c": np.arange(112, 120)}
    start = {"a": 740, "b": 1000, "c": 10}  # a's new tokens cross the cut at 768
    new = {"a": 40, "b": 1, "c": 90}
    qkv = {r: (torch.randn(n, hkv * group, dim, generator=g),
               torch.randn(n, hkv, dim, generator=g), torch.randn(n, hkv, dim, generator=g))
           for r, n in new.items()}

    def step(parts: list[tuple[str, int, int]], threads: int = 2) -> torch.Tensor:
        """parts: (request, first new token, count); returns the outputs in order."""
        rows = np.zeros((len(parts), 64), np.int32)
        for i, (r, _, _) in enumerate(parts):
            rows[i, :len(pages[r])] = pages[r]
        meta, _ = build_metadata(np.array([start[r] + t0 for r, t0, _ in parts]),
                                 np.array([n for _, _, n in parts]), rows, ps)
        q, k, v = (torch.cat([qkv[r][j][t0:t0 + n] for r, t0, n in parts]) for j in range(3))
        cpu = CpuAttentionBackend(pool, hkv * group, dim, torch.float32, num_threads=threads,
                                  batch_invariant=True)
        cpu.options.min_parallel_work = 0
        cpu.plan(meta)
        return cpu.forward(q, k, v, 0)

    alone = step([("a", 0, 40)])
    assert torch.equal(step([("b", 0, 1), ("a", 0, 40), ("c", 0, 90)])[1:41], alone)
    assert torch.equal(step([("a", 0, 40), ("c", 0, 90)], threads=1)[:40], alone)
    assert torch.equal(step([("a", 0, 1)]), alone[:1])
    assert torch.equal(step([("a", 1, 39), ("b", 0, 1)])[:39], alone[1:])
    # (The default plan fails these comparisons: its key splits follow the step's work.)


def test_prefill_without_prefix_long(isa: str) -> None:
    got, ref, pool, ref_pool, _ = run_both([0], [700], 16, 2, 4, 128, torch.float32,
                                           torch.float32, seed=3)
    check(got, ref, pool, ref_pool, torch.float32)


def test_cascade_groups_match_reference_grouping() -> None:
    """The C++ plan groups decodes that share leading pages exactly as cascade.py does."""
    ps, rng = 16, np.random.default_rng(5)
    starts = [200, 300, 250, 90, 400, 401]
    rows = np.zeros((6, 30), np.int32)
    perm = rng.permutation(1000)
    for i in range(6):
        rows[i] = perm[30 * i : 30 * i + 30]
    rows[1, :9] = rows[0, :9]   # shares 9 pages with 0
    rows[2, :5] = rows[0, :5]   # 5 with 0 (and 1)
    rows[5, :20] = rows[4, :20]  # 20 with 4, but 4 has written only 25 of them
    meta, _ = build_metadata(np.array(starts), np.ones(6, np.int64), rows, ps)
    def plan(min_rows: int):  # type: ignore[no-untyped-def]
        return ext.Plan(meta.page_table.numpy(), meta.cu_new.numpy(), meta.start_pos.numpy(),
                        meta.out_slots.numpy(), 4, 2, 64, ps, 1000, False, False, 0.125,
                        _options(cascade_min_pages=cascade.MIN_SHARED_PAGES,
                                 cascade_min_rows=min_rows))
    # By default a group needs 16 query rows (here 8 requests x 2 heads): too few here.
    assert plan(16).groups() == []
    plan = plan(1)
    seq = np.array(starts) + 1
    want, _ = cascade.find_shared_prefixes(meta.page_table.numpy(), seq, ps)
    assert sorted((sorted(r.tolist()), c) for r, c in want) == sorted(
        (sorted(r), c) for r, c in plan.groups())
    assert sorted((sorted(r), c) for r, c in plan.groups()) == [([0, 1, 2], 5), ([4, 5], 20)]
    assert plan.num_partial_slots > 0


def _options(**kw: int):  # type: ignore[no-untyped-def]
    o = ext.PlanOptions()
    for name, value in kw.items():
        setattr(o, name, value)
    return o


def test_plan_rejects_bad_input() -> None:
    table = np.array([[0, 1]], np.int32)
    cu, start, slots = np.array([0, 1], np.int32), np.array([20], np.int32), np.array([20])
    args = (4, 2, 64, 16, 8, False, False, 0.125, _options())
    ext.Plan(table, cu, start, slots, *args)  # valid
    with pytest.raises(ValueError, match="outside the KV pool"):
        ext.Plan(np.array([[0, 99]], np.int32), cu, start, slots, *args)
    with pytest.raises(ValueError, match="narrower"):
        ext.Plan(table[:, :1], cu, start, slots, *args)
    with pytest.raises(ValueError, match="head_dim"):
        ext.Plan(table, cu, start, slots, 4, 2, 72, 16, 8, False, False, 0.125, _options())
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        ext.Plan(table, cu, start, slots, 3, 2, 64, 16, 8, False, False, 0.125, _options())
    with pytest.raises(ValueError, match="out_slot"):
        ext.Plan(table, cu, start, np.array([10**6]), *args)
    # Pool strides: token-major (the default) or head-major over the pool's 9 pages x 16 slots.
    ext.Plan(table, cu, start, slots, *args[:-1], _options(kv_slot_stride=64,
                                                            kv_head_stride=9 * 16 * 64))
    with pytest.raises(ValueError, match="strides"):
        ext.Plan(table, cu, start, slots, *args[:-1], _options(kv_slot_stride=64,
                                                                kv_head_stride=64))
    ext.Plan(table, cu, start, slots, *args[:-1], _options(invariant_chunk=32))
    with pytest.raises(ValueError, match="invariant_chunk must be 0 or a multiple of 16"):
        ext.Plan(table, cu, start, slots, *args[:-1], _options(invariant_chunk=40))


def test_backend_rejects_bad_tensors() -> None:
    pool = KVPool(KVPoolShape(1, 8, 16, 2, 64), torch.float32, "cpu")
    cpu = CpuAttentionBackend(pool, 4, 64, torch.float32)
    meta, _ = build_metadata(np.array([3]), np.array([1]), np.array([[2]]), 16)
    cpu.plan(meta)
    q, kv = torch.randn(1, 4, 64), torch.randn(1, 2, 64)
    assert cpu.forward(q, kv, kv, 0).shape == (1, 4, 64)
    with pytest.raises(ValueError, match="expected"):
        cpu.forward(q.bfloat16(), kv, kv, 0)
    with pytest.raises(ValueError, match="expected"):
        cpu.forward(torch.randn(1, 64, 4).transpose(1, 2), kv, kv, 0)
    with pytest.raises(ValueError, match="token count"):
        cpu.forward(torch.randn(2, 4, 64), torch.randn(2, 2, 64), torch.randn(2, 2, 64), 0)
    with pytest.raises(ValueError, match="head_dim"):
        CpuAttentionBackend(KVPool(KVPoolShape(1, 8, 16, 2, 72), torch.float32, "cpu"), 4, 72,
                            torch.float32)
    with pytest.raises(ValueError, match="float32 and bfloat16"):
        CpuAttentionBackend(pool, 4, 64, torch.float16)


def test_isa_selection() -> None:
    assert ISAS[-1] == "baseline" and ext.isa() == ISAS[0]
    with pytest.raises(ValueError, match="unknown ISA"):
        ext.set_isa("sse9")
    ext.set_isa("baseline")
    assert ext.isa() == "baseline"
    ext.set_isa("auto")
    assert ext.isa() == ISAS[0]


def test_shares_torchs_libgomp() -> None:
    """Imported after torch, the module binds to torch's libgomp: one OpenMP runtime, one
    thread pool (a second pool would spin against torch's threads)."""
    code = textwrap.dedent("""
        import torch
        from radixrt import _attention_cpu
        maps = open("/proc/self/maps").read().splitlines()
        print(sorted({line.split()[-1] for line in maps if "libgomp" in line}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    libs = eval(out)  # a printed list of paths
    assert len(libs) == 1, libs
    assert os.path.dirname(torch.__file__) in libs[0]


def test_small_steps_run_on_one_thread() -> None:
    """A step with little work skips the parallel region; a long one uses every thread."""
    def plan(start: int):  # type: ignore[no-untyped-def]
        meta, _ = build_metadata(np.array([start]), np.array([1]), np.arange(300)[None], 16)
        return ext.Plan(meta.page_table.numpy(), meta.cu_new.numpy(), meta.start_pos.numpy(),
                        meta.out_slots.numpy(), 9, 3, 64, 16, 400, False, False, 0.125,
                        _options(num_threads=2))
    assert plan(20).num_threads == 1
    assert plan(4000).num_threads == 2


def test_config_resolves_backend_and_kv_dtype(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import argparse

    from radixrt.config import build_engine_config, resolve_attention_backend
    from radixrt.server_args import add_engine_args, engine_config_from_args

    assert resolve_attention_backend("auto", "cpu", "float32") == "cpu"  # built here
    assert resolve_attention_backend("auto", "cpu", "float16") == "torch"
    assert resolve_attention_backend("auto", "cuda", "bfloat16") == "flashinfer"
    assert resolve_attention_backend("auto", "cuda", "float32") == "torch"
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_attention_backend("tpu", "cpu", "float32")
    cfg = build_engine_config(str(tmp_path), device="cpu", dtype="float32")
    assert (cfg.attention_backend, cfg.kv_cache_dtype, cfg.kv_dtype) == ("cpu", "auto", "float32")
    cfg = build_engine_config(str(tmp_path), device="cpu", dtype="float32",
                              kv_cache_dtype="bfloat16")
    assert cfg.kv_dtype == "bfloat16"
    # auto with quantized weights on the cpu backend: bfloat16 KV; float32 weights stay exact.
    assert cfg.replace(kv_cache_dtype="auto", quantization="int4").kv_dtype == "bfloat16"
    assert cfg.replace(kv_cache_dtype="auto", quantization="int4",
                       attention_backend="torch").kv_dtype == "float32"
    assert cfg.replace(kv_cache_dtype="float32", quantization="int4").kv_dtype == "float32"
    with pytest.raises(ValueError, match="unknown KV cache dtype"):
        build_engine_config(str(tmp_path), device="cpu", kv_cache_dtype="int8")
    with pytest.raises(ValueError, match="flashinfer backend needs"):
        build_engine_config(str(tmp_path), device="cuda", dtype="bfloat16",
                            kv_cache_dtype="float32")
    # KV layout: head-major for the cpu kernels, token-major for the rest, unless forced.
    assert cfg.kv_head_major and not cfg.replace(attention_backend="torch").kv_head_major
    assert not cfg.replace(kv_layout="token").kv_head_major
    with pytest.raises(ValueError, match="unknown KV layout"):
        build_engine_config(str(tmp_path), device="cpu", kv_layout="diagonal")
    with pytest.raises(ValueError, match="token-major"):
        build_engine_config(str(tmp_path), device="cuda", dtype="bfloat16", kv_layout="head")
    ap = argparse.ArgumentParser()
    add_engine_args(ap)
    args = ap.parse_args(["--model", str(tmp_path), "--device", "cpu", "--attention-backend",
                          "torch", "--kv-cache-dtype", "bfloat16"])
    cfg = engine_config_from_args(args)
    assert (cfg.attention_backend, cfg.kv_dtype) == ("torch", "bfloat16")


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_runner_keeps_kv_in_bfloat16(make_tiny_model, backend: str) -> None:
    """--kv-cache-dtype bfloat16 with float32 weights: the pool is bf16 and logits stay close
    to the float32-KV run (bf16 KV rounding only)."""
    from radixrt.config import EngineConfig
    from radixrt.testing.batches import batch_from_chunks
    from radixrt.worker.model_runner import ModelRunner

    path = str(make_tiny_model("llama"))
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, 49152, 40).tolist()
    logits = {}
    for kv in ("auto", "bfloat16"):
        runner = ModelRunner(EngineConfig(model_path=path, page_size=16, max_total_tokens=512,
                                          max_running_requests=2, attention_backend=backend,
                                          kv_cache_dtype=kv))
        assert runner.pool.dtype == (torch.bfloat16 if kv == "bfloat16" else torch.float32)
        fb = batch_from_chunks([0], [0], [prompt[:30]], {0: [3, 4, 5]})
        runner._apply_updates(fb)
        runner.forward(fb)
        fb = batch_from_chunks([0], [30], [prompt[30:]])
        runner._apply_updates(fb)
        logits[kv] = runner.forward(fb)[0]
    err = (logits["auto"] - logits["bfloat16"]).abs().max().item()
    assert 0 < err < 0.1, err


def test_benchmarks_run(make_tiny_model, capsys: pytest.CaptureFixture[str]) -> None:
    """bench/bench_attention_cpu.py and bench_decode --in-process still run (tiny sizes)."""
    from bench import bench_attention_cpu, bench_decode

    assert bench_attention_cpu.main(["--decode", "2x40", "--extend", "20+16", "--types",
                                     "float32:bfloat16", "--reps", "1", "--layers", "2"]) == 0
    out = capsys.readouterr().out
    assert "| decode | 2x40 | float32 | bfloat16 |" in out and "| extend | 20+16 |" in out
    assert bench_decode.main(["--in-process", "--model", str(make_tiny_model("llama")),
                              "--contexts", "24", "--batch-sizes", "2", "--steps", "2",
                              "--backends", "cpu", "--kv-dtypes", "auto,bfloat16",
                              "--profile"]) == 0
    out = capsys.readouterr().out
    assert out.count("| cpu | float32 |") == 2 and "attention" in out
    # The pool layouts side by side, as docs/benchmarks.md compares them.
    assert bench_attention_cpu.main(["--decode", "2x40", "--extend", "", "--types",
                                     "float32:bfloat16", "--reps", "1", "--layers", "2",
                                     "--backends", "cpu:token,cpu:head", "--pages",
                                     "contiguous"]) == 0
    assert "| decode | 2x40 | float32 | bfloat16 |" in capsys.readouterr().out
    assert bench_decode.main(["--in-process", "--model", str(make_tiny_model("llama")),
                              "--contexts", "24", "--batch-sizes", "2", "--steps", "2",
                              "--case", "cpu:float32:bfloat16:none:flat:token",
                              "--case", "cpu:float32:bfloat16:none:flat:head"]) == 0
    out = capsys.readouterr().out
    assert "| bfloat16 token |" in out and "| bfloat16 head |" in out
    # Page orders side by side in one run (each backend its own order).
    assert bench_attention_cpu.main(["--decode", "3x40", "--extend", "", "--types",
                                     "float32:bfloat16", "--reps", "1", "--layers", "2",
                                     "--backends", "cpu:head:interleaved,cpu:head:contiguous,"
                                     "cpu:head:random"]) == 0
    assert "| decode | 3x40 | float32 | bfloat16 |" in capsys.readouterr().out


def test_interleaved_pages_take_turns_between_requests() -> None:
    from bench.bench_attention_cpu import batch_meta

    meta = batch_meta([40, 40, 8], [1, 1, 1], 16, 16, pages="interleaved")
    tables = [meta.page_table[i, : n].tolist() for i, n in enumerate([3, 3, 1])]
    assert tables == [[0, 3, 5], [1, 4, 6], [2]]


@pytest.mark.slow  # compiles the kernels once more (about a minute on 2 cores)
def test_attention_benchmark_runs_another_trees_kernels(
        tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """--other-tree compiles a tree's kernels under a namespace of their own and runs them in
    this process beside this build (pybind would refuse a second `Plan` of the same name)."""
    import shutil
    from pathlib import Path

    from bench import bench_attention_cpu
    from bench.native_builds import build_attention, load_extension

    tree = tmp_path / "tree"
    shutil.copytree(Path(__file__).resolve().parents[2] / "csrc", tree / "csrc")
    assert bench_attention_cpu.main(["--decode", "2x40", "--extend", "20+16", "--types",
                                     "float32:bfloat16", "--reps", "1", "--layers", "2",
                                     "--other-tree", str(tree),
                                     "--backends", "other:head,cpu:head"]) == 0
    out = capsys.readouterr().out
    assert "| decode | 2x40 | float32 | bfloat16 |" in out and "| extend | 20+16 |" in out
    built = build_attention(tree)
    mtime = built.stat().st_mtime
    assert build_attention(tree).stat().st_mtime == mtime  # cached: no second compile
    # The same source, built twice: the two modules' kernels agree bit for bit.
    other = load_extension(built, "_attention_cpu")
    pool = KVPool(KVPoolShape(1, 8, 16, 3, 64), torch.bfloat16, "cpu", head_major=True)
    pool.k_cache[0].normal_()
    pool.v_cache[0].normal_()
    meta = bench_attention_cpu.batch_meta([30, 50], [1, 1], 16, 8)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 64, generator=g) for h in (9, 3, 3))
    outs = []
    for name in ("other", "cpu"):
        backend = bench_attention_cpu.make_backend(name, pool, 9, 64, torch.float32, other=other)
        backend.plan(meta)
        outs.append(backend.forward(q, k, v, 0))
    assert type(outs[0]) is torch.Tensor and torch.equal(outs[0], outs[1])


def test_long_decode_benchmark_runs_against_a_baseline_allocator(
        make_tiny_model, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    """bench/bench_long_decode.py through the real scheduler, against another allocator file
    (here this tree's own), with the runs of pages it reports."""
    from bench import bench_long_decode
    from radixrt.scheduler import page_allocator

    assert bench_long_decode.main(["--model", str(make_tiny_model("llama")), "--batch", "3",
                                   "--prompt", "8", "--new", "40", "--last", "4", "--rounds",
                                   "2", "--baseline-allocator", page_allocator.__file__]) == 0
    out = capsys.readouterr().out
    assert "| this tree |" in out and "| baseline |" in out and "per round:" in out
    assert "| 1 |" in out  # each request's pages one run
