"""Configuration: one frozen dataclass tree, built once from the command line and passed down."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Names only: torch is imported where tensors are made, so the tokenizer process and the
# frontend never pay for importing it.
DTYPES = ("float32", "bfloat16", "float16")
QUANTIZATIONS = ("none", "int8", "int4")
KV_CACHE_DTYPES = ("auto", "float32", "bfloat16")  # auto: the model dtype
ATTENTION_BACKENDS = ("auto", "torch", "cpu", "flashinfer")


# Overlap scheduling's default on CPU, where the worker's forward shares the cores with the
# scheduler: on only when the worker leaves a core free (--num-threads below the core count).
# Measured (docs/benchmarks.md, "Overlap scheduling"): with every core in the worker's threads
# overlap was slower (the scheduler and tokenizer preempt its threads); with one core left
# free it was faster.
def overlap_on_cpu(num_threads: int | None) -> bool:
    return num_threads is not None and num_threads < (os.cpu_count() or 1)


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return getattr(torch, name)


def resolve_dtype(name: str, device: str, model_path: str | None = None) -> str:
    """Resolve a --dtype name; `auto` picks the fastest faithful type: bfloat16 on CUDA; on a
    CPU whichever of bf16/fp32 a short probe at the model's shapes found faster (cached per
    CPU and torch version, radixrt/dtype_probe.py)."""
    if name == "auto":
        if device.startswith("cuda"):
            return "bfloat16"
        from radixrt.dtype_probe import cpu_dtype

        return cpu_dtype(model_path)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of auto, {', '.join(DTYPES)}")
    return name


def resolve_quantization(name: str, model_path: str, device: str, tp_size: int = 1) -> str:
    """Resolve --quantization. `auto`: int4 where the model's published weights are int4
    (a directory with the packed blocks of its GGUF, like the default model: the very same
    weights, a quarter of the memory traffic), else none (a safetensors checkpoint is served
    as published). CPU only: on CUDA `auto` is none and int8/int4 are refused. Quantized
    weights are not sharded over tensor-parallel ranks: with --tp-size > 1 `auto` is none
    and int8/int4 are refused."""
    if name not in ("auto", *QUANTIZATIONS):
        raise ValueError(f"unknown quantization {name!r}; choose one of auto, "
                         f"{', '.join(QUANTIZATIONS)}")
    on_cpu = device == "cpu"
    if tp_size > 1:
        if name not in ("auto", "none"):
            raise ValueError(f"--quantization {name} does not run with --tp-size {tp_size} "
                             "(quantized weights are not sharded); use --quantization none")
        return "none"
    if name == "auto":
        from pathlib import Path

        from radixrt.models.config import INT4_CHECKPOINT

        native = importlib.util.find_spec("radixrt._quant_cpu") is not None
        has_int4 = (Path(model_path) / INT4_CHECKPOINT).is_file()
        return "int4" if on_cpu and native and has_int4 else "none"
    if name != "none" and not on_cpu:
        raise ValueError(f"--quantization {name} runs on CPU only (device {device})")
    return name


def cpu_attention_available() -> bool:
    """True when radixrt's CPU attention kernels are built (found, not imported: no torch)."""
    return importlib.util.find_spec("radixrt._attention_cpu") is not None


