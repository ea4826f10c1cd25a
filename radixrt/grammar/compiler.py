"""Index compilation off the scheduler's critical path, cached in a bounded LRU.

Compiling a JSON schema's automaton over a 50k-token vocabulary takes tens of milliseconds to
seconds. It runs in a worker thread (outlines-core releases the GIL while it builds), so the
scheduler keeps stepping other requests; the request waits in GRAMMAR_PENDING meanwhile.
The vocabulary is built once, lazily, in the same thread (only servers that see a grammar
request pay for it).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from outlines_core import Index, Vocabulary

from radixrt.grammar.spec import to_regex
from radixrt.grammar.vocabulary import load_vocabulary

GrammarKey = tuple[str, str]  # (kind, spec): ("json", schema) or ("regex", pattern)


def vocabulary_loader(model_path: str, eos_id: int) -> Callable[[], Vocabulary]:
    return lambda: load_vocabulary(model_path, eos_id)


class GrammarCompiler:
    """Compiles (kind, spec) keys into outlines-core Indexes in a thread pool. `submit` returns
    the same Future for a key while it stays among the `cache_size` most recently used.
    A failed compile is cached too: the same bad schema fails the same way."""

    def __init__(self, vocabulary: Callable[[], Vocabulary], cache_size: int = 64,
                 workers: int = 1) -> None:
        self._load_vocab = vocabulary
        self._vocab: Vocabulary | None = None
        self._vocab_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="grammar")
        self._cache: OrderedDict[GrammarKey, Future[Index]] = OrderedDict()
        self.cache_size = cache_size
        self.hits = self.misses = 0
        self.compile_seconds: dict[GrammarKey, float] = {}

    def vocabulary(self) -> Vocabulary:
        with self._vocab_lock:
            if self._vocab is None:
                self._vocab = self._load_vocab()
            return self._vocab

    def submit(self, key: GrammarKey) -> Future[Index]:
        fut = self._cache.get(key)
        if fut is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return fut
        self.misses += 1
        fut = self._pool.submit(self._compile, key)
        self._cache[key] = fut
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return fut

    def _compile(self, key: GrammarKey) -> Index:
        vocab = self.vocabulary()
        t0 = time.perf_counter()
        index = Index(to_regex(*key), vocab)
        self.compile_seconds[key] = time.perf_counter() - t0
        return index

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __len__(self) -> int:
        return len(self._cache)


def describe_failure(exc: BaseException) -> str:
    msg = str(exc) or type(exc).__name__
    if msg.startswith(("invalid ", "unsupported ", "json_schema ")):
        return msg
    return f"the grammar could not be compiled: {msg}"


def future_error(fut: Future[Any]) -> str | None:
    exc = fut.exception()
    return None if exc is None else describe_failure(exc)
