"""GPU benchmark: a random-weight Llama-3-8B-shaped model through radixrt, next to transformers.

Sections, in priority order (each skipped when the time budget would not cover it):
  1. weights      random bf16 weights generated on the GPU, saved as per-layer safetensors
  2. prefill      4 requests x 2048 tokens in one ModelRunner step
  3. decode       batch 1 / 32 / 128 at a 1024-token context, with CUDA graphs (and eager at
                  batch 1 and 32 for the graphs' gain); batch 128 also as a fraction of the
                  memory-bandwidth limit: (weight bytes + KV bytes read per step) / step time
  4. prefix       a shared-prefix workload (one long system prompt, many questions) with the
                  radix cache on and off, through LocalEngine (or radixrt.Engine: --engine)
  5. overlap      the same decode workload through radixrt.Engine (real processes) with
                  overlap scheduling on and off: throughput and the exposed host time per step
  6. transformers the same weights and GPU through transformers' forward and generate
  7. gemm         the step's GEMM shapes alone by BLAS library and layout (bench/gpu_gemm.py)
Results go to --out-json / --out-md after every section, so a timeout keeps what finished.

    python bench/gpu_bench.py --out-json r.json --out-md r.md         # on a CUDA machine
    python bench/gpu_bench.py --preset tiny --device cpu --budget-s 120  # plumbing check
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from radixrt.config import EngineConfig  # noqa: E402
from radixrt.ipc.messages import ForwardBatch, NewSlot  # noqa: E402
from radixrt.sampling_params import SamplingParams  # noqa: E402

PRESETS: dict[str, dict[str, Any]] = {
    "llama3-8b": {
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
        "vocab_size": 128256, "max_position_embeddings": 8192, "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    },
    "tiny": {
        "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
        "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 32,
        "vocab_size": 49152, "max_position_embeddings": 4096, "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
    },
}
# Peak HBM bandwidth by card name (first match wins), bytes/s.
CARD_BANDWIDTH = [("H200", 4.8e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12),
                  ("H100", 3.35e12), ("A100-SXM4-80GB", 2.04e12), ("A100 80GB", 1.94e12),
                  ("A100", 1.555e12), ("L40S", 0.864e12)]
PROGRESS_T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[gpu_bench +{time.monotonic() - PROGRESS_T0:6.1f}s] {msg}", flush=True)


def card_bandwidth(name: str) -> float | None:
    for key, bw in CARD_BANDWIDTH:
        if key.lower() in name.lower():
            return bw
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- weights


def layer_shapes(f: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    h, inter, d = f["hidden_size"], f["intermediate_size"], f["head_dim"]
    q, kv = f["num_attention_heads"] * d, f["num_key_value_heads"] * d
    return {
        "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h), "self_attn.o_proj.weight": (h, q),
        "mlp.gate_proj.weight": (inter, h), "mlp.up_proj.weight": (inter, h),
        "mlp.down_proj.weight": (h, inter),
    }


def count_params(f: dict[str, Any]) -> int:
    per_layer = sum(math.prod(s) for s in layer_shapes(f).values())
    emb = f["vocab_size"] * f["hidden_size"]
    head = 0 if f["tie_word_embeddings"] else emb
    return f["num_hidden_layers"] * per_layer + emb + head + f["hidden_size"]


def write_random_model(out: Path, fields: dict[str, Any], device: torch.device,
                       dtype: torch.dtype = torch.bfloat16, tokenizer_dir: Path | None = None,
                       seed: int = 0, std: float = 0.02) -> int:
    """An HF Llama directory with random weights: drawn on `device` (fast on a GPU), one
    safetensors file per layer plus one for embeddings/head. Returns the parameter count."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)

    def rand(shape: tuple[int, ...], norm: bool = False) -> torch.Tensor:
        if norm:  # RMSNorm weights near 1
            t = torch.empty(shape, dtype=torch.float32, device=device).normal_(1.0, 0.05,
                                                                                generator=gen)
            return t.to(dtype).cpu()
        return torch.empty(shape, dtype=dtype, device=device).normal_(0.0, std,
                                                                      generator=gen).cpu()

    weight_map: dict[str, str] = {}

    def save(tensors: dict[str, torch.Tensor], name: str) -> None:
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))

    L = fields["num_hidden_layers"]
    shapes = layer_shapes(fields)
    t0 = time.monotonic()
    for i in range(L):
        save({f"model.layers.{i}.{k}": rand(s, norm=len(s) == 1) for k, s in shapes.items()},
             f"model-layer-{i:03d}.safetensors")
        if (i + 1) % max(1, L // 4) == 0:
            say(f"  weights: {i + 1}/{L} layers written ({time.monotonic() - t0:.1f} s)")
    h, V = fields["hidden_size"], fields["vocab_size"]
    outer = {"model.embed_tokens.weight": rand((V, h)), "model.norm.weight": rand((h,), True)}
    if not fields["tie_word_embeddings"]:
        outer["lm_head.weight"] = rand((V, h))
    save(outer, "model-outer.safetensors")
    total = sum(math.prod(s) for s in shapes.values()) * L + sum(
        t.numel() for t in outer.values())
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total * torch.empty((), dtype=dtype).element_size()},
         "weight_map": weight_map}, indent=1))
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **fields,
           "rope_parameters": {"rope_type": "default", "rope_theta": fields["rope_theta"]},
           "attention_bias": False, "mlp_bias": False, "hidden_act": "silu",
           "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
           "torch_dtype": str(dtype).removeprefix("torch."), "use_cache": True}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}))
    if tokenizer_dir is not None:
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                  "special_tokens_map.json"):
            if (tokenizer_dir / f).is_file():
                shutil.copy2(tokenizer_dir / f, out / f)
    return total


# ----------------------------------------------------------------------------- runner steps


