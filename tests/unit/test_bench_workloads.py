"""bench.workloads: deterministic, sized as asked, sharing exactly where intended."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from bench.client import chat_messages
from bench.workloads import (
    GENERATORS,
    PRESETS,
    WORDS,
    TextSource,
    build_workloads,
    multi_turn,
    rag,
    shared_prefix,
    unique,
)


@pytest.fixture(scope="module")
def tok(default_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(default_model_dir))


def count(tok: Any, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@pytest.mark.parametrize("name", list(GENERATORS))
def test_deterministic(name: str, tok: Any) -> None:
    a = build_workloads([name], seed=5, tokenizer=tok)[0]
    b = build_workloads([name], seed=5, tokenizer=tok)[0]
    c = build_workloads([name], seed=6, tokenizer=tok)[0]
    assert a.to_dict() == b.to_dict()
    assert a.sessions != c.sessions
    assert a.num_requests == c.num_requests  # a seed changes text, never sizes
    # No tokenizer: still deterministic (sizes by words).
    assert build_workloads([name], seed=5)[0] == build_workloads([name], seed=5)[0]


def test_text_sizes(tok: Any) -> None:
    src = TextSource(tok)
    rng = random.Random(0)
    for n in (1, 7, 64, 300, 1024):
        got = count(tok, src.text(rng, n))
        assert n - 2 <= got <= n, (n, got)
    assert src.text(rng, 0) == ""
    # Every word is one token with its leading space: the no-tokenizer estimate holds.
    assert all(count(tok, " " + w) == 1 for w in WORDS)
    assert 0.9 <= count(tok, TextSource().text(rng, 500)) / 500 <= 1.2


def test_shared_prefix_structure(tok: Any) -> None:
    w = shared_prefix(num_groups=3, prompts_per_group=5, system_tokens=256, question_tokens=32,
                      output_tokens=8, seed=1, tokenizer=tok)
    assert w.num_requests == 15 and len(w.sessions) == 15
    groups: dict[int, list] = {}
    for s in w.sessions:
        assert s.api == "chat" and len(s.turns) == 1 and s.max_tokens == 8
        assert 250 <= count(tok, s.system) <= 256 and 28 <= count(tok, s.turns[0]) <= 32
        groups.setdefault(s.group, []).append(s)
    assert sorted(groups) == [0, 1, 2] and all(len(g) == 5 for g in groups.values())
    for g in groups.values():
        assert len({s.system for s in g}) == 1  # one system prompt per group
        assert len({s.turns[0] for s in g}) == 5  # a question of its own each
    systems = [g[0].system for g in groups.values()]
    # Different groups share no more than their fixed opening line.
    assert max(common_prefix(a, b) for a in systems for b in systems if a != b) < 40
    # Groups arrive interleaved, not one after another.
    order = [s.group for s in w.sessions]
    assert order != sorted(order)


def test_multi_turn_structure(tok: Any) -> None:
    w = multi_turn(num_clients=3, num_rounds=4, first_turn_tokens=200, turn_tokens=24,
                   output_tokens=8, request_rate=2.0, seed=2, tokenizer=tok)
    assert w.num_requests == 12 and w.request_rate == 2.0 and w.max_concurrency == 3
    firsts = set()
    for s in w.sessions:
        assert s.api == "chat" and len(s.turns) == 4
        assert 195 <= count(tok, s.turns[0]) <= 200
        assert all(20 <= count(tok, t) <= 24 for t in s.turns[1:])
        firsts.add(s.turns[0])
        # Round k re-sends rounds < k with the replies, then the new message.
        msgs = chat_messages(s, 2, ["r0", "r1"])
        assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
        assert [m["content"] for m in msgs] == [s.turns[0], "r0", s.turns[1], "r1", s.turns[2]]
    assert len(firsts) == 3  # clients do not share their conversations


def test_rag_structure(tok: Any) -> None:
    w = rag(num_docs=5, doc_tokens=100, num_questions=30, docs_per_question=3,
            question_tokens=16, output_tokens=4, seed=3, tokenizer=tok)
    assert w.num_requests == 30
    seen_subsets = set()
    for s in w.sessions:
        assert s.api == "completions" and len(s.turns) == 1
        prompt = s.turns[0]
        ids = [int(line.split()[1].rstrip(":")) - 1 for line in prompt.splitlines()
               if line.startswith("Document ")]
        assert len(ids) == 3 and ids == sorted(ids)  # canonical order
        assert s.group == ids[0]
        seen_subsets.add(tuple(ids))
        assert prompt.rstrip().endswith("Answer:")
        assert 3 * 95 <= count(tok, prompt) <= 3 * 100 + 60
    assert len(seen_subsets) > 3  # random subsets, not one
    # Prompts with the same first document share at least that document as a prefix.
    by_first: dict[int, list[str]] = {}
    for s in w.sessions:
        by_first.setdefault(s.group or 0, []).append(s.turns[0])
    for prompts in by_first.values():
        if len(prompts) > 1:
            assert count(tok, prompts[0][:common_prefix(prompts[0], prompts[1])]) >= 95
    with pytest.raises(ValueError):
        rag(num_docs=2, docs_per_question=3)


def test_unique_has_no_sharing(tok: Any) -> None:
    w = unique(num_prompts=12, prompt_tokens=128, output_tokens=4, seed=4, tokenizer=tok)
    prompts = [s.turns[0] for s in w.sessions]
    assert all(s.api == "completions" for s in w.sessions)
    assert all(126 <= count(tok, p) <= 128 for p in prompts)
    # No two prompts share more than a couple of words: nothing a 16-token page could reuse.
    assert max(common_prefix(a, b) for a in prompts for b in prompts if a != b) < 30


def test_presets_are_complete() -> None:
    for preset, sizes in PRESETS.items():
        assert set(sizes) == set(GENERATORS), preset
        for w in build_workloads(list(GENERATORS), preset=preset):
            assert w.num_requests > 0 and w.max_concurrency >= 1
    w = build_workloads(["unique"], overrides={"unique": {"num_prompts": 3}})[0]
    assert w.num_requests == 3
    with pytest.raises(ValueError):
        build_workloads(["nope"])


def test_cpu_peer_preset_shapes(tok: Any) -> None:
    """Issue 9's shapes against llama-server -np 4, measured with the real tokenizer."""
    ws = {w.name: w for w in build_workloads(list(GENERATORS), "cpu-peer", 0, tok)}
    assert all(w.max_concurrency == 4 for w in ws.values())  # one request per server slot
    mt = ws["multi_turn"]
    assert (len(mt.sessions), mt.num_requests, mt.request_rate) == (4, 16, None)
    systems = {s.system for s in mt.sessions}
    assert len(systems) == 4  # a system prompt of each client's own
    assert all(s.system is not None and 670 <= count(tok, s.system) <= 680 for s in mt.sessions)
    assert all(s.max_tokens == 32 and len(s.turns) == 4 for s in mt.sessions)
    msgs = chat_messages(mt.sessions[0], 1, ["r0"])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    r = ws["rag"]
    assert r.num_requests == 20 and r.params["num_docs"] == 5
    assert all(s.api == "chat" and s.max_tokens == 24 for s in r.sessions)
    assert len({s.system for s in r.sessions}) == 1  # one system prompt for the app
    assert 250 <= count(tok, r.sessions[0].system or "") <= 256
    docs = {line for s in r.sessions for line in s.turns[0].splitlines()
            if line.startswith("Document ")}
    assert docs == {f"Document {d}:" for d in range(1, 6)}
    assert all(s.turns[0].count("Document ") == 2 for s in r.sessions)
    sp, un = ws["shared_prefix"], ws["unique"]
    assert sp.num_requests == 24 and len({s.system for s in sp.sessions}) == 4
    assert all(s.max_tokens == 32 for s in (*sp.sessions, *un.sessions))
    assert un.num_requests == 16 and all(506 <= count(tok, s.turns[0]) <= 512 for s in un.sessions)
