"""Configuration: one frozen dataclass tree, built once from the command line and passed down."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Names only: torch is imported where tensors are made, so the tokenizer process and the
# frontend never pay for importing it.
DTYPES = ("float32", "bfloat16", "float16")


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return getattr(torch, name)


def cpu_has_bf16_matrix_units() -> bool:
    """True on CPUs with AMX bf16 tiles, where bf16 matmuls run several times faster than fp32.

    Without them torch emulates bf16 and it is ~5x slower than fp32 (measured on AVX-512-only
    Xeons), so `auto` must not pick bf16 there.
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


def resolve_dtype(name: str, device: str) -> str:
    """Resolve a --dtype name; `auto` picks the fastest faithful type."""
    if name == "auto":
        if device.startswith("cuda") or cpu_has_bf16_matrix_units():
            return "bfloat16"
        return "float32"
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of auto, {', '.join(DTYPES)}")
    return name


def resolve_device(name: str) -> str:
    if name == "auto":
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
    attention_backend: str = "torch"  # torch | flashinfer
    tp_size: int = 1
    # KV cache
    page_size: int = 16
    max_total_tokens: int | None = None  # None: size from mem_fraction
    mem_fraction: float = 0.85
    disable_radix_cache: bool = False
    # Scheduling
    max_running_requests: int = 128
    chunked_prefill_size: int = 1024  # token budget for one step
    max_queued_requests: int = 1024
    schedule_policy: str = "lpm"  # lpm | fcfs
    context_length: int | None = None  # None: from the model config
    # CUDA
    disable_cuda_graph: bool = False
    cuda_graph_max_bs: int = 128
    # Runtime
    num_threads: int | None = None  # torch threads in the worker; None = all cores
    seed: int = 0
    log_level: str = "info"

    def replace(self, **changes: object) -> EngineConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


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


@dataclass(frozen=True)
class ServerConfig:
    """The HTTP server's configuration around the EngineConfig."""

    engine: EngineConfig
    host: str = "127.0.0.1"
    port: int = 30000
    api_key: str | None = None
    limits: HTTPLimits = field(default_factory=HTTPLimits)
    trust_request_chat_template: bool = False  # else a request's chat_template is a 400
    extra: dict[str, object] = field(default_factory=dict)


def build_engine_config(model_path: str | None = None, **options: object) -> EngineConfig:
    """EngineConfig from a model directory (None: the embedded default model) and options.

    Resolves `auto` device/dtype/attention backend. Unknown options raise TypeError.
    """
    if model_path is None:
        from radixrt.default_model import default_model_dir

        model_path = str(default_model_dir())
    device = resolve_device(str(options.pop("device", "auto")))
    dtype_name = resolve_dtype(str(options.pop("dtype", "auto")), device)
    backend = str(options.pop("attention_backend", "auto"))
    if backend == "auto":
        # FlashInfer has no float32 kernels: a float32 CUDA run uses the torch backend.
        cuda_ok = device.startswith("cuda") and dtype_name != "float32"
        backend = "flashinfer" if cuda_ok else "torch"
    known = {f.name for f in dataclasses.fields(EngineConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown engine option(s): {', '.join(unknown)}")
    return EngineConfig(
        model_path=str(model_path),
        device=device,
        dtype=dtype_name,
        attention_backend=backend,
        **options,  # type: ignore[arg-type]
    )
