"""OpenAI request parsing: accepted shapes, and which parameter a 400 names."""

from __future__ import annotations

import json
from typing import Any

import pytest

from radixrt.frontend.answers import ChatCompletionChunk, ChatStreamChoice, DeltaMessage, UsageInfo
from radixrt.frontend.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerateRequest,
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
             logprobs=True, top_logprobs=3, cache_salt="s", user="u",
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
    ({"top_k": -2}, "top_k"),
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


# ---------------------------------------------------------------- every field works or is a 400


def error_of(body: dict[str, Any], model: type = ChatCompletionRequest) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        parse_request(model, json.dumps(body).encode())
    return info.value


@pytest.mark.parametrize("field, value", [
    ("reasoning_effort", "low"), ("functions", [{"name": "f"}]), ("function_call", "auto"),
    ("audio", {"voice": "x"}), ("modalities", ["text", "audio"]), ("prediction", {}),
    ("web_search_options", {}), ("service_tier", "flex"), ("store", True),
    ("metadata", {"a": "b"}), ("verbosity", "low"), ("moderation", True),
])
def test_unimplemented_chat_fields_are_400_naming_them(field: str, value: Any) -> None:
    err = error_of({"messages": MSG, field: value})
    assert err.param == field and f"{field} is not supported" in str(err)


@pytest.mark.parametrize("field, value", [
    ("best_of", 3), ("suffix", "tail"), ("store", True),
])
def test_unimplemented_completion_fields_are_400(field: str, value: Any) -> None:
    err = error_of({"prompt": "x", field: value}, CompletionRequest)
    assert err.param == field and "not supported" in str(err)


def test_echo_asks_for_prompt_logprobs_only_with_logprobs() -> None:
    assert completion(prompt="x", echo=True).to_sampling_params().prompt_logprobs is None
    assert completion(prompt="x", echo=True, logprobs=0).to_sampling_params().prompt_logprobs == 0
    assert completion(prompt="x", echo=True, logprobs=3).to_sampling_params().prompt_logprobs == 3
    assert completion(prompt="x", logprobs=3).to_sampling_params().prompt_logprobs is None


def test_unknown_fields_are_400_naming_them() -> None:
    err = error_of({"messages": MSG, "temprature": 0.5})
    assert err.param == "temprature"
    assert str(err) == "Unrecognized request argument supplied: temprature"
    err = error_of({"messages": [{"role": "user", "content": "x", "colour": 1}]})
    assert err.param == "messages" and "messages.0.colour" in str(err)
    err = error_of({"messages": MSG, "stream_options": {"include_usage": True, "x": 1}})
    assert err.param == "stream_options"
    err = error_of({"text": "x", "bogus": 1}, GenerateRequest)
    assert err.param == "bogus"


def test_values_that_ask_for_what_the_server_does_are_accepted() -> None:
    # user / safety_identifier: opaque ids for abuse monitoring; prompt_cache_key: a routing
    # hint; store false, one service tier, text modality, best_of 1, echo false: the default.
    r = chat(user="u", safety_identifier="s", prompt_cache_key="k", store=False,
             service_tier="auto", modalities=["text"],
             stream_options={"include_usage": True, "include_obfuscation": False})
    assert r.include_usage
    completion(prompt="x", best_of=1, echo=False, suffix="", store=False)
    assert error_of({"messages": MSG, "store": 0}).param == "store"  # 0 is not false


def test_null_means_default() -> None:
    nulls = {k: None for k in ("n", "stream", "logprobs", "top_logprobs", "presence_penalty",
                               "frequency_penalty", "repetition_penalty", "stop", "seed",
                               "temperature", "top_p", "top_k", "min_p", "max_tokens",
                               "stream_options", "logit_bias", "min_tokens", "ignore_eos",
                               "user", "echo", "best_of", "suffix", "store", "metadata",
                               "reasoning_effort", "skip_special_tokens")}
    r = chat(**nulls)
    assert (r.n, r.stream, r.logprobs) == (1, False, False)
    assert r.to_sampling_params() == chat().to_sampling_params()
    c = completion(prompt="x", **{**nulls, "logprobs": None})
    assert c.to_sampling_params() == completion(prompt="x").to_sampling_params()
    # A required field stays required.
    assert error_of({"messages": None}).param == "messages"
    g = parse_request(GenerateRequest, b'{"text": "x", "sampling_params": {"top_p": null}}')
    assert g.to_sampling_params().top_p == 1.0