def resolve_attention_backend(name: str, device: str, dtype: str) -> str:
    """`auto`: FlashInfer on CUDA (it has no float32 kernels: a float32 CUDA run uses torch);
    on a CPU our own kernels when they are built and run the dtype, else torch."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of "
                         f"{', '.join(ATTENTION_BACKENDS)}")
    if name != "auto":
        return name
    if device.startswith("cuda"):
        return "flashinfer" if dtype != "float32" else "torch"
    if dtype in ("float32", "bfloat16") and cpu_attention_available():
        return "cpu"
    return "torch"


# Where a GPU driver shows itself (NVIDIA, ROCm, WSL). Without any of them `auto` is the CPU
# without importing torch, which takes ~3 s of the frontend's start-up before any child starts.
_GPU_DRIVER_PATHS = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd",
                     "/dev/dxg")


def resolve_device(name: str) -> str:
    if name == "auto":
        if not any(os.path.exists(p) for p in _GPU_DRIVER_PATHS):
            return "cpu"
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


@dataclass(frozen=True)
class EngineConfig:
    """Everything the scheduler and workers need. Built by Engine / launch_server."""

    model_path: str
    served_model_name: str = "default"
    device: str = "cpu"
    dtype: str = "float32"  # a resolved name: float32 / bfloat16 / float16
    quantization: str = "none"  # resolved: none / int8 / int4 (group-32 weights, CPU)
    attention_backend: str = "torch"  # torch (the reference) | cpu | flashinfer
    tp_size: int = 1
    # KV cache
    page_size: int = 16
    # auto: bfloat16 for quantized weights on the cpu backend (see kv_dtype), else the dtype
    kv_cache_dtype: str = "auto"
    # auto: head-major pages for the cpu backend (its kernels read a KV head at a time), else
    # token-major (FlashInfer's NHD); "token" / "head" force one (benchmarks compare them).
    kv_layout: str = "auto"
    max_total_tokens: int | None = None  # None: size from mem_fraction
    mem_fraction: float = 0.85
    disable_radix_cache: bool = False
    # Scheduling
    max_running_requests: int = 128
    chunked_prefill_size: int = 1024  # token budget for one step
    max_queued_requests: int = 1024
    schedule_policy: str = "lpm"  # lpm | fcfs
    context_length: int | None = None  # None: from the model config
    # Overlap scheduling: build step N+1 while the worker runs step N. None: the device's
    # default (on for CUDA; on CPU see overlap_on_cpu, chosen by measurement).
    disable_overlap_schedule: bool | None = None
    # Batch-invariant kernels: a request's tokens do not depend on what else runs beside it
    # or on how its prompt was chunked (so a seeded request repeats under any load). Only
    # where radixrt has such kernels (check_deterministic); cost: docs/benchmarks.md.
    deterministic: bool = False
    # CUDA
    disable_cuda_graph: bool = False
    cuda_graph_max_bs: int = 128
    # Runtime
    num_threads: int | None = None  # torch threads in the worker; None = all cores
    seed: int = 0
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.deterministic:
            check_deterministic(self.device, self.quantization, self.attention_backend,
                                self.tp_size)

    def replace(self, **changes: object) -> EngineConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def overlap_schedule(self) -> bool:
        # Tensor parallel: only rank 0 samples, so the other ranks could not resolve the
        # pending tokens overlap sends; tp runs the simple loop.
        if self.tp_size > 1:
            return False
        if self.disable_overlap_schedule is None:
            return self.device.startswith("cuda") or overlap_on_cpu(self.num_threads)
        return not self.disable_overlap_schedule

    @property
    def kv_head_major(self) -> bool:
        if self.kv_layout == "auto":
            return self.attention_backend == "cpu"
        return self.kv_layout == "head"

    @property
    def kv_dtype(self) -> str:
        """The KV cache's resolved type name. `auto` with int4/int8 weights on the cpu
        backend is bfloat16: the KV is the biggest stream a CPU decode step reads (measured at
        batch 4 x 900 tokens: attention 21.9 -> 17.2 ms a step) and holds twice the tokens,
        while its rounding is small next to the weights' own; float32 weights stay exact."""
        if self.kv_cache_dtype != "auto":
            return self.kv_cache_dtype
        if self.quantization in ("int4", "int8") and self.attention_backend == "cpu":
            return "bfloat16"
        return self.dtype


@dataclass(frozen=True)
class HTTPLimits:
    """What one client may cost the HTTP server (docs/reliability.md): time to send its
    headers and body, idle keep-alive time, body size, open connections; and how long a
    draining server waits for requests in flight, and a stage may go without answering
    before /health calls the server unhealthy."""

    max_request_bytes: int = 32 * 1024 * 1024
    header_timeout_s: float = 10.0  # from connect (or the first byte after keep-alive idle)
    body_timeout_s: float = 60.0  # from the request headers to the body's last byte
    keep_alive_timeout_s: float = 5.0
    max_connections: int = 4096  # lowered at start to fit under the open-file limit
    drain_timeout_s: float = 30.0
    health_stall_s: float = 30.0


# Chat output parsers (frontend/tool_parsers.py, frontend/reasoning.py).
TOOL_PARSERS = ("auto", "hermes", "llama3", "json", "none")
REASONING_PARSERS = ("auto", "qwen3", "deepseek_r1", "none")


