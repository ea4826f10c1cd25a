"""RadixCache / NoPrefixCache: unit tests plus model-based property tests.

Every RadixCache test runs on both paths: the numpy reference (use_native=False) and the C++
core (use_native=True). Without a built core the native cases skip with a reason, or fail
with a clear message when RADIXRT_REQUIRE_NATIVE=1 (CI sets it where the build must exist).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radixrt.cache import radix_cache as rc_mod
from radixrt.cache.base import CacheKey
from radixrt.cache.no_cache import NoPrefixCache
from radixrt.cache.radix_cache import (
    NATIVE_AVAILABLE,
    RadixCache,
    TreeNode,
    common_prefix_len_ref,
    walk_ref,
)
from radixrt.scheduler.page_allocator import PageAllocator

REQUIRE_NATIVE = os.environ.get("RADIXRT_REQUIRE_NATIVE") == "1"
NATIVE_MISSING = (
    "radixrt._radix_core is not built (run `python setup.py build_ext --inplace` or "
    "`pip install -e .`); set RADIXRT_REQUIRE_NATIVE=1 to make this a failure"
)
_native_mark = pytest.mark.skipif(
    not NATIVE_AVAILABLE and not REQUIRE_NATIVE, reason=NATIVE_MISSING
)
# With RADIXRT_REQUIRE_NATIVE=1 and no build, RadixCache(use_native=True) raises a
# RuntimeError naming the missing module, so every native case fails loudly.
IMPLS = [
    pytest.param(False, id="ref"),
    pytest.param(True, id="native", marks=_native_mark),
]


def native_core():
    if rc_mod._native_core is None:
        if REQUIRE_NATIVE:
            pytest.fail("RADIXRT_REQUIRE_NATIVE=1 but " + NATIVE_MISSING)
        pytest.skip(NATIVE_MISSING)
    return rc_mod._native_core


def K(tokens, ns=None) -> CacheKey:  # noqa: N802 - short helper for readability
    return CacheKey(np.asarray(tokens, dtype=np.int32), ns)


def P(pages) -> np.ndarray:  # noqa: N802
    return np.asarray(pages, dtype=np.int32)


def node_ends(cache: RadixCache) -> set[tuple[str | None, tuple[int, ...]]]:
    """(namespace, tokens from root to node end) for every node: the tree's split points."""
    out = set()
    for ns in cache.namespaces():
        stack: list[tuple[TreeNode, tuple[int, ...]]] = [(cache._roots[ns], ())]
        while stack:
            node, prefix = stack.pop()
            for child in node.children.values():
                p = prefix + tuple(child.key.tolist())
                out.add((ns, p))
                stack.append((child, p))
    return out


# --------------------------------------------------------------------------- unit tests


def test_native_core_built() -> None:
    core = native_core()
    assert core.common_prefix_len(P([1, 2, 3]), P([1, 2, 4])) == 2


@pytest.mark.parametrize("native", IMPLS)
def test_empty_match(native: bool) -> None:
    c = RadixCache(4, use_native=native)
    r = c.match_prefix(K([1, 2, 3, 4, 5]))
    assert r.num_tokens == 0 and len(r.pages) == 0 and r.pages.dtype == np.int32
    assert r.node.is_root
    c.lock(r.node)  # locking a root is a no-op
    c.unlock(r.node)
    r = c.match_prefix(K([1, 2, 3, 4], ns="other"))
    assert r.num_tokens == 0 and r.node.is_root
    assert c.namespaces() == [None]  # a lookup does not create a namespace
    c.check_integrity()


@pytest.mark.parametrize("native", IMPLS)
def test_insert_match_basic(native: bool) -> None:
    c = RadixCache(2, use_native=native)
    assert c.insert(K([1, 2, 3, 4, 5, 6]), P([10, 11, 12])) == 0
    assert c.evictable_pages == 3 and c.protected_pages == 0 and c.total_pages == 3
    r = c.match_prefix(K([1, 2, 3, 4, 5, 6, 7, 8]))
    assert r.num_tokens == 6 and r.pages.tolist() == [10, 11, 12]
    assert c.node_prefix_len(r.node) == 6
    r = c.match_prefix(K([1, 2, 3, 4, 5]))  # trailing partial page is never matched
    assert r.num_tokens == 4 and r.pages.tolist() == [10, 11]
    assert c.node_count() == 2  # the match split the node at the page boundary
    r = c.match_prefix(K([1, 2, 3, 9]))  # diverges inside the second page
    assert r.num_tokens == 2 and r.pages.tolist() == [10]
    assert c.node_count() == 3
    assert c.match_prefix(K([2, 2])).num_tokens == 0
    with pytest.raises(ValueError):
        r.pages[0] = 99  # tree arrays are handed out read-only
    c.check_integrity()


