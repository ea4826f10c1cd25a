"""The OpenAI-compatible API of a real server on a tiny random model, via the official client."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

if TYPE_CHECKING:
    from conftest import ServerProcess

pytestmark = pytest.mark.timeout(300)

CHAT = [{"role": "user", "content": "Tell me a story about a robot."}]


@pytest.fixture(scope="module")
def server(tiny_llama: Path, launch_server: Callable[..., ServerProcess]) -> ServerProcess:
    """--deterministic: several tests compare greedy outputs of the same prompt under
    different loads (streamed and not, concurrent and one by one). On this random-weight
    model the default kernels' rounding follows the batch and could flip a near tie; these
    tests are about the API, so they run on the kernels whose results do not move. (The
    default kernels are served end to end by the other e2e modules.)"""
    return launch_server("--model", str(tiny_llama), "--dtype", "float32",
                         "--max-total-tokens", "8192", "--served-model-name", "tiny",
                         "--deterministic")


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def greedy_chat(client: OpenAI, messages: list[dict], **kw: object) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model="tiny", messages=messages, temperature=0, **kw)


def wait_idle(server: ServerProcess, timeout_s: float = 20.0) -> dict[str, float]:
    """Wait until no request runs and no KV page is held by one."""
    deadline = time.monotonic() + timeout_s
    while True:
        m = server.metrics()
        idle = (m["radixrt_num_running_requests"] == 0 and m["radixrt_num_waiting_requests"] == 0
                and m["radixrt_pages_used"] == 0 and m["radixrt_requests_in_flight"] == 0)
        if idle or time.monotonic() > deadline:
            return m
        time.sleep(0.2)


# ---------------------------------------------------------------- basics


def test_models(client: OpenAI, server: ServerProcess, tiny_llama: Path) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]
    # The model directory's name is accepted as well as the served name.
    r = client.completions.create(model=tiny_llama.name, prompt="hi", max_tokens=1)
    assert r.model == "tiny"


def test_chat_completion(client: OpenAI) -> None:
    r = greedy_chat(client, CHAT, max_tokens=8)
    c = r.choices[0]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert c.message.role == "assistant" and isinstance(c.message.content, str)
    assert c.finish_reason == "length" and c.index == 0
    u = r.usage
    assert u.completion_tokens == 8 and u.prompt_tokens > 10
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details is not None and u.prompt_tokens_details.cached_tokens >= 0
    assert greedy_chat(client, CHAT, max_tokens=8).choices[0].message.content == c.message.content


def test_chat_stream_matches_non_stream(client: OpenAI) -> None:
    whole = greedy_chat(client, CHAT, max_tokens=12)
    chunks = list(greedy_chat(client, CHAT, max_tokens=12, stream=True,
                              stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0  # same prompt as before


def test_completion_and_stream(client: OpenAI) -> None:
    r = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=10,
                                  temperature=0)
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 10
    chunks = list(client.completions.create(model="tiny", prompt="Once upon a time",
                                            max_tokens=10, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    # Token-id prompts and batches of prompts.
    ids = client.completions.create(model="tiny", prompt=[[1, 2, 3], [4, 5]], max_tokens=3,
                                    temperature=0)
    assert sorted(c.index for c in ids.choices) == [0, 1]


def test_n_choices(client: OpenAI) -> None:
    r = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=6, n=2,
                                       temperature=1.0, seed=1)
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert r.choices[0].message.content != r.choices[1].message.content
    assert r.usage.completion_tokens == 12
    chunks = list(client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=6, n=2,
                                                 temperature=1.0, seed=1, stream=True))
    for c in r.choices:
        text = "".join(k.choices[0].delta.content or "" for k in chunks
                       if k.choices and k.choices[0].index == c.index)
        assert text == c.message.content


def test_seed_reproducible(client: OpenAI) -> None:
    def sample(seed: int) -> str:
        return client.completions.create(model="tiny", prompt="The weather", max_tokens=16,
                                         temperature=1.0, seed=seed).choices[0].text

    assert sample(42) == sample(42)
    assert sample(42) != sample(43)


def test_logprobs(client: OpenAI) -> None:
    r = greedy_chat(client, CHAT, max_tokens=5, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 5
    assert "".join(e.token for e in content) == r.choices[0].message.content
    for e in content:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token
        # Greedy: the chosen token is the most likely one.
        assert e.top_logprobs[0].token == e.token
        assert abs(e.top_logprobs[0].logprob - e.logprob) < 1e-4
    c = client.completions.create(model="tiny", prompt="Hello", max_tokens=4, temperature=0,
                                  logprobs=2)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert "".join(lp.tokens) == c.choices[0].text
    assert lp.text_offset[0] == 0 and all(len(t) == 2 for t in lp.top_logprobs)


def test_echo_with_prompt_logprobs(server: ServerProcess, client: OpenAI) -> None:
    """echo + logprobs scores text (as evaluation harnesses do): the prompt tokens' logprobs
    come first, the first one null, and scoring a greedy continuation as part of a prompt
    gives the logprobs it was generated with."""
    prompt = [7, 300, 2000, 45, 912, 88, 1234]
    gen = httpx.post(f"{server.url}/generate", timeout=60, json={
        "input_ids": prompt, "sampling_params": {"max_new_tokens": 4, "temperature": 0,
                                                 "logprobs": True}}).json()
    ids = gen["output_ids"]
    echo = client.completions.create(model="tiny", prompt=prompt + ids, max_tokens=1,
                                     temperature=0, logprobs=2, echo=True)
    c = echo.choices[0]
    n = len(prompt) + len(ids)
    assert len(c.logprobs.tokens) == len(c.logprobs.token_logprobs) == n + 1
    assert c.logprobs.token_logprobs[0] is None and c.logprobs.top_logprobs[0] is None
    assert all(len(t) == 2 for t in c.logprobs.top_logprobs[1:])
    # Greedy: each generated token is its position's most likely one.
    for pos in range(len(prompt), n):
        assert max(c.logprobs.top_logprobs[pos].values()) == pytest.approx(
            c.logprobs.token_logprobs[pos], abs=1e-5)
    assert c.logprobs.token_logprobs[len(prompt):n] == pytest.approx(
        [e[0] for e in gen["meta_info"]["output_token_logprobs"]], abs=1e-3)
    text = httpx.post(f"{server.url}/detokenize", json={"tokens": prompt + ids}).json()
    assert c.text.startswith(text["prompt"]) and len(c.text) > len(text["prompt"])
    assert echo.usage.prompt_tokens == n and echo.usage.completion_tokens == 1
    # max_tokens 0: the prompt scored, nothing generated (echo only).
    only = client.completions.create(model="tiny", prompt=prompt + ids, max_tokens=0,
                                     temperature=0, logprobs=2, echo=True).choices[0]
    assert only.text == text["prompt"] and only.finish_reason == "length"
    assert only.logprobs.tokens == c.logprobs.tokens[:n]
    assert only.logprobs.token_logprobs[0] is None
    assert only.logprobs.token_logprobs[1:] == pytest.approx(c.logprobs.token_logprobs[1:n],
                                                             abs=1e-5)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="tiny", prompt="x", max_tokens=0)


def test_echo_text_and_stream(server: ServerProcess, client: OpenAI) -> None:
    prompt = "The weather today"
    plain = client.completions.create(model="tiny", prompt=prompt, max_tokens=5, temperature=0)
    echo = client.completions.create(model="tiny", prompt=[prompt, prompt], max_tokens=5,
                                     temperature=0, echo=True)
    assert [c.text for c in echo.choices] == [prompt + plain.choices[0].text] * 2
    assert echo.choices[0].logprobs is None
    chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=5,
                                            temperature=0, echo=True, stream=True,
                                            logprobs=0))
    texts = [k.choices[0].text for k in chunks if k.choices]
    assert texts[0].startswith(prompt) and "".join(texts) == echo.choices[0].text
    tokens = [t for k in chunks if k.choices and k.choices[0].logprobs
              for t in k.choices[0].logprobs.tokens]
    assert len(tokens) == echo.usage.prompt_tokens // 2 + 5
    r = httpx.post(f"{server.url}/generate", timeout=60, json={
        "text": prompt, "sampling_params": {"max_new_tokens": 2, "temperature": 0,
                                            "prompt_logprobs": 0, "logprobs": True}})
    meta = r.json()["meta_info"]
    assert len(meta["input_token_logprobs"]) == meta["prompt_tokens"]
    assert meta["input_token_logprobs"][0][0] is None
    assert all(e[0] <= 0 for e in meta["input_token_logprobs"][1:])
    assert len(meta["output_token_logprobs"]) == 2


def test_cached_tokens_on_second_turn(client: OpenAI) -> None:
    messages = [{"role": "system", "content": "You are a patient assistant. " * 6},
                {"role": "user", "content": "What is a radix tree?"}]
    first = greedy_chat(client, messages, max_tokens=8)
    messages += [{"role": "assistant", "content": first.choices[0].message.content},
                 {"role": "user", "content": "And a trie?"}]
    second = greedy_chat(client, messages, max_tokens=8)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens // 2 and cached < second.usage.prompt_tokens


# ---------------------------------------------------------------- stop strings


def test_stop_string_across_token_boundary(client: OpenAI) -> None:
    prompt = "The list of colors is"
    base = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=0,
                                     logprobs=0)
    text = base.choices[0].text
    tokens = base.choices[0].logprobs.tokens
    # A stop string made of the end of one token and the start of the next.
    offsets = base.choices[0].logprobs.text_offset
    stop = None
    for k in range(3, len(tokens) - 1):
        a, b = tokens[k], tokens[k + 1]
        if len(a) >= 2 and len(b) >= 2:
            candidate = a[-2:] + b[:2]
            if text.find(candidate) == offsets[k + 1] - 2:  # its first occurrence
                stop = candidate
                break
    assert stop is not None, tokens
    expect = text[: text.index(stop)]
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=0,
                                  stop=[stop, "no such stop"])
    assert r.choices[0].text == expect and r.choices[0].finish_reason == "stop"
    chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=24,
                                            temperature=0, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expect
    assert chunks[-1].choices[0].finish_reason == "stop"


# ---------------------------------------------------------------- concurrency


def test_concurrent_streams_match_sequential(client: OpenAI, server: ServerProcess) -> None:
    prompts = [f"Request number {i}: describe item {i * 7}" for i in range(32)]
    sequential = [client.completions.create(model="tiny", prompt=p, max_tokens=8, temperature=0)
                  .choices[0].text for p in prompts]

    async def run() -> list[str]:
        aclient = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)

        async def one(p: str) -> str:
            stream = await aclient.completions.create(model="tiny", prompt=p, max_tokens=8,
                                                      temperature=0, stream=True)
            return "".join([c.choices[0].text async for c in stream if c.choices])

        try:
            return await asyncio.gather(*(one(p) for p in prompts))
        finally:
            await aclient.close()

    assert asyncio.run(run()) == sequential


def test_abort_on_disconnect_frees_pages(server: ServerProcess) -> None:
    wait_idle(server)
    body = {"model": "tiny", "messages": CHAT, "max_tokens": 1500, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in got)
        assert server.metrics()["radixrt_num_running_requests"] == 1
    # Non-streaming: the client gives up (read timeout) and goes away.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/chat/completions", timeout=1.0,
                   json={**body, "stream": False})
    m = wait_idle(server)
    assert m["radixrt_num_running_requests"] == 0 and m["radixrt_requests_in_flight"] == 0
    assert m["radixrt_pages_used"] == 0
    assert m["radixrt_pages_free"] + m["radixrt_pages_evictable"] == m["radixrt_pages_total"]


# ---------------------------------------------------------------- errors


def error_of(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    return body["error"]


@pytest.mark.parametrize("body, param", [
    ({"messages": CHAT, "temperature": "hot"}, "temperature"),
    ({"messages": CHAT, "max_tokens": 0}, "max_tokens"),
    ({"messages": CHAT, "top_p": 1.5}, "top_p"),
    ({"messages": CHAT, "n": 0}, "n"),
    ({"messages": "hello"}, "messages"),
    ({"messages": [{"role": "user", "content": "word " * 2100}]}, "messages"),
    ({"messages": CHAT, "max_tokens": 2040}, "max_tokens"),
    ({"messages": CHAT, "logit_bias": {"999999": 1}}, "logit_bias"),
])
def test_bad_chat_requests(server: ServerProcess, body: dict, param: str) -> None:
    for stream in (False, True):
        r = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "stream": stream},
                       timeout=30)
        assert r.status_code == 400, r.text
        assert error_of(r)["param"] == param


def test_bad_completion_requests(server: ServerProcess, client: OpenAI) -> None:
    url = f"{server.url}/v1/completions"
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in error_of(r)["message"]
    r = httpx.post(url, json={"prompt": [1, 10**7], "max_tokens": 2})
    assert r.status_code == 400 and error_of(r)["param"] == "prompt"
    r = httpx.post(url, json={"prompt": "x " * 3000, "max_tokens": 2})
    assert r.status_code == 400 and error_of(r)["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt="", max_tokens=2)
    assert info.value.status_code == 400


def test_unknown_model_is_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-17", messages=CHAT, max_tokens=2)
    assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"


def test_bad_request_does_not_disturb_others(server: ServerProcess, client: OpenAI) -> None:
    expect = greedy_chat(client, CHAT, max_tokens=10).choices[0].message.content

    async def run() -> tuple[str, list[int]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as h:
            async def good() -> str:
                r = await h.post("/v1/chat/completions", json={
                    "model": "tiny", "messages": CHAT, "max_tokens": 10, "temperature": 0})
                return r.json()["choices"][0]["message"]["content"]

            async def bad(i: int) -> int:
                await asyncio.sleep(0.01 * i)
                body = [{"messages": CHAT, "top_p": 7}, {"prompt": "x " * 3000},
                        {"messages": [{"role": "user", "content": [{"type": "image"}]}]}][i % 3]
                path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
                return (await h.post(path, json=body)).status_code

            results = await asyncio.gather(good(), *(bad(i) for i in range(6)))
            return results[0], list(results[1:])

    text, codes = asyncio.run(run())
    assert text == expect and codes == [400] * 6


# ---------------------------------------------------------------- native endpoints


def test_generate(server: ServerProcess, client: OpenAI) -> None:
    r = httpx.post(f"{server.url}/generate", timeout=60, json={
        "text": "Once upon a time", "sampling_params": {"max_new_tokens": 6, "temperature": 0}})
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["output_ids"]) == 6
    meta = out["meta_info"]
    assert meta["completion_tokens"] == 6 and meta["finish_reason"] == "length"
    assert meta["prompt_tokens"] > 0 and meta["cached_tokens"] >= 0
    same = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6,
                                     temperature=0)
    assert out["text"] == same.choices[0].text
    ids = httpx.post(f"{server.url}/generate", timeout=60, json={
        "input_ids": [1, 2, 3, 4], "sampling_params": {"max_new_tokens": 2}}).json()
    assert ids["meta_info"]["prompt_tokens"] == 4
    bad = httpx.post(f"{server.url}/generate", json={"text": "x",
                                                     "sampling_params": {"bogus": 1}})
    assert bad.status_code == 400 and error_of(bad)["param"] == "bogus"
    with httpx.stream("POST", f"{server.url}/generate", timeout=60, json={
            "text": "Once upon a time", "stream": True,
            "sampling_params": {"max_new_tokens": 6, "temperature": 0}}) as s:
        events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["text"] for e in events[:-1]) == out["text"]


def test_flush_cache_and_metrics(server: ServerProcess, client: OpenAI) -> None:
    greedy_chat(client, CHAT, max_tokens=4)
    greedy_chat(client, CHAT, max_tokens=4)  # a cache hit, whatever ran before
    wait_idle(server)
    assert server.metrics()["radixrt_pages_evictable"] > 0
    r = httpx.post(f"{server.url}/flush_cache", timeout=60)
    assert r.status_code == 200
    m = server.metrics()
    assert m["radixrt_pages_evictable"] == 0 and m["radixrt_pages_free"] == m["radixrt_pages_total"]
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("radixrt_requests_total", "radixrt_prompt_tokens_total",
                 "radixrt_generation_tokens_total", "radixrt_time_to_first_token_seconds_bucket",
                 "radixrt_inter_token_latency_seconds_bucket",
                 "radixrt_e2e_request_latency_seconds_bucket", "radixrt_cache_hit_rate",
                 "radixrt_num_waiting_requests"):
        assert name in text
    assert m["radixrt_generation_tokens_total"] > 0 and 0 < m["radixrt_cache_hit_rate"] <= 1
    # The scheduler's step accounting: every generated token took a step of the worker's.
    steps = m["radixrt_steps_total"]
    assert steps >= 4 and m["radixrt_step_forward_seconds_total"] > 0
    assert m["radixrt_scheduler_busy_seconds_total"] > 0
    assert 0 <= m["radixrt_exposed_host_steps_total"] < steps
    greedy_chat(client, CHAT, max_tokens=3)
    wait_idle(server)
    assert server.metrics()["radixrt_steps_total"] >= steps + 2
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}


# ---------------------------------------------------------------- structured output

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 10},
    "age": {"type": "integer", "minimum": 0, "maximum": 130},
    "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 3}},
    "required": ["name", "age", "pets"]}


@pytest.mark.timeout(900)  # the first constrained request builds the vocabulary
def test_response_format_json_schema(client: OpenAI) -> None:
    import jsonschema

    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON,
                                                  "strict": True}}
    for seed in range(2):
        r = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=120,
                                           seed=seed, response_format=fmt)
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
    stream = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=120, seed=7,
                                            response_format=fmt, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), PERSON)
    whole = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=120, seed=7,
                                           response_format=fmt)
    assert whole.choices[0].message.content == text
    obj = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=40, seed=1,
                                         response_format={"type": "json_object"})
    if obj.choices[0].finish_reason == "stop":  # an open object may outrun max_tokens
        assert isinstance(json.loads(obj.choices[0].message.content), dict)
    else:
        assert obj.choices[0].message.content.startswith("{")


def test_regex_and_json_schema_extensions(server: ServerProcess, client: OpenAI) -> None:
    import re

    pattern = r"(red|green|blue) [0-9]{2}"
    r = client.completions.create(model="tiny", prompt="Color:", max_tokens=10, seed=3,
                                  extra_body={"regex": pattern})
    assert re.fullmatch(pattern, r.choices[0].text) and r.choices[0].finish_reason == "stop"
    g = httpx.post(f"{server.url}/generate", timeout=60, json={
        "text": "Person:", "sampling_params": {"max_new_tokens": 120, "seed": 2,
                                               "json_schema": json.dumps(PERSON)}})
    assert g.status_code == 200, g.text
    assert set(json.loads(g.json()["text"])) >= {"name", "age", "pets"}


@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", {"messages": CHAT, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}},
     "json_schema"),
    ("/v1/chat/completions", {"messages": CHAT, "response_format": {"type": "json_schema"}},
     "response_format"),
    ("/v1/chat/completions", {"messages": CHAT, "response_format": {"type": "yaml"}},
     "response_format"),
    ("/v1/completions", {"prompt": "x", "regex": "([a-z]"}, "regex"),
    ("/generate", {"text": "x", "sampling_params": {"json_schema": "{oops"}}, "json_schema"),
])
def test_invalid_grammar_is_400(server: ServerProcess, path: str, body: dict, param: str) -> None:
    for stream in (False, True):
        r = httpx.post(f"{server.url}{path}", json={**body, "stream": stream}, timeout=30)
        assert r.status_code == 400, r.text
        assert error_of(r)["param"] == param, r.text


def test_decode_probe_with_sampling_fields(server: ServerProcess, tiny_llama: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """bench/bench_decode.py against this server, its requests carrying --sampling fields
    (a field the server refused would fail the probe with a 400)."""
    from bench import bench_decode

    assert bench_decode.main(["--base-url", server.url, "--contexts", "16", "--batch-sizes",
                              "2", "--steps", "3", "--tokenizer", str(tiny_llama),
                              "--sampling", '{"temperature": 0.7, "top_p": 0.9, "seed": 1}']) == 0
    assert "| 16 | 2 |" in capsys.readouterr().out


# ---------------------------------------------------------------- embeddings


def test_embeddings(tiny_llama: Path, server: ServerProcess, client: OpenAI) -> None:
    """Last-token pooling, L2-normalized, equal to transformers' final hidden state on the
    same weights; float and base64 encodings agree; dimensions keep a renormalized prefix."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    texts = ["The weather today is sunny.", "Radix trees share prefixes."]
    r = client.embeddings.create(model="tiny", input=texts)
    assert [d.index for d in r.data] == [0, 1] and r.model == "tiny"
    hf = AutoModel.from_pretrained(str(tiny_llama), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    tokens = 0
    for d, text in zip(r.data, texts, strict=True):
        ids = tok(text)["input_ids"]
        tokens += len(ids)
        with torch.no_grad():
            h = hf(torch.tensor([ids])).last_hidden_state[0, -1]
        want = torch.nn.functional.normalize(h, dim=-1).numpy()
        np.testing.assert_allclose(d.embedding, want, atol=2e-4)
    assert r.usage.prompt_tokens == r.usage.total_tokens == tokens
    # (the openai client asks for base64 and decodes it itself unless a format is given)
    floats = client.embeddings.create(model="tiny", input=texts[0], encoding_format="float")
    assert isinstance(floats.data[0].embedding[0], float)
    b64 = client.embeddings.create(model="tiny", input=texts[0], encoding_format="base64")
    raw = np.frombuffer(base64.b64decode(b64.data[0].embedding), "<f4")
    np.testing.assert_allclose(raw, floats.data[0].embedding, atol=1e-6)
    np.testing.assert_allclose(raw, r.data[0].embedding, atol=1e-6)
    short = client.embeddings.create(model="tiny", input=[[5, 6, 7, 8]], dimensions=16)
    vec = np.asarray(short.data[0].embedding)
    assert vec.shape == (16,) and abs(float(np.linalg.norm(vec)) - 1) < 1e-5
    for kw, param in [({"input": ""}, "input"), ({"input": []}, "input"),
                      ({"input": "x", "dimensions": 10_000}, "dimensions"),
                      ({"input": "x", "encoding_format": "int8"}, "encoding_format")]:
        with pytest.raises(openai.BadRequestError) as info:
            client.embeddings.create(model="tiny", **kw)
        assert info.value.body["param"] == param, kw
    assert wait_idle(server)["radixrt_pages_used"] == 0