class Pages:
    """Bump allocator over the pool for hand-made batches (sections reset it)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.ps = runner.page_size
        self.next = 0

    def reset(self) -> None:
        self.next = 0

    def batch(self, slots: list[int], starts: list[int], chunks: list[list[int]],
              reserve_tokens: int = 0, sample: bool = True) -> ForwardBatch:
        """A ForwardBatch; with reserve_tokens, each slot first gets that many tokens' pages."""
        page_slots, page_ids, lens = [], [], []
        new = []
        if reserve_tokens:
            n = -(-reserve_tokens // self.ps)
            if self.next + n * len(slots) > self.runner.num_pages:
                raise RuntimeError("benchmark needs more KV pages than the pool has")
            for s in slots:
                page_slots.append(s)
                page_ids.extend(range(self.next, self.next + n))
                lens.append(n)
                self.next += n
                new.append(NewSlot(s, SamplingParams(temperature=0)))
        return ForwardBatch(
            step=0, slots=np.array(slots, np.int32), start_pos=np.array(starts, np.int32),
            num_new=np.array([len(c) for c in chunks], np.int32),
            input_ids=np.concatenate([np.array(c, np.int32) for c in chunks]),
            sample=np.full(len(slots), sample),
            page_slots=np.array(page_slots, np.int32),
            page_offsets=np.zeros(len(page_slots), np.int32),
            page_lens=np.array(lens, np.int32), page_ids=np.array(page_ids, np.int32),
            new_slots=new)


# What gpu_check.sh must produce (dotted paths into the results JSON; `decode` is a list of
# rows with `batch` and `step_ms`).
REQUIRED_KEYS = ("model.params", "prefill.tokens_per_s", "prefill_transformers.tokens_per_s",
                 "bandwidth.fraction_of_peak", "bandwidth.card_TBps",
                 "overlap.exposed_host_ms_per_step", "decode")


def missing_keys(results: dict[str, Any]) -> list[str]:
    """REQUIRED_KEYS absent (or None) in results."""
    missing = []
    for path in REQUIRED_KEYS:
        node: Any = results
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None or (path == "decode" and not all("step_ms" in d for d in node)):
            missing.append(path)
    return missing


def card_slug(device: str) -> str:
    """A file-name form of the card's name: 'NVIDIA H200' -> 'h200'."""
    words = [w for w in device.lower().replace("nvidia", "").split() if w]
    return "_".join("".join(c for c in w if c.isalnum()) for w in words[:2]) or "unknown"


def ab_rows(times: dict[bool, dict[int, float]], on_key: str, off_key: str
            ) -> list[dict[str, Any]]:
    """One row per batch size of an on/off A/B (switched_step_ms): both ms/step, and the
    speedup of on over off."""
    return [{"batch": B, on_key: round(times[True][B], 3), off_key: round(times[False][B], 3),
             "speedup": round(times[False][B] / times[True][B], 3)} for B in times[True]]


def use_graphs(runner: Any, graphs: Any) -> None:
    """Decode steps through the runner's graph runner, or eagerly (graphs=None)."""
    runner.graphs = graphs


def timed_steps(runner: Any, make: Callable[[int], ForwardBatch], steps: int, warmup: int,
                pipelined: bool = False) -> float:
    """Mean seconds per step (sampling and the host copy of the tokens included).

    pipelined: step i+1 is launched before step i's tokens are read, as the worker runs with
    overlap scheduling (the CUDA default), so host preparation hides behind the GPU; else
    each step is launched and waited for (runner.step)."""
    def run(lo: int, hi: int) -> None:
        prev = None
        for i in range(lo, hi):
            cur = runner.launch(make(i))
            if pipelined and prev is not None:
                prev.result()
            elif not pipelined:
                cur.result()
            prev = cur
        if pipelined and prev is not None:
            prev.result()

    run(0, warmup)
    sync(runner.device)
    t0 = time.perf_counter()
    run(warmup, warmup + steps)
    sync(runner.device)
    return (time.perf_counter() - t0) / steps


# ----------------------------------------------------------------------------- the benchmark


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.monotonic()
        self.device = torch.device(args.device)
        self.fields = dict(PRESETS[args.preset])
        if args.layers:
            self.fields["num_hidden_layers"] = args.layers
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        self.results: dict[str, Any] = {
            "device": name, "torch": torch.__version__, "preset": args.preset,
            "model": {**self.fields, "params": count_params(self.fields),
                      "dtype": str(self.dtype).removeprefix("torch.")},
            "setup": {}, "skipped": [], "errors": {}, "check": {},
        }
        try:
            import flashinfer

            self.results["flashinfer"] = flashinfer.__version__
        except ImportError:
            pass
        if args.jit_seconds is not None:
            self.results["check"]["flashinfer_jit_s"] = args.jit_seconds
        if args.tests_summary:
            self.results["check"]["tests"] = args.tests_summary
        self.rng = np.random.default_rng(0)
        self.vocab_ids = min(self.fields["vocab_size"], 49152)  # ids the tokenizer knows
        self.runner: Any = None
        self.graphs: Any = None

    # -- bookkeeping
    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.t0)

    def section(self, name: str, est_s: float, fn: Callable[[], None]) -> None:
        only = self.args.sections
        if only and name not in only and name not in ("weights", "load"):
            return
        if self.left() < est_s:
            say(f"skip {name}: {self.left():.0f} s left, needs ~{est_s:.0f} s")
            self.results["skipped"].append(name)
            self.save()
            return
        say(f"== {name}")
        t = time.monotonic()
        try:
            fn()
        except Exception as e:  # keep the other sections' numbers
            self.results["errors"][name] = f"{type(e).__name__}: {e}"
            say(f"{name} failed: {type(e).__name__}: {e}")
            import traceback

            traceback.print_exc()
        say(f"   {name} took {time.monotonic() - t:.1f} s")
        self.save()

    def ids(self, n: int) -> list[int]:
        return self.rng.integers(3, self.vocab_ids, n).tolist()

    # -- 1. weights and runner
    def make_weights(self) -> None:
        d = Path(self.args.model_dir) if self.args.model_dir else Path(
            tempfile.mkdtemp(prefix="radixrt-bench-"))
        self.model_dir = d
        if (d / "config.json").is_file():
            say(f"reusing weights in {d}")
            return
        tok = self.args.tokenizer_dir or os.environ.get("RADIXRT_GPU_TOKENIZER_DIR")
        t = time.monotonic()
        gen_dev = self.device if self.device.type == "cuda" else torch.device("cpu")
        write_random_model(d, self.fields, gen_dev, self.dtype, Path(tok) if tok else None)
        self.results["setup"]["weights_write_s"] = round(time.monotonic() - t, 1)

    def load_runner(self) -> None:
        from radixrt.worker.model_runner import ModelRunner

        a = self.args
        ps = 16
        # Enough pages for the biggest section: the largest decode batch at its context.
        per_req = max(a.prefill_len, a.decode_context + a.decode_steps + 8)
        bs_max = max(max(a.decode_batches), a.prefix_requests, a.prefill_batch)
        tokens = bs_max * (-(-per_req // ps) + 1) * ps
        cuda = self.device.type == "cuda"
        cfg = EngineConfig(
            model_path=str(self.model_dir), device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            attention_backend="flashinfer" if cuda and not a.torch_attention else "torch",
            page_size=ps, max_total_tokens=tokens, max_running_requests=max(bs_max, 8),
            cuda_graph_max_bs=max(a.decode_batches), chunked_prefill_size=a.chunked_prefill,
            context_length=self.fields["max_position_embeddings"])
        self.cfg = cfg
        t = time.monotonic()
        self.runner = ModelRunner(cfg)
        sync(self.device)
        self.results["setup"]["runner_load_s"] = round(time.monotonic() - t, 1)
        self.results["setup"]["kv_pool_tokens"] = self.runner.num_pages * ps
        self.results["setup"]["attention_backend"] = cfg.attention_backend
        self.results["setup"]["fused_ops"] = dict(self.runner.fused_ops)
        self.results["setup"]["gemv"] = dict(self.runner.gemv)
        self.results["setup"]["lt_gemm"] = dict(self.runner.lt_gemm)
        self.results["setup"]["argmax"] = self.runner.argmax_choice
        self.results["setup"]["start_stages_s"] = {k: round(v, 2) for k, v in
                                                   self.runner.start_seconds.items()}
        self.graphs = None if a.no_graphs else self.runner.graphs
        if self.graphs is not None:
            self.results["setup"]["graph_capture_s"] = round(self.graphs.capture_seconds, 1)
        self.results["setup"]["graph_batch_sizes"] = (self.graphs.batch_sizes if self.graphs
                                                      else [])
        use_graphs(self.runner, self.graphs)
        if cuda:  # random, not zero, KV: attention reads what a real cache would hold
            for cache in self.runner.pool.k_cache + self.runner.pool.v_cache:
                cache.normal_()
        self.pages = Pages(self.runner)

    # -- 2. prefill
    def prefill(self) -> None:
        self.results["prefill"] = p = self.prefill_rate()
        say(f"   prefill {p['batch']}x{p['tokens_per_request']}: {p['step_ms']:.1f} ms, "
            f"{p['tokens_per_s']:,} tok/s")

    def prefill_rate(self) -> dict[str, Any]:
        a, r = self.args, self.runner
        B, n = a.prefill_batch, a.prefill_len
        slots = list(range(B))
        self.pages.reset()
        first = self.pages.batch(slots, [0] * B, [self.ids(n) for _ in slots], reserve_tokens=n)
        r.step(first)  # warm-up, also assigns the pages
        mk = lambda _i: self.pages.batch(slots, [0] * B, [self.ids(n) for _ in slots])  # noqa: E731
        step_s = timed_steps(r, mk, steps=a.prefill_repeats, warmup=0)
        return {"batch": B, "tokens_per_request": n, "step_ms": round(step_s * 1e3, 2),
                "tokens_per_s": round(B * n / step_s)}

    # -- 3. decode
    def decode(self) -> None:
        a, r = self.args, self.runner
        C = a.decode_context
        rows = []
        modes = [True] if self.graphs is not None else [False]
        for B in a.decode_batches:
            for graphs in modes + ([False] if self.graphs is not None and B in a.eager_batches
                                   else []):
                use_graphs(r, self.graphs if graphs else None)
                slots = list(range(B))
                self.pages.reset()
                # Reserve pages; the context's KV is taken as cached (random), not prefilled.
                r._apply_updates(self.pages.batch(slots, [0] * B, [[0]] * B,
                                                  reserve_tokens=C + a.decode_steps + 8))
                mk = lambda i, slots=slots, B=B: self.pages.batch(  # noqa: E731
                    slots, [C + i] * B, [self.ids(1) for _ in slots])
                steps = a.decode_steps if B > 1 else 2 * a.decode_steps
                warm = 3
                # The timed steps run from C+warm to C+warm+steps; mean context length:
                ctx = C + warm + steps / 2
                step_s = timed_steps(r, mk, steps=steps, warmup=warm, pipelined=True)
                sync_s = timed_steps(r, mk, steps=steps, warmup=warm)
                row = {"batch": B, "context": C, "cuda_graphs": graphs,
                       "step_ms": round(step_s * 1e3, 3), "step_ms_sync": round(sync_s * 1e3, 3),
                       "tokens_per_s": round(B / step_s, 1), "mean_context": ctx}
                if graphs:
                    # The graph alone (GPU time of a step): the rest of step_ms is host work
                    # (metadata, planning, sampling, the token copy).
                    g = self.graphs.graphs[self.graphs.pick_batch_size(B)]
                    sync(r.device)
                    t = time.perf_counter()
                    for _ in range(steps):
                        g.replay()
                    sync(r.device)
                    row["graph_replay_ms"] = round((time.perf_counter() - t) / steps * 1e3, 3)
                rows.append(row)
                say(f"   decode bs={B:<4} graphs={graphs!s:<5} ctx={C}: {step_s * 1e3:7.2f} ms/step"
                    f" ({sync_s * 1e3:.2f} unpipelined), {B / step_s:9,.0f} tok/s")
        use_graphs(r, self.graphs)
        self.results["decode"] = rows
        self.bandwidth(rows)

    def step_bytes(self) -> tuple[int, int]:
        """(weight bytes a decode step reads, KV bytes per cached token)."""
        f = self.fields
        elem = torch.empty((), dtype=self.dtype).element_size()
        # Every weight is read once per step except the embedding table (B rows gathered).
        weight_bytes = (count_params(f) - f["vocab_size"] * f["hidden_size"]) * elem
        kv_per_token = 2 * f["num_hidden_layers"] * f["num_key_value_heads"] * f["head_dim"] * elem
        return weight_bytes, kv_per_token

    def bandwidth(self, rows: list[dict[str, Any]]) -> None:
        big = max(rows, key=lambda x: (x["batch"], x["cuda_graphs"]))
        one = [x for x in rows if x["batch"] == 1 and x["cuda_graphs"] == big["cuda_graphs"]]
        weight_bytes, kv_per_token = self.step_bytes()
        kv_bytes = big["batch"] * big["mean_context"] * kv_per_token
        achieved = (weight_bytes + kv_bytes) / (big["step_ms"] / 1e3)
        peak = card_bandwidth(self.results["device"])
        self.results["bandwidth"] = {
            "batch": big["batch"], "weight_GB": round(weight_bytes / 1e9, 2),
            "kv_GB": round(kv_bytes / 1e9, 2), "achieved_TBps": round(achieved / 1e12, 3),
            "card_TBps": peak and peak / 1e12,
            "fraction_of_peak": peak and round(achieved / peak, 3),
            "floor_ms": peak and round((weight_bytes + kv_bytes) / peak * 1e3, 2),
            "step_ms": big["step_ms"],
        }
        if one and peak:  # batch 1: the weights are (nearly) all a step must read
            kv1 = one[0]["mean_context"] * kv_per_token
            floor = (weight_bytes + kv1) / peak * 1e3
            self.results["batch1_floor"] = {
                "step_ms": one[0]["step_ms"], "floor_ms": round(floor, 3),
                "ratio": round(one[0]["step_ms"] / floor, 3)}
        say(f"   bandwidth at bs={big['batch']}: {achieved / 1e12:.2f} TB/s"
            + (f" = {achieved / peak:.0%} of {peak / 1e12:.2f} TB/s" if peak else ""))

    # -- 3b. fused ops, one by one
    def fused_ops(self) -> None:
        """Each FlashInfer fused op against its torch version at this model's shapes, for
        a decode batch of 128 tokens (RADIXRT_FUSED_OPS toggles radixrt/models/fused_cuda.py)."""
        from radixrt.models import fused_cuda as fused

        f, dev, dt = self.fields, self.device, self.dtype
        T, H, d = 128, f["hidden_size"], f["head_dim"]
        x = torch.randn(T, H, dtype=dt, device=dev)
        r = torch.randn(T, H, dtype=dt, device=dev)
        w = torch.ones(H, dtype=dt, device=dev)
        gu = torch.randn(T, 2 * f["intermediate_size"], dtype=dt, device=dev)
        q = torch.randn(T, f["num_attention_heads"], d, dtype=dt, device=dev)
        k = torch.randn(T, f["num_key_value_heads"], d, dtype=dt, device=dev)
        pos = torch.randint(0, 4096, (T,), device=dev)
        cos, sin = torch.rand(4096, d // 2, device=dev), torch.rand(4096, d // 2, device=dev)
        cos_sin = torch.cat([cos, sin], -1)
        ops = {"rms_norm": lambda: fused.rms_norm(x, w, 1e-5),
               "add_rms_norm": lambda: fused.add_rms_norm(x.clone(), r.clone(), w, 1e-5),
               "silu_and_mul": lambda: fused.silu_and_mul(gu),
               "rope": lambda: fused.rope(pos, q, k, cos, sin, cos_sin)}
        out: dict[str, Any] = {"tokens": T, "available": fused.flashinfer_for(dev) is not None}
        for name, fn in ops.items():
            row = {}
            for mode in ("1", "0"):
                os.environ[fused.ENV] = mode
                for _ in range(3):
                    fn()
                sync(dev)
                t = time.perf_counter()
                for _ in range(50):
                    fn()
                sync(dev)
                row["fused_us" if mode == "1" else "torch_us"] = round(
                    (time.perf_counter() - t) / 50 * 1e6, 2)
            os.environ[fused.ENV] = "1"
            row["speedup"] = round(row["torch_us"] / max(row["fused_us"], 1e-9), 2)
            out[name] = row
            say(f"   {name}: fused {row['fused_us']} us, torch {row['torch_us']} us")
        self.results["fused_ops"] = out

    # -- 3b'. the step's GEMMs alone, by BLAS library and weight layout (bench/gpu_gemm.py)
    def gemm(self) -> None:
        from bench.gpu_gemm import gemm_rows

        rows = gemm_rows(self.fields, self.device, self.dtype)
        self.results["gemm"] = rows
        for r in rows:
            say(f"   {r['gemm']:<8} bs={r['batch']:<4} {r['variant']:<16} {r['us']:9.1f} us "
                f"{r['weight_TBps']:.2f} TB/s")

    # -- 3c. where a decode step's GPU time goes (eager: the kernels a graph replays)
    def profile(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        a, r = self.args, self.runner
        C = a.decode_context
        out: dict[str, Any] = {}
        # Eager steps, then graph replays (what a served step runs: the graphs' own plans
        # and kernel choices; the profiler sees the kernels a replay launches).
        modes = [("", None)] + ([("graph_", self.graphs)] if self.graphs is not None else [])
        try:
            for (mode, graphs), B in itertools.product(modes, sorted({1, max(a.decode_batches)})):
                use_graphs(r, graphs)
                slots = list(range(B))
                self.pages.reset()
                r._apply_updates(self.pages.batch(slots, [0] * B, [[0]] * B,
                                                  reserve_tokens=C + 16))
                mk = lambda i, slots=slots, B=B: self.pages.batch(  # noqa: E731
                    slots, [C + i] * B, [self.ids(1) for _ in slots])
                timed_steps(r, mk, steps=2, warmup=1)
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    timed_steps(r, mk, steps=3, warmup=0)
                rows = []
                for ev in prof.key_averages():
                    us = getattr(ev, "self_device_time_total", None)
                    if us is None:
                        us = getattr(ev, "self_cuda_time_total", 0)
                    if us > 0:
                        rows.append((us / 3, ev.count // 3, ev.key[:90]))
                rows.sort(reverse=True)
                total = sum(x[0] for x in rows)
                out[f"{mode}batch_{B}"] = {
                    "gpu_ms_per_step": round(total / 1e3, 3),
                    "kernels_per_step": sum(x[1] for x in rows),
                    "top": [{"us": round(us, 1), "calls": n, "kernel": k}
                            for us, n, k in rows[:14]]}
                say(f"   profile bs={B}: {total / 1e3:.2f} ms GPU, "
                    f"{sum(x[1] for x in rows)} kernels per {mode or 'eager '}step")
                for us, n, k in rows[:8]:
                    say(f"      {us:9.1f} us {n:5d}x {k[:70]}")
        finally:
            use_graphs(r, self.graphs)
        self.results["profile"] = out

    # -- 3d. prefill through FlashInfer's fa3 (Hopper) kernels instead of fa2
    def prefill_fa3(self) -> None:
        from radixrt.attention.flashinfer_backend import FlashInferAttentionBackend

        r = self.runner
        old = r.attn
        r.attn = FlashInferAttentionBackend(r.pool, r.model_cfg, r.config, prefill_backend="fa3",
                                            workspace=old.workspace)
        kept = self.results.get("prefill")
        try:
            self.prefill()
            self.results["prefill_fa3"] = self.results["prefill"]
        finally:
            r.attn = old
            if kept is not None:
                self.results["prefill"] = kept

    # -- 3e. the decode step with the fused ops off (torch versions), graphs recaptured
    def recaptured_step_ms(self, batches: list[int]) -> dict[int, float]:
        """Pipelined decode ms/step at each batch size with the graphs captured anew (after a
        switch that changes what they record). The new graphs (every captured size) replace
        the runner's, so later sections replay whatever the switch is left at: each caller
        leaves its switch as the runner had it."""
        from radixrt.worker.graph_runner import create_graph_runner

        a, r = self.args, self.runner
        self.graphs = r.graphs = create_graph_runner(r)
        out = {}
        for B in batches:
            slots = list(range(B))
            self.pages.reset()
            r._apply_updates(self.pages.batch(slots, [0] * B, [[0]] * B,
                                              reserve_tokens=a.decode_context + 80))
            mk = lambda i, slots=slots, B=B: self.pages.batch(  # noqa: E731
                slots, [a.decode_context + i] * B, [self.ids(1) for _ in slots])
            out[B] = timed_steps(r, mk, steps=32, warmup=3, pipelined=True) * 1e3
        return out

    def decode_unfused(self) -> None:
        from radixrt.models import fused_cuda

        a = self.args
        fused_rows = {d["batch"]: d for d in self.results.get("decode", []) if d["cuda_graphs"]}
        os.environ[fused_cuda.ENV] = "0"
        try:
            times = self.recaptured_step_ms(sorted({1, max(a.decode_batches)}))
        finally:
            os.environ[fused_cuda.ENV] = "1"
        rows = []
        for B, ms in times.items():
            row = {"batch": B, "unfused_step_ms": round(ms, 3)}
            if B in fused_rows:
                row["fused_step_ms"] = fused_rows[B]["step_ms"]
                row["speedup"] = round(ms / fused_rows[B]["step_ms"], 3)
            rows.append(row)
            say(f"   unfused decode bs={B}: {ms:.2f} ms/step"
                + (f" (fused {row['fused_step_ms']})" if "fused_step_ms" in row else ""))
        self.results["decode_unfused"] = rows

    def switched_step_ms(self, module: Any, batches: list[int], flag: str = "enabled"
                         ) -> dict[bool, dict[int, float]]:
        """recaptured_step_ms with `module.<flag>` off, then on (as it is left)."""
        times = {}
        for on in (False, True):
            setattr(module, flag, on)
            times[on] = self.recaptured_step_ms(batches)
        return times

    def decode_rope_kv(self) -> None:
        """The fused RoPE + KV write (radixrt/attention/rope_kv_cuda.py) on and off, graphs
        recaptured each way, at batch 1 and the largest batch."""
        from radixrt.attention import rope_kv_cuda

        batches = sorted({1, max(self.args.decode_batches)})
        times = self.switched_step_ms(rope_kv_cuda, batches)
        prefill = {}
        for on in (False, True):  # left on
            rope_kv_cuda.enabled = on
            prefill[on] = self.prefill_rate()["tokens_per_s"]
        self.results["decode_rope_kv"] = {
            "status": self.runner.attn.rope_kv,
            "prefill_tokens_per_s": {"fused": prefill[True], "unfused": prefill[False]},
            "rows": ab_rows(times, "fused_step_ms", "unfused_step_ms")}
        for B in batches:
            say(f"   decode bs={B}: {times[True][B]:.2f} ms/step with RoPE + KV write fused, "
                f"{times[False][B]:.2f} without")
        say(f"   prefill: {prefill[True]:,} tok/s with it, {prefill[False]:,} without")

    def decode_gemv(self) -> None:
        """Batch 1 with the Triton GEMV (radixrt/models/gemv_cuda.py) on and off, graphs
        recaptured each way, in one run."""
        from radixrt.attention import rope_kv_cuda
        from radixrt.models import gemv_cuda

        switched = self.switched_step_ms(gemv_cuda, [1])
        times = {on: t[1] for on, t in switched.items()}
        self.results["decode_gemv"] = g = {
            "batch": 1, "installed": dict(self.runner.gemv),
            "gemv_step_ms": round(times[True], 3), "cublas_step_ms": round(times[False], 3),
            "speedup": round(times[False] / times[True], 3)}
        say(f"   decode bs=1: {times[True]:.2f} ms/step with the GEMV, {times[False]:.2f} "
            "without")
        if (any(getattr(m, "pdl", False) for m in self.runner.model.modules())
                or getattr(self.runner.attn, "rope_kv_pdl", False)):
            # radixrt's PDL launches (the GEMVs install chose with it, the RoPE + K/V write)
            # off, graphs recaptured.
            gemv_cuda.pdl_enabled = rope_kv_cuda.pdl_enabled = False
            try:
                no_pdl = self.recaptured_step_ms([1])[1]
            finally:
                gemv_cuda.pdl_enabled = rope_kv_cuda.pdl_enabled = True
                self.recaptured_step_ms([1])
            g["no_pdl_step_ms"] = round(no_pdl, 3)
            g["rope_kv_pdl"] = bool(getattr(self.runner.attn, "rope_kv_pdl", False))
            say(f"   decode bs=1: {no_pdl:.2f} ms/step with radixrt's PDL launches off")

    def decode_lt_gemm(self) -> None:
        """Decode steps with the tuned cuBLASLt algorithms (radixrt/models/gemm_cuda.py) on and
        off, graphs recaptured each way, at the batch sizes above 1 (left on)."""
        from radixrt.models import gemm_cuda

        batches = [b for b in self.args.decode_batches if b > 1]
        times = self.switched_step_ms(gemm_cuda, batches)
        self.results["decode_lt_gemm"] = {
            "installed": dict(self.runner.lt_gemm),
            "rows": ab_rows(times, "tuned_step_ms", "cublas_step_ms")}
        for B in batches:
            say(f"   decode bs={B}: {times[True][B]:.2f} ms/step with tuned cuBLASLt "
                f"algorithms, {times[False][B]:.2f} with cuBLAS's picks")

    def decode_unsplit(self) -> None:
        """Large decode graphs planned without FlashInfer's split-KV (no merge kernel; see
        attention/flashinfer_backend.py unsplit_batch_size) and with it, graphs recaptured
        each way, at the batch sizes it applies to (left on)."""
        from radixrt.attention import flashinfer_backend as fb

        start = getattr(self.runner.attn, "unsplit_from", None)
        batches = [b for b in self.args.decode_batches if start is not None and b >= start]
        if not batches:
            self.results["decode_unsplit"] = {"unsplit_from": start, "rows": []}
            say(f"   no decode batch >= {start}: nothing to compare")
            return
        times = self.switched_step_ms(fb, batches, flag="unsplit_graphs")
        self.results["decode_unsplit"] = {
            "unsplit_from": start, "rows": ab_rows(times, "unsplit_step_ms", "split_step_ms")}
        for B in batches:
            say(f"   decode bs={B}: {times[True][B]:.2f} ms/step planned without split-KV, "
                f"{times[False][B]:.2f} with it")

    def decode_kernels(self) -> None:
        """The decode step with each FlashInfer decode kernel (fa2 / fa3 tensor cores, CUDA
        cores; attention/flashinfer_backend.py DECODE_KERNELS), graphs recaptured each time, at
        batch 1 and the largest batch, with the bandwidth each reaches. The runner's own
        backend (the default) is put back afterwards."""
        from radixrt.attention.flashinfer_backend import FlashInferAttentionBackend

        a, r = self.args, self.runner
        old = r.attn
        peak = card_bandwidth(self.results["device"])
        weight_bytes, kv_per_token = self.step_bytes()
        # recaptured_step_ms: 3 warm-up + 32 timed steps from decode_context on.
        ctx = a.decode_context + 3 + 16
        batches = sorted({1, max(a.decode_batches)})
        rows = []
        try:
            for kernel in a.decode_kernels:
                row: dict[str, Any] = {"kernel": kernel}
                try:
                    r.attn = FlashInferAttentionBackend(r.pool, r.model_cfg, r.config,
                                                        decode_kernel=kernel,
                                                        workspace=old.workspace)
                    times = self.recaptured_step_ms(batches)
                except Exception as e:  # a kernel that does not build or run here
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                    say(f"   decode kernel {kernel}: {row['error']}")
                    rows.append(row)
                    continue
                for B, ms in times.items():
                    row[f"bs{B}_step_ms"] = round(ms, 3)
                    if peak:
                        read = weight_bytes + B * ctx * kv_per_token
                        row[f"bs{B}_fraction_of_peak"] = round(read / (ms / 1e3) / peak, 3)
                rows.append(row)
                say(f"   decode kernel {kernel}: " + ", ".join(
                    f"bs={B} {ms:.2f} ms/step" for B, ms in times.items()))
        finally:
            r.attn = old
            self.recaptured_step_ms([1])  # graphs over the runner's own backend again
        self.results["decode_kernels"] = {"default": old.decode_kernel, "context": ctx,
                                          "rows": rows}

    # -- 4. shared prefix
    def shared_prefix(self) -> None:
        a = self.args
        prefix = self.ids(a.prefix_len)
        prompts = [prefix + self.ids(a.prefix_suffix) for _ in range(a.prefix_requests)]
        sp = {"temperature": 0, "max_new_tokens": a.prefix_new_tokens, "ignore_eos": True}
        out: dict[str, Any] = {"requests": a.prefix_requests, "prefix_tokens": a.prefix_len,
                               "suffix_tokens": a.prefix_suffix,
                               "new_tokens": a.prefix_new_tokens, "via": a.engine}
        for radix in (True, False):
            key = "radix_on" if radix else "radix_off"
            gen, close = self.engine_generate(radix)
            try:
                gen([prefix + self.ids(a.prefix_suffix)], sp)  # the prefix is already in use
                sync(self.device)
                t = time.perf_counter()
                outs = gen(prompts, sp)
                sync(self.device)
                dt = time.perf_counter() - t
            finally:
                close()
            n_out = sum(len(o) for o, _c in outs)
            cached = sum(c for _o, c in outs)
            out[key] = {"seconds": round(dt, 3), "requests_per_s": round(len(prompts) / dt, 2),
                        "output_tokens_per_s": round(n_out / dt, 1),
                        "cached_prompt_tokens": cached}
            say(f"   {key}: {dt:.2f} s, {len(prompts) / dt:.1f} req/s, cached {cached} tokens")
        out["speedup"] = round(out["radix_off"]["seconds"] / out["radix_on"]["seconds"], 2)
        self.results["shared_prefix"] = out

    def engine_generate(self, radix: bool) -> tuple[
            Callable[[list[list[int]], dict], list[tuple[list[int], int]]], Callable[[], None]]:
        """(generate(prompts, sampling) -> [(output ids, cached tokens)], close)."""
        if self.args.engine == "engine":
            import radixrt

            self.free_runner()  # the engine's worker loads its own copy of the weights
            eng = radixrt.Engine(model_path=str(self.model_dir), disable_radix_cache=not radix)

            def gen(prompts: list[list[int]], sp: dict) -> list[tuple[list[int], int]]:
                outs = eng.generate(input_ids=prompts, sampling_params=sp)
                return [(list(o["output_ids"]), int(o["meta_info"]["cached_tokens"]))
                        for o in outs]

            return gen, eng.shutdown
        from radixrt.testing.local_engine import LocalEngine

        eng = LocalEngine(self.cfg.replace(disable_radix_cache=not radix), runner=self.runner)

        def gen_local(prompts: list[list[int]], sp: dict) -> list[tuple[list[int], int]]:
            return [(o.output_ids, o.cached_tokens) for o in eng.generate(prompts, sp)]

        return gen_local, lambda: None

    # -- 5. overlap scheduling
    def overlap(self) -> None:
        """Overlap on vs off through radixrt.Engine (its own processes: the exposed host time
        is the scheduler + IPC time the worker waits for). Engines alternate on, off, off, on."""
        from bench.bench_overlap import run_round, summarize

        a = self.args
        self.free_runner()
        rng = np.random.default_rng(5)
        prompts = [rng.integers(3, self.vocab_ids, a.overlap_prompt).tolist()
                   for _ in range(a.overlap_batch)]
        options = {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
                   "max_total_tokens": 2 * a.overlap_batch * (a.overlap_prompt + a.overlap_output
                                                              + 32)}
        rows: dict[bool, list[dict]] = {True: [], False: []}
        for on in [(i % 4) in (0, 3) for i in range(2 * a.overlap_rounds)]:
            r = run_round(str(self.model_dir), prompts, a.overlap_output, on, options)
            rows[on].append(r)
            say(f"   overlap {'on ' if on else 'off'}: {r['wall_s']:.2f} s, exposed "
                f"{r['exposed_host_ms_per_step']:.3f} ms/step, worker "
                f"{r['worker_ms_per_step']:.2f} ms/step")
        on_s, off_s = summarize(rows[True]), summarize(rows[False])
        same = all(r["output_ids"] == rows[True][0]["output_ids"]
                   for r in rows[True] + rows[False])
        self.results["overlap"] = {
            "batch": a.overlap_batch, "prompt": a.overlap_prompt, "output": a.overlap_output,
            "on": on_s, "off": off_s,
            "exposed_host_ms_per_step": round(on_s["exposed_host_ms_per_step"], 4),
            "exposed_host_ms_per_step_off": round(off_s["exposed_host_ms_per_step"], 4),
            "speedup": round(off_s["wall_s"] / on_s["wall_s"], 3), "identical_outputs": same}

    # -- 6. transformers
    def free_runner(self) -> None:
        self.runner = self.graphs = None
        self.pages = None  # type: ignore[assignment]
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def transformers(self) -> None:
        from transformers import AutoModelForCausalLM

        self.free_runner()
        a = self.args
        t = time.monotonic()
        kw: dict[str, Any] = {"dtype": self.dtype}
        if self.device.type == "cuda":
            kw["device_map"] = str(self.device)
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, **kw).eval()
        model.to(self.device)
        res: dict[str, Any] = {"load_s": round(time.monotonic() - t, 1)}
        V = self.vocab_ids

        def rand_ids(b: int, n: int) -> torch.Tensor:
            return torch.randint(3, V, (b, n), device=self.device)

        with torch.inference_mode():
            x = rand_ids(a.prefill_batch, a.prefill_len)
            model(x, logits_to_keep=1)
            sync(self.device)
            t = time.perf_counter()
            for _ in range(a.prefill_repeats):
                model(x, logits_to_keep=1)
            sync(self.device)
            dt = (time.perf_counter() - t) / a.prefill_repeats
            res["prefill_tokens_per_s"] = round(a.prefill_batch * a.prefill_len / dt)
            self.results["prefill_transformers"] = {
                "batch": a.prefill_batch, "tokens_per_request": a.prefill_len,
                "tokens_per_s": res["prefill_tokens_per_s"]}
            say(f"   transformers prefill: {res['prefill_tokens_per_s']:,} tok/s")
            res["decode"] = []
            for B in a.hf_decode_batches:
                if self.left() < 20:
                    self.results["skipped"].append(f"transformers decode bs={B}")
                    break
                x = rand_ids(B, a.decode_context)
                n = a.decode_steps
                gkw = {"do_sample": False, "pad_token_id": 0, "eos_token_id": None}

                def gen(k: int, x: torch.Tensor = x, gkw: dict = gkw, model: Any = model
                        ) -> float:
                    sync(self.device)
                    t = time.perf_counter()
                    model.generate(x, max_new_tokens=k, min_new_tokens=k, **gkw)
                    sync(self.device)
                    return time.perf_counter() - t

                gen(2)  # warm-up
                step_s = (gen(n + 1) - gen(1)) / n  # the prefill and first token cancel out
                res["decode"].append({"batch": B, "context": a.decode_context,
                                      "step_ms": round(step_s * 1e3, 2),
                                      "tokens_per_s": round(B / step_s, 1)})
                say(f"   transformers decode bs={B}: {step_s * 1e3:.2f} ms/step")
        self.results["transformers"] = res
        del model
        gc.collect()

    # -- output
    def save(self) -> None:
        self.results["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        self.results["missing_keys"] = missing_keys(self.results)
        if self.args.out_json:
            Path(self.args.out_json).write_text(json.dumps(self.results, indent=2) + "\n")
        if self.args.out_md:
            Path(self.args.out_md).write_text(markdown(self.results))

    def run(self) -> dict[str, Any]:
        a = self.args
        big = self.device.type == "cuda" and a.preset == "llama3-8b"
        self.section("weights", 60 if big else 1, self.make_weights)
        if not hasattr(self, "model_dir"):
            return self.results
        self.section("load", 60 if big else 1, self.load_runner)
        if self.runner is None:
            return self.results
        # The targets' numbers first, then the A/Bs of what changed since the last GPU run,
        # then earlier A/Bs; transformers and overlap free the runner, so they come last.
        self.section("prefill", 15 if big else 1, self.prefill)
        self.section("decode", 40 if big else 1, self.decode)
        if self.device.type == "cuda":
            self.section("decode_lt_gemm", 20 if big else 1, self.decode_lt_gemm)
            if not a.torch_attention:
                self.section("decode_unsplit", 10 if big else 1, self.decode_unsplit)
            if not a.torch_attention:
                self.section("decode_kernels", 30 if big else 1, self.decode_kernels)
                self.section("decode_rope_kv", 20 if big else 1, self.decode_rope_kv)
            self.section("decode_gemv", 15 if big else 1, self.decode_gemv)
            self.section("profile", 15 if big else 1, self.profile)
        self.section("fused_ops", 10 if big else 1, self.fused_ops)
        self.section("shared_prefix", 45 if big else 1, self.shared_prefix)
        if self.device.type == "cuda":
            if not a.torch_attention:
                self.section("prefill_fa3", 30 if big else 1, self.prefill_fa3)
            # Last on the runner: it leaves graphs captured with the fused ops off.
            self.section("decode_unfused", 20 if big else 1, self.decode_unfused)
        if not a.skip_transformers:
            self.section("transformers", 75 if big else 1, self.transformers)
        if not a.skip_overlap:
            self.section("overlap", 120 if big else 1, self.overlap)
        if self.device.type == "cuda":  # a probe for what to try next: last, never in the way
            self.section("gemm", 45 if big else 1, self.gemm)
        if not a.model_dir and not a.keep_weights:
            shutil.rmtree(self.model_dir, ignore_errors=True)
        say(f"done in {time.monotonic() - self.t0:.0f} s")
        return self.results


def markdown(r: dict[str, Any]) -> str:
    m = r["model"]
    lines = [f"# radixrt GPU benchmark — {r['device']}", "",
             f"Random-weight `{r['preset']}` model ({m['params'] / 1e9:.2f} B params, "
             f"{m['num_hidden_layers']} layers, {m['dtype']}); torch {r['torch']}, "
             f"flashinfer {r.get('flashinfer', '-')}. Elapsed {r.get('elapsed_s')} s.", ""]
    if r["check"]:
        lines += ["## GPU check", ""] + [f"- {k}: {v}" for k, v in r["check"].items()] + [""]
    if r["setup"]:
        lines += ["## Setup", ""] + [f"- {k}: {v}" for k, v in r["setup"].items()] + [""]
    hf = r.get("transformers", {})
    if "prefill" in r:
        p = r["prefill"]
        lines += ["## Prefill", "", "| engine | batch x tokens | step ms | tokens/s |",
                  "|---|---|---|---|",
                  f"| radixrt | {p['batch']} x {p['tokens_per_request']} | {p['step_ms']} | "
                  f"{p['tokens_per_s']:,} |"]
        if "prefill_tokens_per_s" in hf:
            lines.append(f"| transformers | {p['batch']} x {p['tokens_per_request']} | | "
                         f"{hf['prefill_tokens_per_s']:,} |")
        lines.append("")
    if "decode" in r:
        lines += ["## Decode", "",
                  "ms/step: step i+1 launched before step i's tokens are read (overlap "
                  "scheduling, the CUDA default); unpipelined: launch, wait, repeat.", "",
                  "| engine | batch | context | CUDA graphs | ms/step | unpipelined ms/step | "
                  "graph replay ms | tokens/s |",
                  "|---|---|---|---|---|---|---|---|"]
        for d in r["decode"]:
            lines.append(f"| radixrt | {d['batch']} | {d['context']} | {d['cuda_graphs']} | "
                         f"{d['step_ms']} | {d.get('step_ms_sync', '-')} | "
                         f"{d.get('graph_replay_ms', '-')} | {d['tokens_per_s']:,} |")
        for d in hf.get("decode", []):
            lines.append(f"| transformers generate | {d['batch']} | {d['context']} | - | "
                         f"{d['step_ms']} | - | - | {d['tokens_per_s']:,} |")
        lines.append("")
    if "batch1_floor" in r:
        f1 = r["batch1_floor"]
        lines += [f"Batch 1: {f1['step_ms']} ms/step against a weight-read floor of "
                  f"{f1['floor_ms']} ms: {f1['ratio']}x.", ""]
    if "decode_unfused" in r:
        lines += ["## Decode with the fused ops off (torch versions, graphs recaptured)", "",
                  "| batch | fused ms/step | unfused ms/step | unfused / fused |", "|---|---|---|---|"]
        for d in r["decode_unfused"]:
            lines.append(f"| {d['batch']} | {d.get('fused_step_ms', '-')} | "
                         f"{d['unfused_step_ms']} | {d.get('speedup', '-')} |")
        lines.append("")
    if "decode_rope_kv" in r:
        rk = r["decode_rope_kv"]
        lines += [f"## Decode with RoPE + KV write fused and not ({rk['status']}; graphs "
                  "recaptured)", "", "| batch | fused ms/step | unfused ms/step | speedup |",
                  "|---|---|---|---|"]
        lines += [f"| {x['batch']} | {x['fused_step_ms']} | {x['unfused_step_ms']} | "
                  f"{x['speedup']} |" for x in rk["rows"]]
        if "prefill_tokens_per_s" in rk:
            pf = rk["prefill_tokens_per_s"]
            lines += ["", f"Prefill: {pf['fused']:,} tok/s fused, {pf['unfused']:,} unfused."]
        lines.append("")
    if "decode_kernels" in r:
        dk = r["decode_kernels"]
        sizes = sorted({int(k[2:].split("_")[0]) for row in dk["rows"] for k in row
                        if k.endswith("_step_ms")})
        lines += [f"## Decode step by FlashInfer decode kernel (graphs recaptured, context "
                  f"~{dk['context']}; the server's default: {dk['default']})", "",
                  "| kernel | " + " | ".join(f"bs {b} ms/step | bs {b} of peak" for b in sizes)
                  + " |", "|---|" + "---|---|" * len(sizes)]
        for row in dk["rows"]:
            cells = " | ".join(f"{row.get(f'bs{b}_step_ms', '-')} | "
                               f"{row.get(f'bs{b}_fraction_of_peak', '-')}" for b in sizes)
            lines.append(f"| {row['kernel']} | " + (row.get("error") or cells) + " |")
        lines.append("")
    if "decode_lt_gemm" in r:
        lt = r["decode_lt_gemm"]
        lines += ["## Decode with tuned cuBLASLt algorithms on and off (graphs recaptured)", "",
                  "| batch | tuned ms/step | cuBLAS picks ms/step | speedup |", "|---|---|---|---|"]
        lines += [f"| {x['batch']} | {x['tuned_step_ms']} | {x['cublas_step_ms']} | "
                  f"{x['speedup']} |" for x in lt["rows"]]
        lines += ["", "Installed: " + ("; ".join(f"{k}: {v}" for k, v in lt["installed"].items())
                                       or "nothing"), ""]
    if r.get("decode_unsplit", {}).get("rows"):
        us = r["decode_unsplit"]
        lines += [f"## Decode graphs of {us['unsplit_from']}+ rows without split-KV and with it "
                  "(graphs recaptured)", "",
                  "| batch | unsplit ms/step | split ms/step | speedup |", "|---|---|---|---|"]
        lines += [f"| {x['batch']} | {x['unsplit_step_ms']} | {x['split_step_ms']} | "
                  f"{x['speedup']} |" for x in us["rows"]]
        lines.append("")
    if "decode_gemv" in r:
        g = r["decode_gemv"]
        lines += ["## Batch-1 decode with the one-token GEMV on and off (graphs recaptured)", "",
                  f"{g['gemv_step_ms']} ms/step with it, {g['cublas_step_ms']} without "
                  f"({g['speedup']}x)"
                  + (f"; {g['no_pdl_step_ms']} with its PDL launches off"
                     if "no_pdl_step_ms" in g else "") + ". Installed: "
                  + "; ".join(f"{k}: {v}" for k, v in g["installed"].items()), ""]
    if "prefill_fa3" in r:
        p3 = r["prefill_fa3"]
        lines += [f"Prefill with FlashInfer's fa3 kernels: {p3['tokens_per_s']:,} tok/s "
                  f"({p3['step_ms']} ms).", ""]
    for key, prof in r.get("profile", {}).items():
        kind = "graph replay" if key.startswith("graph_") else "eager decode step"
        lines += [f"## Profile, {kind}, {key.removeprefix('graph_').replace('_', ' ')}: "
                  f"{prof['gpu_ms_per_step']} ms GPU, {prof['kernels_per_step']} kernels", "",
                  "| us/step | calls | kernel |", "|---|---|---|"]
        lines += [f"| {t['us']} | {t['calls']} | `{t['kernel']}` |" for t in prof["top"]]
        lines.append("")
    if "bandwidth" in r:
        b = r["bandwidth"]
        lines += ["## Decode vs the memory-bandwidth limit", "",
                  f"Batch {b['batch']}: {b['weight_GB']} GB weights + {b['kv_GB']} GB KV read "
                  f"per step -> {b['achieved_TBps']} TB/s achieved"
                  + (f", {b['fraction_of_peak']:.0%} of the card's {b['card_TBps']} TB/s "
                     f"(floor {b['floor_ms']} ms/step)." if b.get("fraction_of_peak") else "."),
                  ""]
    if "shared_prefix" in r:
        s = r["shared_prefix"]
        lines += ["## Shared-prefix workload", "",
                  f"{s['requests']} requests = {s['prefix_tokens']}-token shared prefix + "
                  f"{s['suffix_tokens']} own tokens, {s['new_tokens']} new tokens each "
                  f"(via {s['via']}).", "",
                  "| radix cache | seconds | requests/s | output tokens/s | cached prompt tokens |",
                  "|---|---|---|---|---|"]
        for key in ("radix_on", "radix_off"):
            v = s[key]
            lines.append(f"| {key.removeprefix('radix_')} | {v['seconds']} | "
                         f"{v['requests_per_s']} | {v['output_tokens_per_s']} | "
                         f"{v['cached_prompt_tokens']} |")
        lines += ["", f"Speedup with the radix cache: {s['speedup']}x", ""]
    if "fused_ops" in r:
        fo = r["fused_ops"]
        lines += ["## Fused ops (FlashInfer vs torch)", "",
                  f"{fo['tokens']} tokens; FlashInfer available: {fo['available']}.", "",
                  "| op | fused us | torch us | speedup |", "|---|---|---|---|"]
        for name, v in fo.items():
            if isinstance(v, dict):
                lines.append(f"| {name} | {v['fused_us']} | {v['torch_us']} | {v['speedup']} |")
        lines.append("")
    if r.get("gemm"):
        from bench.gpu_gemm import markdown as gemm_markdown

        lines += ["## The step's GEMMs alone (bench/gpu_gemm.py)", "",
                  "Weight bytes read per second, weights rotating through > 4x the L2.", "",
                  *gemm_markdown(r["gemm"]), ""]
    if "overlap" in r:
        o = r["overlap"]
        lines += ["## Overlap scheduling (radixrt.Engine)", "",
                  f"{o['batch']} requests x {o['prompt']} prompt tokens, {o['output']} new "
                  "tokens each.", "",
                  "| overlap | wall s | output tokens/s | worker ms/step | exposed host ms/step |",
                  "|---|---|---|---|---|"]
        for key in ("on", "off"):
            v = o[key]
            lines.append(f"| {key} | {v['wall_s']:.2f} | {v['output_tokens_per_s']:.1f} | "
                         f"{v['worker_ms_per_step']:.2f} | {v['exposed_host_ms_per_step']:.3f} |")
        lines += ["", f"Speedup with overlap: {o['speedup']}x; identical outputs: "
                  f"{o['identical_outputs']}", ""]
    if r.get("missing_keys"):
        lines += [f"Missing result keys: {', '.join(r['missing_keys'])}", ""]
    if r["skipped"]:
        lines += [f"Skipped (time budget): {', '.join(r['skipped'])}", ""]
    if r["errors"]:
        lines += ["## Errors", ""] + [f"- {k}: {v}" for k, v in r["errors"].items()] + [""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    ap.add_argument("--preset", choices=sorted(PRESETS), default="llama3-8b")
    ap.add_argument("--layers", type=int, default=0, help="override the layer count")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model-dir", help="reuse (or keep) the weights in this directory")
    ap.add_argument("--keep-weights", action="store_true")
    ap.add_argument("--tokenizer-dir", help="tokenizer files to copy next to the weights")
    ap.add_argument("--budget-s", type=float, default=600.0)
    ap.add_argument("--prefill-batch", type=int, default=4)
    ap.add_argument("--prefill-len", type=int, default=2048)
    ap.add_argument("--prefill-repeats", type=int, default=3)
    ap.add_argument("--chunked-prefill", type=int, default=2048)
    ap.add_argument("--decode-batches", type=ints, default=[1, 32, 128])
    ap.add_argument("--eager-batches", type=ints, default=[1, 32],
                    help="decode batch sizes also timed without CUDA graphs")
    ap.add_argument("--decode-context", type=int, default=1024)
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--prefix-requests", type=int, default=64)
    ap.add_argument("--prefix-len", type=int, default=1024)
    ap.add_argument("--prefix-suffix", type=int, default=64)
    ap.add_argument("--prefix-new-tokens", type=int, default=32)
    ap.add_argument("--engine", choices=["local", "engine"], default="local",
                    help="shared-prefix workload through LocalEngine (in process, the loaded "
                         "runner) or radixrt.Engine (its own processes, loads the weights again)")
    ap.add_argument("--hf-decode-batches", type=ints, default=[1, 32])
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--skip-overlap", action="store_true")
    ap.add_argument("--overlap-batch", type=int, default=32)
    ap.add_argument("--overlap-prompt", type=int, default=256)
    ap.add_argument("--overlap-output", type=int, default=64)
    ap.add_argument("--overlap-rounds", type=int, default=1, help="rounds per mode")
    ap.add_argument("--sections", type=lambda v: v.split(","), default=None,
                    help="run only these sections (comma-separated; weights and load always)")
    ap.add_argument("--decode-kernels", type=lambda v: v.split(","),
                    default=["fa2", "xqa", "cuda-cores", "fa3"],
                    help="the decode_kernels section's FlashInfer decode kernels, in order")
    ap.add_argument("--no-graphs", action="store_true")
    ap.add_argument("--torch-attention", action="store_true")
    ap.add_argument("--out-json")
    ap.add_argument("--out-md")
    ap.add_argument("--jit-seconds", type=float, help="recorded from gpu_check.sh")
    ap.add_argument("--tests-summary", help="recorded from gpu_check.sh")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    r = Bench(args).run()
    print(markdown(r))
    return 1 if r["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
