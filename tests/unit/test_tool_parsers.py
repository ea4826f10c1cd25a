"""Tool-call and reasoning parsers on crafted text, whole and fed in pieces; tool plans."""

from __future__ import annotations

import json
import random
import re

import pytest

from radixrt.frontend.chat_output import ChatOutput, call_deltas
from radixrt.frontend.protocol import ChatCompletionRequest, parse_request
from radixrt.frontend.reasoning import ReasoningParser, resolve_reasoning_parser
from radixrt.frontend.tool_parsers import Parsed, ToolCallParser, merge_calls, resolve_tool_parser
from radixrt.frontend.tools import (
    ToolSupport,
    calls_schema,
    plan_tools,
    tool_messages,
)
from radixrt.grammar.spec import to_regex
from radixrt.sampling_params import InvalidRequestError


def split(text: str, seed: int) -> list[str]:
    """`text` cut at random places (pieces of 1 to 5 characters)."""
    rng, out, i = random.Random(seed), [], 0
    while i < len(text):
        n = rng.randint(1, 5)
        out.append(text[i:i + n])
        i += n
    return out


def parse(kind: str, pieces: list[str]) -> tuple[str, list[tuple[str, dict]], Parsed]:
    p, out = ToolCallParser(kind), Parsed()
    for x in pieces:
        out.add(p.feed(x))
    out.add(p.finish())
    calls = [(c.name, json.loads(c.arguments)) for c in merge_calls(out.calls)]
    return out.content, calls, out


HERMES = ('I will look it up.\n<tool_call>\n{"name": "get_weather", "arguments": '
          '{"city": "Pa\\"ris }", "days": [1, 2]}}\n</tool_call>\n<tool_call>\n'
          '{"arguments": {"x": 1}, "name": "b"}\n</tool_call>')
HERMES_CALLS = [("get_weather", {"city": 'Pa"ris }', "days": [1, 2]}), ("b", {"x": 1})]


@pytest.mark.parametrize("pieces", [[HERMES], list(HERMES)] + [split(HERMES, s) for s in range(5)])
def test_hermes_whole_and_incremental(pieces: list[str]) -> None:
    content, calls, _ = parse("hermes", pieces)
    assert content == "I will look it up."
    assert calls == HERMES_CALLS


def test_a_call_split_across_many_deltas_streams_its_arguments() -> None:
    """The name comes first and once; the arguments arrive in many pieces that join to
    exactly the final JSON text, the first call's before its object closed."""
    _, _, out = parse("hermes", list(HERMES))
    first = [c for c in out.calls if c.index == 0]
    assert first[0].name == "get_weather" and first[0].id.startswith("call_")
    assert all(c.id is None and c.name is None for c in first[1:])
    assert len(first) > 10
    assert "".join(c.arguments for c in first) == '{"city": "Pa\\"ris }", "days": [1, 2]}'
    deltas = call_deltas(out.calls)
    assert deltas[0].function.arguments == "" and deltas[0].type == "function"
    assert sum(d.id is not None for d in deltas) == 2


def test_hermes_text_only_and_a_partial_opener() -> None:
    assert parse("hermes", ["plain text <tool", "_cal"])[:2] == ("plain text <tool_cal", [])
    p = ToolCallParser("hermes")
    assert p.feed("hello <tool_").content == "hello"  # the opener may be arriving
    assert p.feed("call>").content == ""
    assert not p.called
    # Not a call (no name): the text stays content.
    assert parse("hermes", ['<tool_call>{"bad": 1}</tool_call> tail'])[:2] == (
        '<tool_call>{"bad": 1} tail', [])


def test_llama3_and_json_formats() -> None:
    text = '<|python_tag|>{"name": "f", "parameters": {"a": 1}}; {"name": "g", "parameters": {}}'
    for pieces in ([text], list(text)):
        assert parse("llama3", pieces)[:2] == ("", [("f", {"a": 1}), ("g", {})])
    assert parse("llama3", list('Hello {"name": "f"}'))[:2] == ('Hello {"name": "f"}', [])
    text = ' [{"name": "f", "arguments": {"a": "]"}}, {"name":"g","arguments":{}}]'
    for pieces in ([text], split(text, 7)):
        assert parse("json", pieces)[:2] == ("", [("f", {"a": "]"}), ("g", {})])
    assert parse("json", list("plain [text]"))[:2] == ("plain [text]", [])


THINK = "<think>\nfirst I think </thinking> more</think>\n\nThe answer is 4."


@pytest.mark.parametrize("pieces", [[THINK], list(THINK)] + [split(THINK, s) for s in range(4)])
def test_reasoning_parser_whole_and_incremental(pieces: list[str]) -> None:
    p, reasoning, content = ReasoningParser("qwen3"), "", ""
    for x in pieces:
        r, c = p.feed(x)
        reasoning, content = reasoning + r, content + c
    r, c = p.finish()
    assert (reasoning + r, content + c) == ("first I think </thinking> more", "The answer is 4.")


