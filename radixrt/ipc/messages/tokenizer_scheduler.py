"""Hop tokenizer ⇄ scheduler: token ids in, per-request step outputs out.

Abort, stats and flush come from the frontend and are relayed unchanged by the tokenizer (as
are their answers), so they belong to the frontend ⇄ tokenizer hop too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from radixrt.ipc.messages.frontend_tokenizer import FrontendTokenizerMsg
from radixrt.sampling_params import SamplingParams


class TokenizerSchedulerMsg:
    """Base of every message on the tokenizer ⇄ scheduler hop."""


@dataclass
class GenerateReq(TokenizerSchedulerMsg):
    """A tokenized, validated request."""

    rid: str
    input_ids: list[int]
    sampling: SamplingParams
    cache_salt: str | None = None
    embed: bool = False  # the prompt's embedding, nothing generated (sampling: 0 tokens)


@dataclass
class PromptLogprobs:
    """A prompt's logprobs: logprobs[j] is that of ids[j + 1] given ids[: j + 1] (the first
    token has none), with the most likely tokens there in top[j] when asked."""

    ids: list[int]
    logprobs: list[float]
    top: list[list[tuple[int, float]]] | None = None


@dataclass
class TokenOut:
    """One request's news of one step: new token ids, and the final fields once it ends."""

    rid: str
    new_ids: list[int]
    finish_reason: str | None = None  # None while running; stop | length | abort
    matched_stop: int | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[float] | None = None  # of new_ids, when the request asked
    top_logprobs: list[list[tuple[int, float]]] | None = None
    error: str | None = None  # the scheduler refused the request
    prompt_logprobs: PromptLogprobs | None = None  # once, with the first token, when asked
    embedding: np.ndarray | None = None  # float32 [hidden], L2-normalized (GenerateReq.embed)


@dataclass
class TokenOutBatch(TokenizerSchedulerMsg):
    """One step's outputs (one message a step)."""

    outs: list[TokenOut]


@dataclass
class AbortReq(FrontendTokenizerMsg, TokenizerSchedulerMsg):
    """Stop a request (client gone, stop string matched); its pages are freed."""

    rid: str


@dataclass
class StatsReq(FrontendTokenizerMsg, TokenizerSchedulerMsg):
    """Asks the scheduler for a SchedulerStats."""


@dataclass
class SchedulerStats(FrontendTokenizerMsg, TokenizerSchedulerMsg):
    """The scheduler's queues, pages and cumulative counters (the answer to a StatsReq)."""

    running: int = 0
    waiting: int = 0
    pages_total: int = 0
    pages_free: int = 0
    pages_evictable: int = 0
    pages_protected: int = 0
    page_size: int = 1
    cache_hit_tokens: int = 0  # cumulative, over prompts admitted
    prompt_tokens: int = 0  # cumulative
    generated_tokens: int = 0  # cumulative
    steps: int = 0
    retractions: int = 0  # cumulative: running requests requeued for lack of pages
    tick_seconds: float = 0.0  # cumulative scheduler CPU time outside forward waits
    forward_seconds: float = 0.0  # cumulative worker time per step (apply, forward, sample)
    ipc_seconds: float = 0.0  # cumulative step round trip minus the worker's own time
    # Cumulative worker idle time between back-to-back steps (the scheduler had work, the
    # worker waited for it) and the steps it was measured over: exposed host time per step.
    exposed_seconds: float = 0.0
    exposed_steps: int = 0

    @property
    def exposed_host_ms_per_step(self) -> float:
        return 1e3 * self.exposed_seconds / max(1, self.exposed_steps)


@dataclass
class FlushCacheReq(FrontendTokenizerMsg, TokenizerSchedulerMsg):
    """Drop the prefix cache; answered by FlushCacheDone. With wait_for_idle, once no request
    runs; without, at once: all of it when idle, else only the pages no request holds."""

    wait_for_idle: bool = True


@dataclass
class FlushCacheDone(FrontendTokenizerMsg, TokenizerSchedulerMsg):
    """The answer to a FlushCacheReq: flushed is False when running requests kept theirs."""

    pages_freed: int = 0
    flushed: bool = True
    running: int = 0


@dataclass
class PingReq(FrontendTokenizerMsg, TokenizerSchedulerMsg):
    """Liveness probe of the pipeline (/health): the tokenizer process answers it and passes
    it on to the scheduler, which answers it too, even while the worker runs a step."""

    seq: int


@dataclass
class Pong(FrontendTokenizerMsg, TokenizerSchedulerMsg):
    """A stage's answer to PingReq `seq`."""

    stage: str  # "tokenizer" | "scheduler"
    seq: int
    step_running_s: float = 0.0  # scheduler: how long the worker has been on its step