@pytest.mark.parametrize("native", IMPLS)
def test_insert_returns_cached_prefix(native: bool) -> None:
    c = RadixCache(2, use_native=native)
    assert c.insert(K([1, 2, 3, 4]), P([1, 2])) == 0
    assert c.insert(K([1, 2, 3, 4]), P([7, 8])) == 4  # fully cached: caller frees 7, 8
    assert c.insert(K([1, 2, 3, 4, 5, 6]), P([7, 8, 9])) == 4  # tree takes page 9 only
    assert c.insert(K([1, 2, 5, 5, 6, 6]), P([7, 3, 4])) == 2  # split at 2, takes 3, 4
    assert c.total_pages == 5
    assert c.match_prefix(K([1, 2, 3, 4, 5, 6])).pages.tolist() == [1, 2, 9]
    assert c.match_prefix(K([1, 2, 5, 5, 6, 6])).pages.tolist() == [1, 3, 4]
    assert c.node_count() == 4
    c.check_integrity()


@pytest.mark.parametrize("native", IMPLS)
def test_insert_partial_page_and_short_pages(native: bool) -> None:
    c = RadixCache(4, use_native=native)
    # 10 tokens, 3 pages: the third page is partial and stays with the caller.
    assert c.insert(K(range(10)), P([5, 6, 7])) == 0
    assert c.total_pages == 2
    assert c.match_prefix(K(range(12))).pages.tolist() == [5, 6]
    # Fewer pages than whole pages of key: only key[:len(pages) * page_size] is cached.
    assert c.insert(K(range(100, 120)), P([1])) == 0
    assert c.match_prefix(K(range(100, 120))).num_tokens == 4
    assert c.insert(K([1, 2, 3]), P([9])) == 0  # less than one page: nothing cached
    assert c.insert(K([]), P([])) == 0
    assert c.total_pages == 3
    c.check_integrity()


@pytest.mark.parametrize("native", IMPLS)
def test_page_size_one(native: bool) -> None:
    c = RadixCache(1, use_native=native)
    assert c.insert(K([5, 6, 7]), P([0, 1, 2])) == 0
    assert c.insert(K([5, 6, 8, 9]), P([3, 4, 5, 6])) == 2
    r = c.match_prefix(K([5, 6, 8, 9, 10]))
    assert r.num_tokens == 4 and r.pages.tolist() == [0, 1, 5, 6]
    r = c.match_prefix(K([5]))
    assert r.num_tokens == 1 and r.pages.tolist() == [0]
    assert c.node_count() == 4  # [5] [6] [7] [8 9]
    c.check_integrity()


@pytest.mark.parametrize("native", IMPLS)
def test_namespaces_isolated(native: bool) -> None:
    c = RadixCache(2, use_native=native)
    c.insert(K([1, 2, 3, 4]), P([0, 1]))
    assert c.insert(K([1, 2, 3, 4], ns="a"), P([2, 3])) == 0  # not shared across namespaces
    assert c.match_prefix(K([1, 2, 3, 4], ns="a")).pages.tolist() == [2, 3]
    assert c.match_prefix(K([1, 2, 3, 4])).pages.tolist() == [0, 1]
    assert c.match_prefix(K([1, 2, 3, 4], ns="b")).num_tokens == 0
    assert set(c.namespaces()) == {None, "a"}
    c.check_integrity()
    c.match_prefix(K([1, 2, 3, 4]))  # default namespace is now the most recent
    assert c.evict(1).tolist() == [2, 3]
    assert c.namespaces() == [None]  # emptied namespace root dropped
    c.check_integrity()


