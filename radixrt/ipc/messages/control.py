"""Process control: each child tells the starting process that it serves, or why it cannot."""

from __future__ import annotations

from dataclasses import dataclass


class ControlMsg:
    """Base of the ready queue's messages (child -> ProcessGroup)."""


@dataclass
class ChildReady(ControlMsg):
    """The child named `name` serves its sockets."""

    name: str


@dataclass
class WorkerReady(ChildReady):
    """A worker rank is ready; the scheduler sizes its page allocator from rank 0's pool."""

    rank: int
    num_pages: int
    page_size: int
    device: str
    dtype: str


@dataclass
class ChildFailed(ControlMsg):
    """The child could not start; `error` is the one line the parent prints."""

    name: str
    error: str
