"""Typed queues and dispatch tables over real ZeroMQ ipc:// sockets."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zmq

from radixrt.ipc.dispatch import Dispatcher, UnexpectedMessage
from radixrt.ipc.messages import (
    AbortReq,
    FlushCacheDone,
    FrontendTokenizerMsg,
    GenerateReq,
    SchedulerWorkerMsg,
    StepResult,
    TokenizerSchedulerMsg,
    TokenOut,
    TokenOutBatch,
)
from radixrt.ipc.sockets import Endpoints, PullQueue, PushQueue, WrongHop
from radixrt.sampling_params import SamplingParams


@pytest.fixture()
def endpoints():
    e = Endpoints.create()
    yield e
    shutil.rmtree(e.directory, ignore_errors=True)


def test_round_trip_and_hop_checks(endpoints: Endpoints) -> None:
    ctx = zmq.Context.instance()
    pull = PullQueue(ctx, endpoints.to_scheduler, bind=True, hop=TokenizerSchedulerMsg)
    push = PushQueue(ctx, endpoints.to_scheduler, bind=False, hop=TokenizerSchedulerMsg)
    try:
        outs = TokenOutBatch([TokenOut("a", [5, 6], "stop", 6, prompt_tokens=3),
                              TokenOut("b", [7], logprobs=[-0.5])])
        push.put(outs)
        push.put(AbortReq("a"))  # relayed requests belong to both hops
        assert pull.get(timeout_ms=5000) == outs
        assert pull.get(timeout_ms=5000) == AbortReq("a")
        with pytest.raises(WrongHop, match="StepResult is not a TokenizerSchedulerMsg"):
            push.put(StepResult(1, np.zeros(2, np.int32)))
        with pytest.raises(TimeoutError):
            pull.get(timeout_ms=10)
    finally:
        push.close()
        pull.close()


def test_numpy_arrays_travel_as_buffers(endpoints: Endpoints) -> None:
    ctx = zmq.Context.instance()
    pull = PullQueue(ctx, endpoints.from_worker, bind=True, hop=SchedulerWorkerMsg)
    push = PushQueue(ctx, endpoints.from_worker, bind=False, hop=SchedulerWorkerMsg)
    try:
        ids = np.arange(1000, dtype=np.int32)
        push.put(StepResult(7, ids, logprobs=np.full(1000, -1.5, np.float32)))
        got = pull.get(timeout_ms=5000)
        assert got.step == 7 and np.array_equal(got.next_ids, ids)
        assert got.logprobs.dtype == np.float32 and float(got.logprobs[3]) == -1.5
    finally:
        push.close()
        pull.close()


def test_small_messages_are_one_frame_large_arrays_out_of_band() -> None:
    from radixrt.ipc.sockets import OUT_OF_BAND_BYTES, decode, encode

    small = StepResult(3, np.arange(4, dtype=np.int32), logprobs=np.zeros(4, np.float32))
    frames = encode(small)
    assert len(frames) == 1
    got = decode(frames)
    assert got.step == 3 and got.next_ids.tolist() == [0, 1, 2, 3]
    n = OUT_OF_BAND_BYTES // 4
    big = StepResult(4, np.arange(n, dtype=np.int32), logprobs=np.ones(3, np.float32))
    frames = encode(big)
    assert len(frames) == 3  # the pickle, then each array as its own buffer
    assert memoryview(frames[1]).nbytes == n * 4
    got = decode([bytes(memoryview(f)) for f in frames])
    assert np.array_equal(got.next_ids, big.next_ids) and got.logprobs.tolist() == [1.0] * 3


def test_dispatch_table() -> None:
    seen: list[object] = []
    table = Dispatcher("scheduler", {GenerateReq: seen.append, AbortReq: seen.append})
    req = GenerateReq("r", [1, 2], SamplingParams())
    table(req)
    table(AbortReq("r"))
    assert seen == [req, AbortReq("r")]
    with pytest.raises(UnexpectedMessage, match="scheduler: no handler for FlushCacheDone"):
        table(FlushCacheDone())
    assert isinstance(FlushCacheDone(), FrontendTokenizerMsg)