@pytest.mark.parametrize("native", IMPLS)
def test_lock_protects_and_counts(native: bool) -> None:
    c = RadixCache(1, use_native=native)
    c.insert(K([1, 2, 3, 4]), P([0, 1, 2, 3]))
    r = c.match_prefix(K([1, 2]))  # splits [1 2 | 3 4]
    c.lock(r.node)
    assert c.protected_pages == 2 and c.evictable_pages == 2
    c.lock(r.node)
    c.check_integrity()
    assert c.evict(10).tolist() == [2, 3]  # only the unlocked leaf goes
    assert c.evict(10).tolist() == []
    assert c.protected_pages == 2 and c.evictable_pages == 0
    c.unlock(r.node)
    assert c.protected_pages == 2
    c.unlock(r.node)
    assert c.protected_pages == 0 and c.evictable_pages == 2
    with pytest.raises(AssertionError):
        c.unlock(r.node)
    c.check_integrity()


@pytest.mark.parametrize("native", IMPLS)
def test_lock_ref_on_ancestors(native: bool) -> None:
    c = RadixCache(1, use_native=native)
    c.insert(K([1, 2, 3]), P([0, 1, 2]))
    c.insert(K([1, 2, 4]), P([9, 9, 3]))
    c.insert(K([1, 5]), P([9, 4]))
    a = c.match_prefix(K([1, 2, 3])).node
    b = c.match_prefix(K([1, 2, 4])).node
    c.lock(a)
    c.lock(b)
    top = a.parent.parent
    assert (a.lock_ref, b.lock_ref, a.parent.lock_ref, top.lock_ref) == (1, 1, 2, 2)
    assert c.protected_pages == 4 and c.evictable_pages == 1
    c.check_integrity()
    c.unlock(a)
    c.unlock(b)
    assert c.protected_pages == 0
    c.check_integrity()


@pytest.mark.parametrize("native", IMPLS)
def test_evict_lru_order(native: bool) -> None:
    c = RadixCache(2, use_native=native)
    c.insert(K([1, 1, 1, 1]), P([0, 1]))  # A
    c.insert(K([2, 2, 2, 2]), P([2, 3]))  # B
    c.insert(K([3, 3, 3, 3]), P([4, 5]))  # C
    c.match_prefix(K([1, 1, 1, 1]))  # A becomes most recent
    assert c.evict(1).tolist() == [2, 3]  # a whole leaf goes, even past the request
    assert c.evict(2).tolist() == [4, 5]
    c.insert(K([4, 4]), P([6]))
    assert c.evict(3).tolist() == [0, 1, 6]
    assert c.total_pages == 0
    c.check_integrity()


@pytest.mark.parametrize("native", IMPLS)
def test_evict_parent_becomes_leaf(native: bool) -> None:
    c = RadixCache(1, use_native=native)
    c.insert(K([1, 2]), P([0, 1]))
    c.insert(K([1, 2, 3, 4]), P([0, 1, 2, 3]))  # child [3 4] under the old leaf [1 2]
    c.insert(K([9]), P([4]))  # newest
    c.check_integrity()
    # The second insert touched [1 2] and [3 4] together; [9] came last.
    assert c.evict(1).tolist() == [2, 3]
    assert c.evict(1).tolist() == [0, 1]  # the parent became an evictable leaf
    assert c.evict(1).tolist() == [4]
    assert c.evict(1).tolist() == []
    c.check_integrity()


@pytest.mark.parametrize("native", IMPLS)
def test_match_touch_moves_lru(native: bool) -> None:
    c = RadixCache(1, use_native=native)
    c.insert(K([1, 2, 3]), P([0, 1, 2]))
    c.insert(K([5, 6]), P([3, 4]))
    c.match_prefix(K([1, 2]))  # splits: [1 2] recent, [3] keeps its old time
    assert c.evict(1).tolist() == [2]  # [3] is the oldest leaf
    assert c.evict(1).tolist() == [3, 4]
    assert c.evict(1).tolist() == [0, 1]
    c.check_integrity()


