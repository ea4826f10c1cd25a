"""Scheduler and ModelRunner in one process, no sockets: the test and micro-benchmark driver."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from radixrt.config import EngineConfig
from radixrt.ipc.messages import GenerateReq, PromptLogprobs, TokenOutBatch
from radixrt.model_info import ModelInfo
from radixrt.sampling_params import SamplingParams
from radixrt.scheduler.pipeline import StepPipeline
from radixrt.scheduler.scheduler import Scheduler
from radixrt.worker.launched import LaunchedStep
from radixrt.worker.model_runner import ModelRunner


@dataclass
class LocalOutput:
    """Everything one request produced, accumulated over steps."""

    output_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    cached_tokens: int = 0
    prompt_tokens: int = 0
    logprobs: list[float] = field(default_factory=list)
    prompt_logprobs: PromptLogprobs | None = None
    embedding: np.ndarray | None = None
    error: str | None = None


class LocalEngine:
    """A Scheduler feeding a ModelRunner directly. `runner` may be shared between engines (its
    pool must be at least `num_pages`, which defaults to the runner's). `overlap` (default:
    the config's) schedules step N+1 before step N's result is processed, as the scheduler
    process does."""

    def __init__(self, config: EngineConfig, runner: ModelRunner | None = None,
                 num_pages: int | None = None, overlap: bool | None = None) -> None:
        self.runner = runner or ModelRunner(config)
        self.scheduler = Scheduler(config, ModelInfo.load(config),
                                   num_pages or self.runner.num_pages)
        self.outputs: dict[str, LocalOutput] = {}
        self.overlap = config.overlap_schedule if overlap is None else overlap
        self._launched: deque[LaunchedStep] = deque()
        self.pipeline = StepPipeline(
            self.scheduler, self.overlap,
            lambda batch: self._launched.append(self.runner.launch(batch)),
            lambda: self._launched.popleft().result())

    def add(self, rid: str, input_ids: list[int], sampling: SamplingParams | dict | None = None,
            cache_salt: str | None = None, embed: bool = False) -> None:
        """Queue a request; embed: its embedding (give sampling max_new_tokens 0)."""
        self.outputs[rid] = LocalOutput()
        self.scheduler.add_request(GenerateReq(rid, list(input_ids),
                                               SamplingParams.from_dict(sampling), cache_salt,
                                               embed=embed))

    def step(self) -> TokenOutBatch:
        s = self.scheduler
        if s.grammar.pending and not s.running and not s.waiting and not s.steps_in_flight:
            s.grammar.wait(1.0)  # only grammars compiling: do not spin against their thread
        out = self.pipeline.step()
        self.record(out)
        return out

    def record(self, out: TokenOutBatch) -> None:
        """Add a step's outputs to self.outputs."""
        for t in out.outs:
            o = self.outputs[t.rid]
            o.output_ids.extend(t.new_ids)
            o.cached_tokens, o.prompt_tokens = t.cached_tokens, t.prompt_tokens
            o.finish_reason, o.error = t.finish_reason, t.error
            if t.logprobs:
                o.logprobs.extend(t.logprobs)
            if t.embedding is not None:
                assert o.embedding is None, "embedding sent twice"
                o.embedding = t.embedding
            if t.prompt_logprobs is not None:
                assert o.prompt_logprobs is None, "prompt logprobs sent twice"
                o.prompt_logprobs = t.prompt_logprobs

    def run(self, check: bool = False, on_step: Callable[[int], None] | None = None,
            max_steps: int = 100_000) -> dict[str, LocalOutput]:
        """Step until every request finished; check=True runs the integrity check each step."""
        steps = 0
        while self.scheduler.has_work:
            self.step()
            steps += 1
            if check:
                self.scheduler.check_integrity()
            if on_step:
                on_step(steps)
            if steps >= max_steps:
                raise RuntimeError("requests did not finish")
        return self.outputs

    def generate(self, prompts: list[list[int]], sampling: SamplingParams | dict | None = None,
                 check: bool = False) -> list[LocalOutput]:
        base = len(self.outputs)
        rids = [f"r{base + i}" for i in range(len(prompts))]
        for rid, p in zip(rids, prompts):
            self.add(rid, p, sampling)
        self.run(check=check)
        return [self.outputs[r] for r in rids]
