"""OpenAI request parsing: accepted shapes, and which parameter a 400 names."""

from __future__ import annotations

import json
from typing import Any

import pytest

from radixrt.frontend.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatStreamChoice,
    CompletionRequest,
    DeltaMessage,
    GenerateRequest,
    UsageInfo,
    check_sampling,
    parse_request,
)
from radixrt.sampling_params import InvalidRequestError

VOCAB = 49152
MSG = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> ChatCompletionRequest:
    return parse_request(ChatCompletionRequest, json.dumps({"model": "m", "messages": MSG,
                                                           **fields}).encode())


def completion(**fields: Any) -> CompletionRequest:
    return parse_request(CompletionRequest, json.dumps({"model": "m", **fields}).encode())


def param_of(fn: Any, *args: Any, **kwargs: Any) -> str | None:
    with pytest.raises(InvalidRequestError) as info:
        r = fn(*args, **kwargs)
        if hasattr(r, "to_sampling_params"):
            check_sampling(r.to_sampling_params(), VOCAB, 2048)
    return info.value.param


def test_chat_defaults_and_mapping() -> None:
    r = chat(max_tokens=7, temperature=0, top_p=0.5, stop="END", seed=3, n=2, top_k=5,
             min_p=0.1, repetition_penalty=1.1, min_tokens=2, stop_token_ids=[5],
             ignore_eos=True, skip_special_tokens=False, logit_bias={"17": -100},
             logprobs=True, top_logprobs=3, cache_salt="s", user="u", unknown_field=1,
             stream=True, stream_options={"include_usage": True})
    sp = r.to_sampling_params()
    assert (sp.max_new_tokens, sp.temperature, sp.top_p, sp.stop, sp.seed, sp.n) == (
        7, 0.0, 0.5, ["END"], 3, 2)
    assert (sp.top_k, sp.min_p, sp.repetition_penalty, sp.min_new_tokens) == (5, 0.1, 1.1, 2)
    assert sp.stop_token_ids == [5] and sp.ignore_eos and not sp.skip_special_tokens
    assert sp.logit_bias == {17: -100.0}
    assert sp.logprobs and sp.top_logprobs == 3
    assert r.include_usage and r.cache_salt == "s"
    sp.validate(VOCAB)
    d = chat().to_sampling_params()
    assert d.max_new_tokens is None  # the tokenizer fills in the rest of the context
    assert (d.temperature, d.top_p, d.top_k, d.n) == (1.0, 1.0, -1, 1)


def test_max_completion_tokens_wins() -> None:
    assert chat(max_tokens=5, max_completion_tokens=9).to_sampling_params().max_new_tokens == 9


def test_message_shapes() -> None:
    r = chat(messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None},
        {"role": "tool", "content": "42", "tool_call_id": "t1"},
    ])
    msgs = [m.to_dict() for m in r.messages]
    assert msgs[1]["content"] == [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert msgs[3] == {"role": "tool", "content": "42", "tool_call_id": "t1"}


def test_prompt_shapes() -> None:
    assert completion(prompt="x").prompts() == ["x"]
    assert completion(prompt=["x", "y"]).prompts() == ["x", "y"]
    assert completion(prompt=[1, 2, 3]).prompts() == [[1, 2, 3]]
    assert completion(prompt=[[1], [2, 3]]).prompts() == [[1], [2, 3]]
    assert completion(prompt="x", logprobs=2).to_sampling_params().top_logprobs == 2
    assert completion(prompt="x").to_sampling_params().max_new_tokens == 16  # OpenAI's default


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    (b"[1, 2]", None),
    (json.dumps({"messages": []}).encode(), "messages"),
    (json.dumps({"messages": "hi"}).encode(), "messages"),
    (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), "messages"),
    (json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).encode(),
     "messages"),
    (json.dumps({"messages": MSG, "temperature": "hot"}).encode(), "temperature"),
    (json.dumps({"messages": MSG, "max_tokens": "5"}).encode(), "max_tokens"),
    (json.dumps({"messages": MSG, "max_tokens": 1.5}).encode(), "max_tokens"),
    (json.dumps({"messages": MSG, "stream": "yes"}).encode(), "stream"),
    (json.dumps({"messages": MSG, "stop": 5}).encode(), "stop"),
    (json.dumps({"messages": MSG, "logprobs": 1}).encode(), "logprobs"),
])
def test_chat_type_errors(body: bytes, param: str | None) -> None:
    assert param_of(parse_request, ChatCompletionRequest, body) == param


@pytest.mark.parametrize("fields, param", [
    ({"max_tokens": 0}, "max_tokens"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": 0}, "top_k"),
    ({"min_p": 2}, "min_p"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"n": 0}, "n"),
    ({"n": 100}, "n"),
    ({"top_logprobs": 50, "logprobs": True}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"99999999": 1}}, "logit_bias"),
    ({"stop_token_ids": [VOCAB]}, "stop_token_ids"),
    ({"min_tokens": 9, "max_tokens": 3}, "min_tokens"),
])
def test_chat_range_errors(fields: dict[str, Any], param: str) -> None:
    assert param_of(chat, **fields) == param


@pytest.mark.parametrize("fields, param", [
    ({}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [1.5]}, "prompt"),
    ({"prompt": "x", "logprobs": 30}, "logprobs"),
    ({"prompt": "x", "logprobs": True}, "logprobs"),
    ({"prompt": "x", "echo": True}, "echo"),
])
def test_completion_errors(fields: dict[str, Any], param: str) -> None:
    def run() -> Any:
        r = completion(**fields)
        r.prompts()
        return r
    assert param_of(run) == param


def test_generate_request() -> None:
    r = parse_request(GenerateRequest, json.dumps(
        {"text": "hi", "sampling_params": {"max_new_tokens": 4, "stop": "x",
                                           "logit_bias": {"3": 1.0}}}).encode())
    sp = r.to_sampling_params()
    assert sp.max_new_tokens == 4 and sp.stop == ["x"] and sp.logit_bias == {3: 1.0}

    def bad(sp: dict[str, Any]) -> None:
        r = parse_request(GenerateRequest, json.dumps({"text": "hi", "sampling_params": sp})
                          .encode())
        check_sampling(r.to_sampling_params(), VOCAB, 2048)

    assert param_of(bad, {"temperature": "x"}) == "temperature"
    assert param_of(bad, {"nonsense": 1}) == "nonsense"
    assert param_of(bad, {"max_new_tokens": -1}) == "max_tokens"


def test_response_shapes() -> None:
    u = UsageInfo()
    assert u.model_dump()["prompt_tokens_details"] == {"cached_tokens": 0}  # always present
    c = ChatCompletionChunk(id="x", created=1, model="m", choices=[
        ChatStreamChoice(index=0, delta=DeltaMessage(content="hi"))])
    d = json.loads(c.model_dump_json())
    assert d["object"] == "chat.completion.chunk"
    assert d["choices"][0]["delta"] == {"content": "hi"}  # no "role": null
    assert d["choices"][0]["finish_reason"] is None
