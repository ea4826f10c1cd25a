"""An approximate, multi-replica radix tree of recently routed prompt prefixes.

The router cannot see the replicas' KV caches, so it remembers what it sent where: one
character-level compressed trie holds every routed key (a request's prompt text), and each
node records which replicas ("tenants") have been sent a key through it and when. A replica
then most likely caches the longest prefix of a new key that was routed to it.

Invariant: a node's tenants are a subset of its parent's (inserting marks the whole path,
eviction removes a tenant from its leaves upward), so the match length of a tenant is the
depth of the deepest node on the key's path that still lists it.

Memory is bounded per tenant: `size(t)` is the number of characters on nodes that list t;
past `max_chars` the least recently used leaves of t lose t (LRU, an incrementally kept heap
of candidate leaves with lazy invalidation), and nodes left with no tenant are freed.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator


def common_prefix_len(text: str, pos: int, edge: str) -> int:
    """Length of the longest common prefix of text[pos:] and edge (C-level comparisons)."""
    if text.startswith(edge, pos):
        return len(edge)
    lo, hi = 0, min(len(edge), len(text) - pos)  # invariant: lo chars match, hi + 1 do not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if text.startswith(edge[:mid], pos):
            lo = mid
        else:
            hi = mid - 1
    return lo


class Node:
    __slots__ = ("edge", "parent", "children", "tenants", "alive")

    def __init__(self, edge: str, parent: Node | None) -> None:
        self.edge = edge
        self.parent = parent
        self.children: dict[str, Node] = {}  # by first character of the child's edge
        self.tenants: dict[str, int] = {}  # tenant -> last access (logical clock)
        self.alive = True

    def is_leaf_of(self, tenant: str) -> bool:
        return tenant in self.tenants and not any(
            tenant in c.tenants for c in self.children.values())


class PrefixTree:
    def __init__(self, max_chars: int = 4_000_000) -> None:
        if max_chars < 1:
            raise ValueError("max_chars must be at least 1")
        self.max_chars = max_chars
        self.root = Node("", None)
        self.clock = itertools.count(1)
        self.sizes: dict[str, int] = {}  # tenant -> characters held
        # Per tenant: (access time, tie, node) of leaves, stale entries skipped at pop.
        self._heaps: dict[str, list[tuple[int, int, Node]]] = {}
        self._tie = itertools.count()
        self.node_count = 0  # nodes below the root

    # ------------------------------------------------------------------ queries

    def match(self, key: str) -> dict[str, int]:
        """Characters of `key` matched per tenant (tenants with no match are absent)."""
        out: dict[str, int] = {}
        node, pos = self.root, 0
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                break
            n = common_prefix_len(key, pos, child.edge)
            for t in child.tenants:  # deeper nodes overwrite: their tenants are a subset
                out[t] = pos + n
            if n < len(child.edge):
                break
            node, pos = child, pos + n
        return out

    def size(self, tenant: str) -> int:
        return self.sizes.get(tenant, 0)

    def tenants(self) -> list[str]:
        return [t for t, n in self.sizes.items() if n > 0]

    def nodes(self) -> Iterator[Node]:
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    # ------------------------------------------------------------------ updates

    def insert(self, key: str, tenant: str) -> None:
        """Record that `key` was routed to `tenant`, then evict if it holds too much."""
        now = next(self.clock)
        node, pos = self.root, 0
        while pos < len(key):
            child = node.children.get(key[pos])
            if child is None:
                child = Node(key[pos:], node)
                node.children[key[pos]] = child
                self.node_count += 1
            else:
                n = common_prefix_len(key, pos, child.edge)
                if n < len(child.edge):
                    child = self._split(child, n)
            if tenant not in child.tenants:
                self.sizes[tenant] = self.sizes.get(tenant, 0) + len(child.edge)
            child.tenants[tenant] = now
            node, pos = child, pos + len(child.edge)
        if node is not self.root and node.is_leaf_of(tenant):
            self._push(tenant, node)
        if self.sizes.get(tenant, 0) > self.max_chars:
            self.evict(tenant, self.max_chars * 9 // 10)  # some slack: evict in batches

    def _split(self, child: Node, n: int) -> Node:
        """Cut child's edge after n characters; return the new upper node."""
        parent = child.parent
        assert parent is not None
        upper = Node(child.edge[:n], parent)
        self.node_count += 1
        upper.tenants = dict(child.tenants)  # same characters, same owners: sizes unchanged
        parent.children[upper.edge[0]] = upper
        child.edge = child.edge[n:]
        child.parent = upper
        upper.children[child.edge[0]] = child
        return upper

    def _push(self, tenant: str, node: Node) -> None:
        heap = self._heaps.setdefault(tenant, [])
        heapq.heappush(heap, (node.tenants[tenant], next(self._tie), node))
        if len(heap) > 64 + 2 * self.node_count:
            self._rebuild_heap(tenant)  # mostly stale entries: start over from the tree

    def _rebuild_heap(self, tenant: str) -> None:
        heap = [(n.tenants[tenant], next(self._tie), n) for n in self.nodes()
                if n is not self.root and n.is_leaf_of(tenant)]
        heapq.heapify(heap)
        self._heaps[tenant] = heap

    def evict(self, tenant: str, target_chars: int) -> None:
        """Drop least recently used leaves of `tenant` until it holds <= target_chars."""
        heap = self._heaps.get(tenant, [])
        while self.sizes.get(tenant, 0) > target_chars and heap:
            t, _, node = heapq.heappop(heap)
            if not node.alive or node.tenants.get(tenant) != t or not node.is_leaf_of(tenant):
                continue  # stale: touched since, already evicted, or no longer a leaf
            self._drop(tenant, node)
            parent = node.parent
            if parent is not None and parent is not self.root and parent.is_leaf_of(tenant):
                self._push(tenant, parent)

    def _drop(self, tenant: str, node: Node) -> None:
        del node.tenants[tenant]
        self.sizes[tenant] -= len(node.edge)
        if not node.tenants:  # no tenant left: its children have none either
            assert node.parent is not None and not node.children
            del node.parent.children[node.edge[0]]
            node.alive = False
            self.node_count -= 1

    def remove_tenant(self, tenant: str) -> None:
        """Forget everything routed to `tenant` (its replica died or flushed its cache)."""
        for node in list(self.nodes()):
            if node is not self.root and tenant in node.tenants:
                del node.tenants[tenant]
                if not node.tenants and node.parent is not None:
                    node.parent.children.pop(node.edge[0], None)
                    node.alive = False
                    self.node_count -= 1
        self.sizes.pop(tenant, None)
        self._heaps.pop(tenant, None)

    def clear(self) -> None:
        for node in self.nodes():
            node.alive = False
        self.root = Node("", None)
        self.node_count = 0
        self.sizes.clear()
        self._heaps.clear()
