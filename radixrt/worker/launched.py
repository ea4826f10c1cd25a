"""A launched step: sampled tokens still on the device, copied to the host without blocking.

Overlap scheduling on CUDA: the worker launches step N+1 before it reads step N's tokens, so
the host never waits on the device between steps. On CPU the copies are no-ops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from radixrt.ipc.messages import StepResult
from radixrt.worker.sampler import SampleOutput


def _to_host(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is None or t.device.type == "cpu":
        return t
    return t.to("cpu", non_blocking=True)  # into pinned memory; complete at the event


def _outputs_to_host(out: SampleOutput | None) -> SampleOutput | None:
    if out is None:
        return None
    return SampleOutput(_to_host(out.next_ids), _to_host(out.logprobs),  # type: ignore[arg-type]
                        _to_host(out.top_ids), _to_host(out.top_logprobs))


@dataclass
class LaunchedStep:
    """One step whose forward and sampling are queued on the device (done on CPU)."""

    step: int
    batch_size: int
    rows: np.ndarray  # batch rows that sampled
    out: SampleOutput | None  # host copies (in flight on CUDA until `event`)
    event: torch.cuda.Event | None
    started: float  # perf_counter at launch
    launch_seconds: float  # host time of the launch itself
    idle_seconds: float = 0.0  # the device had nothing to run before this step (worker loop)
    prompt_lp: SampleOutput | None = None  # the batch's prompt logprobs (host copies too)
    embeddings: torch.Tensor | None = None  # [E, hidden] float32 (a host copy too)

    @classmethod
    def launch(cls, step: int, batch_size: int, rows: np.ndarray, out: SampleOutput | None,
               started: float, prompt_lp: SampleOutput | None = None,
               embeddings: torch.Tensor | None = None) -> LaunchedStep:
        on_cuda = any(o is not None and o.next_ids.device.type == "cuda"
                      for o in (out, prompt_lp)) or (
            embeddings is not None and embeddings.device.type == "cuda")
        out, prompt_lp = _outputs_to_host(out), _outputs_to_host(prompt_lp)
        embeddings = _to_host(embeddings)
        event = None
        if on_cuda:
            event = torch.cuda.Event()
            event.record()
        return cls(step, batch_size, rows, out, event, started,
                   time.perf_counter() - started, prompt_lp=prompt_lp, embeddings=embeddings)

    def done(self) -> bool:
        return self.event is None or self.event.query()

    def result(self) -> StepResult:
        """Wait for the copies and build the StepResult (forward_seconds: launch to now)."""
        if self.event is not None:
            self.event.synchronize()
        B, rows, out = self.batch_size, self.rows, self.out
        next_ids = np.full(B, -1, dtype=np.int32)
        result = StepResult(step=self.step, next_ids=next_ids)
        if out is not None:
            next_ids[rows] = out.next_ids.numpy()
            if out.logprobs is not None:
                result.logprobs = np.zeros(B, dtype=np.float32)
                result.logprobs[rows] = out.logprobs.numpy()
            if out.top_ids is not None and out.top_logprobs is not None:
                k = out.top_ids.shape[1]
                result.top_ids = np.full((B, k), -1, dtype=np.int32)
                result.top_logprobs = np.zeros((B, k), dtype=np.float32)
                result.top_ids[rows] = out.top_ids.numpy()
                result.top_logprobs[rows] = out.top_logprobs.numpy()
        lp = self.prompt_lp
        if lp is not None and lp.logprobs is not None:
            result.prompt_logprobs = lp.logprobs.numpy()
            if lp.top_ids is not None and lp.top_logprobs is not None:
                result.prompt_top_ids = lp.top_ids.numpy().astype(np.int32)
                result.prompt_top_logprobs = lp.top_logprobs.numpy()
        if self.embeddings is not None:
            result.embeddings = self.embeddings.numpy()
        result.forward_seconds = time.perf_counter() - self.started
        result.idle_seconds = self.idle_seconds
        return result
