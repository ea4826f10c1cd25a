"""OpenAI's Responses API (/v1/responses) through the official openai client, against a real
server on loopback: the tiny random Qwen3 with the Hermes-style template (tests/e2e/
conftest.py), so tools and reasoning are parsed. Random weights cannot be asked to call a
tool: calls are forced (tool_choice required), outputs shaped by a JSON schema; what is
checked is the server's side: rendering, constraining, parsing, the shapes and events."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import openai
import pytest
from openai import OpenAI
from pydantic import TypeAdapter

if TYPE_CHECKING:
    from conftest import ServerProcess

pytestmark = pytest.mark.timeout(300)

CITY = {"type": "string", "pattern": "^[a-z]{1,8}$"}
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": CITY},
                          "required": ["city"], "additionalProperties": False}}
ASK = "What is the weather in Oslo?"
EVENTS: TypeAdapter[Any] = TypeAdapter(openai.types.responses.ResponseStreamEvent)


@pytest.fixture(scope="module")
def client(hermes_qwen3: Path, launch_server: Callable[..., ServerProcess]) -> OpenAI:
    server = launch_server("--model", str(hermes_qwen3), "--dtype", "float32",
                           "--max-total-tokens", "8192", "--served-model-name", "tiny")
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def create(client: OpenAI, **kw: Any) -> Any:
    return client.responses.create(model="tiny", **{"max_output_tokens": 24,
                                                    "temperature": 0, **kw})


def events(client: OpenAI, **kw: Any) -> list[Any]:
    """A streamed response's events, each checked against the openai SDK's own event types,
    numbered 0, 1, 2, ..."""
    got = list(create(client, stream=True, **kw))
    for e in got:
        EVENTS.validate_python(e.model_dump(), strict=False)
    assert [e.sequence_number for e in got] == list(range(len(got)))
    return got


def test_text_whole_and_streamed(client: OpenAI) -> None:
    r = create(client, input=ASK, instructions="Answer briefly.", max_output_tokens=6)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "tiny"
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    (msg,) = [o for o in r.output if o.type == "message"]
    assert msg.role == "assistant" and msg.content[0].type == "output_text"
    assert r.output_text == msg.content[0].text
    assert r.usage.output_tokens == 6 and r.usage.input_tokens > 10
    assert r.usage.total_tokens == r.usage.input_tokens + 6
    assert r.instructions == "Answer briefly." and r.max_output_tokens == 6
    # The instructions are the system turn: a longer prompt than without them.
    bare = create(client, input=ASK, max_output_tokens=1)
    assert r.usage.input_tokens > bare.usage.input_tokens
    got = events(client, input=ASK, instructions="Answer briefly.", max_output_tokens=6)
    kinds = [e.type for e in got]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.incomplete"]
    text = "".join(e.delta for e in got if e.type == "response.output_text.delta")
    assert text == r.output_text  # greedy: the same answer
    final = got[-1].response
    assert final.output_text == text and final.usage.output_tokens == 6
    # Conversation input: earlier turns as messages (the assistant's as output_text).
    turns = [{"role": "user", "content": ASK},
             {"role": "assistant", "content": [{"type": "output_text", "text": text,
                                                "annotations": []}]},
             {"type": "message", "role": "user",
              "content": [{"type": "input_text", "text": "And tomorrow?"}]}]
    again = create(client, input=turns, max_output_tokens=2)
    assert again.usage.input_tokens > r.usage.input_tokens
    assert again.usage.input_tokens_details.cached_tokens > 0  # the first turn's prefix


def test_function_call_round_trip(client: OpenAI) -> None:
    r = create(client, input=ASK, tools=[WEATHER], tool_choice="required",
               parallel_tool_calls=False, max_output_tokens=60)
    assert r.status == "completed"
    (call,) = [o for o in r.output if o.type == "function_call"]
    assert call.name == "get_weather" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    got = events(client, input=ASK, tools=[WEATHER], tool_choice="required",
                 parallel_tool_calls=False, max_output_tokens=60)
    added = [e.item for e in got if e.type == "response.output_item.added"]
    assert [i.type for i in added] == ["function_call"] and added[0].name == "get_weather"
    args = "".join(e.delta for e in got if e.type == "response.function_call_arguments.delta")
    (done,) = [e for e in got if e.type == "response.function_call_arguments.done"]
    assert args == done.arguments == call.arguments  # greedy: the same call
    assert got[-1].type == "response.completed"
    # The call and its output go back as input items; the model answers in text.
    # (with the reasoning a thinking model would have given before it)
    thought = {"type": "reasoning", "summary": [],
               "content": [{"type": "reasoning_text", "text": "Look it up."}]}
    follow = [{"role": "user", "content": ASK}, thought, call.model_dump(exclude_none=True),
              {"type": "function_call_output", "call_id": call.call_id,
               "output": "sunny, 21 C"}]
    answer = create(client, input=follow, tools=[WEATHER], tool_choice="none",
                    max_output_tokens=4)
    assert [o.type for o in answer.output] == ["message"] and answer.output_text
    assert answer.usage.input_tokens > r.usage.input_tokens + 15


def test_structured_output(client: OpenAI) -> None:
    schema = {"type": "object", "properties": {"city": CITY}, "required": ["city"],
              "additionalProperties": False}
    r = create(client, input=ASK, max_output_tokens=40, text={"format": {
        "type": "json_schema", "name": "place", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(r.output_text), schema)
    assert r.text.format.type == "json_schema"


@pytest.mark.parametrize("kw, param", [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"reasoning": {"effort": "low"}}, "reasoning"),
    ({"include": ["message.output_text.logprobs"]}, "include"),
    ({"input": [{"type": "input_image", "image_url": "x"}]}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input"),
    ({"tools": [{"type": "web_search"}]}, "tools"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
])
def test_errors_name_the_field(client: OpenAI, kw: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        create(client, **{"input": ASK, **kw})
    assert info.value.body["param"] == param, info.value.body
    assert info.value.body["type"] == "invalid_request_error"


def test_store_false_and_defaults_are_taken(client: OpenAI) -> None:
    r = create(client, input=ASK, store=False, truncation="disabled", include=[],
               background=False, max_output_tokens=1, user="u", prompt_cache_key="k")
    assert r.usage.output_tokens == 1 and r.store is False
