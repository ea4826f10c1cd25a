"""API conformance of a real server on a tiny random model: every field works or is a 400
naming it, nulls, the model's sampling defaults, chat prompt controls, /tokenize and
/detokenize, /v1/models/{id} and the OpenAPI document, with the official openai client."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest
from openai import OpenAI

if TYPE_CHECKING:
    from conftest import ServerProcess

pytestmark = pytest.mark.timeout(300)

CHAT = [{"role": "user", "content": "Tell me a story about a robot."}]
MODEL_MAX_NEW = 5  # the tiny model's generation_config.json max_new_tokens


@pytest.fixture(scope="module")
def model_with_defaults(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with sampling defaults in its generation_config.json (greedy, 5 tokens)."""
    out = tmp_path_factory.mktemp("defaults") / "tiny-defaults"
    shutil.copytree(tiny_llama, out)
    gen = json.loads((out / "generation_config.json").read_text())
    gen.update(temperature=0.0, top_k=0, max_new_tokens=MODEL_MAX_NEW)
    (out / "generation_config.json").write_text(json.dumps(gen))
    return out


@pytest.fixture(scope="module")
def server(model_with_defaults: Path, launch_server: Callable[..., ServerProcess]
           ) -> ServerProcess:
    return launch_server("--model", str(model_with_defaults), "--dtype", "float32",
                         "--max-total-tokens", "8192", "--served-model-name", "tiny")


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def post(server: ServerProcess, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


def error_of(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    return r.json()["error"]


# ---------------------------------------------------------------- fields


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_and_unimplemented_fields_are_400(client: OpenAI, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2, stream=stream,
                                       extra_body={"temprature": 0.2})
    assert info.value.body["param"] == "temprature"
    assert "Unrecognized request argument supplied: temprature" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2, stream=stream,
                                       reasoning_effort="low")
    assert info.value.body["param"] == "reasoning_effort"
    assert "not supported" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt="x", max_tokens=2, stream=stream,
                                  best_of=2)
    assert info.value.body["param"] == "best_of"
    # Values that ask for what the server does anyway are fine.
    r = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2, user="u1",
                                       store=False, safety_identifier="s",
                                       prompt_cache_key="k")
    assert r.usage.completion_tokens == 2


def test_null_means_default(server: ServerProcess) -> None:
    nulls = dict.fromkeys(("n", "stream", "logprobs", "top_logprobs", "presence_penalty",
                           "frequency_penalty", "stop", "seed", "temperature", "top_p",
                           "stream_options", "logit_bias", "user", "max_tokens"))
    r = post(server, "/v1/chat/completions", {"messages": CHAT, **nulls})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["choices"]) == 1 and body["choices"][0]["logprobs"] is None
    r = post(server, "/v1/completions", {"prompt": "Hello", **nulls, "echo": None,
                                         "suffix": None, "best_of": None})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("top_k", [0, -1])
def test_top_k_zero_and_minus_one(server: ServerProcess, top_k: int) -> None:
    r = post(server, "/v1/completions", {"prompt": "Hello", "max_tokens": 3, "top_k": top_k,
                                         "temperature": 1.0, "seed": 3})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 3


def test_model_sampling_defaults(client: OpenAI) -> None:
    """generation_config.json says greedy and 5 tokens: a request that sets nothing gets
    that; a request value wins."""
    plain = client.chat.completions.create(model="tiny", messages=CHAT)
    greedy = client.chat.completions.create(model="tiny", messages=CHAT, temperature=0,
                                            max_tokens=MODEL_MAX_NEW)
    assert plain.usage.completion_tokens == MODEL_MAX_NEW  # not the rest of the context
    assert plain.choices[0].message.content == greedy.choices[0].message.content
    c = client.completions.create(model="tiny", prompt="Once upon a time")
    assert c.usage.completion_tokens == MODEL_MAX_NEW  # not OpenAI's 16
    longer = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=9)
    assert longer.usage.completion_tokens == 9
    hot = {client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=8,
                                     temperature=1.5, seed=s).choices[0].text for s in range(4)}
    assert len(hot) > 1  # the user's temperature wins over the model's 0


def test_limits_are_400_naming_the_field(server: ServerProcess) -> None:
    assert error_of(post(server, "/v1/chat/completions",
                         {"messages": CHAT, "n": 17}))["param"] == "n"
    assert error_of(post(server, "/v1/chat/completions", {
        "messages": CHAT, "logprobs": True, "top_logprobs": 21}))["param"] == "top_logprobs"
    assert error_of(post(server, "/v1/completions",
                         {"prompt": "x", "logprobs": 21}))["param"] == "logprobs"


# ---------------------------------------------------------------- chat prompt controls


