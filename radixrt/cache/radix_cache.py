"""Radix tree of KV pages with LRU eviction of unlocked leaves.

The tree is a compressed trie over token ids at page granularity: every edge's key is a whole
number of pages, and each node owns the KV pages of its own key. Children are looked up by
their first page of tokens (a tuple, or a plain int when page_size == 1), so a lookup costs
one dict probe plus one common-prefix scan of the child's key.

Each cache namespace (`CacheKey.namespace`) has its own root, so keys of different namespaces
never share nodes.

The hot loops (walking a key down the tree, common-prefix length of two token arrays) run in
the optional C++ core `radixrt._radix_core` when it is built; the numpy reference path below
gives identical results and is what `use_native=False` forces.

Bookkeeping is incremental: the evictable / protected page counters and the set of evictable
leaves (leaves with lock_ref == 0) are updated on every insert, split, lock, unlock and
eviction. LRU order comes from a heap of (last_access, node id, node) with lazy deletion: an
entry is live only while its node is still an evictable leaf with that exact last_access.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np

from radixrt.cache.base import CacheKey, MatchResult, PrefixCache
from radixrt.cache.base import common_prefix_len as common_prefix_len_ref

try:  # the native core is optional: a source checkout without a build still works
    from radixrt import _radix_core as _native_core
except ImportError:  # pragma: no cover - depends on the build
    _native_core = None

NATIVE_AVAILABLE: bool = _native_core is not None

_EMPTY_I32 = np.zeros(0, dtype=np.int32)
_EMPTY_I32.flags.writeable = False

ChildKey = int | tuple[int, ...]


class TreeNode:
    """One edge of the radix tree (a root has an empty key and no parent)."""

    __slots__ = (
        "key",
        "pages",
        "parent",
        "children",
        "lock_ref",
        "last_access",
        "id",
        "namespace",
    )

    def __init__(
        self,
        key: np.ndarray,
        pages: np.ndarray,
        parent: TreeNode | None,
        node_id: int,
        last_access: int = 0,
        namespace: str | None = None,
    ) -> None:
        self.key = key  # int32, len a multiple of page_size
        self.pages = pages  # int32, one per page of key
        self.parent = parent
        self.children: dict[ChildKey, TreeNode] = {}
        self.lock_ref = 0  # locks on this node or any descendant
        self.last_access = last_access
        self.id = node_id  # unique; LRU tie-break, debug output
        self.namespace = namespace  # only meaningful on roots

    @property
    def is_root(self) -> bool:
        return self.parent is None

    def __repr__(self) -> str:
        return (
            f"TreeNode(id={self.id}, tokens={len(self.key)}, pages={len(self.pages)}, "
            f"lock_ref={self.lock_ref}, last_access={self.last_access})"
        )


def _frozen(a: np.ndarray) -> np.ndarray:
    """Node arrays are read-only: match_prefix hands them out without copying."""
    a.flags.writeable = False
    return a


def _child_key_ref(tokens: np.ndarray, pos: int, page_size: int) -> ChildKey:
    if page_size == 1:
        return int(tokens[pos])
    return tuple(tokens[pos : pos + page_size].tolist())


def walk_ref(root: TreeNode, tokens: np.ndarray, page_size: int) -> tuple[list[TreeNode], int, int]:
    """Follow tokens (page-aligned length) down from root; reference for the native `walk`.

    Returns (path, pos, partial): the nodes whose keys matched, the matched token count and,
    when the match ends inside the last node of path, how many of its tokens matched (else 0).
    """
    path: list[TreeNode] = []
    node = root
    pos = 0
    n = len(tokens)
    while pos < n:
        child = node.children.get(_child_key_ref(tokens, pos, page_size))
        if child is None:
            break
        ck = child.key
        m = common_prefix_len_ref(ck, tokens[pos:], page_size)
        if m == 0:  # only possible with a corrupt child key; stop rather than loop
            break
        path.append(child)
        pos += m
        if m < len(ck):
            return path, pos, m
        node = child
    return path, pos, 0


class RadixCache(PrefixCache):
    """The radix tree of KV pages (see the module docstring): page-granular compressed trie,
    one root per namespace, lock refs, incrementally kept LRU set of evictable leaves."""

    # Stale heap entries tolerated beyond 2x the live ones before a rebuild (tests set 0 so
    # that rebuilds happen all the time).
    heap_slack: int = 64

    def __init__(self, page_size: int, use_native: bool | None = None) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        if use_native and _native_core is None:
            raise RuntimeError(
                "use_native=True but radixrt._radix_core is not built "
                "(run `pip install -e .` or `python setup.py build_ext --inplace`)"
            )
        self.page_size = page_size
        self.use_native = _native_core is not None if use_native is None else use_native
        self._ids = itertools.count()
        # Returned as MatchResult.node for a namespace with no tree yet: lock/unlock of a root
        # are no-ops, and not creating roots on lookup keeps random salts from leaking roots.
        self._null_root = self._new_root(None)
        self.reset()

    # ------------------------------------------------------------------ helpers

    def _new_root(self, namespace: str | None) -> TreeNode:
        return TreeNode(_EMPTY_I32, _EMPTY_I32, None, next(self._ids), namespace=namespace)

    def _child_key(self, key: np.ndarray) -> ChildKey:
        return _child_key_ref(key, 0, self.page_size)

    def _walk(self, root: TreeNode, tokens: np.ndarray) -> tuple[list[TreeNode], int, int]:
        if self.use_native:
            return _native_core.walk(root, tokens, self.page_size)  # type: ignore[union-attr]
        return walk_ref(root, tokens, self.page_size)

    def _tokens(self, key: CacheKey, max_pages: int | None = None) -> np.ndarray:
        """key's token ids as contiguous int32, cut to whole pages (and to max_pages)."""
        tokens = np.ascontiguousarray(key.token_ids, dtype=np.int32)
        n_pages = len(tokens) // self.page_size
        if max_pages is not None:
            n_pages = min(n_pages, max_pages)
        return tokens[: n_pages * self.page_size]

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _push_leaf(self, node: TreeNode) -> None:
        """node became (or was touched while being) an evictable leaf."""
        self._leaves.add(node)
        heapq.heappush(self._heap, (node.last_access, node.id, node))
        # Lazy deletion leaves stale entries behind; rebuild before they dominate the heap.
        # In place: evict() holds this list while it pushes parents that became leaves.
        if len(self._heap) > 2 * len(self._leaves) + self.heap_slack:
            self._heap[:] = [(n.last_access, n.id, n) for n in self._leaves]
            heapq.heapify(self._heap)

    def _split(self, child: TreeNode, m: int) -> TreeNode:
        """Split child after its first m tokens (a page multiple); returns the new upper node.

        Counters and the evictable-leaf set are unchanged: pages only move between the two
        halves, the lower half keeps child's leaf status, and the upper half has a child.
        """
        ps = self.page_size
        parent = child.parent
        assert parent is not None and 0 < m < len(child.key) and m % ps == 0
        mid = TreeNode(
            _frozen(child.key[:m].copy()),  # copies: a split never pins the old array
            _frozen(child.pages[: m // ps].copy()),
            parent,
            next(self._ids),
            child.last_access,
        )
        mid.lock_ref = child.lock_ref  # every lock through child also passes through mid
        child.key = _frozen(child.key[m:].copy())
        child.pages = _frozen(child.pages[m // ps :].copy())
        child.parent = mid
        mid.children[self._child_key(child.key)] = child
        parent.children[self._child_key(mid.key)] = mid  # same first page as child had
        return mid

    def _match(self, root: TreeNode, tokens: np.ndarray) -> tuple[list[TreeNode], int]:
        """Walk + split at the end of the match + LRU touch; shared by match and insert."""
        path, pos, partial = self._walk(root, tokens)
        if partial:
            path[-1] = self._split(path[-1], partial)
        t = self._tick()
        for node in path:
            node.last_access = t
        if path and path[-1] in self._leaves:
            self._push_leaf(path[-1])  # its old heap entry is now stale
        return path, pos

    # ------------------------------------------------------------------ PrefixCache API

    def match_prefix(self, key: CacheKey) -> MatchResult:
        root = self._roots.get(key.namespace)
        tokens = self._tokens(key)
        if root is None or len(tokens) == 0:
            return MatchResult(_EMPTY_I32, 0, root if root is not None else self._null_root)
        path, pos = self._match(root, tokens)
        if not path:
            return MatchResult(_EMPTY_I32, 0, root)
        if len(path) == 1:
            pages = path[0].pages  # read-only, so no copy needed
        elif self.use_native:
            pages = _native_core.gather_pages(path)  # type: ignore[union-attr]
        else:
            pages = np.concatenate([n.pages for n in path])
        return MatchResult(pages, pos, path[-1])

    def insert(self, key: CacheKey, pages: np.ndarray) -> int:
        """See PrefixCache.insert. Only whole pages of key are cached: with k = min(len(pages),
        len(key) // page_size) and r the returned value, the tree takes pages[r // page_size:k];
        the caller keeps pages[:r // page_size] (free those not shared with the tree) and
        pages[k:] (a trailing partial page, or pages beyond the key)."""
        ps = self.page_size
        pages = np.asarray(pages, dtype=np.int32)
        tokens = self._tokens(key, len(pages))
        end = len(tokens)
        if end == 0:
            return 0
        root = self._roots.get(key.namespace)
        if root is None:
            root = self._roots[key.namespace] = self._new_root(key.namespace)
        path, pos = self._match(root, tokens)
        if pos < end:
            parent = path[-1] if path else root
            leaf = TreeNode(
                _frozen(tokens[pos:].copy()),
                _frozen(pages[pos // ps : end // ps].copy()),
                parent,
                next(self._ids),
                self._clock,  # same tick as the path just touched
            )
            parent.children[self._child_key(leaf.key)] = leaf
            self._leaves.discard(parent)  # no longer a leaf; its heap entry goes stale
            self._evictable += len(leaf.pages)
            self._push_leaf(leaf)
        return pos

    def lock(self, node: Any) -> None:
        while node.parent is not None:
            if node.lock_ref == 0:
                n = len(node.pages)
                self._evictable -= n
                self._protected += n
                self._leaves.discard(node)
            node.lock_ref += 1
            node = node.parent

    def unlock(self, node: Any) -> None:
        while node.parent is not None:
            if node.lock_ref <= 0:
                raise AssertionError(f"unlock of an unlocked node {node!r}")
            node.lock_ref -= 1
            if node.lock_ref == 0:
                n = len(node.pages)
                self._evictable += n
                self._protected -= n
                if not node.children:
                    self._push_leaf(node)
            node = node.parent

    def evict(self, num_pages: int) -> np.ndarray:
        freed: list[np.ndarray] = []
        count = 0
        heap = self._heap
        leaves = self._leaves
        default_root = self._roots[None]
        while count < num_pages and heap:
            t, _, node = heapq.heappop(heap)
            if node not in leaves or node.last_access != t:
                continue  # stale entry
            leaves.remove(node)
            parent = node.parent
            del parent.children[self._child_key(node.key)]
            node.parent = None  # detached: lock/unlock on a stale handle become no-ops
            freed.append(node.pages)
            count += len(node.pages)
            self._evictable -= len(node.pages)
            if parent.parent is not None:
                if not parent.children and parent.lock_ref == 0:
                    self._push_leaf(parent)
            elif not parent.children and parent is not default_root:
                del self._roots[parent.namespace]  # drop empty namespace trees
        if not freed:
            return _EMPTY_I32.copy()
        return np.concatenate(freed)

    @property
    def evictable_pages(self) -> int:
        return self._evictable

    @property
    def protected_pages(self) -> int:
        return self._protected

    @property
    def total_pages(self) -> int:
        return self._evictable + self._protected

    def reset(self) -> np.ndarray:
        roots = getattr(self, "_roots", {})
        pages = [n.pages for r in roots.values() for n in self._iter_nodes(r)]
        if getattr(self, "_protected", 0):
            raise AssertionError(f"reset with {self._protected} locked pages")
        self._roots: dict[str | None, TreeNode] = {None: self._new_root(None)}
        self._leaves: set[TreeNode] = set()
        self._heap: list[tuple[int, int, TreeNode]] = []
        self._evictable = 0
        self._protected = 0
        self._clock = 0
        return np.concatenate(pages) if pages else _EMPTY_I32.copy()

    # ------------------------------------------------------------------ debugging / tests

    @staticmethod
    def _iter_nodes(root: TreeNode) -> Iterator[TreeNode]:
        """Non-root nodes under root, depth first."""
        stack = list(root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def namespaces(self) -> list[str | None]:
        return list(self._roots)

    def node_count(self) -> int:
        return sum(1 for r in self._roots.values() for _ in self._iter_nodes(r))

    def node_prefix_len(self, node: TreeNode) -> int:
        """Tokens from the root to the end of node (0 for a root)."""
        n = 0
        while node.parent is not None:
            n += len(node.key)
            node = node.parent
        return n

    def check_integrity(self) -> None:
        ps = self.page_size
        evictable = protected = 0
        seen: set[int] = set()
        total = 0
        leaves: set[TreeNode] = set()
        assert None in self._roots, "default namespace root missing"
        for ns, root in self._roots.items():
            assert root.parent is None and len(root.key) == 0 and root.namespace == ns
            assert ns is None or root.children, f"empty namespace root {ns!r} kept"
            for node in self._iter_nodes(root):
                parent = node.parent
                assert parent is not None
                k = len(node.key)
                assert k > 0 and k % ps == 0, f"{node!r}: key length {k} not whole pages"
                assert node.key.dtype == np.int32 and node.pages.dtype == np.int32
                assert node.key.flags.c_contiguous and node.key.ndim == 1
                assert len(node.pages) == k // ps, f"{node!r}: page count mismatch"
                assert parent.children.get(self._child_key(node.key)) is node, (
                    f"{node!r} not under its first page in its parent"
                )
                assert node.lock_ref >= 0
                if parent.parent is not None:
                    assert parent.lock_ref >= node.lock_ref, f"{parent!r} < child {node!r}"
                if node.lock_ref == 0:
                    evictable += len(node.pages)
                    if not node.children:
                        leaves.add(node)
                else:
                    protected += len(node.pages)
                seen.update(node.pages.tolist())
                total += len(node.pages)
        assert total == len(seen), "a page appears twice in the tree"
        assert evictable == self._evictable, f"evictable {self._evictable} != actual {evictable}"
        assert protected == self._protected, f"protected {self._protected} != actual {protected}"
        assert leaves == self._leaves, "evictable-leaf set out of sync"
        live = {n.id for t, _, n in self._heap if n in self._leaves and n.last_access == t}
        assert live == {n.id for n in leaves}, "an evictable leaf has no live heap entry"
        for node in self._leaves:
            assert node.last_access <= self._clock

    def pretty(self, max_tokens: int = 8) -> str:
        """Indented dump of every namespace tree (for debugging)."""
        lines = [
            f"RadixCache(page_size={self.page_size}, native={self.use_native}, "
            f"evictable={self._evictable}, protected={self._protected})"
        ]

        def rec(node: TreeNode, depth: int) -> None:
            for child in sorted(
                node.children.values(), key=lambda c: c.key[: self.page_size].tolist()
            ):
                toks = child.key[:max_tokens].tolist()
                more = "..." if len(child.key) > max_tokens else ""
                lines.append(
                    f"{'  ' * depth}- #{child.id} tokens={toks}{more} len={len(child.key)} "
                    f"pages={len(child.pages)} lock={child.lock_ref} t={child.last_access}"
                )
                rec(child, depth + 1)

        for ns, root in self._roots.items():
            lines.append(f"[namespace {ns!r}]")
            rec(root, 1)
        return "\n".join(lines)
