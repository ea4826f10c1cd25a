"""One request's position in its grammar, and the packed token bitmask it allows next."""

from __future__ import annotations

import numpy as np
from outlines_core import Guide, Index

# Enough history to undo a few speculative steps (an overlapped scheduler's in-flight token).
MAX_ROLLBACK = 8


def mask_words(vocab_size: int) -> int:
    """int32 words of one bitmask row: bit (t % 32) of word t // 32 allows token t."""
    return (vocab_size + 31) // 32


class GrammarState:
    """Wraps an outlines-core Guide. The scheduler advances it with every token a request
    keeps (output tokens survive a retraction, so the state after them stays right) and asks
    it for the next step's allowed tokens as a packed row."""

    def __init__(self, index: Index) -> None:
        self.guide = Guide(index, max_rollback=MAX_ROLLBACK)
        self.num_advanced = 0

    def advance(self, token: int) -> None:
        self.guide.advance(token, return_tokens=False)
        self.num_advanced += 1

    def rollback(self, n: int) -> None:
        """Undo the last n advances (tokens the request dropped)."""
        if n > 0:
            self.guide.rollback_state(n)
            self.num_advanced -= n

    @property
    def accepts_end(self) -> bool:
        """The output so far is a full match: EOS is allowed here."""
        return self.guide.is_finished()

    def fill_mask(self, row: np.ndarray) -> None:
        """Write the allowed-token bitmask into row (int32, C-contiguous)."""
        assert row.dtype == np.int32 and row.flags.c_contiguous
        row.fill(0)
        self.guide.write_mask_into(row.ctypes.data, row.size, 4)
