"""The Responses API's answer shape, fed the deltas a thinking, tool-calling model streams:
every event must parse as the openai SDK's own event types, and the stream must end in the
same output items as the whole answer. (The server end to end: tests/e2e/
test_responses_api.py; a random model cannot be made to think there.)"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from pydantic import TypeAdapter

from radixrt.frontend.answers import PromptTokensDetails, UsageInfo
from radixrt.frontend.client import merge_deltas
from radixrt.frontend.openai_responses import ResponsesShape
from radixrt.frontend.protocol import parse_request
from radixrt.frontend.responses_request import ResponsesRequest
from radixrt.ipc.messages import TextDelta
from radixrt.sampling_params import InvalidRequestError, SamplingParams

EVENTS: TypeAdapter[Any] = TypeAdapter(openai.types.responses.ResponseStreamEvent)
RESPONSE: TypeAdapter[Any] = TypeAdapter(openai.types.responses.Response)
USAGE = UsageInfo(prompt_tokens=30, completion_tokens=12, total_tokens=42,
                  prompt_tokens_details=PromptTokensDetails(cached_tokens=16))
THINK_CALL = ['<think>\nthe', ' user asks</think>\n\n', 'Sure.\n<tool', '_call>\n{"name": ',
              '"get_weather", "arguments": {"city": "oslo"}}\n</tool_call>']


def request(**kw: Any) -> ResponsesRequest:
    return parse_request(ResponsesRequest, json.dumps({"input": "hi", **kw}).encode())


def shape(**kw: Any) -> ResponsesShape:
    return ResponsesShape("resp_1", "tiny", SamplingParams(), request(**kw).echoed(),
                          reasoning="qwen3", tool_parser="hermes")


def deltas(pieces: list[str], finish: str = "stop") -> list[TextDelta]:
    return [TextDelta("r-0", p, [i], finished=i == len(pieces) - 1,
                      finish_reason=finish if i == len(pieces) - 1 else None,
                      completion_tokens=i + 1) for i, p in enumerate(pieces)]


def stream(s: ResponsesShape, ds: list[TextDelta]) -> list[dict[str, Any]]:
    wire = [s.event(e) for e in s.opening([0], USAGE)]
    for d in ds:
        wire += [s.event(e) for e in s.stream_events(d, 0)]
    wire += [s.event(e) for e in s.closing(USAGE, False)]
    out = []
    for w in wire:
        head, data = w.strip().split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}"
        EVENTS.validate_python(event)
        out.append(event)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return out


def whole(s: ResponsesShape, ds: list[TextDelta]) -> dict[str, Any]:
    body = json.loads(s.response([merge_deltas(ds)], USAGE).body)
    RESPONSE.validate_python(body)
    return body


def items(output: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(type, text or call) of each output item, ids aside."""
    out = []
    for o in output:
        if o["type"] == "function_call":
            out.append((o["type"], f"{o['name']}{o['arguments']}"))
        else:
            out.append((o["type"], o["content"][0]["text"]))
    return out


def test_thinking_then_text_then_a_call_streams_its_items_in_order() -> None:
    ds = deltas(THINK_CALL)
    events = stream(shape(), ds)
    final = events[-1]
    assert final["type"] == "response.completed"
    expect = [("reasoning", "the user asks"), ("message", "Sure."),
              ("function_call", 'get_weather{"city": "oslo"}')]
    assert items(final["response"]["output"]) == expect
    assert items(whole(shape(), ds)["output"]) == expect
    added = [e["item"]["type"] for e in events if e["type"] == "response.output_item.added"]
    done = [e["item"]["type"] for e in events if e["type"] == "response.output_item.done"]
    assert added == done == ["reasoning", "message", "function_call"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text.strip() == "Sure."
    usage = final["response"]["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (30, 12)
    assert usage["input_tokens_details"]["cached_tokens"] == 16


def test_cut_short_is_incomplete() -> None:
    ds = deltas(["Hello", " there"], finish="length")
    events = stream(shape(max_output_tokens=2), ds)
    final = events[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["response"]["output"][0]["status"] == "incomplete"
    assert final["response"]["max_output_tokens"] == 2
    body = whole(shape(), ds)
    assert body["status"] == "incomplete" and items(body["output"]) == [("message", "Hello there")]


def test_nothing_said_is_one_empty_message() -> None:
    ds = deltas([""])
    assert items(stream(shape(), ds)[-1]["response"]["output"]) == [("message", "")]
    assert items(whole(shape(), ds)["output"]) == [("message", "")]


def test_input_items_become_chat_messages() -> None:
    r = request(instructions="Be brief.", input=[
        {"role": "user", "content": "weather?"},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Let me look.", "annotations": []}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city": "oslo"}'},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather",
         "arguments": '{"city": "rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_2",
         "output": [{"type": "input_text", "text": "rain"}]}])
    msgs = r.messages()
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "tool"]
    assert msgs[2]["content"] == "Let me look."
    assert [c["id"] for c in msgs[2]["tool_calls"]] == ["call_1", "call_2"]
    assert [m["content"] for m in msgs[3:]] == ["sunny", "rain"]
    chat = r.to_chat()
    assert chat.messages[2].tool_calls is not None and len(chat.messages[2].tool_calls) == 2


def test_reasoning_items_go_back_with_their_turn() -> None:
    """An answer's output sent back whole (reasoning, message, call): the reasoning becomes
    the assistant turn's reasoning_content, which the chat template receives."""
    ds = deltas(THINK_CALL)
    output = whole(shape(), ds)["output"]
    call = output[2]
    r = request(input=[{"role": "user", "content": "weather?"}, *output,
                       {"type": "function_call_output", "call_id": call["call_id"],
                        "output": "sunny"}])
    msgs = r.messages()
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool"]
    assert msgs[1]["reasoning_content"] == "the user asks" and msgs[1]["content"] == "Sure."
    assert [c["function"]["name"] for c in msgs[1]["tool_calls"]] == ["get_weather"]
    chat = r.to_chat()
    assert chat.messages[1].to_dict()["reasoning_content"] == "the user asks"


@pytest.mark.parametrize("bad", [[{"type": "reasoning", "summary": []}],
                                 [{"type": "reasoning", "summary": []},
                                  {"role": "user", "content": "x"}], [{"role": "tool"}],
                                 [{"type": "function_call_output", "call_id": "c",
                                   "output": 3}], ["text"]])
def test_bad_input_items_name_input(bad: list[Any]) -> None:
    with pytest.raises(InvalidRequestError) as info:
        request(input=bad).messages()
    assert info.value.param == "input"