@pytest.mark.parametrize("native", IMPLS)
def test_reset(native: bool) -> None:
    c = RadixCache(2, use_native=native)
    c.insert(K([1, 2, 3, 4]), P([0, 1]))
    c.insert(K([1, 2, 5, 6], ns="x"), P([2, 3]))
    r = c.match_prefix(K([1, 2]))
    c.lock(r.node)
    with pytest.raises(AssertionError):
        c.reset()
    c.unlock(r.node)
    assert sorted(c.reset().tolist()) == [0, 1, 2, 3]
    assert c.total_pages == 0 and c.namespaces() == [None] and c.node_count() == 0
    assert c.match_prefix(K([1, 2])).num_tokens == 0
    c.check_integrity()


@pytest.mark.parametrize("native", IMPLS)
def test_heap_compaction(native: bool) -> None:
    c = RadixCache(1, use_native=native)
    c.insert(K([1]), P([0]))
    c.insert(K([2]), P([1]))
    for _ in range(1000):  # every touch pushes a heap entry; stale ones must be dropped
        c.match_prefix(K([1]))
    assert len(c._heap) < 200
    c.check_integrity()
    assert c.evict(1).tolist() == [1]


@pytest.mark.parametrize("native", IMPLS)
def test_heap_compaction_during_evict(native: bool) -> None:
    # Newer heap entries of leaves that got locked go stale; an evict that cascades up an
    # older chain then pushes the chain's parents, which compacts the heap mid-evict.
    c = RadixCache(1, use_native=native)
    chain = [1, 2, 3, 4, 5, 6]
    for j in range(1, len(chain) + 1):
        c.insert(K(chain[:j]), P(range(j)))  # six nodes, one page each
    nodes = []
    for i in range(80):
        c.insert(K([100 + i]), P([10 + i]))
        nodes.append(c.match_prefix(K([100 + i])).node)
    for n in nodes:
        c.lock(n)
    got = c.evict(c.evictable_pages)
    c.check_integrity()
    assert sorted(got.tolist()) == list(range(6))
    assert c.evictable_pages == 0 and c.protected_pages == 80
    for n in nodes:
        c.unlock(n)
    c.check_integrity()


def test_no_prefix_cache() -> None:
    c = NoPrefixCache(4)
    r = c.match_prefix(K(range(16)))
    assert r.num_tokens == 0 and len(r.pages) == 0 and r.pages.dtype == np.int32
    c.lock(r.node)
    c.unlock(r.node)
    # Everything counts as "already cached": the caller keeps and frees all pages.
    assert c.insert(K(range(14)), P([1, 2, 3, 4])) == 16
    assert c.match_prefix(K(range(16))).num_tokens == 0
    assert len(c.evict(10)) == 0 and len(c.reset()) == 0
    assert c.evictable_pages == c.protected_pages == c.total_pages == 0
    c.check_integrity()


def test_request_operations_radix() -> None:
    """share_prefix / release / reusable_len: what the scheduler asks of any prefix cache."""
    c, ps = RadixCache(4), 4
    # Request A computed 8 tokens into pages [10, 11] (+ a partial page 12), nothing shared yet.
    root = c.match_prefix(K(range(8))).node
    c.lock(root)
    shared, dup = c.share_prefix(K(range(8)), P([10, 11, 12]), root, 0)
    assert (shared.num_tokens, shared.pages.tolist(), len(dup)) == (8, [10, 11], 0)
    assert c.protected_pages == 2
    # Request B computed the same 8 tokens into its own pages: they are duplicates.
    c.lock(root)
    shared_b, dup_b = c.share_prefix(K(range(8)), P([20, 21]), root, 0)
    assert shared_b.pages.tolist() == [10, 11] and dup_b.tolist() == [20, 21]
    # A finishes with 12 tokens: page 12 joins the tree; B finishes: only its tail comes back.
    assert c.release(K(range(12)), P([10, 11, 12, 13]), shared.node, 8).tolist() == [13]
    assert c.release(K(range(8)), P([10, 11, 22]), shared_b.node, 8).tolist() == [22]
    assert c.protected_pages == 0 and c.evictable_pages == 3
    c.check_integrity()
    assert c.reusable_len(K(range(10)), K([*range(7), 99])) == ps  # whole pages only
    assert c.reusable_len(K(range(10)), CacheKey(np.arange(10, dtype=np.int32), "x")) == 0


