"""The host side of a step never waits for the GPU: the property overlap scheduling rests on.

Each check first queues ~0.3 s of GPU work (torch.cuda._sleep), then runs one host-side piece
of a step, which must return while that work is still running. A .item() or .tolist() of a
device tensor, or a non-blocking copy from pageable host memory (CUDA waits for the stream
before staging it), would each wait it out. Every piece runs a few times first: allocating
pinned memory may itself synchronize, once.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
flashinfer = pytest.importorskip("flashinfer")

from radixrt.attention.base import build_metadata  # noqa: E402
from radixrt.attention.staging import Staging  # noqa: E402
from radixrt.config import EngineConfig  # noqa: E402
from radixrt.kvcache.pool import KVPool, KVPoolShape  # noqa: E402
from radixrt.sampling_params import SamplingParams  # noqa: E402
from radixrt.testing.batches import batch_from_chunks  # noqa: E402
from radixrt.worker.model_runner import ModelRunner  # noqa: E402

BUSY_S = 0.3
WARM_CALLS = 4  # more than any pinned ring has buffers


@functools.cache
def cycles_per_second() -> float:
    n = 20_000_000
    torch.cuda.synchronize()
    t = time.perf_counter()
    torch.cuda._sleep(n)
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def assert_no_wait(fn: Callable[[], Any], what: str) -> Any:
    """fn() run WARM_CALLS times, then once behind BUSY_S of queued GPU work: it must return
    while that work still runs."""
    for _ in range(WARM_CALLS):
        fn()
    torch.cuda.synchronize()
    torch.cuda._sleep(int(cycles_per_second() * BUSY_S))
    t = time.perf_counter()
    out = fn()
    host_s = time.perf_counter() - t
    busy = not torch.cuda.current_stream().query()
    torch.cuda.synchronize()
    assert busy and host_s < BUSY_S / 3, (
        f"{what} waited for the GPU: {host_s * 1e3:.0f} ms on the host, stream "
        f"{'still busy' if busy else 'idle'} after it")
    return out


def test_staging_upload_does_not_wait() -> None:
    st = Staging("cuda")
    arrays = [np.arange(100, dtype=np.int32), np.arange(7, dtype=np.int64)]
    out = assert_no_wait(lambda: st.upload(arrays), "Staging.upload")
    assert np.array_equal(out[0].cpu().numpy(), arrays[0])


def _backend(num_qo_heads: int, kernel: str = "auto") -> Any:
    from radixrt.attention.flashinfer_backend import FlashInferAttentionBackend

    pool = KVPool(KVPoolShape(1, 64, 16, 2, 64), torch.bfloat16, "cuda")
    cfg = type("Cfg", (), {"num_heads": num_qo_heads})
    return FlashInferAttentionBackend(pool, cfg, None, decode_kernel=kernel)  # type: ignore[arg-type]


def _meta(num_new: list[int]) -> Any:
    B = len(num_new)
    rows = np.arange(B * 4, dtype=np.int32).reshape(B, 4)
    meta, _ = build_metadata(np.array([20 + 3 * i for i in range(B)]), np.array(num_new),
                             rows, 16, "cuda")
    return meta


@pytest.mark.parametrize("heads", [8, 4], ids=["tensor-cores", "cuda-cores"])
def test_flashinfer_graph_decode_plan_does_not_wait(heads: int) -> None:
    backend = _backend(heads)
    backend.init_capture(max_batch_size=8, max_pages_per_req=4)
    meta = _meta([1] * 8)
    assert_no_wait(lambda: backend.prepare_for_replay(meta), "graph decode planning")


def test_flashinfer_eager_plans_do_not_wait() -> None:
    """Prefill, tensor-core decode and CUDA-core decode (whose FlashInfer wrapper uploads its
    own query offsets: from the pinned aranges pin_decode_query_offsets seeds)."""
    backend = _backend(8)  # GQA group 4: tensor-core decode
    decode, prefill = _meta([1, 1, 1]), _meta([5, 1, 9])
    assert_no_wait(lambda: backend.plan(decode), "eager tensor-core decode planning")
    assert_no_wait(lambda: backend.plan(prefill), "prefill planning")
    cuda_cores = _backend(4)  # GQA group 2: CUDA-core decode
    assert not cuda_cores.decode_kwargs["use_tensor_cores"]
    assert_no_wait(lambda: cuda_cores.plan(decode), "eager CUDA-core decode planning")


def _runner(path: Any) -> ModelRunner:
    cfg = EngineConfig(model_path=str(path), device="cuda", dtype="bfloat16",
                       attention_backend="flashinfer", page_size=16, max_total_tokens=8192,
                       max_running_requests=8, cuda_graph_max_bs=8)
    return ModelRunner(cfg)


@pytest.mark.parametrize("sampling", [
    SamplingParams(temperature=0),
    SamplingParams(temperature=0.8, top_p=0.9, top_k=20, seed=3),
], ids=["greedy", "top-p-top-k-seeded"])
def test_runner_launch_does_not_wait(make_tiny_model: Any, sampling: SamplingParams) -> None:
    """ModelRunner.launch of decode steps (graph replay, sampling, the token copy) and of a
    mixed prefill + decode step returns while the GPU is busy; the tokens arrive after."""
    path = make_tiny_model("llama", head_dim=64, num_attention_heads=8, num_key_value_heads=2)
    runner = _runner(path)
    assert runner.graphs is not None
    slots = [0, 1, 2]
    pages = {s: list(range(s * 32, s * 32 + 32)) for s in slots}
    fb = batch_from_chunks(slots, [0, 0, 0], [[5, 6, 7], [8, 9], [10]], pages)
    fb = dataclasses.replace(fb, new_slots=[dataclasses.replace(n, sampling=sampling)
                                            for n in fb.new_slots])
    runner.step(fb)
    pos = [3, 2, 1]

    def decode() -> Any:
        step = runner.launch(batch_from_chunks(slots, list(pos), [[11], [12], [13]]))
        for i in range(len(pos)):
            pos[i] += 1
        return step

    launched = assert_no_wait(decode, "a graph decode step's launch")
    assert runner.graphs.replays >= WARM_CALLS + 1
    tokens = launched.result().next_ids
    assert tokens.shape == (3,) and (tokens >= 0).all()

    fresh = iter(range(3, 8))  # a new slot per call (max_running_requests=8)

    def mixed() -> Any:
        # a new request prefills 20 tokens next to a decode: an eager (prefill) step
        s = next(fresh)
        b = batch_from_chunks([0, s], [pos[0], 0], [[14], list(range(3, 23))],
                              {s: list(range(s * 32, s * 32 + 32))})
        b = dataclasses.replace(b, new_slots=[dataclasses.replace(n, sampling=sampling)
                                              for n in b.new_slots])
        pos[0] += 1
        return runner.launch(b)

    launched = assert_no_wait(mixed, "a mixed prefill + decode step's launch")
    assert (launched.result().next_ids >= 0).all()
