"""IncrementalDetokenizer, StopStringMatcher, TokenTexts and the tokenizer process's core
(TokenizerManager, no sockets), with the real default tokenizer."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from radixrt.ipc.messages import AbortReq, GenerateReq, TokenizeReq, TokenOut, TokenOutBatch
from radixrt.model_info import ModelInfo
from radixrt.sampling_params import SamplingParams
from radixrt.tokenizer.detokenize import (
    REPLACEMENT,
    IncrementalDetokenizer,
    StopStringMatcher,
    TokenTexts,
)
from radixrt.tokenizer.process import TokenizerManager
from radixrt.tokenizer.tokenize import PromptTokenizer


@pytest.fixture(scope="module")
def tok(default_model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(default_model_dir))


def stream(tok: PreTrainedTokenizerBase, ids: list[int], chunk: int = 1,
           skip_special_tokens: bool = True) -> list[str]:
    d = IncrementalDetokenizer(tok, skip_special_tokens=skip_special_tokens)
    deltas = [d.add(ids[i:i + chunk]) for i in range(0, len(ids), chunk)]
    deltas.append(d.flush())
    return deltas


def full(tok: PreTrainedTokenizerBase, ids: list[int], skip: bool = True) -> str:
    return tok.decode(ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)


TEXTS = [
    "Hello world, this is a plain sentence.",
    "Emoji 🎉🎉 and family 👨‍👩‍👧‍👦 and flags 🇫🇷🇯🇵 split over byte tokens.",
    "CJK 你好世界，東京は日本の首都です。한국어 텍스트",
    "Mixed: naïve café — «quotes» ∑∫√ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢\n\ttabs  and   spaces",
]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_and_no_broken_chars(tok: PreTrainedTokenizerBase, text: str) -> None:
    ids = tok.encode(text)
    assert len(ids) > 3
    deltas = stream(tok, ids)
    assert "".join(deltas) == text == full(tok, ids)
    assert not any(REPLACEMENT in d for d in deltas)  # never a half character


def test_multibyte_chars_are_split_over_tokens(tok: PreTrainedTokenizerBase) -> None:
    # The test above only means something if single tokens hold partial characters.
    ids = tok.encode("🎉你")
    assert any(REPLACEMENT in tok.decode([i]) for i in ids)
    deltas = stream(tok, ids)
    assert "".join(deltas) == "🎉你"
    assert "" in deltas  # something was held back until the character was complete


@pytest.mark.parametrize("chunk", [1, 2, 5])
@pytest.mark.parametrize("skip", [True, False])
def test_random_token_sequences_match_full_decode(tok: PreTrainedTokenizerBase, chunk: int,
                                                  skip: bool) -> None:
    rng = random.Random(1234 + chunk)
    vocab = len(tok)
    special = list(tok.all_special_ids)
    for _ in range(150):
        n = rng.randint(1, 40)
        ids = [rng.randrange(vocab) if rng.random() > 0.05 else rng.choice(special)
               for _ in range(n)]
        assert "".join(stream(tok, ids, chunk, skip)) == full(tok, ids, skip), ids


def test_random_text_sequences_match_full_decode(tok: PreTrainedTokenizerBase) -> None:
    # Token runs the model would really produce: encodings of random multilingual text.
    rng = random.Random(7)
    alphabet = "abc xyz 0123 ,.!? éü ñ 你好世界 こんにちは 🎉👍🏽 ∑√ \n"
    for _ in range(100):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60)))
        ids = tok.encode(text)
        deltas = stream(tok, ids)
        assert "".join(deltas) == text
        assert not any(REPLACEMENT in d for d in deltas)


def test_special_tokens(tok: PreTrainedTokenizerBase) -> None:
    ids = tok.encode("Hi") + [tok.eos_token_id] + tok.encode(" there")
    assert "".join(stream(tok, ids)) == "Hi there"
    assert "".join(stream(tok, ids, skip_special_tokens=False)) == "Hi<|im_end|> there"


def test_window_stays_small(tok: PreTrainedTokenizerBase) -> None:
    d = IncrementalDetokenizer(tok)
    ids = tok.encode("word " * 500)
    out = []
    for i in ids:
        out.append(d.add([i]))
        assert len(d.ids) <= 4  # O(1) per token: only a short window is decoded
    assert "".join(out) + d.flush() == "word " * 500


def test_flush_emits_incomplete_tail(tok: PreTrainedTokenizerBase) -> None:
    ids = tok.encode("a🎉")[:-1]  # cut inside the emoji
    d = IncrementalDetokenizer(tok)
    text = d.add(ids)
    assert REPLACEMENT not in text
    assert text + d.flush() == full(tok, ids)


# ---------------------------------------------------------------- stop strings


def feed_all(stops: list[str], chunks: list[str]) -> tuple[str, str | None, list[str]]:
    m = StopStringMatcher(stops)
    emitted: list[str] = []
    for c in chunks:
        out, matched = m.feed(c)
        emitted.append(out)
        if matched is not None:
            return "".join(emitted), matched, emitted
    out, matched = m.feed("", final=True)
    emitted.append(out)
    return "".join(emitted), matched, emitted


def test_stop_string_across_chunks() -> None:
    text, matched, emitted = feed_all(["STOP"], ["Hello S", "T", "O", "P and more"])
    assert (text, matched) == ("Hello ", "STOP")
    assert all("S" not in e for e in emitted)  # a partial stop string is never emitted


def test_stop_string_partial_then_no_match() -> None:
    text, matched, emitted = feed_all(["STOP"], ["ab S", "T", "x"])
    assert (text, matched) == ("ab STx", None)
    assert emitted[0] == "ab "


def test_earliest_stop_wins_and_final_flush() -> None:
    assert feed_all(["world", "lo"], ["hello world"])[:2] == ("hel", "lo")
    assert feed_all(["xyz"], ["abc xy"])[:2] == ("abc xy", None)
    assert feed_all([], ["abc"])[:2] == ("abc", None)


def test_stop_string_overlapping_prefix() -> None:
    # "aab": after "aa" the tail "a" / "aa" may still start it.
    assert feed_all(["aab"], ["a", "a", "a", "b", "c"])[:2] == ("a", "aab")


def test_stop_strings_over_real_tokens(tok: PreTrainedTokenizerBase) -> None:
    text = "The capital of France is Paris. It is a big city."
    ids = tok.encode(text)
    for stop in ["Paris", "is P", ". It", "city.", "e c"]:
        d = IncrementalDetokenizer(tok)
        m = StopStringMatcher([stop])
        out = ""
        matched = None
        for i in ids:
            piece, matched = m.feed(d.add([i]))
            out += piece
            if matched:
                break
        assert matched == stop
        assert out == text[: text.index(stop)]


def test_token_texts(tok: PreTrainedTokenizerBase) -> None:
    tt = TokenTexts(tok)
    ids = tok.encode(" Paris 🎉")
    assert tt.text_of(ids[0]) == " Paris"
    assert bytes(tt.bytes_of(ids[0])) == b" Paris"
    raw = b"".join(bytes(tt.bytes_of(i)) for i in ids)
    assert raw.decode("utf-8") == " Paris 🎉"


# ---------------------------------------------------------------- the tokenizer process's core


@pytest.fixture(scope="module")
def manager(default_model_dir: Path, tok: PreTrainedTokenizerBase) -> TokenizerManager:
    info = ModelInfo.from_dir(default_model_dir, context_length=64)
    return TokenizerManager(info, PromptTokenizer(info, tok))


def token_out(rid: str, ids: list[int], finish: str | None = None,
              matched: int | None = None) -> TokenOutBatch:
    return TokenOutBatch([TokenOut(rid, ids, finish, matched, prompt_tokens=5,
                                   completion_tokens=len(ids))])


def submit(m: TokenizerManager, rid: str, **sampling: Any) -> GenerateReq:
    sched, front = m.handle_tokenize(TokenizeReq(rid, prompt="Hello there",
                                                 sampling=SamplingParams(**sampling)))
    assert front == [] and len(sched) == 1 and isinstance(sched[0], GenerateReq)
    return sched[0]


def test_manager_stop_string_aborts_the_scheduler(manager: TokenizerManager,
                                                  tok: PreTrainedTokenizerBase) -> None:
    submit(manager, "s1", max_new_tokens=40, stop=["Paris"])
    text, sched_msgs, final = "", [], None
    for i in tok.encode(" The capital is Paris. Yes"):
        sched, deltas = manager.handle_token_outs(token_out("s1", [i]))
        sched_msgs += sched
        text += "".join(d.text for d in deltas)
        if deltas and deltas[-1].finished:
            final = deltas[-1]
            break
    assert final is not None and (final.finish_reason, final.matched_stop) == ("stop", "Paris")
    assert text == " The capital is "
    assert [type(m).__name__ for m in sched_msgs] == ["AbortReq"]
    # Tokens the scheduler produced before it saw the abort are dropped.
    assert manager.handle_token_outs(token_out("s1", [5])) == ([], [])
    assert manager.handle_token_outs(token_out("s1", [], "abort")) == ([], [])


def test_manager_eos_and_length(manager: TokenizerManager, tok: PreTrainedTokenizerBase) -> None:
    submit(manager, "e1", max_new_tokens=5)
    ids = tok.encode("Hi 🎉")
    _, deltas = manager.handle_token_outs(token_out("e1", ids[:-1]))
    _, last = manager.handle_token_outs(token_out("e1", [ids[-1], 2], "stop", 2))
    assert "".join(d.text for d in deltas + last) == "Hi 🎉"
    assert (last[0].finished, last[0].finish_reason, last[0].matched_stop) == (True, "stop", 2)
    assert last[0].prompt_tokens == 5 and "e1" not in manager.requests


def test_manager_abort(manager: TokenizerManager) -> None:
    submit(manager, "a1", max_new_tokens=5)
    assert [type(m).__name__ for m in manager.handle_abort(AbortReq("a1"))[0]] == ["AbortReq"]
    assert manager.handle_token_outs(token_out("a1", [42])) == ([], [])
    _, deltas = manager.handle_token_outs(token_out("a1", [], "abort"))
    assert deltas[0].finished and deltas[0].finish_reason == "abort"
    assert manager.handle_abort(AbortReq("a1")) == ([], [])  # unknown by now: not forwarded


def test_manager_fills_default_max_tokens(manager: TokenizerManager) -> None:
    gen = submit(manager, "d1", max_new_tokens=None)
    assert gen.sampling.max_new_tokens == 64 - len(gen.input_ids)


@pytest.mark.parametrize("req, param", [
    (TokenizeReq("x", prompt=""), "prompt"),
    (TokenizeReq("x", prompt="word " * 80), "prompt"),
    (TokenizeReq("x", messages=[{"role": "user", "content": "word " * 80}]), "messages"),
    (TokenizeReq("x", messages=[]), "messages"),
    (TokenizeReq("x", messages=[{"role": "bot", "content": "hi"}]), "messages"),
    (TokenizeReq("x", input_ids=[1, 10**9]), "prompt"),
    (TokenizeReq("x", prompt="hi", sampling=SamplingParams(max_new_tokens=64)), "max_tokens"),
    (TokenizeReq("x", prompt="hi", sampling=SamplingParams(top_p=2.0)), "top_p"),
])
def test_manager_refusals(manager: TokenizerManager, req: TokenizeReq, param: str) -> None:
    sched, front = manager.handle_tokenize(req)
    assert sched == [], "accepted"
    [d] = front
    assert d.finished and d.error and d.error_param == param, d


def test_chat_template_with_text_parts(manager: TokenizerManager) -> None:
    p = manager.prompts
    plain = p.apply_chat_template([{"role": "user", "content": "a\nb"}])
    parts = p.apply_chat_template([{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    assert plain == parts
    text = manager.tokenizer.decode(plain)
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>user\na\nb<|im_end|>" in text


def test_manager_sends_token_strings_with_logprobs(manager: TokenizerManager,
                                                    tok: PreTrainedTokenizerBase) -> None:
    """The frontend has no tokenizer: logprob entries arrive with their text and bytes."""
    submit(manager, "l1", max_new_tokens=5, logprobs=True, top_logprobs=2)
    ids = tok.encode(" Paris 🎉")
    tops = [[(i, -0.1), (i + 1, -2.5)] for i in ids]
    out = TokenOut("l1", ids, "length", prompt_tokens=5, completion_tokens=len(ids),
                   logprobs=[-0.1] * len(ids), top_logprobs=tops)
    _, [d] = manager.handle_token_outs(TokenOutBatch([out]))
    assert [e.token_id for e in d.logprobs] == ids
    assert d.logprobs[0].token == " Paris" and bytes(d.logprobs[0].bytes) == b" Paris"
    assert b"".join(bytes(e.bytes) for e in d.logprobs).decode() == " Paris 🎉"
    assert [t.token_id for t in d.logprobs[0].top] == [ids[0], ids[0] + 1]
    assert d.logprobs[0].top[1].token == tok.decode([ids[0] + 1])
    # Without logprobs asked for, nothing is attached.
    submit(manager, "l2", max_new_tokens=5)
    _, [d] = manager.handle_token_outs(TokenOutBatch([TokenOut("l2", ids, "length")]))
    assert d.logprobs is None
