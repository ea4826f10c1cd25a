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


class Staging:
    """The per-step uploader of one device (see the module docstring)."""

    def __init__(self, device: torch.device | str, buffers: int = 2) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._bufs: list[torch.Tensor | None] = [None] * buffers
        self._events: list[torch.cuda.Event | None] = [None] * buffers
        self._next = 0
        self.transfers = 0  # host-to-device copies issued

    def _buffer(self, nbytes: int) -> tuple[int, torch.Tensor]:
        i = self._next
        self._next = (i + 1) % len(self._bufs)
        ev = self._events[i]
        if ev is not None:
            ev.synchronize()  # its previous copy must have left the buffer
        buf = self._bufs[i]
        if buf is None or buf.numel() < nbytes:
            size = max(nbytes, 32768, 2 * (buf.numel() if buf is not None else 0))
            buf = torch.empty(size, dtype=torch.uint8, pin_memory=self.cuda)
            self._bufs[i] = buf
        return i, buf

    def upload(self, arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
        if not self.cuda:  # same memory: views, no copy
            return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        arrays = [np.ascontiguousarray(a) for a in arrays]
        offsets, total = pack_layout(arrays)
        i, buf = self._buffer(total)
        pack_into(buf.numpy(), arrays, offsets)
        dev = buf[:total].to(self.device, non_blocking=True)
        self.transfers += 1
        ev = torch.cuda.Event()
        ev.record()
        self._events[i] = ev
        return unpack(dev, arrays, offsets)
