"""Typed messages between processes. Small dataclasses; numpy arrays travel as raw buffers.

Flow: frontend <-> tokenizer <-> scheduler <-> worker(s).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from radixrt.sampling_params import SamplingParams

# ---------------------------------------------------------------- frontend <-> tokenizer


@dataclass
class TokenizeReq:
    """A generation request as the frontend sees it (text or token ids)."""

    rid: str
    prompt: str | None = None
    messages: list[dict] | None = None  # chat messages; the tokenizer applies the template
    input_ids: list[int] | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stream: bool = False
    cache_salt: str | None = None
    chat_template_kwargs: dict | None = None


@dataclass
class TextDelta:
    """Incremental output for one request (one per step while it runs, then a final one)."""

    rid: str
    text: str  # new text since the last delta (never a broken UTF-8 char or a stop-string prefix)
    token_ids: list[int]  # new output ids since the last delta
    finished: bool = False
    finish_reason: str | None = None  # stop | length | abort
    matched_stop: str | int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    logprobs: list[float] | None = None  # of token_ids
    top_logprobs: list[list[tuple[int, float]]] | None = None
    error: str | None = None  # set with finished=True when the request was refused
    error_param: str | None = None


# ---------------------------------------------------------------- tokenizer <-> scheduler


@dataclass
class GenerateReq:
    rid: str
    input_ids: list[int]
    sampling: SamplingParams
    cache_salt: str | None = None


@dataclass
class AbortReq:
    rid: str


@dataclass
class FlushCacheReq:
    pass


@dataclass
class StatsReq:
    pass


@dataclass
class SchedulerStats:
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


@dataclass
class TokenOut:
    """One step's new tokens for the requests that produced any (batched: one message a step)."""

    rids: list[str]
    new_ids: list[list[int]]
    finish_reasons: list[str | None]  # None while running; stop | length | abort
    matched_stops: list[int | None]
    prompt_tokens: list[int]
    cached_tokens: list[int]
    completion_tokens: list[int]
    logprobs: list[list[float] | None]
    top_logprobs: list[list[list[tuple[int, float]]] | None]
    errors: list[str | None] = field(default_factory=list)


# ---------------------------------------------------------------- scheduler <-> worker


@dataclass
class NewSlot:
    """Registers a request in a worker slot: its sampling state lives there from now on."""

    slot: int
    sampling: SamplingParams
    prompt_ids: np.ndarray | None = None  # only when repetition_penalty needs it
    eos_ids: tuple[int, ...] = ()  # masked until min_new_tokens is reached
    output_ids: np.ndarray | None = None  # tokens generated before a retraction (penalties)


@dataclass
class ForwardBatch:
    """One model step. Requests are listed in batch order; prefill chunks and decodes mix.

    For request i: tokens input_ids[cu[i]:cu[i+1]] sit at positions start_pos[i] ... and the
    KV of positions < start_pos[i] is already in the pool at the slot's pages.
    """

    step: int
    slots: np.ndarray  # int32 [B]
    start_pos: np.ndarray  # int32 [B]
    num_new: np.ndarray  # int32 [B]
    input_ids: np.ndarray  # int32 [sum num_new]
    sample: np.ndarray  # bool [B]: sample a token (False for a non-final prefill chunk)
    # Page-table updates: slot row [offset: offset+len(pages)] = pages.
    page_slots: np.ndarray  # int32 [U]
    page_offsets: np.ndarray  # int32 [U]
    page_lens: np.ndarray  # int32 [U]
    page_ids: np.ndarray  # int32 [sum page_lens]
    new_slots: list[NewSlot] = field(default_factory=list)
    freed_slots: list[int] = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return len(self.slots)

    @property
    def is_decode_only(self) -> bool:
        return bool(len(self.num_new)) and int(self.num_new.max()) == 1 and not self.new_slots


@dataclass
class StepResult:
    step: int
    next_ids: np.ndarray  # int32 [B]; -1 where not sampled
    logprobs: np.ndarray | None = None  # float32 [B]
    top_ids: np.ndarray | None = None  # int32 [B, K]
    top_logprobs: np.ndarray | None = None  # float32 [B, K]
    forward_seconds: float = 0.0


@dataclass
class WorkerReady:
    rank: int
    num_pages: int
    page_size: int
    device: str
    dtype: str


@dataclass
class Shutdown:
    pass