def test_request_operations_no_cache() -> None:
    """NoPrefixCache: a running request keeps every page; a finished one frees them all."""
    c = NoPrefixCache(4)
    node = c.match_prefix(K(range(8))).node
    shared, dup = c.share_prefix(K(range(8)), P([1, 2, 3]), node, 0)
    assert shared.num_tokens == 0 and len(shared.pages) == 0 and len(dup) == 0
    assert c.release(K(range(8)), P([1, 2, 3]), node, 0).tolist() == [1, 2, 3]
    assert c.reusable_len(K(range(64)), K(range(64))) == 0


def test_use_native_true_without_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rc_mod, "_native_core", None)
    with pytest.raises(RuntimeError, match="_radix_core is not built"):
        RadixCache(1, use_native=True)
    assert RadixCache(1).use_native is False  # auto falls back to numpy


# --------------------------------------------------------------------------- native vs ref


def test_native_common_prefix_matches_ref() -> None:
    core = native_core()
    rng = np.random.default_rng(0)
    for _ in range(400):
        n = int(rng.integers(0, 3000))
        a = rng.integers(0, 3, n, dtype=np.int32)
        b = a.copy()
        if n and rng.random() < 0.8:
            b[int(rng.integers(0, n))] += 1
        b = b[: int(rng.integers(0, n + 1))] if rng.random() < 0.3 else b
        for ps in (1, 2, 16):
            assert core.common_prefix_len(a, b, ps) == common_prefix_len_ref(a, b, ps)
            assert core.common_prefix_len(b, a, ps) == common_prefix_len_ref(b, a, ps)
    x = np.arange(10, dtype=np.int64)  # other dtypes / strides are converted
    assert core.common_prefix_len(x, x[::1].astype(np.int32), 4) == 8
    with pytest.raises(ValueError):
        core.common_prefix_len(np.zeros((2, 2), np.int32), np.zeros(2, np.int32))


