"""Structured output through the scheduler + runner (tiny random model: the grammar alone must
make every output valid, whatever the model prefers)."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from transformers import AutoTokenizer

from radixrt.config import EngineConfig
from radixrt.grammar.numbers import int_range, number_regex
from radixrt.grammar.spec import check_spec
from radixrt.grammar.vocabulary import build_vocabulary, load_vocabulary, token_bytes
from radixrt.sampling_params import InvalidRequestError
from radixrt.testing.local_engine import LocalEngine
from radixrt.testing.schemas import SCHEMAS

# Every sampling method goes through the mask: cycle these over the samples.
METHODS = [
    {"temperature": 1.0},
    {"temperature": 1.0, "top_k": 5},
    {"temperature": 0.8, "top_p": 0.9},
    {"temperature": 1.0, "min_p": 0.05},
    {"temperature": 1.0, "repetition_penalty": 1.3, "frequency_penalty": 0.5},
    {"temperature": 0.0},
    {"temperature": 1.0, "logit_bias": {"90": 50.0}},  # pushes a token the grammar may bar
]
SAMPLES_PER_SCHEMA = 20


@pytest.fixture(scope="module")
def tiny(make_tiny_model):
    return make_tiny_model("llama")


@pytest.fixture(scope="module")
def tokenizer(tiny):
    return AutoTokenizer.from_pretrained(tiny)


def test_vocabulary_maps_byte_level_pieces_to_raw_bytes(tokenizer):
    vocab = tokenizer.get_vocab()
    # "Ġ" is GPT-2's printable stand-in for the space byte.
    piece = next(p for p in vocab if p.startswith("Ġ") and p[1:].isalpha())
    assert token_bytes(piece, True) == b" " + piece[1:].encode()
    for tid in (100, 5000, 30000):
        assert token_bytes(tokenizer.convert_ids_to_tokens(tid), True) == \
            tokenizer.decode([tid]).encode()
    v = build_vocabulary(tokenizer, eos_id=2)
    assert v.get_eos_token_id() == 2
    assert v.get(b" " + piece[1:].encode()) == [vocab[piece]]


def test_vocabulary_from_tokenizer_json_equals_transformers_one(tiny, tokenizer):
    # The server reads tokenizer.json without transformers; both ways must agree exactly.
    eos = tokenizer.eos_token_id
    assert load_vocabulary(tiny, eos) == build_vocabulary(tokenizer, eos)
    assert load_vocabulary(tiny, eos) != build_vocabulary(tokenizer, eos + 1)


def test_number_bounds_are_exact():
    for lo, hi in [(0, 120), (-5, 5), (7, 1003), (None, -3), (12, None)]:
        r = int_range(lo, hi)
        for v in range(-1200, 1200):
            assert (re.fullmatch(r, str(v)) is not None) == \
                ((lo is None or v >= lo) and (hi is None or v <= hi)), (lo, hi, v)
    r = number_regex({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1})
    assert re.fullmatch(r, "0.5") and re.fullmatch(r, "0.000001")
    assert not any(re.fullmatch(r, s) for s in ("0", "1", "0.0", "1.5", "-0.5"))


@pytest.mark.parametrize("bad, param", [
    ({"json_schema": "{not json"}, "json_schema"),
    ({"json_schema": json.dumps({"type": "frobnicate"})}, "json_schema"),
    ({"json_schema": json.dumps({"type": "integer", "minimum": 5, "maximum": 1})},
     "json_schema"),
    ({"regex": "(unclosed"}, "regex"),
    ({"regex": "a", "json_schema": "{}"}, "regex"),
])
def test_invalid_constraints_are_named(bad, param):
    with pytest.raises(InvalidRequestError) as e:
        check_spec(bad.get("regex"), bad.get("json_schema"))
    assert e.value.param == param


def test_sampled_json_validates_under_ten_schemas(tiny, tokenizer):
    """200 sampled completions (temperature ~1, fixed seeds, every sampling method) under 10
    schemas: each one parses and validates."""
    engine = LocalEngine(EngineConfig(model_path=str(tiny), page_size=16,
                                      max_total_tokens=64 * 1024, max_running_requests=256))
    prompt = tokenizer.encode("Give me JSON:")
    rids = []
    for s, schema in enumerate(SCHEMAS):
        for k in range(SAMPLES_PER_SCHEMA):
            rid = f"s{s}-{k}"
            engine.add(rid, prompt, {"max_new_tokens": 200, "seed": 1000 * s + k,
                                     "json_schema": json.dumps(schema),
                                     **METHODS[k % len(METHODS)]})
            rids.append((rid, schema))
    outs = engine.run(check=True)
    for rid, schema in rids:
        o = outs[rid]
        assert o.error is None and o.finish_reason == "stop", (rid, o)
        assert o.output_ids[-1] == 2  # EOS, allowed only once the grammar accepts
        text = tokenizer.decode(o.output_ids, skip_special_tokens=True)
        jsonschema.validate(json.loads(text), schema)
    assert engine.scheduler.kv.allocator.num_free + engine.scheduler.cache.evictable_pages \
        == engine.scheduler.num_pages
    compiler = engine.scheduler.grammar.compiler
    assert compiler.misses == len(SCHEMAS) and compiler.hits == len(rids) - len(SCHEMAS)


@pytest.mark.parametrize("overlap", [False, True])
def test_regex_outputs_full_match(tiny, tokenizer, overlap):
    # With overlap the next mask needs the token still in flight: the pipeline takes it
    # back first, so constrained output stays valid (and unconstrained requests beside it run).
    engine = LocalEngine(EngineConfig(model_path=str(tiny), page_size=16, max_total_tokens=8192),
                         overlap=overlap)
    engine.add("free", tokenizer.encode("Free text:"), {"max_new_tokens": 12, "ignore_eos": True})
    patterns = [r"(yes|no)", r"[0-9]{3}-[a-z]{2,4}", r"\((\+|-)[1-9][0-9]?\)", r"[A-Z][a-z]{1,5} ok"]
    prompt = tokenizer.encode("Answer:")
    for i, pat in enumerate(patterns):
        for k in range(3):
            engine.add(f"p{i}-{k}", prompt, {"max_new_tokens": 40, "seed": k, "regex": pat})
    outs = engine.run(check=True)
    for i, pat in enumerate(patterns):
        for k in range(3):
            o = outs[f"p{i}-{k}"]
            assert o.finish_reason == "stop", o
            assert re.fullmatch(pat, tokenizer.decode(o.output_ids, skip_special_tokens=True))
    assert len(outs["free"].output_ids) == 12


def test_logprobs_are_of_the_masked_distribution(tiny, tokenizer):
    engine = LocalEngine(EngineConfig(model_path=str(tiny), page_size=16, max_total_tokens=4096))
    engine.add("a", tokenizer.encode("Pick:"), {"max_new_tokens": 4, "regex": "(yes|no)",
                                                "logprobs": True, "temperature": 0})
    o = engine.run()["a"]
    first = o.logprobs[0]
    # Few tokens are allowed at the start, so their masked logprob is far above what the
    # full 49k-token distribution gives any token of a random model.
    assert first > -6.0, first
    assert o.logprobs[-1] == pytest.approx(0.0, abs=1e-4)  # EOS is then the only option


def test_invalid_grammar_fails_only_its_request(tiny, tokenizer):
    """A constraint that passes the tokenizer's check but cannot compile (here: handed to the
    scheduler directly) fails alone; the others finish."""
    engine = LocalEngine(EngineConfig(model_path=str(tiny), page_size=16, max_total_tokens=4096))
    prompt = tokenizer.encode("x")
    engine.add("bad", prompt, {"max_new_tokens": 8, "regex": "(unclosed"})
    engine.add("good", prompt, {"max_new_tokens": 8, "regex": "[ab]{3}"})
    engine.add("free", prompt, {"max_new_tokens": 8, "ignore_eos": True})
    outs = engine.run(check=True)
    assert outs["bad"].finish_reason == "abort" and "regex" in outs["bad"].error
    assert outs["good"].finish_reason == "stop" and outs["free"].finish_reason == "length"


def test_retraction_mid_grammar_keeps_output_valid(tiny, tokenizer):
    """A KV pool too small for the batch: requests are retracted mid-grammar, redo their
    prefill and go on from the guide state after their kept tokens. The outputs outgrow the
    admission's reserve (half of max_new_tokens), so the pool runs dry."""
    pattern = r"[01]{40}"  # digits are single tokens: 40 tokens, then EOS
    engine = LocalEngine(EngineConfig(model_path=str(tiny), page_size=4, max_total_tokens=96,
                                      max_running_requests=8))
    prompt = tokenizer.encode("Bits:")
    for k in range(6):
        engine.add(f"r{k}", prompt, {"max_new_tokens": 48, "seed": k, "temperature": 1.0,
                                     "regex": pattern})
    outs = engine.run(check=True)
    assert engine.scheduler.stats.retractions > 0
    for k in range(6):
        o = outs[f"r{k}"]
        assert o.finish_reason == "stop", o
        assert re.fullmatch(pattern, tokenizer.decode(o.output_ids, skip_special_tokens=True))


def test_abort_while_grammar_compiles(tiny, tokenizer):
    from radixrt.scheduler.request import ReqState

    engine = LocalEngine(EngineConfig(model_path=str(tiny), page_size=16, max_total_tokens=4096))
    s = engine.scheduler
    engine.add("a", tokenizer.encode("x"), {"max_new_tokens": 8, "regex": "[0-9]{4}"})
    assert s.requests["a"].state is ReqState.GRAMMAR_PENDING and s.has_work
    s.abort("a")
    outs = engine.run(check=True)
    assert outs["a"].finish_reason == "abort" and outs["a"].output_ids == []
    assert not s.grammar.pending and not s.has_work
