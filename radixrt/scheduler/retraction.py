"""Retraction: when the pool runs dry mid-step, a running request gives its pages back."""

from __future__ import annotations

from radixrt.scheduler.request import Chunk, Request


def pick_victim(running: list[Request], batch: list[Chunk]) -> Request | None:
    """The running request to retract: the one with the least progress (fewest outputs, then
    the longest prompt, which the prefix cache makes cheapest to redo), preferring one not
    yet in this step's batch. None when only one request runs: it cannot make room for itself.
    """
    if len(running) <= 1:
        return None
    in_batch = {id(c.req) for c in batch}
    candidates = [r for r in running if id(r) not in in_batch] or running
    return min(candidates, key=lambda r: (len(r.output_ids), -len(r.prompt_ids)))