def test_reasoning_parser_variants() -> None:
    p = ReasoningParser("qwen3")
    assert p.feed("no thinking here") == ("", "no thinking here")
    p = ReasoningParser("deepseek_r1")  # the prompt opened the block
    assert p.feed("reason") == ("reason", "") and p.feed("</think>ans") == ("", "ans")
    p = ReasoningParser("qwen3")
    assert p.feed("<think>never closed") == ("never closed", "")
    assert resolve_reasoning_parser("auto", "{{ '<think>' }}") == "qwen3"
    assert resolve_reasoning_parser("auto", "chatml") == "none"


def test_reasoning_then_a_call() -> None:
    out = ChatOutput("qwen3", "hermes")
    text = '<think>need weather</think>\n<tool_call>{"name": "w", "arguments": {}}</tool_call>'
    reasoning, parsed = out.feed(text, final=True)
    assert reasoning == "need weather" and parsed.content == ""
    assert [c.name for c in merge_calls(parsed.calls)] == ["w"]
    assert out.finish_reason("stop") == "tool_calls" and out.finish_reason("length") == "length"


def test_parser_detection() -> None:
    assert resolve_tool_parser("auto", "{% if tools %}<tool_call>{% endif %}") == "hermes"
    assert resolve_tool_parser("auto", '{% if tools %}"parameters"{% endif %}') == "llama3"
    assert resolve_tool_parser("auto", "<|im_start|>") == "json"
    assert resolve_tool_parser("none", "<tool_call>") == "none"


# ---------------------------------------------------------------- plans

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}
FALLBACK = ToolSupport(parser="json", template_tools=False, reasoning="none")
HERMES_TEMPLATE = ToolSupport(parser="hermes", template_tools=True, reasoning="none")


def request(**fields: object) -> ChatCompletionRequest:
    body = {"messages": [{"role": "user", "content": "hi"}], **fields}
    return parse_request(ChatCompletionRequest, json.dumps(body).encode())


def plan(support: ToolSupport = FALLBACK, **fields: object):  # noqa: ANN201
    r = request(**fields)
    return plan_tools(r.tools, r.tool_choice, r.parallel_tool_calls, support)


@pytest.mark.parametrize("fields, param", [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "no-such-type"}}}}}]}, "tools"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
])
def test_invalid_tools_name_the_field(fields: dict, param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        plan(**fields)
    assert info.value.param == param


def test_forced_plans_are_schemas_of_calls() -> None:
    p = plan(tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False)
    schema = json.loads(p.json_schema)
    assert p.forced and p.parser == "json" and schema["maxItems"] == 1
    assert [i["properties"]["name"]["const"] for i in schema["items"]["anyOf"]] == [
        "get_weather", "get_time"]
    named = plan(tools=[WEATHER, TIME],
                 tool_choice={"type": "function", "function": {"name": "get_time"}})
    schema = json.loads(named.json_schema)
    assert schema["items"]["properties"]["name"] == {"const": "get_time"}
    assert "maxItems" not in schema  # parallel calls allowed
    regex = to_regex("json", json.dumps(calls_schema(request(tools=[WEATHER]).tools, False)))
    assert re.fullmatch(regex, '[{"name": "get_weather", "arguments": {"city": "Oslo"}}]')
    assert not re.fullmatch(regex, '[{"name": "get_time", "arguments": {}}]')


def test_auto_plans_follow_the_template() -> None:
    fallback = plan(tools=[WEATHER])
    assert fallback.parser == "json" and fallback.template_tools is None
    assert "get_weather" in fallback.system_prompt and fallback.regex is not None
    hermes = plan(HERMES_TEMPLATE, tools=[WEATHER])
    assert hermes.parser == "hermes" and not hermes.has_grammar
    assert hermes.template_tools[0]["function"]["name"] == "get_weather"
    none = plan(HERMES_TEMPLATE, tools=[WEATHER], tool_choice="none")
    assert none.parser is None and none.template_tools is not None


def test_history_with_calls_reaches_the_template() -> None:
    r = request(messages=[
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}], tools=[WEATHER])
    messages = [m.to_dict(i) for i, m in enumerate(r.messages)]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert messages[2]["tool_call_id"] == "call_1"
    p = plan_tools(r.tools, r.tool_choice, r.parallel_tool_calls, FALLBACK)
    shown = tool_messages(messages, p, FALLBACK)
    assert tool_messages(messages, p, HERMES_TEMPLATE) is messages
    assert shown[0]["role"] == "system" and "get_weather" in shown[0]["content"]
    assert json.loads(shown[2]["content"]) == [{"name": "get_weather",
                                                 "arguments": {"city": "Oslo"}}]
    bad = request(messages=[{"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                  "function": {"name": "f", "arguments": "{not json"}}]}])
    with pytest.raises(InvalidRequestError, match="not valid JSON"):
        bad.messages[0].to_dict(0)
