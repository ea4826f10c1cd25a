"""One host-to-device transfer per step: a step's small integer arrays (positions, KV slots,
page table, token ids, ...) go to the device in a single copy through a pinned staging buffer.

On CUDA the arrays are packed byte for byte into one of two pinned buffers (alternating, each
reused only once its last copy finished), each at an 8-byte-aligned offset, copied with one
non-blocking transfer and cut into views of their own dtypes on the device: no cast kernels
(each would be a launch and a few microseconds of the step on the stream). On CPU there is
nothing to transfer: the arrays become tensors without a copy and nothing is pinned.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch

# Host arrays -> tensors on the device, same shapes and dtypes.
Uploader = Callable[[Sequence[np.ndarray]], list[torch.Tensor]]

ALIGN = 8  # bytes: every array starts where an int64 / float64 view of it may start


def pack_layout(arrays: Sequence[np.ndarray]) -> tuple[list[int], int]:
    """Byte offset of each array in the packed buffer, and the buffer's length."""
    offsets, end = [], 0
    for a in arrays:
        offsets.append(end)
        end += -(-a.nbytes // ALIGN) * ALIGN
    return offsets, end


def pack_into(host: np.ndarray, arrays: Sequence[np.ndarray], offsets: Sequence[int]) -> None:
    """Write each array's bytes at its offset in `host` (uint8, long enough)."""
    for a, off in zip(arrays, offsets, strict=True):
        host[off : off + a.nbytes].view(a.dtype)[:] = a.reshape(-1)


def unpack(packed: torch.Tensor, arrays: Sequence[np.ndarray], offsets: Sequence[int]
           ) -> list[torch.Tensor]:
    """Views of `packed` (uint8, where pack_into wrote) with each array's dtype and shape."""
    return [packed[off : off + a.nbytes].view(torch_dtype(a.dtype)).view(a.shape)
            for a, off in zip(arrays, offsets, strict=True)]


@functools.cache
def torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype)).dtype


def to_device(data: np.ndarray | Sequence, dtype: torch.dtype | None,
              device: torch.device) -> torch.Tensor:
    """One host array (or list) as a tensor on `device` (dtype None: keep the array's),
    without waiting for the device's queued work: on CUDA through pinned memory and a
    non-blocking copy (a plain .to(device) or torch.tensor(..., device=cuda) waits for the
    step in flight). For the few arrays that do not travel in a step's one upload."""
    t = torch.as_tensor(np.asarray(data), dtype=dtype)
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def upload_each(device: torch.device | str) -> Uploader:
    """The simple uploader: one copy per array (none on CPU)."""
    dev = torch.device(device)

    def upload(arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
        return [torch.from_numpy(np.ascontiguousarray(a)).to(dev) for a in arrays]

    return upload


class PinnedRing:
    """A ring of pinned host buffers; each is handed out again only once the device work
    enqueued before its last `fence()` (the copies that read it) has run."""

    def __init__(self, buffers: int) -> None:
        self._bufs: list[torch.Tensor | None] = [None] * buffers
        self._events: list[torch.cuda.Event | None] = [None] * buffers
        self._next = 0

    def take(self, nbytes: int) -> tuple[int, torch.Tensor]:
        """(index, uint8 pinned buffer of at least nbytes) free to overwrite."""
        i = self._next
        self._next = (i + 1) % len(self._bufs)
        ev = self._events[i]
        if ev is not None:
            ev.synchronize()  # its previous copies must have left the buffer
        buf = self._bufs[i]
        if buf is None or buf.numel() < nbytes:
            size = max(nbytes, 32768, 2 * (buf.numel() if buf is not None else 0))
            buf = torch.empty(size, dtype=torch.uint8, pin_memory=True)
            self._bufs[i] = buf
        return i, buf

    def pack(self, arrays: Sequence[np.ndarray]
             ) -> tuple[int, torch.Tensor, list[np.ndarray], list[int], int]:
        """The arrays packed byte for byte into a free buffer: (its index, the buffer, the
        arrays as packed, their offsets, the packed length)."""
        arrays = [np.ascontiguousarray(a) for a in arrays]
        offsets, total = pack_layout(arrays)
        i, buf = self.take(total)
        pack_into(buf.numpy(), arrays, offsets)
        return i, buf, arrays, offsets, total

    def fence(self, i: int) -> None:
        """Buffer i is in use by the copies enqueued so far on the current stream."""
        ev = torch.cuda.Event()
        ev.record()
        self._events[i] = ev


class Staging:
    """The per-step uploader of one device (see the module docstring)."""

    def __init__(self, device: torch.device | str, buffers: int = 2) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._ring = PinnedRing(buffers)
        self.transfers = 0  # host-to-device copies issued

    def upload(self, arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
        if not self.cuda:  # same memory: views, no copy
            return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        i, buf, arrays, offsets, total = self._ring.pack(arrays)
        dev = buf[:total].to(self.device, non_blocking=True)
        self.transfers += 1
        self._ring.fence(i)
        return unpack(dev, arrays, offsets)


class PinnedHostArrays:
    """Host arrays that a library copies to the device itself (FlashInfer's plan), in pinned
    memory. A non-blocking copy from pageable memory is not: CUDA first waits for the work
    already queued on the stream (the driver stages the bytes), so planning step N+1 would
    wait for step N and undo overlap scheduling. On CPU: plain tensors over the arrays.

    Usage: `views(arrays)`, hand them to the library, then `fence()` once it has enqueued
    its copies; three buffers, so the worker running a step ahead never waits on one.
    """

    def __init__(self, device: torch.device | str, buffers: int = 3) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self._ring = PinnedRing(buffers) if self.cuda else None
        self._current: int | None = None

    def views(self, arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
        if self._ring is None:
            return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        i, buf, arrays, offsets, _ = self._ring.pack(arrays)
        self._current = i
        return unpack(buf, arrays, offsets)

    def fence(self) -> None:
        """The copies of the last views() are enqueued: reuse its buffer only after them."""
        if self._ring is not None and self._current is not None:
            self._ring.fence(self._current)
            self._current = None