@dataclass(frozen=True)
class ServerConfig:
    """The HTTP server's configuration around the EngineConfig."""

    engine: EngineConfig
    host: str = "127.0.0.1"
    port: int = 30000
    api_key: str | None = None
    api_keys: dict[str, str] = field(default_factory=dict)  # --api-key-file: key -> tenant
    allowed_origins: tuple[str, ...] = ()  # --allowed-origins: CORS, off when empty
    limits: HTTPLimits = field(default_factory=HTTPLimits)
    trust_request_chat_template: bool = False  # else a request's chat_template is a 400
    tool_call_parser: str = "auto"  # --tool-call-parser: auto|hermes|llama3|json|none
    reasoning_parser: str = "auto"  # --reasoning-parser: auto|qwen3|deepseek_r1|none
    extra: dict[str, object] = field(default_factory=dict)


def check_deterministic(device: str, quantization: str, backend: str, tp_size: object) -> None:
    """--deterministic where radixrt has batch-invariant kernels, else a clear error: the CPU
    linears' one-order kernels (int4 / int8: radixrt._quant_cpu's; float32 / bfloat16:
    radixrt._dense_cpu), the cpu attention backend (its invariant plan; it runs float32 and
    bfloat16) and one rank (an all-reduce adds the ranks' partial sums in an order of its
    own). The other ops (the fused norms and RoPE, SiLU, sampling) work row by row."""
    where = f"device {device}, quantization {quantization}, attention {backend}, tp {tp_size}"
    if device != "cpu" or backend != "cpu" or tp_size != 1:
        raise ValueError(f"--deterministic needs the CPU, the cpu attention backend and one "
                         f"rank; this is {where}")
    linear = "radixrt._quant_cpu" if quantization in ("int4", "int8") else "radixrt._dense_cpu"
    missing = [m for m in (linear, "radixrt._layers_cpu")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"--deterministic needs radixrt's native CPU kernels, and "
                         f"{', '.join(missing)} is not built (pip install -e .)")


def build_engine_config(model_path: str | None = None, **options: object) -> EngineConfig:
    """EngineConfig from a model directory (None: the embedded default model) and options.

    Resolves `auto` device/dtype/attention backend. Unknown options raise TypeError.
    """
    if model_path is None:
        from radixrt.default_model import default_model_dir

        model_path = str(default_model_dir())
    device = resolve_device(str(options.pop("device", "auto")))
    dtype_name = resolve_dtype(str(options.pop("dtype", "auto")), device, str(model_path))
    tp_size = options.get("tp_size", 1)
    if not isinstance(tp_size, int) or isinstance(tp_size, bool) or tp_size < 1:
        raise ValueError(f"tp_size must be a positive integer, not {tp_size!r}")
    if tp_size > 1 and device.startswith("cuda:"):
        raise ValueError(f"--tp-size {tp_size} puts rank r on cuda:r; pass --device cuda and "
                         f"choose the GPUs with CUDA_VISIBLE_DEVICES, not --device {device}")
    quantization = resolve_quantization(str(options.pop("quantization", "auto")),
                                        str(model_path), device, tp_size)
    backend = resolve_attention_backend(str(options.pop("attention_backend", "auto")), device,
                                        dtype_name)
    kv_dtype = str(options.get("kv_cache_dtype", "auto"))
    if kv_dtype not in KV_CACHE_DTYPES:
        raise ValueError(f"unknown KV cache dtype {kv_dtype!r}; choose one of "
                         f"{', '.join(KV_CACHE_DTYPES)}")
    if backend == "flashinfer" and kv_dtype not in ("auto", dtype_name):
        raise ValueError(f"the flashinfer backend needs the KV cache in the model dtype "
                         f"({dtype_name}), not {kv_dtype}")
    layout = options.get("kv_layout", "auto")
    if layout not in ("auto", "token", "head"):
        raise ValueError(f"unknown KV layout {layout!r}; choose auto, token or head")
    if layout == "head" and backend == "flashinfer":
        raise ValueError("the flashinfer backend reads token-major (NHD) KV pages")
    known = {f.name for f in dataclasses.fields(EngineConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown engine option(s): {', '.join(unknown)}")
    return EngineConfig(
        model_path=str(model_path),
        device=device,
        dtype=dtype_name,
        quantization=quantization,
        attention_backend=backend,
        **options,  # type: ignore[arg-type]
    )
