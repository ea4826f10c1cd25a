"""The router's approximate prefix tree against a reference that keeps every key."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from radixrt.router.tree import Node, PrefixTree, common_prefix_len

# Few letters, so that keys share prefixes and split each other's edges often.
keys = st.text(alphabet="abc", min_size=0, max_size=12)
tenants = st.sampled_from(["r0", "r1", "r2"])
ops = st.lists(st.tuples(keys, tenants), max_size=40)


def lcp(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


def reference_match(inserted: dict[str, list[str]], key: str) -> dict[str, int]:
    out = {t: max(lcp(key, s) for s in strs) for t, strs in inserted.items() if strs}
    return {t: n for t, n in out.items() if n > 0}


def check_invariants(tree: PrefixTree) -> None:
    sizes: dict[str, int] = {}
    count = 0
    for node in tree.nodes():
        if node is tree.root:
            continue
        count += 1
        assert node.alive and node.edge and node.tenants, "no empty or ownerless nodes"
        assert node.parent is not None and node.parent.children[node.edge[0]] is node
        if node.parent is not tree.root:
            assert set(node.tenants) <= set(node.parent.tenants), "tenants shrink downward"
        for t in node.tenants:
            sizes[t] = sizes.get(t, 0) + len(node.edge)
    assert count == tree.node_count
    assert {t: n for t, n in tree.sizes.items() if n} == sizes


@settings(max_examples=200, deadline=None)
@given(ops, keys)
def test_match_equals_reference_without_eviction(operations: list[tuple[str, str]],
                                                 probe: str) -> None:
    tree = PrefixTree(max_chars=10**6)
    inserted: dict[str, list[str]] = {}
    for key, tenant in operations:
        tree.insert(key, tenant)
        inserted.setdefault(tenant, []).append(key)
    check_invariants(tree)
    assert tree.match(probe) == reference_match(inserted, probe)
    for key, _ in operations:
        assert tree.match(key) == reference_match(inserted, key)
    for tenant, strs in inserted.items():  # characters held = distinct non-empty prefixes
        assert tree.size(tenant) == len({s[:i] for s in strs for i in range(1, len(s) + 1)})


@settings(max_examples=200, deadline=None)
@given(ops, st.integers(min_value=1, max_value=20))
def test_eviction_bounds_memory_and_keeps_the_newest(operations: list[tuple[str, str]],
                                                     budget: int) -> None:
    tree = PrefixTree(max_chars=budget)
    full = PrefixTree(max_chars=10**6)
    for key, tenant in operations:
        tree.insert(key, tenant)
        full.insert(key, tenant)
        check_invariants(tree)
        assert tree.size(tenant) <= budget
        if len(key) <= budget * 9 // 10:  # LRU: the key just routed survives its own eviction
            assert tree.match(key).get(tenant, 0) == len(key)
        for probe, _ in operations:  # the tree only ever forgets
            got, ref = tree.match(probe), full.match(probe)
            assert all(n <= ref.get(t, 0) for t, n in got.items())


def test_lru_evicts_the_oldest_conversation_first() -> None:
    tree = PrefixTree(max_chars=100)
    for i in range(5):
        tree.insert(f"{i}" * 30, "r0")  # 5 x 30 chars: the first ones must go
    assert tree.size("r0") <= 100
    assert tree.match("4" * 30) == {"r0": 30}
    assert tree.match("0" * 30) == {}
    # Touching an old key makes it recent again.
    tree.insert("3" * 30, "r0")
    tree.insert("5" * 30, "r0")
    assert tree.match("3" * 30) == {"r0": 30}


def test_remove_tenant_and_clear() -> None:
    tree = PrefixTree()
    tree.insert("system prompt. question one", "r0")
    tree.insert("system prompt. question two", "r1")
    assert tree.match("system prompt. question four") == {"r0": 24, "r1": 24}
    tree.remove_tenant("r0")
    check_invariants(tree)
    assert tree.match("system prompt. question one") == {"r1": 24}
    assert tree.size("r0") == 0
    tree.clear()
    assert tree.match("system prompt. question two") == {} and tree.node_count == 0


def test_heap_stays_bounded_under_repeated_touches() -> None:
    tree = PrefixTree(max_chars=1000)
    for _ in range(5000):  # the same key over and over: one live leaf, many stale entries
        tree.insert("abcdef", "r0")
    assert len(tree._heaps["r0"]) <= 64 + 2 * tree.node_count + 1


@given(st.text(max_size=30), st.integers(min_value=0, max_value=30), st.text(max_size=30))
def test_common_prefix_len(text: str, pos: int, edge: str) -> None:
    pos = min(pos, len(text))
    assert common_prefix_len(text, pos, edge) == lcp(text[pos:], edge)


def test_node_leaf_of() -> None:
    root = Node("", None)
    a = Node("a", root)
    b = Node("b", a)
    a.children["b"] = b
    a.tenants = {"r0": 1, "r1": 1}
    b.tenants = {"r0": 1}
    assert not a.is_leaf_of("r0") and a.is_leaf_of("r1") and b.is_leaf_of("r0")
