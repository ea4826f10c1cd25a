"""Command-line flags of the engine: one per EngineConfig field (shared by launch_server and
any other entry point that builds an EngineConfig from argv)."""

from __future__ import annotations

import argparse
import dataclasses

from radixrt.config import (
    ATTENTION_BACKENDS,
    DTYPES,
    KV_CACHE_DTYPES,
    QUANTIZATIONS,
    REASONING_PARSERS,
    TOOL_PARSERS,
    EngineConfig,
    HTTPLimits,
    build_engine_config,
)

# Flags whose value is not simply passed through to the EngineConfig field of the same name.
_SPECIAL = {"model_path"}


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    d = EngineConfig("")  # the defaults, for the help texts
    g = parser.add_argument_group("model")
    g.add_argument("--model", "--model-path", dest="model_path", default=None, metavar="DIR",
                   help="Hugging Face model directory (config.json, safetensors, tokenizer). "
                        "Default: the embedded SmolLM2-135M-Instruct, built on first use.")
    g.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="model name that clients pass and /v1/models lists (the model "
                        f"directory's name is accepted too; default {d.served_model_name!r})")
    g.add_argument("--context-length", type=int, default=None, metavar="N",
                   help="maximum prompt + output tokens (default: the model's "
                        "max_position_embeddings)")

    g = parser.add_argument_group("hardware")
    g.add_argument("--device", default=None, metavar="DEV",
                   help="cpu, cuda or cuda:N (default auto: cuda when available)")
    g.add_argument("--dtype", default=None, choices=["auto", *DTYPES],
                   help="weights and KV-cache type (default auto: bfloat16 on CUDA; on a CPU "
                        "bfloat16 only where a first-start probe measured it faster, cached in "
                        "the radixrt cache dir)")
    g.add_argument("--quantization", default=None, choices=["auto", *QUANTIZATIONS],
                   help="weights as group-32 int4 (scale + min, GGUF Q4_1 math) or int8 (GGUF "
                        "Q8_0 math), CPU only (default auto: int4 for a model whose published "
                        "weights are int4, like the default model; none otherwise)")
    g.add_argument("--attention-backend", default=None, choices=list(ATTENTION_BACKENDS),
                   help="attention kernels: torch (the reference), cpu (radixrt's own CPU "
                        "kernels), flashinfer (CUDA). Default auto: flashinfer on CUDA, cpu on "
                        "a CPU when its extension is built, else torch")
    g.add_argument("--tp-size", type=int, default=None, metavar="N",
                   help="tensor-parallel ranks: N worker processes, each with 1/N of the "
                        "weights and KV heads (gloo on CPU, NCCL on CUDA with one GPU per rank); "
                        f"quantization none (default {d.tp_size}; see docs/deployment.md)")
    g.add_argument("--num-threads", type=int, default=None, metavar="N",
                   help="torch threads in the worker (default: all cores)")
    g.add_argument("--disable-cuda-graph", action="store_true", default=None,
                   help="run decode steps eagerly instead of replaying CUDA graphs")
    g.add_argument("--cuda-graph-max-bs", type=int, default=None, metavar="N",
                   help=f"largest decode batch captured in a CUDA graph (default "
                        f"{d.cuda_graph_max_bs})")

    g = parser.add_argument_group("KV cache")
    g.add_argument("--page-size", type=int, default=None, metavar="N",
                   help=f"tokens per KV-cache page (default {d.page_size})")
    g.add_argument("--kv-cache-dtype", default=None, choices=list(KV_CACHE_DTYPES),
                   help="KV-cache type (default auto: bfloat16 for int4/int8 weights on the cpu "
                        "attention backend, else the model dtype). bfloat16 with float32 "
                        "weights halves the KV bytes a decode step reads; attention still "
                        "computes in float32")
    g.add_argument("--max-total-tokens", type=int, default=None, metavar="N",
                   help="KV-cache size in tokens (default: from --mem-fraction of free memory)")
    g.add_argument("--mem-fraction", type=float, default=None, metavar="F",
                   help=f"fraction of free memory for weights + KV cache (default "
                        f"{d.mem_fraction})")
    g.add_argument("--disable-radix-cache", action="store_true", default=None,
                   help="no prefix sharing: every request computes its whole prompt")

    g = parser.add_argument_group("scheduling")
    g.add_argument("--max-running-requests", type=int, default=None, metavar="N",
                   help=f"largest running batch (default {d.max_running_requests})")
    g.add_argument("--chunked-prefill-size", type=int, default=None, metavar="N",
                   help=f"prefill token budget of one step; longer prompts are split "
                        f"(default {d.chunked_prefill_size})")
    g.add_argument("--max-queued-requests", type=int, default=None, metavar="N",
                   help=f"requests in flight beyond which new ones get 503 + Retry-After "
                        f"(default {d.max_queued_requests})")
    g.add_argument("--schedule-policy", default=None, choices=["lpm", "fcfs"],
                   help=f"admission order: lpm = longest cached prefix first, fcfs = arrival "
                        f"(default {d.schedule_policy})")
    g.add_argument("--disable-overlap-schedule", dest="disable_overlap_schedule",
                   action="store_const", const=True, default=None,
                   help="schedule each step only after the previous one's tokens are back "
                        "(the default on CPU unless --num-threads leaves a core free: with "
                        "all cores in the worker, overlap measured slower)")
    g.add_argument("--enable-overlap-schedule", dest="disable_overlap_schedule",
                   action="store_const", const=False,
                   help="build step N+1 while the worker runs step N, hiding scheduler and "
                        "IPC time (the default on CUDA)")

    g = parser.add_argument_group("runtime")
    g.add_argument("--seed", type=int, default=None,
                   help=f"seed of requests that give none (default {d.seed})")
    g.add_argument("--deterministic", action="store_const", const=True, default=None,
                   help="batch-invariant kernels: a request's output does not depend on the "
                        "requests beside it, so seeded sampling repeats under any load (CPU, "
                        "int4/int8 weights; slower, see docs/benchmarks.md)")
    g.add_argument("--log-level", default=None,
                   choices=["debug", "info", "warning", "error", "critical"],
                   help=f"log level of every process (default {d.log_level})")


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    """EngineConfig from parsed flags: unset flags keep the EngineConfig defaults."""
    names = {f.name for f in dataclasses.fields(EngineConfig)} - _SPECIAL
    options = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    return build_engine_config(args.model_path, **options)


