"""One host-to-device transfer per step: a step's small integer arrays (positions, KV slots,
page table, token ids, ...) go to the device in a single copy through a pinned staging buffer.

On CUDA the arrays are packed into one of two pinned int64 buffers (alternating, each reused
only once its last copy finished), copied with one non-blocking transfer and cut into views
cast back to their dtypes on the device. On CPU there is nothing to transfer: the arrays
become tensors without a copy and nothing is pinned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

# Host arrays -> tensors on the device, same shapes and dtypes.
Uploader = Callable[[Sequence[np.ndarray]], list[torch.Tensor]]

_TORCH = {np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64}


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

    def _buffer(self, n: int) -> tuple[int, torch.Tensor]:
        i = self._next
        self._next = (i + 1) % len(self._bufs)
        ev = self._events[i]
        if ev is not None:
            ev.synchronize()  # its previous copy must have left the buffer
        buf = self._bufs[i]
        if buf is None or buf.numel() < n:
            buf = torch.empty(max(n, 4096, 2 * (buf.numel() if buf is not None else 0)),
                              dtype=torch.int64, pin_memory=self.cuda)
            self._bufs[i] = buf
        return i, buf

    def upload(self, arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
        if not self.cuda:  # same memory: views, no copy
            return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
        sizes = [a.size for a in arrays]
        total = int(sum(sizes))
        i, buf = self._buffer(total)
        host = buf.numpy()
        off = 0
        for a, n in zip(arrays, sizes, strict=True):
            host[off : off + n] = a.reshape(-1)
            off += n
        dev = buf[:total].to(self.device, non_blocking=True)
        self.transfers += 1
        ev = torch.cuda.Event()
        ev.record()
        self._events[i] = ev
        out, off = [], 0
        for a, n in zip(arrays, sizes, strict=True):
            t = dev[off : off + n].view(a.shape)
            out.append(t if a.dtype == np.int64 else t.to(_TORCH[a.dtype]))
            off += n
        return out
