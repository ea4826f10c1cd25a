"""Tool calling and reasoning content through the official openai client, against real
servers on loopback: a tiny random Qwen3 with a Hermes-style chat template that thinks
(`<tool_call>`, `<think>`; the hermes_qwen3 fixture of tests/e2e/conftest.py), and the default model (a template with no tool support: the
prompt-and-constrain fallback). Random weights cannot be asked to call a tool, so the tiny
model's outputs are shaped by a schema (tool_choice required / named) or by a regex on the
request; what is checked is the server's side: rendering, constraining, parsing, the shapes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import openai
import pytest
from openai import OpenAI

if TYPE_CHECKING:
    from conftest import ServerProcess

pytestmark = pytest.mark.timeout(300)

CITY = {"type": "string", "pattern": "^[a-z]{1,8}$"}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": CITY,
                                                    "days": {"type": "integer", "minimum": 1,
                                                             "maximum": 7}},
                   "required": ["city", "days"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {
        "zone": {"enum": ["utc", "cet"]}}, "required": ["zone"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]
HERMES_CALL = ('Sure\\.\n<tool_call>\n\\{"name": "get_weather", "arguments": \\{"city": '
               '"[a-z]{1,8}", "days": [1-7]\\}\\}\n</tool_call>')


@pytest.fixture(scope="module")
def qwen3(hermes_qwen3: Path, launch_server: Callable[..., ServerProcess]) -> OpenAI:
    server = launch_server("--model", str(hermes_qwen3), "--dtype", "float32",
                           "--max-total-tokens", "8192", "--served-model-name", "tiny")
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def smol(default_model_dir: Path, launch_server: Callable[..., ServerProcess]) -> OpenAI:
    server = launch_server("--model", str(default_model_dir), "--dtype", "float32",
                           "--max-total-tokens", "8192", "--served-model-name", "smol")
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def chat(client: OpenAI, messages: list[dict], **kw: Any) -> Any:
    model = client.models.list().data[0].id
    return client.chat.completions.create(
        model=model, messages=messages, **{"max_tokens": 80, "temperature": 1.0, "seed": 7, **kw})


def stream(client: OpenAI, messages: list[dict], **kw: Any) -> dict[str, Any]:
    """A streamed answer accumulated as the openai docs do: content, reasoning, calls."""
    out: dict[str, Any] = {"content": "", "reasoning": "", "calls": {}, "finish": None,
                           "heads": []}
    for chunk in chat(client, messages, stream=True, **kw):
        for c in chunk.choices:
            d = c.delta
            out["content"] += d.content or ""
            out["reasoning"] += getattr(d, "reasoning_content", None) or ""
            for t in d.tool_calls or []:
                if t.id is not None:  # a call's first delta: id, type, name, arguments ""
                    assert t.type == "function" and t.function.arguments == ""
                    out["heads"].append(t.function.name)
                    out["calls"][t.index] = {"id": t.id, "name": t.function.name, "args": ""}
                else:
                    assert t.function.name is None
                    out["calls"][t.index]["args"] += t.function.arguments
            out["finish"] = c.finish_reason or out["finish"]
    return out


def check_call(name: str, arguments: str) -> dict:
    tool = {"get_weather": WEATHER, "get_time": TIME}[name]
    args = json.loads(arguments)
    jsonschema.validate(args, tool["function"]["parameters"])
    return args


def round_trip(client: OpenAI, call: Any, **kw: Any) -> None:
    """The call's result goes back with the assistant's call; the model answers in text."""
    messages = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    final = chat(client, messages, tools=[WEATHER, TIME], tool_choice="none", max_tokens=8,
                 **kw)
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].message.content and final.choices[0].finish_reason in ("stop",
                                                                                    "length")
    # The history (the call and its result) reached the template.
    assert final.usage.prompt_tokens > chat(client, ASK, max_tokens=1).usage.prompt_tokens + 15


@pytest.mark.parametrize("choice", ["required", {"type": "function",
                                                 "function": {"name": "get_time"}}])
def test_forced_calls_round_trip(qwen3: OpenAI, choice: Any) -> None:
    r = chat(qwen3, ASK, tools=[WEATHER, TIME], tool_choice=choice, parallel_tool_calls=False)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    (call,) = c.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    check_call(call.function.name, call.function.arguments)
    if isinstance(choice, dict):
        assert call.function.name == "get_time"
    round_trip(qwen3, call)


def test_forced_calls_streamed_match_whole(qwen3: OpenAI) -> None:
    kw = {"tools": [WEATHER, TIME], "tool_choice": "required", "parallel_tool_calls": False}
    whole = chat(qwen3, ASK, **kw).choices[0].message.tool_calls
    got = stream(qwen3, ASK, **kw)
    assert got["finish"] == "tool_calls" and got["content"] == ""
    assert [(c["name"], c["args"]) for c in got["calls"].values()] == [
        (t.function.name, t.function.arguments) for t in whole]  # same seed, same call
    check_call(got["calls"][0]["name"], got["calls"][0]["args"])


def test_auto_parses_hermes_calls_whole_and_streamed(qwen3: OpenAI) -> None:
    kw = {"tools": [WEATHER], "extra_body": {"regex": HERMES_CALL}}
    r = chat(qwen3, ASK, **kw)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content == "Sure."
    (call,) = c.message.tool_calls
    assert call.function.name == "get_weather"
    check_call(call.function.name, call.function.arguments)
    # The tools went through the template (Hermes system turn): a longer prompt.
    assert r.usage.prompt_tokens > chat(qwen3, ASK, max_tokens=1).usage.prompt_tokens + 50
    got = stream(qwen3, ASK, **kw)
    assert got["content"] == "Sure." and got["finish"] == "tool_calls"
    assert got["calls"][0]["args"] == call.function.arguments
    round_trip(qwen3, call, stream=False)
    # tool_choice none: the same text comes back as text.
    plain = chat(qwen3, ASK, tool_choice="none", **kw).choices[0]
    assert plain.message.tool_calls is None and "<tool_call>" in plain.message.content


def test_think_blocks_land_in_reasoning_content(qwen3: OpenAI) -> None:
    kw = {"extra_body": {"regex": "<think>\n[a-z ]{5,20}</think>\n\n[a-z]{3,10}"}}
    m = chat(qwen3, ASK, **kw).choices[0].message
    assert m.reasoning_content and "<think>" not in m.reasoning_content
    assert m.content and "think>" not in m.content
    got = stream(qwen3, ASK, **kw)
    assert (got["reasoning"], got["content"]) == (m.reasoning_content, m.content)
    # enable_thinking reaches the template (the empty think block is in the prompt).
    off = chat(qwen3, ASK, max_tokens=1,
               extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert off.usage.prompt_tokens > chat(qwen3, ASK, max_tokens=1).usage.prompt_tokens


@pytest.mark.parametrize("kw, param", [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "nonsense"}}}}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": "required",
      "response_format": {"type": "json_object"}}, "tool_choice"),
])
def test_invalid_tools_are_400_naming_the_field(qwen3: OpenAI, kw: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        chat(qwen3, ASK, **kw)
    assert info.value.body["param"] == param


def test_default_model_fallback_calls_under_required_and_auto(smol: OpenAI) -> None:
    r = chat(smol, ASK, tools=[WEATHER, TIME], tool_choice="required", temperature=0,
             max_tokens=40)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.tool_calls
    for call in c.message.tool_calls:
        check_call(call.function.name, call.function.arguments)
    round_trip(smol, c.message.tool_calls[0], temperature=0)
    got = stream(smol, ASK, tools=[WEATHER], tool_choice="auto", temperature=0, max_tokens=40)
    # Auto: calls or free text, never a malformed call.
    if got["calls"] and got["finish"] != "length":
        assert got["finish"] == "tool_calls"
        for call in got["calls"].values():
            check_call(call["name"], call["args"])
    elif not got["calls"]:
        assert got["content"] and not got["content"].lstrip().startswith("[")


def test_anthropic_tool_use_round_trip(qwen3: OpenAI) -> None:
    """/v1/messages: tools, tool_choice any -> a tool_use block (stop_reason tool_use), whole
    and streamed; then its tool_result -> a text answer."""
    import anthropic

    claude = anthropic.Anthropic(base_url=str(qwen3.base_url).removesuffix("/v1/"),
                                 api_key="unused", max_retries=0)
    tools = [{"name": t["function"]["name"], "description": t["function"].get("description", ""),
              "input_schema": t["function"]["parameters"]} for t in (WEATHER, TIME)]
    kw: dict[str, Any] = {"model": "tiny", "max_tokens": 80, "tools": tools,
                          "extra_body": {"temperature": 1.0},
                          "tool_choice": {"type": "any", "disable_parallel_tool_use": True}}
    msg = claude.messages.create(messages=ASK, **kw)
    assert msg.stop_reason == "tool_use"
    (use,) = [b for b in msg.content if b.type == "tool_use"]
    assert use.id.startswith("toolu_")
    check_call(use.name, json.dumps(use.input))
    streamed, blocks, name = "", [], ""
    for event in claude.messages.create(messages=ASK, stream=True, **kw):
        if event.type == "content_block_start":
            blocks.append(event.content_block.type)
            name = getattr(event.content_block, "name", name)
        elif event.type == "content_block_delta" and event.delta.type == "input_json_delta":
            streamed += event.delta.partial_json
        elif event.type == "message_delta":
            assert event.delta.stop_reason == "tool_use"
    assert blocks == ["text", "tool_use"]
    check_call(name, streamed)
    history = ASK + [{"role": "assistant", "content": [{"type": "tool_use", "id": use.id,
                                                        "name": use.name, "input": use.input}]},
                     {"role": "user", "content": [{"type": "tool_result",
                                                   "tool_use_id": use.id,
                                                   "content": "sunny, 21 C"}]}]
    final = claude.messages.create(messages=history, model="tiny", max_tokens=20, tools=tools,
                                   tool_choice={"type": "none"})
    assert [b.type for b in final.content] == ["text"] and final.content[0].text
