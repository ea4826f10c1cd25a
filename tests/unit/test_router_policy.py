"""Routing decisions, routing keys, router flags and SSE framing (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radixrt.router.config import RouterConfig, build_parser, config_from_args
from radixrt.router.health import Replica, ReplicaSet
from radixrt.router.keys import MAX_KEY_CHARS, routing_key
from radixrt.router.metrics import RouterMetrics
from radixrt.router.policy import CacheAwarePolicy, RoundRobinPolicy
from radixrt.router.proxy import SSEFramer, forward_headers

DOC = "Read this document, then answer my questions. " + "lorem ipsum dolor " * 40


def replicas(n: int = 2) -> list[Replica]:
    return [Replica(f"http://r{i}:30000", i, healthy=True) for i in range(n)]


def chat_key(*turns: str) -> str:
    msgs = []
    for i, t in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
    return routing_key("/v1/chat/completions", {"messages": msgs})


def test_conversation_sticks_and_new_ones_spread() -> None:
    policy, rs = CacheAwarePolicy(), replicas()
    a1 = policy.choose(chat_key("A: " + DOC), rs)
    assert (a1.replica, a1.reason) == (rs[0], "short_match")
    # A new conversation: equal load, so the replica remembering less (more cache room).
    b1 = policy.choose(chat_key("B: " + DOC), rs)
    assert (b1.replica, b1.reason) == (rs[1], "short_match")
    # Later turns follow their conversation, even to the busier replica.
    rs[0].in_flight = 3
    a2 = policy.choose(chat_key("A: " + DOC, "reply", "and then?"), rs)
    assert (a2.replica, a2.reason) == (rs[0], "prefix_match")
    assert a2.matched >= len(chat_key("A: " + DOC))
    b2 = policy.choose(chat_key("B: " + DOC, "reply", "why?"), rs)
    assert (b2.replica, b2.reason) == (rs[1], "prefix_match")


def test_overloaded_match_goes_to_the_least_loaded() -> None:
    policy = CacheAwarePolicy(balance_abs_threshold=4, balance_rel_threshold=1.5)
    rs = replicas()
    policy.choose(chat_key(DOC), rs)  # -> r0
    rs[0].in_flight, rs[1].in_flight = 5, 1  # 4 more: not beyond the threshold
    assert policy.choose(chat_key(DOC, "x", "y"), rs).reason == "prefix_match"
    rs[0].in_flight = 6  # 5 more and 6x as many
    d = policy.choose(chat_key(DOC, "x", "y", "z", "w"), rs)
    assert (d.replica, d.reason) == (rs[1], "load_balance")
    rs[0].in_flight, rs[1].in_flight = 30, 21  # far apart, but under 1.5x
    assert policy.choose(chat_key(DOC, "x", "y", "q"), rs).reason == "prefix_match"


def test_short_match_is_not_affinity() -> None:
    policy, rs = CacheAwarePolicy(cache_threshold=0.5), replicas()
    policy.choose("shared system prompt|" + "a" * 10, rs)  # -> r0
    rs[0].in_flight = 1
    d = policy.choose("shared system prompt|" + "b" * 100, rs)  # ~17 % matched
    assert (d.replica, d.reason) == (rs[1], "short_match")


def test_only_candidates_are_chosen_and_forget() -> None:
    policy, rs = CacheAwarePolicy(), replicas(3)
    policy.choose(chat_key(DOC), rs)  # -> r0
    # r0 is not a candidate (dead): the request goes elsewhere.
    assert policy.choose(chat_key(DOC, "a", "b"), rs[1:]).replica in rs[1:]
    policy.forget(rs[0])
    assert policy.tree_chars(rs[0]) == 0
    assert policy.choose("", rs).reason == "no_key"
    policy.reset()
    assert all(policy.tree_chars(r) == 0 for r in rs)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3), st.lists(st.integers(0, 20),
                                                                        min_size=3, max_size=3)),
                min_size=1, max_size=30))
def test_decisions_are_valid(steps: list[tuple[int, int, list[int]]]) -> None:
    """Whatever the loads: a candidate is chosen, and a conversation whose replica is not
    overloaded stays on it."""
    policy, rs = CacheAwarePolicy(balance_abs_threshold=2), replicas(3)
    where: dict[int, Replica] = {}
    turns: dict[int, list[str]] = {}
    for conv, skip, loads in steps:
        for r, load in zip(rs, loads, strict=True):
            r.in_flight = load
        candidates = [r for i, r in enumerate(rs) if i != skip] or rs
        turns.setdefault(conv, [f"conversation {conv}: " + DOC]).append(f"turn {len(turns[conv])}")
        d = policy.choose(chat_key(*turns[conv]), candidates)
        assert d.replica in candidates
        least = min(candidates, key=lambda r: r.in_flight)
        prev = where.get(conv)
        if prev in candidates and not policy.overloaded(prev, least):
            assert d.replica is prev and d.reason == "prefix_match"
        where[conv] = d.replica


def test_round_robin_cycles() -> None:
    policy, rs = RoundRobinPolicy(), replicas(3)
    assert [policy.choose("k", rs).replica.index for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    assert {policy.choose("k", rs[:2]).reason for _ in range(2)} == {"round_robin"}


def test_routing_keys() -> None:
    chat = {"messages": [{"role": "system", "content": "S"},
                         {"role": "user", "content": [{"type": "text", "text": "hi "},
                                                      {"type": "text", "text": "there"}]}]}
    key = routing_key("/v1/chat/completions", chat)
    assert "S" in key and "hi there" in key
    longer = {"messages": [*chat["messages"], {"role": "assistant", "content": "yo"}]}
    assert routing_key("/v1/chat/completions", longer).startswith(key)
    # Anthropic's and the Responses API's conversations: the same key as the chat's.
    assert routing_key("/v1/messages", {"system": "S", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi there"}]}]}) == key
    assert routing_key("/v1/responses", {"instructions": "S", "input": "hi there"}) == key
    turn = routing_key("/v1/responses", {"instructions": "S", "input": [
        {"role": "user", "content": "hi there"},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]})
    assert turn.startswith(key) and turn.endswith("{}")
    assert routing_key("/v1/responses", {"input": 3}) == ""
    assert routing_key("/v1/completions", {"prompt": "abc"}) == "abc"
    assert routing_key("/v1/completions", {"prompt": ["abc", "d"]}) == "abc"
    ids = routing_key("/v1/completions", {"prompt": [1, 2, 3]})
    assert routing_key("/generate", {"input_ids": [1, 2, 3, 4]}).startswith(ids)
    assert routing_key("/generate", {"text": "abc"}) == "abc"
    salted = routing_key("/v1/completions", {"prompt": "abc", "cache_salt": "u1"})
    assert salted != "abc" and salted.endswith("abc")
    assert routing_key("/v1/models", {"prompt": "abc"}) == ""
    assert routing_key("/v1/chat/completions", {"messages": "nope"}) == ""
    assert routing_key("/v1/completions", [1, 2]) == ""
    assert len(routing_key("/v1/completions", {"prompt": "x" * (MAX_KEY_CHARS + 5)})) \
        == MAX_KEY_CHARS


def test_config_from_flags() -> None:
    args = build_parser().parse_args(
        ["--worker-urls", "10.0.0.1:30000", "http://b:1/", "--policy", "round_robin",
         "--cache-threshold", "0.5", "--health-interval", "0.5"])
    config = config_from_args(args)
    assert config.worker_urls == ("http://10.0.0.1:30000", "http://b:1")
    assert (config.policy, config.cache_threshold, config.health_interval_s) == \
        ("round_robin", 0.5, 0.5)
    for bad in [dict(worker_urls=()), dict(worker_urls=("http://a", "http://a/")),
                dict(worker_urls=("ftp://a",)), dict(cache_threshold=1.5),
                dict(balance_rel_threshold=0.5), dict(health_interval_s=0),
                dict(policy="random")]:
        fields = {"worker_urls": ("http://a",), **bad}
        with pytest.raises(ValueError):
            RouterConfig(**fields)  # type: ignore[arg-type]


@given(st.lists(st.sampled_from([b'data: {"a": 1}\n\n', b"data: [DONE]\n\n", b": ping\r\n\r\n",
                                 b'data: {"b": "x\\ny"}\n\n']), max_size=8),
       st.lists(st.integers(1, 40), max_size=20))
def test_sse_framer_passes_whole_events(events: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(events)
    framer, out, pos = SSEFramer(), [], 0
    for n in [*cuts, len(stream)]:
        piece = framer.feed(stream[pos:pos + n])
        pos += n
        if piece:
            assert piece.endswith((b"\n\n", b"\r\n\r\n"))  # never half an event
            out.append(piece)
    assert b"".join(out) + framer.pending == stream
    assert framer.pending == b""


def test_forward_headers_drops_hop_by_hop() -> None:
    kept = forward_headers([("Authorization", "Bearer k"), ("Connection", "keep-alive"),
                            ("Host", "x"), ("Content-Length", "3"), ("X-Custom", "1"),
                            ("Date", "now")], frozenset({"date"}))
    assert kept == [("Authorization", "Bearer k"), ("X-Custom", "1")]


def test_replica_deaths_forget_history_only_when_the_cache_is_gone() -> None:
    forgotten: list[str] = []
    rs = ReplicaSet(("http://a", "http://b"), RouterMetrics(), lambda r: forgotten.append(r.url))
    a, b = rs.replicas
    assert rs.healthy() == []  # unknown until checked
    rs.mark_alive(a)
    rs.mark_alive(b)
    for _ in range(2):  # timeouts below the threshold: still healthy
        rs.check_failed(a, "timeout", threshold=3, cache_lost=False)
    assert a.healthy
    rs.check_failed(a, "timeout", threshold=3, cache_lost=False)
    assert rs.healthy() == [b] and forgotten == []  # busy, maybe: its cache stays known
    rs.mark_dead(a, "connection refused")  # ...but it is gone after all
    rs.mark_dead(a, "connection refused")
    assert forgotten == ["http://a"]  # once
    rs.mark_alive(a)
    assert a.failures == 0 and rs.healthy() == [a, b]
    rs.started(a)
    rs.started(a)
    rs.finished(a)
    assert a.in_flight == 1
    assert rs.metrics.render().count(b'radixrt_router_requests_in_flight{replica="http://a"} 1.0')