def test_native_walk_matches_ref() -> None:
    core = native_core()
    rng = np.random.default_rng(1)
    for ps in (1, 2, 4):
        c = RadixCache(ps, use_native=False)
        page = 0
        for _ in range(60):
            n = int(rng.integers(1, 40))
            toks = rng.integers(0, 3, n, dtype=np.int32)
            k = n // ps
            c.insert(K(toks), np.arange(page, page + k, dtype=np.int32))
            page += k
        root = c._roots[None]
        for _ in range(300):
            toks = rng.integers(0, 3, int(rng.integers(0, 50)), dtype=np.int32)
            toks = toks[: len(toks) // ps * ps]
            p1, n1, s1 = walk_ref(root, toks, ps)
            p2, n2, s2 = core.walk(root, toks, ps)
            assert (n1, s1) == (n2, s2)
            assert [x.id for x in p1] == [x.id for x in p2]
            ref_pages = np.concatenate([x.pages for x in p1]) if p1 else np.zeros(0, np.int32)
            got = core.gather_pages(p2)
            assert got.dtype == np.int32 and got.tolist() == ref_pages.tolist()


# --------------------------------------------------------------------------- property tests


@dataclass
class Model:
    """Brute force: each cached page-aligned prefix -> its last page, with LRU time, lock
    count, and the set of prefixes where a tree node ends (split points)."""

    ps: int
    page: dict = field(default_factory=dict)  # (ns, prefix) -> page id
    time: dict = field(default_factory=dict)
    locks: dict = field(default_factory=dict)
    ends: set = field(default_factory=set)
    clock: int = 0

    def _prefixes(self, ns, toks, k):
        return [(ns, tuple(toks[: (j + 1) * self.ps])) for j in range(k)]

    def _touch(self, ns, toks, k):
        self.clock += 1
        for p in self._prefixes(ns, toks, k):
            self.time[p] = self.clock

    def match(self, ns, toks):
        k = 0
        while k < len(toks) // self.ps and (ns, tuple(toks[: (k + 1) * self.ps])) in self.page:
            k += 1
        self._touch(ns, toks, k)
        if k:
            self.ends.add((ns, tuple(toks[: k * self.ps])))
        return [self.page[p] for p in self._prefixes(ns, toks, k)], k * self.ps

    def insert(self, ns, toks, pages):
        k = min(len(pages), len(toks) // self.ps)
        r = 0
        while r < k and (ns, tuple(toks[: (r + 1) * self.ps])) in self.page:
            r += 1
        for j, p in enumerate(self._prefixes(ns, toks, k)):
            if j >= r:
                self.page[p] = int(pages[j])
                self.locks[p] = 0
        self._touch(ns, toks, k)
        for e in {r, k} - {0}:
            self.ends.add((ns, tuple(toks[: e * self.ps])))
        return r * self.ps

    def lock(self, ns, toks, n, delta):
        for p in self._prefixes(ns, toks, n // self.ps):
            self.locks[p] += delta

    def evict(self, n):
        freed: list[int] = []
        while len(freed) < n:
            inner = {(ns, q[: -self.ps]) for ns, q in self.page}  # prefixes with a child
            cands = [
                (self.time[e], e[0], e[1])
                for e in self.ends
                if not self.locks[e] and e not in inner
            ]
            if not cands:
                break
            cands.sort(key=lambda c: c[0])
            assert len(cands) == 1 or cands[0][0] != cands[1][0], "LRU tie"
            _, ns, p = cands[0]
            parent = max(
                (len(q) for m, q in self.ends if m == ns and len(q) < len(p) and p[: len(q)] == q),
                default=0,
            )
            for j in range(parent // self.ps + 1, len(p) // self.ps + 1):
                key = (ns, p[: j * self.ps])
                freed.append(self.page.pop(key))
                del self.time[key], self.locks[key]
            self.ends.discard((ns, p))
        return freed

    def counts(self):
        locked = sum(1 for v in self.locks.values() if v)
        return len(self.page) - locked, locked


TOTAL_PAGES = 24


@st.composite
def op_lists(draw):
    """Op sequences whose keys are cuts of a few shared stems plus short random tails, over
    a 3-token alphabet: that forces shared prefixes, divergence inside nodes (splits, also of
    locked nodes), and enough pages to run the allocator dry (eviction)."""
    stems = draw(
        st.lists(st.lists(st.integers(0, 2), min_size=4, max_size=16), min_size=1, max_size=3)
    )
    keys = st.builds(
        lambda i, cut, tail: stems[i % len(stems)][:cut] + tail,
        st.integers(0, 2),
        st.integers(0, 16),
        st.lists(st.integers(0, 2), max_size=6),
    )
    namespaces = st.sampled_from([None, None, None, "s"])
    op = st.one_of(
        st.tuples(st.just("insert"), namespaces, keys),
        st.tuples(st.just("start"), namespaces, keys),
        st.tuples(st.just("start"), namespaces, keys),
        st.tuples(st.just("finish"), st.integers(0, 7), st.booleans()),
        st.tuples(st.just("match"), namespaces, keys),
        st.tuples(st.just("evict"), st.integers(0, 12)),
    )
    return draw(st.lists(op, min_size=8, max_size=40))


ops = op_lists()


@dataclass
class Req:
    ns: str | None
    toks: list[int]
    node: object
    matched: int
    pages: np.ndarray  # matched (tree-owned) pages followed by our own new ones


class Harness:
    """Plays the scheduler: allocator + cache + requests in flight, checked against Model."""

    def __init__(self, ps: int, native: bool) -> None:
        self.ps = ps
        self.cache = RadixCache(ps, use_native=native)
        self.cache.heap_slack = 0  # rebuild the LRU heap as often as possible
        self.alloc = PageAllocator(TOTAL_PAGES)
        self.model = Model(ps)
        self.reqs: list[Req] = []

    def n_pages(self, toks) -> int:
        return -(-len(toks) // self.ps)  # the trailing partial page needs a page too

    def evict(self, n: int) -> None:
        got = self.cache.evict(n).tolist()
        assert got == self.model.evict(n)
        # Short only when nothing evictable is left (unlocked subtrees evict fully).
        assert len(got) >= n or self.cache.evictable_pages == 0
        self.alloc.free(np.asarray(got, dtype=np.int32))

    def alloc_pages(self, n: int) -> np.ndarray | None:
        if n > self.alloc.num_free:
            self.evict(n - self.alloc.num_free)
        if n > self.alloc.num_free:
            return None
        return self.alloc.alloc(n)

    def match(self, ns, toks):
        r = self.cache.match_prefix(K(toks, ns))
        pages, n = self.model.match(ns, toks)
        assert r.num_tokens == n and r.pages.tolist() == pages
        assert r.pages.dtype == np.int32
        assert self.cache.node_prefix_len(r.node) == n
        return r

    def insert_fresh(self, ns, toks) -> None:
        # Insert with brand-new pages (no match first): the overlap comes back as duplicates.
        pages = self.alloc_pages(self.n_pages(toks))
        if pages is None:
            return
        got = self.cache.insert(K(toks, ns), pages)
        assert got == self.model.insert(ns, toks, pages)
        k = min(len(pages), len(toks) // self.ps)
        self.alloc.free(pages[: got // self.ps])  # duplicates of cached pages
        self.alloc.free(pages[k:])  # trailing partial page

    def start(self, ns, toks) -> None:
        r = self.match(ns, toks)
        self.cache.lock(r.node)
        self.model.lock(ns, toks, r.num_tokens, +1)
        self.check()
        new = self.alloc_pages(self.n_pages(toks) - len(r.pages))
        if new is None:
            self.cache.unlock(r.node)
            self.model.lock(ns, toks, r.num_tokens, -1)
            return
        self.reqs.append(Req(ns, toks, r.node, r.num_tokens, np.concatenate([r.pages, new])))

    def finish(self, i: int, cache_it: bool) -> None:
        if not self.reqs:
            return
        req = self.reqs.pop(i % len(self.reqs))
        own = req.pages[req.matched // self.ps :]
        if cache_it:
            got = self.cache.insert(K(req.toks, req.ns), req.pages)
            assert got == self.model.insert(req.ns, req.toks, req.pages)
            assert got >= req.matched  # the locked prefix cannot have gone away
            k = min(len(req.pages), len(req.toks) // self.ps)
            self.alloc.free(req.pages[req.matched // self.ps : got // self.ps])
            self.alloc.free(req.pages[k:])
        else:  # aborted: nothing cached, all our own pages go back
            self.alloc.free(own)
        self.cache.unlock(req.node)
        self.model.lock(req.ns, req.toks, req.matched, -1)

    def check(self) -> None:
        c = self.cache
        c.check_integrity()
        assert (c.evictable_pages, c.protected_pages) == self.model.counts()
        assert node_ends(c) == self.model.ends
        held = [p for r in self.reqs for p in r.pages[r.matched // self.ps :].tolist()]
        assert self.alloc.num_free + c.total_pages + len(held) == TOTAL_PAGES
        tree = {
            int(p) for ns in c.namespaces() for n in c._iter_nodes(c._roots[ns]) for p in n.pages
        }
        assert tree == set(self.model.page.values())
        everything = self.alloc.free_set() | tree | set(held)
        assert everything == set(range(TOTAL_PAGES)), "a page leaked or is owned twice"

    def run(self, op) -> None:
        kind = op[0]
        if kind == "insert":
            self.insert_fresh(op[1], op[2])
        elif kind == "start":
            self.start(op[1], op[2])
        elif kind == "finish":
            self.finish(op[1], op[2])
        elif kind == "match":
            self.match(op[1], op[2])
        elif kind == "evict":
            self.evict(op[1])
        self.check()

    def drain(self) -> None:
        while self.reqs:
            self.finish(0, True)
            self.check()
        assert self.cache.protected_pages == 0
        self.alloc.free(self.cache.reset())
        assert self.alloc.num_free == TOTAL_PAGES
        self.cache.check_integrity()


@pytest.mark.parametrize("native", IMPLS)
@pytest.mark.parametrize("ps", [1, 2, 4])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops)
def test_property_against_model(native: bool, ps: int, ops) -> None:
    h = Harness(ps, native)
    for op in ops:
        h.run(op)
    h.drain()


@_native_mark
@pytest.mark.parametrize("ps", [1, 2])
@settings(max_examples=60, deadline=None)
@given(ops=ops)
def test_property_native_equals_ref(ps: int, ops) -> None:
    """Same op sequence on both paths: identical results and identical tree shape."""
    a = Harness(ps, False)
    b = Harness(ps, True)
    for op in ops:
        a.run(op)
        b.run(op)
        assert a.cache.pretty() == b.cache.pretty().replace("native=True", "native=False")
    a.drain()
    b.drain()
