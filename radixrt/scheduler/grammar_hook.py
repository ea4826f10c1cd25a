"""Structured output in the scheduler: per-request grammar state through the request's life.

Hooks, called by scheduler.py: `admit_or_hold` when a request arrives (a constrained one waits
in GRAMMAR_PENDING while its Index compiles in the compiler's thread), `poll` every step (ready
ones join the waiting queue; failed or too slow ones finish with an error), `masks` when a
batch is built (the packed allowed-token rows of the constrained rows that sample) and
`on_token` for every token a request keeps. A retraction needs nothing: the request keeps its
output tokens, so its guide stays at the state after them. An abort drops the state with the
request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait

import numpy as np

from radixrt.grammar.compiler import GrammarCompiler, future_error, vocabulary_loader
from radixrt.grammar.spec import grammar_key
from radixrt.grammar.state import GrammarState, mask_words
from radixrt.scheduler.request import Chunk, ReqState, Request

# A grammar still compiling after this long fails its request (alone) with an error.
COMPILE_TIMEOUT_S = 180.0


class GrammarHook:
    def __init__(self, model_path: str, eos_ids: tuple[int, ...], vocab_size: int,
                 cache_size: int = 64, timeout_s: float = COMPILE_TIMEOUT_S,
                 compiler: GrammarCompiler | None = None) -> None:
        self._model_path, self._eos_ids = model_path, eos_ids
        self._compiler = compiler
        self.cache_size, self.timeout_s = cache_size, timeout_s
        self.words = mask_words(vocab_size)
        self.pending: list[Request] = []
        self._since: dict[int, float] = {}

    @property
    def compiler(self) -> GrammarCompiler:
        """Made on first use: servers without constrained requests never load the vocabulary."""
        if self._compiler is None:
            eos = self._eos_ids[0] if self._eos_ids else -1
            self._compiler = GrammarCompiler(vocabulary_loader(self._model_path, eos),
                                             self.cache_size)
        return self._compiler

    def admit_or_hold(self, r: Request) -> bool:
        """False when r must wait for its grammar (it is then held here)."""
        sp = r.sampling
        key = grammar_key(sp.regex, sp.json_schema)
        if key is None or r.grammar is not None:
            return True
        r.grammar_future = self.compiler.submit(key)
        r.state = ReqState.GRAMMAR_PENDING
        self.pending.append(r)
        self._since[id(r)] = time.monotonic()
        return False

    def poll(self, ready: Callable[[Request], None],
             failed: Callable[[Request, str], None]) -> None:
        """Move requests whose compile ended on: ready(r) with r.grammar set, or failed(r, why)."""
        if not self.pending:
            return
        now = time.monotonic()
        still = []
        for r in list(self.pending):  # failed() may call remove()
            fut = r.grammar_future
            if fut.done():
                error = future_error(fut)
                self._drop(r)
                if error is None:
                    r.grammar = GrammarState(fut.result())
                    r.state = ReqState.WAITING
                    ready(r)
                else:
                    failed(r, error)
            elif now - self._since[id(r)] > self.timeout_s:
                self._drop(r)
                failed(r, f"the grammar took longer than {self.timeout_s:.0f} s to compile")
            else:
                still.append(r)
        self.pending = still

    def wait(self, timeout: float) -> None:
        """Block until a pending compile ends (or timeout): for a loop with nothing else to do."""
        futures = [r.grammar_future for r in self.pending]
        if futures:
            wait(futures, timeout, return_when=FIRST_COMPLETED)

    def remove(self, r: Request) -> bool:
        """Forget a pending request (aborted); True if it was pending."""
        if r in self.pending:
            self.pending.remove(r)
            self._drop(r)
            return True
        return False

    def _drop(self, r: Request) -> None:
        self._since.pop(id(r), None)
        r.grammar_future = None

    def masks(self, chunks: list[Chunk]) -> tuple[np.ndarray, np.ndarray] | None:
        """(batch rows, packed bitmasks) for the constrained rows that sample this step."""
        rows = [i for i, (r, n) in enumerate(chunks)
                if r.grammar is not None and r.num_computed + n == r.fill_len]
        if not rows:
            return None
        bits = np.empty((len(rows), self.words), np.int32)
        for j, i in enumerate(rows):
            chunks[i].req.grammar.fill_mask(bits[j])
        return np.asarray(rows, np.int32), bits

    def on_token(self, r: Request, tok: int) -> None:
        """r keeps tok: its guide moves on (an EOS ends the request; the guide stays)."""
        if r.grammar is not None and tok not in self._eos_ids:
            r.grammar.advance(tok)

    def close(self) -> None:
        if self._compiler is not None:
            self._compiler.close()