# --flag -> HTTPLimits field, for the limits a server puts on its clients.
_LIMIT_FLAGS = {
    "max_request_bytes": "max_request_bytes",
    "header_timeout": "header_timeout_s",
    "body_timeout": "body_timeout_s",
    "keep_alive_timeout": "keep_alive_timeout_s",
    "max_connections": "max_connections",
    "drain_timeout": "drain_timeout_s",
    "health_stall_timeout": "health_stall_s",
}


def add_http_limit_args(parser: argparse.ArgumentParser) -> None:
    """The HTTP server's bounds on clients and its shutdown (docs/reliability.md)."""
    d = HTTPLimits()
    g = parser.add_argument_group("HTTP limits")
    g.add_argument("--max-request-bytes", type=int, default=None, metavar="N",
                   help=f"largest request body; larger ones get 413 (default "
                        f"{d.max_request_bytes})")
    g.add_argument("--header-timeout", type=float, default=None, metavar="S",
                   help=f"seconds a connection has to send its request headers (default "
                        f"{d.header_timeout_s:g})")
    g.add_argument("--body-timeout", type=float, default=None, metavar="S",
                   help=f"seconds a request has to send its body (default {d.body_timeout_s:g})")
    g.add_argument("--keep-alive-timeout", type=float, default=None, metavar="S",
                   help=f"seconds an idle keep-alive connection stays open (default "
                        f"{d.keep_alive_timeout_s:g})")
    g.add_argument("--max-connections", type=int, default=None, metavar="N",
                   help=f"open connections; past it the longest idle one is closed (default "
                        f"{d.max_connections}, lowered to fit the open-file limit)")
    g.add_argument("--drain-timeout", type=float, default=None, metavar="S",
                   help=f"on SIGTERM/SIGINT, seconds to let requests in flight finish before "
                        f"aborting them; a second signal exits at once (default "
                        f"{d.drain_timeout_s:g})")
    g.add_argument("--health-stall-timeout", type=float, default=None, metavar="S",
                   help=f"/health answers 503 once a stage (tokenizer, scheduler, worker) has "
                        f"not answered for this long (default {d.health_stall_s:g})")
    g.add_argument("--trust-request-chat-template", action="store_true", default=None,
                   help="accept a chat_template in requests (rendered sandboxed, with time and "
                        "size bounds); without it such a request is a 400")
    g.add_argument("--tool-call-parser", choices=TOOL_PARSERS, default="auto",
                   help="how tool calls are read from chat output under tool_choice auto: "
                        "hermes (<tool_call> tags), llama3 (JSON), json (radixrt's "
                        "prompt-and-constrain fallback) or none; auto picks from the chat "
                        "template (default auto)")
    g.add_argument("--reasoning-parser", choices=REASONING_PARSERS, default="auto",
                   help="split a thinking model's <think> block into reasoning_content: "
                        "qwen3, deepseek_r1 or none; auto: qwen3 when the chat template "
                        "has <think> (default auto)")


def http_limits_from_args(args: argparse.Namespace) -> HTTPLimits:
    options = {field: getattr(args, flag) for flag, field in _LIMIT_FLAGS.items()
               if getattr(args, flag, None) is not None}
    limits = HTTPLimits(**options)  # type: ignore[arg-type]
    for flag, field in _LIMIT_FLAGS.items():
        if getattr(limits, field) <= 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be positive")
    return limits
