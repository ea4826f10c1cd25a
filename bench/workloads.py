"""Deterministic benchmark workloads: who sends what, in which order, with how much sharing.

A workload is a list of sessions. A session is one client's sequence of requests, sent one
after another; a chat session re-sends the whole conversation so far (with the server's real
replies, which the client fills in at run time) plus its next user message. Single-request
workloads are sessions of one turn. Everything is generated from a seed, so two runs (and two
servers) see byte-identical prompts.

Workloads (SGLang's bench_serving / vLLM's benchmark_serving shapes, scaled to a 2-core CPU):

* shared_prefix: G groups x P prompts; each group has one long system prompt, each prompt a
  short question of its own (SGLang's generated-shared-prefix, default 64x16, 2048+128 -> 256).
* multi_turn:    C clients x R rounds; a long first message (a pasted document) or a long
  system prompt of the client's own, short follow-ups; clients arrive as a Poisson process
  (or all at once), a client's rounds are sequential.
* rag:           D long documents; each question uses a random subset of them, placed first in
  canonical (index) order so prompts over the same leading documents share a prefix;
  optionally after one shared system prompt (chat).
* unique:        independent random prompts; no sharing at all (the control).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

Api = Literal["chat", "completions"]

# Common English words; every one is a single SmolLM2 token with its leading space, so a
# prompt of N words is about N tokens even where no tokenizer is at hand.
WORDS: tuple[str, ...] = tuple(sorted(set("""
time year people way day man thing woman life child world school state family student group
country problem hand part place case week company system program question work government
number night point home water room mother area money story fact month lot right study book eye
job word business issue side kind head house service friend father power hour game line end
member law car city community name president team minute idea kid body information back parent
face others level office door health person art war history party result change morning reason
research girl guy moment air teacher force education foot boy age policy process music market
sense nation plan college interest death experience effect class control care field development
role effort rate heart drug show leader light voice wife police mind price report decision son
view relationship town road arm difference value building action model season society tax
director position player record paper space ground form event official matter center couple site
project activity star table need court oil situation cost industry figure street image phone
data picture practice piece land product doctor wall patient worker news test movie north love
support technology step baby computer type attention film tree source organization hair window
evidence population truth garden river bridge answer island valley forest winter summer ocean
signal engine letter village bottle farmer castle museum good new first last long great little
own other old big high different small large next early young important few public bad same
able late hard major better economic strong possible whole free military true federal
international full special easy clear recent certain personal open red difficult available
likely short single medical current wrong private past foreign fine common poor natural
significant similar hot dead central happy serious ready simple left physical general
environmental financial blue democratic dark various entire close legal religious cold final
main green nice huge popular traditional cultural quiet bright gentle ancient modern rapid
careful be have do say go get make know think take see come want look use find give tell call
try ask feel become leave put mean keep let begin seem help talk turn start hear play run move
like live believe hold bring happen write provide sit stand lose pay meet include continue set
learn lead understand watch follow stop create speak read allow add spend grow walk win offer
remember consider appear buy wait serve die send expect build stay fall cut reach kill remain
suggest raise pass sell require decide pull about after again also always because before
between both during each every from into just more most never often only over since still then
there through under until very where while with without
""".split())))

QUESTION_STARTS: tuple[str, ...] = (
    "Why does", "How can", "What is the role of", "Explain how", "Summarize why",
    "Which part of", "When should", "Describe the",
)


class Tokenizer(Protocol):
    """The slice of a Hugging Face tokenizer this module uses (a fast tokenizer)."""

    def __call__(self, text: str, **kwargs: Any) -> Any: ...


class TextSource:
    """Seeded random English-like text of a requested length in tokens.

    With a (fast) tokenizer the text is cut at the last whole word that fits, so a piece has
    between n - 2 and n tokens; without one, one word counts as one token (true for WORDS with
    SmolLM2's tokenizer, roughly true for other BPE vocabularies).
    """

    def __init__(self, tokenizer: Tokenizer | None = None) -> None:
        self.tokenizer = tokenizer

    def words(self, rng: random.Random, n: int) -> list[str]:
        """n words grouped into sentences (capital first word, full stop) for natural text."""
        out: list[str] = []
        while len(out) < n:
            sentence = [rng.choice(WORDS) for _ in range(rng.randint(6, 14))]
            sentence[0] = sentence[0].capitalize()
            sentence[-1] += "."
            out.extend(sentence)
        return out[:n]

    def text(self, rng: random.Random, n_tokens: int) -> str:
        if n_tokens <= 0:
            return ""
        # Capitals and full stops cost extra tokens: draw some spare words, then trim.
        words = self.words(rng, n_tokens + n_tokens // 4 + 4)
        if self.tokenizer is None:
            return " ".join(words[:n_tokens])
        return self._fit(words, n_tokens)

    def _fit(self, words: list[str], n_tokens: int) -> str:
        assert self.tokenizer is not None
        text = " ".join(words)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        if len(offsets) <= n_tokens:
            return text
        end = offsets[n_tokens - 1][1]
        # Word ends in text, to cut at the last whole word inside the first n tokens.
        ends, pos = [], 0
        for w in words:
            pos += len(w)
            ends.append(pos)
            pos += 1
        k = bisect.bisect_right(ends, end)
        return " ".join(words[:max(k, 1)])

    def count(self, text: str) -> int:
        if self.tokenizer is None:
            return len(text.split())
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def compose(self, rng: random.Random, n_tokens: int, head: str = "", tail: str = "",
                lower_first: bool = False) -> str:
        """head + random words + tail, n_tokens in all (at most; at least n - 2 or so)."""
        words = self.words(rng, n_tokens + n_tokens // 4 + 4)
        if lower_first:
            words[0] = words[0].lower()

        def build(k: int) -> str:
            body = " ".join(words[:k])
            return head + (body.rstrip(".") if tail else body) + tail

        if self.tokenizer is None:
            return build(max(n_tokens - len(head.split()) - (1 if tail else 0), 1))
        # The largest word count that fits; token counts grow with k, so bisect.
        lo, hi = 1, len(words)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.count(build(mid)) <= n_tokens:
                lo = mid
            else:
                hi = mid - 1
        return build(lo)

    def question(self, rng: random.Random, n_tokens: int) -> str:
        return self.compose(rng, n_tokens, head=rng.choice(QUESTION_STARTS) + " ", tail="?",
                            lower_first=True)


@dataclass(frozen=True)
class Session:
    """One client's requests, sent in order.

    chat: turns are user messages; request k sends system (if any), turns[0], reply 0, ...,
    turns[k]. completions: turns are whole prompts, sent as they are.
    """

    sid: str
    api: Api
    turns: tuple[str, ...]
    max_tokens: int
    system: str | None = None
    group: int | None = None  # shared-prefix group / RAG first document, for analysis


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    sessions: tuple[Session, ...]
    max_concurrency: int  # sessions in flight at once
    request_rate: float | None  # Poisson session arrivals per second; None: all at once
    seed: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def num_requests(self) -> int:
        return sum(len(s.turns) for s in self.sessions)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description (no prompt text)."""
        return {"name": self.name, "description": self.description,
                "num_sessions": len(self.sessions), "num_requests": self.num_requests,
                "max_concurrency": self.max_concurrency, "request_rate": self.request_rate,
                "seed": self.seed, "params": dict(self.params)}

    def to_dict(self) -> dict[str, Any]:
        """Everything, prompts included."""
        return {**self.summary(), "sessions": [asdict(s) for s in self.sessions]}


def _rng(name: str, seed: int) -> random.Random:
    # A str seed is hashed with SHA-512: stable across processes and Python versions.
    return random.Random(f"radixrt-bench:{name}:{seed}")


def shared_prefix(num_groups: int = 4, prompts_per_group: int = 8, system_tokens: int = 1024,
                  question_tokens: int = 64, output_tokens: int = 32, max_concurrency: int = 8,
                  request_rate: float | None = None, seed: int = 0,
                  tokenizer: Tokenizer | None = None) -> Workload:
    rng = _rng("shared_prefix", seed)
    src = TextSource(tokenizer)
    systems = [src.compose(rng, system_tokens,
                           head=f"You are assistant number {g}. Use the following background.\n")
               for g in range(num_groups)]
    sessions = [Session(sid=f"g{g}-p{p}", api="chat", turns=(src.question(rng, question_tokens),),
                        max_tokens=output_tokens, system=systems[g], group=g)
                for g in range(num_groups) for p in range(prompts_per_group)]
    # Interleave the groups: users of different apps arrive mixed, not group by group.
    rng.shuffle(sessions)
    return Workload(
        name="shared_prefix",
        description=f"{num_groups} groups x {prompts_per_group} prompts: a {system_tokens}-token "
                    f"system prompt per group + a {question_tokens}-token question -> "
                    f"{output_tokens} tokens",
        sessions=tuple(sessions), max_concurrency=max_concurrency, request_rate=request_rate,
        seed=seed,
        params={"num_groups": num_groups, "prompts_per_group": prompts_per_group,
                "system_tokens": system_tokens, "question_tokens": question_tokens,
                "output_tokens": output_tokens})


def multi_turn(num_clients: int = 8, num_rounds: int = 4, first_turn_tokens: int = 512,
               turn_tokens: int = 64, output_tokens: int = 32, request_rate: float | None = 1.0,
               max_concurrency: int | None = None, system_tokens: int = 0, seed: int = 0,
               tokenizer: Tokenizer | None = None) -> Workload:
    """system_tokens > 0: each client has a system prompt of its own (an app's long
    instructions), so what a cache can reuse is the client's own history, round after round."""
    rng = _rng("multi_turn", seed)
    src = TextSource(tokenizer)
    sessions = []
    for c in range(num_clients):
        system = (src.compose(rng, system_tokens, head=f"You are the assistant of client {c}. "
                              "Follow these instructions.\n") if system_tokens > 0 else None)
        first = (src.compose(rng, first_turn_tokens,
                             head="Read this document, then answer my questions.\n")
                 if system is None else src.question(rng, first_turn_tokens))
        follow = [src.question(rng, turn_tokens) for _ in range(num_rounds - 1)]
        sessions.append(Session(sid=f"c{c}", api="chat", turns=(first, *follow),
                                max_tokens=output_tokens, system=system))
    arrivals = "all at once" if request_rate is None else f"at {request_rate}/s (Poisson)"
    opening = (f"a {system_tokens}-token system prompt each, a {first_turn_tokens}-token first "
               "question" if system_tokens > 0 else f"{first_turn_tokens}-token first message")
    return Workload(
        name="multi_turn",
        description=f"{num_clients} clients x {num_rounds} rounds: {opening}, {turn_tokens}-token "
                    f"follow-ups, {output_tokens} tokens per reply, clients arrive {arrivals}",
        sessions=tuple(sessions), max_concurrency=max_concurrency or num_clients,
        request_rate=request_rate, seed=seed,
        params={"num_clients": num_clients, "num_rounds": num_rounds,
                "first_turn_tokens": first_turn_tokens, "turn_tokens": turn_tokens,
                "output_tokens": output_tokens, "system_tokens": system_tokens})


def rag(num_docs: int = 6, doc_tokens: int = 384, num_questions: int = 24, docs_per_question: int = 2,
        question_tokens: int = 32, output_tokens: int = 32, max_concurrency: int = 8,
        request_rate: float | None = None, system_tokens: int = 0, seed: int = 0,
        tokenizer: Tokenizer | None = None) -> Workload:
    """system_tokens > 0: chat requests with one shared system prompt (the app's instructions)
    and the documents plus the question as the user message; else plain completions."""
    if not 1 <= docs_per_question <= num_docs:
        raise ValueError("docs_per_question must be in [1, num_docs]")
    rng = _rng("rag", seed)
    src = TextSource(tokenizer)
    docs = [src.text(rng, doc_tokens - 8) for _ in range(num_docs)]
    system = (src.compose(rng, system_tokens, head="You answer questions from documents. "
                          "Follow these rules.\n") if system_tokens > 0 else None)
    sessions = []
    for q in range(num_questions):
        # Canonical order (by index) is what makes prompts over the same documents share.
        chosen = sorted(rng.sample(range(num_docs), docs_per_question))
        context = "\n\n".join(f"Document {d + 1}:\n{docs[d]}" for d in chosen)
        prompt = (f"{context}\n\nAnswer the question using the documents above.\n"
                  f"Question: {src.question(rng, question_tokens)}\nAnswer:")
        sessions.append(Session(sid=f"q{q}", api="completions" if system is None else "chat",
                                turns=(prompt,), max_tokens=output_tokens, system=system,
                                group=chosen[0]))
    head = f"a {system_tokens}-token system prompt + " if system is not None else ""
    return Workload(
        name="rag",
        description=f"{num_docs} documents of {doc_tokens} tokens; {num_questions} questions of "
                    f"{question_tokens} tokens, each over {head}{docs_per_question} random "
                    f"documents (canonical order) -> {output_tokens} tokens",
        sessions=tuple(sessions), max_concurrency=max_concurrency, request_rate=request_rate,
        seed=seed,
        params={"num_docs": num_docs, "doc_tokens": doc_tokens, "num_questions": num_questions,
                "docs_per_question": docs_per_question, "question_tokens": question_tokens,
                "output_tokens": output_tokens, "system_tokens": system_tokens})


def unique(num_prompts: int = 24, prompt_tokens: int = 512, output_tokens: int = 32,
           max_concurrency: int = 8, request_rate: float | None = None, seed: int = 0,
           tokenizer: Tokenizer | None = None) -> Workload:
    rng = _rng("unique", seed)
    src = TextSource(tokenizer)
    # Completions, not chat: a chat template would give every prompt a common head.
    sessions = tuple(Session(sid=f"u{i}", api="completions",
                             turns=(src.text(rng, prompt_tokens),), max_tokens=output_tokens)
                     for i in range(num_prompts))
    return Workload(
        name="unique",
        description=f"{num_prompts} independent {prompt_tokens}-token prompts -> {output_tokens} "
                    "tokens (no shared prefix: the control)",
        sessions=sessions, max_concurrency=max_concurrency, request_rate=request_rate, seed=seed,
        params={"num_prompts": num_prompts, "prompt_tokens": prompt_tokens,
                "output_tokens": output_tokens})


GENERATORS = {"shared_prefix": shared_prefix, "multi_turn": multi_turn, "rag": rag,
              "unique": unique}

# Sizes per preset. quick: SGLang's shapes scaled to finish in minutes on 2 CPU cores (the
# HF baseline serves one request at a time, so it sets the pace); full: 4x the requests;
# cpu-peer: radixrt against llama-server, concurrency matched to its 4 slots.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "shared_prefix": {"num_groups": 4, "prompts_per_group": 8, "system_tokens": 1024,
                          "question_tokens": 64, "output_tokens": 32, "max_concurrency": 8},
        "multi_turn": {"num_clients": 8, "num_rounds": 4, "first_turn_tokens": 512,
                       "turn_tokens": 64, "output_tokens": 32, "request_rate": 1.0},
        "rag": {"num_docs": 6, "doc_tokens": 384, "num_questions": 24, "docs_per_question": 2,
                "question_tokens": 32, "output_tokens": 32, "max_concurrency": 8},
        "unique": {"num_prompts": 24, "prompt_tokens": 512, "output_tokens": 32,
                   "max_concurrency": 8},
    },
    "full": {
        "shared_prefix": {"num_groups": 8, "prompts_per_group": 16, "system_tokens": 2048,
                          "question_tokens": 128, "output_tokens": 64, "max_concurrency": 16},
        "multi_turn": {"num_clients": 16, "num_rounds": 6, "first_turn_tokens": 1024,
                       "turn_tokens": 128, "output_tokens": 64, "request_rate": 0.5},
        "rag": {"num_docs": 10, "doc_tokens": 512, "num_questions": 64, "docs_per_question": 3,
                "question_tokens": 64, "output_tokens": 64, "max_concurrency": 16},
        "unique": {"num_prompts": 64, "prompt_tokens": 1024, "output_tokens": 64,
                   "max_concurrency": 16},
    },
    # The shapes of issue 9's measurements against llama.cpp's llama-server (-np 4): four
    # requests in flight, one per server slot; every prompt + reply fits a 2048-token slot.
    "cpu-peer": {
        "shared_prefix": {"num_groups": 4, "prompts_per_group": 6, "system_tokens": 1024,
                          "question_tokens": 64, "output_tokens": 32, "max_concurrency": 4},
        "multi_turn": {"num_clients": 4, "num_rounds": 4, "system_tokens": 680,
                       "first_turn_tokens": 64, "turn_tokens": 64, "output_tokens": 32,
                       "request_rate": None},
        "rag": {"num_docs": 5, "doc_tokens": 384, "num_questions": 20, "docs_per_question": 2,
                "system_tokens": 256, "question_tokens": 32, "output_tokens": 24,
                "max_concurrency": 4},
        "unique": {"num_prompts": 16, "prompt_tokens": 512, "output_tokens": 32,
                   "max_concurrency": 4},
    },
}


def build_workloads(names: Sequence[str], preset: str = "quick", seed: int = 0,
                    tokenizer: Tokenizer | None = None,
                    overrides: dict[str, dict[str, Any]] | None = None) -> list[Workload]:
    """The named workloads at a preset's sizes (overrides: per-workload keyword changes)."""
    out = []
    for name in names:
        if name not in GENERATORS:
            raise ValueError(f"unknown workload {name!r}; choose from {', '.join(GENERATORS)}")
        kwargs = {**PRESETS[preset][name], **(overrides or {}).get(name, {})}
        out.append(GENERATORS[name](seed=seed, tokenizer=tokenizer, **kwargs))
    return out