def test_developer_role_is_system(client: OpenAI) -> None:
    def run(role: str) -> Any:
        return client.chat.completions.create(model="tiny", max_tokens=6, messages=[
            {"role": role, "content": "Answer in French."}, *CHAT])

    dev, system = run("developer"), run("system")
    assert dev.usage.prompt_tokens == system.usage.prompt_tokens
    assert dev.choices[0].message.content == system.choices[0].message.content


def test_continue_final_message_and_tokenize(server: ServerProcess, client: OpenAI) -> None:
    prefill = [*CHAT, {"role": "assistant", "content": "Once upon a time, a robot"}]
    tok = post(server, "/tokenize", {"messages": prefill, "continue_final_message": True}).json()
    text = post(server, "/detokenize", {"tokens": tok["tokens"]}).json()["prompt"]
    assert text.endswith("<|im_start|>assistant\nOnce upon a time, a robot")
    r = client.chat.completions.create(model="tiny", messages=prefill, max_tokens=4,
                                       extra_body={"continue_final_message": True})
    assert r.usage.prompt_tokens == tok["count"]
    # The same as a raw completion of the rendered text.
    raw = client.completions.create(model="tiny", prompt=tok["tokens"], max_tokens=4)
    assert r.choices[0].message.content == raw.choices[0].text
    r = post(server, "/v1/chat/completions", {"messages": prefill, "continue_final_message": True,
                                              "add_generation_prompt": True})
    assert error_of(r)["param"] == "add_generation_prompt"
    closed = post(server, "/tokenize", {"messages": prefill, "add_generation_prompt": False})
    assert closed.json()["count"] == tok["count"] + 2  # "<|im_end|>", "\n"


def test_include_stop_str_in_output(client: OpenAI) -> None:
    text = client.completions.create(model="tiny", prompt="The list of colors is",
                                     max_tokens=16).choices[0].text
    stop = text[4:7]
    assert len(stop.strip()) >= 1
    cut = text[: text.index(stop)]
    kept = client.completions.create(model="tiny", prompt="The list of colors is",
                                     max_tokens=16, stop=stop,
                                     extra_body={"include_stop_str_in_output": True})
    assert kept.choices[0].text == cut + stop and kept.choices[0].finish_reason == "stop"
    dropped = client.completions.create(model="tiny", prompt="The list of colors is",
                                        max_tokens=16, stop=stop)
    assert dropped.choices[0].text == cut


# ---------------------------------------------------------------- endpoints


def test_tokenize_detokenize_round_trip(server: ServerProcess, client: OpenAI) -> None:
    text = "The quick brown fox 🦊 jumps over the lazy dog."
    tok = post(server, "/tokenize", {"model": "tiny", "prompt": text}).json()
    assert tok["count"] == len(tok["tokens"]) > 5 and tok["max_model_len"] == 2048
    assert post(server, "/detokenize", {"tokens": tok["tokens"]}).json() == {"prompt": text}
    # The count is what a generation bills as prompt tokens.
    r = client.completions.create(model="tiny", prompt=text, max_tokens=1)
    assert r.usage.prompt_tokens == tok["count"]
    chat = post(server, "/tokenize", {"messages": CHAT}).json()
    r = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=1)
    assert r.usage.prompt_tokens == chat["count"]
    assert error_of(post(server, "/detokenize", {"tokens": [1, 10**9]}))["param"] == "tokens"
    assert error_of(post(server, "/tokenize", {"prompt": "x", "messages": CHAT}))["param"] == (
        "prompt")
    assert error_of(post(server, "/tokenize", {"prompt": "x", "bogus": 1}))["param"] == "bogus"
    assert post(server, "/tokenize", {"model": "nope", "prompt": "x"}).status_code == 404


def test_model_by_id(server: ServerProcess, client: OpenAI) -> None:
    m = client.models.retrieve("tiny")
    assert m.id == "tiny" and m.object == "model"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-17")
    assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"
    r = httpx.get(f"{server.url}/v1/models/gpt-17")
    assert r.status_code == 404 and set(r.json()) == {"error"}


def test_openapi_describes_request_bodies(server: ServerProcess) -> None:
    doc = httpx.get(f"{server.url}/openapi.json").json()
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses",
                 "/generate", "/tokenize", "/detokenize"):
        ref = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        schema = doc["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]
        assert schema["additionalProperties"] is False and schema["properties"], path
    chat = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert chat["required"] == ["messages"] and "continue_final_message" in chat["properties"]
    n = chat["properties"]["n"]["anyOf"]
    assert {"type": "null"} in n  # null allowed, meaning the default
    assert "/v1/models/{model_id}" in doc["paths"]
