"""Anthropic's Messages API with the official anthropic client, API-key tenants with their own
cache namespaces, and CORS (opt-in), on a real server with a tiny random model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anthropic
import httpx
import pytest
from openai import OpenAI

if TYPE_CHECKING:
    from conftest import ServerProcess

pytestmark = pytest.mark.timeout(300)

KEYS = {"alice": "key-alice-0123", "bob": "key-bob-4567"}
OPERATOR = "operator-key"
ORIGIN = "https://app.example"
PROMPT = [{"role": "user", "content": "Summarize the plot of a long novel about the sea. " * 3}]


@pytest.fixture(scope="module")
def server(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory,
           launch_server: Callable[..., ServerProcess]) -> ServerProcess:
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text("# tenants\n" + "".join(f"{k} {name}\n" for name, k in KEYS.items()))
    return launch_server("--model", str(tiny_llama), "--dtype", "float32",
                         "--max-total-tokens", "8192", "--served-model-name", "tiny",
                         "--api-key", OPERATOR, "--api-key-file", str(key_file),
                         "--allowed-origins", ORIGIN)


def claude(server: ServerProcess, key: str = KEYS["alice"]) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0)


GREEDY = {"extra_body": {"temperature": 0.0}}


# ---------------------------------------------------------------- /v1/messages


def test_messages(server: ServerProcess) -> None:
    c = claude(server)
    msg = c.messages.create(model="tiny", max_tokens=6, messages=PROMPT,
                            system="You are terse.", **GREEDY)
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert msg.model == "tiny" and msg.stop_reason == "max_tokens" and msg.stop_sequence is None
    assert len(msg.content) == 1 and msg.content[0].type == "text" and msg.content[0].text
    assert msg.usage.output_tokens == 6 and msg.usage.input_tokens > 20
    # The same chat through the OpenAI API: same text, same prompt.
    oa = OpenAI(base_url=f"{server.url}/v1", api_key=KEYS["alice"], max_retries=0)
    same = oa.chat.completions.create(model="tiny", max_tokens=6, temperature=0, messages=[
        {"role": "system", "content": "You are terse."}, *PROMPT])
    assert same.choices[0].message.content == msg.content[0].text
    # A repeat reads the prompt from the cache; input_tokens counts only the rest.
    again = c.messages.create(model="tiny", max_tokens=6, messages=PROMPT,
                              system=[{"type": "text", "text": "You are terse."}], **GREEDY)
    u = again.usage
    assert u.cache_read_input_tokens > 0
    assert u.input_tokens + u.cache_read_input_tokens == same.usage.prompt_tokens


def test_messages_stream(server: ServerProcess) -> None:
    c = claude(server)
    whole = c.messages.create(model="tiny", max_tokens=8, messages=PROMPT, **GREEDY)
    events = list(c.messages.create(model="tiny", max_tokens=8, messages=PROMPT, stream=True,
                                    **GREEDY))
    kinds = [e.type for e in events]  # (the SDK drops pings)
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == whole.content[0].text
    assert events[-2].delta.stop_reason == "max_tokens" and events[-2].usage.output_tokens == 8
    assert events[0].message.usage.input_tokens + (
        events[0].message.usage.cache_read_input_tokens or 0) == (
        whole.usage.input_tokens + whole.usage.cache_read_input_tokens)
    # The SDK's stream helper assembles the same message.
    with c.messages.stream(model="tiny", max_tokens=8, messages=PROMPT, **GREEDY) as s:
        streamed = "".join(s.text_stream)
        final = s.get_final_message()
    assert streamed == whole.content[0].text == final.content[0].text
    assert final.stop_reason == "max_tokens"
    # On the wire: named events, each with its JSON data of the same type.
    with httpx.stream("POST", f"{server.url}/v1/messages", timeout=60, json={
            "model": "tiny", "max_tokens": 3, "messages": PROMPT, "stream": True},
            headers={"x-api-key": KEYS["alice"]}) as r:
        lines = [line for line in r.iter_lines() if line]
    names = [line[7:] for line in lines if line.startswith("event: ")]
    datas = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-1] == "message_stop" and [d["type"] for d in datas] == names


def test_messages_stop_sequence_and_prefill(server: ServerProcess) -> None:
    c = claude(server)
    text = c.messages.create(model="tiny", max_tokens=12, messages=PROMPT,
                             **GREEDY).content[0].text
    stop = text[3:6]
    msg = c.messages.create(model="tiny", max_tokens=12, messages=PROMPT, stop_sequences=[stop],
                            **GREEDY)
    assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == stop
    assert msg.content[0].text == text[: text.index(stop)]
    # A final assistant message is a prefill the model continues.
    prefill = [*PROMPT, {"role": "assistant", "content": "Once upon"}]
    cont = c.messages.create(model="tiny", max_tokens=4, messages=prefill, **GREEDY)
    oa = OpenAI(base_url=f"{server.url}/v1", api_key=KEYS["alice"], max_retries=0)
    same = oa.chat.completions.create(model="tiny", max_tokens=4, temperature=0,
                                      messages=prefill,
                                      extra_body={"continue_final_message": True})
    assert cont.content[0].text == same.choices[0].message.content


@pytest.mark.parametrize("extra, where", [
    ({"tools": [{"name": "f", "input_schema": {"type": "nonsense"}}]}, "tools"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
    ({"bogus": 1}, "bogus"),
    ({"temperature": 1.5}, "temperature"),
])
def test_messages_errors_in_anthropic_shape(server: ServerProcess, extra: dict[str, Any],
                                            where: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        claude(server).messages.create(model="tiny", max_tokens=4, messages=PROMPT,
                                       extra_body=extra)
    body = info.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert where in body["error"]["message"]


def test_messages_http_errors(server: ServerProcess) -> None:
    url = f"{server.url}/v1/messages"
    h = {"x-api-key": KEYS["bob"], "anthropic-version": "2023-06-01"}
    r = httpx.post(url, headers=h, json={"model": "tiny", "messages": PROMPT})  # no max_tokens
    assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]
    r = httpx.post(url, headers=h, json={"model": "tiny", "max_tokens": 2, "messages": [
        {"role": "user", "content": [{"type": "image", "source": {}}]}]})
    assert r.status_code == 400 and "image" in r.json()["error"]["message"]
    r = httpx.post(url, headers=h, json={"model": "claude-x", "max_tokens": 2,
                                         "messages": PROMPT})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.AuthenticationError) as info:
        claude(server, key="wrong").messages.create(model="tiny", max_tokens=2, messages=PROMPT)
    assert info.value.body["error"]["type"] == "authentication_error"


# ---------------------------------------------------------------- tenants


def cached(server: ServerProcess, key: str, header: str = "bearer") -> int:
    headers = ({"Authorization": f"Bearer {key}"} if header == "bearer" else {"x-api-key": key})
    r = httpx.post(f"{server.url}/v1/chat/completions", headers=headers, timeout=60, json={
        "model": "tiny", "max_tokens": 2, "messages": [
            {"role": "system", "content": "Tenant isolation check. " * 8},
            {"role": "user", "content": "Same words for everyone."}]})
    assert r.status_code == 200, r.text
    return r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_tenants_have_separate_cache_namespaces(server: ServerProcess) -> None:
    assert cached(server, KEYS["alice"]) == 0
    assert cached(server, KEYS["alice"], header="x-api-key") > 0  # same tenant: cached
    assert cached(server, KEYS["bob"]) == 0  # same prompt, other tenant: nothing shared
    assert cached(server, KEYS["bob"]) > 0
    assert cached(server, OPERATOR) == 0  # --api-key: the shared namespace, not a tenant's
    # A tenant cannot reach another's namespace through cache_salt either.
    r = httpx.post(f"{server.url}/v1/completions", timeout=60,
                   headers={"Authorization": f"Bearer {KEYS['bob']}"},
                   json={"model": "tiny", "prompt": "Salted prompt words " * 6, "max_tokens": 1,
                         "cache_salt": "s"})
    assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    r = httpx.post(f"{server.url}/v1/completions", timeout=60,
                   headers={"Authorization": f"Bearer {KEYS['alice']}"},
                   json={"model": "tiny", "prompt": "Salted prompt words " * 6, "max_tokens": 1,
                         "cache_salt": "s"})
    assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_keys_guard_everything_but_health(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/health").status_code == 200
    for method, path in (("GET", "/metrics"), ("POST", "/flush_cache"), ("GET", "/v1/models"),
                         ("POST", "/tokenize"), ("GET", "/openapi.json")):
        r = httpx.request(method, f"{server.url}{path}", json={"prompt": "x"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
        ok = httpx.request(method, f"{server.url}{path}", json={"prompt": "x"}, timeout=60,
                           headers={"x-api-key": KEYS["bob"]})
        assert ok.status_code == 200, (path, ok.text)


# ---------------------------------------------------------------- CORS


def test_cors_when_enabled(server: ServerProcess) -> None:
    pre = httpx.options(f"{server.url}/v1/chat/completions", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    r = httpx.get(f"{server.url}/v1/models", headers={
        "Origin": ORIGIN, "Authorization": f"Bearer {KEYS['alice']}"})
    assert r.headers["access-control-allow-origin"] == ORIGIN
    denied = httpx.get(f"{server.url}/v1/models", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in denied.headers
    assert "access-control-allow-origin" in httpx.get(
        f"{server.url}/v1/models", headers={"Origin": ORIGIN}).headers  # on the 401 as well
