"""The per-step IPC cost between scheduler and worker: codec and socket round trip.

Every step sends a ForwardBatch to the worker and a StepResult back (and a TokenOutBatch to
the tokenizer). This times, in one run:
  codec   encode + decode of each message as radixrt.ipc.sockets sends it, against the
          all-out-of-band codec (every numpy array its own buffer and frame), in process
  socket  a ForwardBatch round trip to an echo process over the real PushQueue/PullQueue
          (encode, send, decode, echo back, decode), and a one-byte frame's round trip

    python -m bench.bench_ipc [--batch 4] [--context 900] [--reps 2000]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import pickle
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from radixrt.ipc.messages import SchedulerWorkerMsg, StepResult, TokenOut, TokenOutBatch
from radixrt.ipc.sockets import Endpoints, PullQueue, PushQueue, decode, encode
from radixrt.testing.batches import batch_from_chunks


def encode_out_of_band(obj: Any) -> list[Any]:
    """The codec before: every array out of band."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return [head, *buffers]


def per_call_us(fn: Callable[[], Any], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def _echo(ep: Endpoints) -> None:
    ctx = zmq.Context.instance()
    inbox = PullQueue(ctx, ep.to_worker(0), bind=True, hop=SchedulerWorkerMsg)
    out = PushQueue(ctx, ep.from_worker, bind=False, hop=SchedulerWorkerMsg)
    raw_in = ctx.socket(zmq.PULL)
    raw_in.bind(ep.to_worker(1))
    raw_out = ctx.socket(zmq.PUSH)
    raw_out.connect(ep.to_worker(2))
    while True:
        msg = inbox.get()
        if msg.step < 0:
            break
        out.put(msg)
        if msg.step == 1:  # then one-byte frames until an empty one
            while frame := raw_in.recv():
                raw_out.send(frame)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_ipc", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--context", type=int, default=900)
    ap.add_argument("--reps", type=int, default=2000)
    a = ap.parse_args(argv)
    b = a.batch
    batch = batch_from_chunks(list(range(b)), [a.context] * b, [[5 + i] for i in range(b)],
                              step=2)
    result = StepResult(2, np.arange(b, dtype=np.int32))
    outs = TokenOutBatch([TokenOut(f"r{i}", [5 + i]) for i in range(b)])
    print(f"codec, us per message (median of 9 alternating runs of {a.reps // 4}):")
    print("| message | out-of-band encode + decode | sent codec encode + decode |")
    print("|---|---:|---:|")
    for name, msg in (("ForwardBatch", batch), ("StepResult", result), ("TokenOutBatch", outs)):
        times: dict[str, list[float]] = {"oob": [], "sent": []}
        for _ in range(9):
            for key, enc in (("oob", encode_out_of_band), ("sent", encode)):
                frames = enc(msg)
                times[key].append(per_call_us(lambda enc=enc, m=msg: enc(m), a.reps // 4)
                                  + per_call_us(lambda f=frames: decode(f), a.reps // 4))
        print(f"| {name} | {statistics.median(times['oob']):.1f} | "
              f"{statistics.median(times['sent']):.1f} |")
    ep = Endpoints.create()
    proc = mp.get_context("spawn").Process(target=_echo, args=(ep,))
    proc.start()
    ctx = zmq.Context.instance()
    out = PushQueue(ctx, ep.to_worker(0), bind=False, hop=SchedulerWorkerMsg)
    inbox = PullQueue(ctx, ep.from_worker, bind=True, hop=SchedulerWorkerMsg)
    trips = []
    for i in range(a.reps // 4 + 50):
        t = time.perf_counter()
        out.put(batch)
        inbox.get()
        if i >= 50:
            trips.append((time.perf_counter() - t) * 1e6)
    out.put(dataclasses.replace(batch, step=1))
    inbox.get()
    raw_out = ctx.socket(zmq.PUSH)
    raw_out.connect(ep.to_worker(1))
    raw_in = ctx.socket(zmq.PULL)
    raw_in.bind(ep.to_worker(2))
    raw = []
    for i in range(a.reps // 4 + 50):
        t = time.perf_counter()
        raw_out.send(b"x")
        raw_in.recv()
        if i >= 50:
            raw.append((time.perf_counter() - t) * 1e6)
    raw_out.send(b"")
    out.put(dataclasses.replace(batch, step=-1))
    proc.join(10)
    print(f"\nsocket round trip, us (median / p90): ForwardBatch of {b} decode rows at "
          f"{a.context} tokens {statistics.median(trips):.0f} / "
          f"{sorted(trips)[int(0.9 * len(trips))]:.0f}; one-byte frame "
          f"{statistics.median(raw):.0f} / {sorted(raw)[int(0.9 * len(raw))]:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
