"""Typed messages between processes, grouped by hop. Small dataclasses; numpy arrays travel
as raw buffers (radixrt/ipc/sockets.py).

    frontend / Engine ⇄ tokenizer   frontend_tokenizer.py   base FrontendTokenizerMsg
    tokenizer ⇄ scheduler            tokenizer_scheduler.py  base TokenizerSchedulerMsg
    scheduler ⇄ worker(s)            scheduler_worker.py     base SchedulerWorkerMsg
    any child → the starting process control.py              base ControlMsg

Each hop's queues accept only that hop's base type, and each process routes what it receives
through one dispatch table (radixrt/ipc/dispatch.py). Requests the tokenizer relays unchanged
to the scheduler (abort, stats, flush, ping) and their answers belong to both of the first two hops.
"""

from radixrt.ipc.messages.control import ChildFailed, ChildReady, ControlMsg, WorkerReady
from radixrt.ipc.messages.frontend_tokenizer import (
    DecodeDone,
    DecodeReq,
    EncodeDone,
    EncodeReq,
    FrontendTokenizerMsg,
    TextDelta,
    TextDeltaBatch,
    TokenizeReq,
    TokenLogprob,
)
from radixrt.ipc.messages.scheduler_worker import (
    PENDING_TOKEN,
    ForwardBatch,
    NewSlot,
    SchedulerWorkerMsg,
    StepResult,
)
from radixrt.ipc.messages.tokenizer_scheduler import (
    AbortReq,
    FlushCacheDone,
    FlushCacheReq,
    GenerateReq,
    PingReq,
    Pong,
    PromptLogprobs,
    SchedulerStats,
    StatsReq,
    TokenizerSchedulerMsg,
    TokenOut,
    TokenOutBatch,
)

__all__ = [
    "PENDING_TOKEN", "AbortReq", "ChildFailed", "ChildReady", "ControlMsg", "DecodeDone",
    "DecodeReq",
    "EncodeDone", "EncodeReq", "FlushCacheDone", "FlushCacheReq",
    "ForwardBatch", "FrontendTokenizerMsg", "GenerateReq", "NewSlot", "PingReq", "Pong",
    "PromptLogprobs", "SchedulerStats",
    "SchedulerWorkerMsg", "StatsReq", "StepResult", "TextDelta", "TextDeltaBatch",
    "TokenLogprob", "TokenOut", "TokenOutBatch", "TokenizeReq", "TokenizerSchedulerMsg",
    "WorkerReady",
]