@pytest.mark.parametrize("top_k", [0, -1])
def test_top_k_zero_and_minus_one_mean_no_limit(top_k: int) -> None:
    sp = chat(top_k=top_k).to_sampling_params()
    assert sp.top_k == -1
    check_sampling(sp, VOCAB, 2048)
    g = parse_request(GenerateRequest, json.dumps(
        {"text": "x", "sampling_params": {"top_k": top_k}}).encode())
    assert g.to_sampling_params().top_k == -1


def test_model_defaults_precedence() -> None:
    model = {"temperature": 0.6, "top_p": 0.9, "top_k": 20, "min_p": 0.05,
             "repetition_penalty": 1.1, "max_new_tokens": 64}
    sp = chat().to_sampling_params(model)  # nothing given: the model's
    assert (sp.temperature, sp.top_p, sp.top_k, sp.min_p, sp.repetition_penalty,
            sp.max_new_tokens) == (0.6, 0.9, 20, 0.05, 1.1, 64)
    sp = chat(temperature=0, top_p=1, top_k=0, min_p=0, repetition_penalty=1,
              max_tokens=5).to_sampling_params(model)  # the user's, even when "off"
    assert (sp.temperature, sp.top_p, sp.top_k, sp.min_p, sp.repetition_penalty,
            sp.max_new_tokens) == (0.0, 1.0, -1, 0.0, 1.0, 5)
    sp = chat(temperature=None).to_sampling_params(model)  # null: the model's default
    assert sp.temperature == 0.6
    # Without model defaults: OpenAI's (completions: 16 tokens; chat: the rest of the context).
    assert completion(prompt="x").to_sampling_params({}).max_new_tokens == 16
    assert completion(prompt="x").to_sampling_params({"max_new_tokens": 64}).max_new_tokens == 64
    g = parse_request(GenerateRequest, b'{"text": "x", "sampling_params": {"top_p": 0.5}}')
    assert (g.to_sampling_params(model).top_p, g.to_sampling_params(model).temperature) == (
        0.5, 0.6)


def test_model_defaults_from_generation_config(tmp_path: Any) -> None:
    from radixrt.model_info import ModelInfo

    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 10}))
    (tmp_path / "generation_config.json").write_text(json.dumps({
        "temperature": 0.7, "top_p": 0.8, "top_k": 40, "do_sample": True, "max_new_tokens": 32,
        "eos_token_id": [2, 3], "repetition_penalty": "bad"}))
    info = ModelInfo.from_dir(tmp_path)
    assert info.sampling_defaults == {"temperature": 0.7, "top_p": 0.8, "top_k": 40,
                                      "max_new_tokens": 32}


def test_generation_prompt_and_continue_final_message() -> None:
    assert chat().generation_prompt() is True
    assert chat(continue_final_message=True).generation_prompt() is False
    assert chat(add_generation_prompt=False).generation_prompt() is False
    with pytest.raises(InvalidRequestError) as info:
        chat(continue_final_message=True, add_generation_prompt=True).generation_prompt()
    assert info.value.param == "add_generation_prompt"
    assert chat(include_stop_str_in_output=True).to_sampling_params().include_stop_str_in_output


def test_every_openai_client_field_is_handled() -> None:
    """Each parameter of the official client's create() is a field or a known refusal."""
    from openai.types import completion_create_params as legacy
    from openai.types.chat import completion_create_params as chat_params

    for params, model in ((chat_params.CompletionCreateParamsBase, ChatCompletionRequest),
                          (legacy.CompletionCreateParamsBase, CompletionRequest)):
        for name in params.__annotations__:
            assert name in model.model_fields or name in model.UNSUPPORTED, name
