"""Request slots: rows of the worker's page table and sampler state, one per running request."""

from __future__ import annotations

from collections import deque


class SlotTable:
    """Hands out slot ids; freed ones are remembered until the next batch tells the worker."""

    def __init__(self, num_slots: int) -> None:
        self._free = deque(range(num_slots))
        self._freed: list[int] = []

    @property
    def available(self) -> int:
        return len(self._free)

    def take(self) -> int:
        return self._free.popleft()

    def release(self, slot: int) -> None:
        self._free.append(slot)
        self._freed.append(slot)

    def take_freed(self) -> list[int]:
        """Slots freed since the last call (the worker drops their state)."""
        freed, self._freed = self._freed, []
        return freed
