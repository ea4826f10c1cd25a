"""The routing key of a request: text that starts the same way when prompts do.

No tokenizer in the router: a chat request's key is its messages in order (role and text,
with separators; the same for Anthropic's Messages and OpenAI's Responses API, their system
turn first), a completion's its prompt, a token-id prompt one character per token. Two
requests whose prompts share a prefix then share a key prefix, which is all the prefix tree
needs (the replica's cache works on tokens of the same text in the same order).
"""

from __future__ import annotations

from typing import Any

MAX_KEY_CHARS = 65536  # ~16k tokens: enough to tell conversations apart, bounded per request

ROLE_SEP, MESSAGE_SEP = "\x1f", "\x1e"
IDS_MARK = "\x1d"  # token-id keys never share a prefix with text keys

# Routes whose JSON body carries a prompt; everything else is routed by load alone.
GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/generate",
                              "/v1/responses", "/v1/messages"})


def _content_text(content: Any) -> str:
    """A message's content: a string, or a list of parts (text parts, image URLs)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if text is None and isinstance(part.get("image_url"), dict):
                    text = part["image_url"].get("url")
                out.append(str(text or ""))
            else:
                out.append(str(part))
        return "".join(out)
    return "" if content is None else str(content)


def _ids_key(ids: list[Any]) -> str:
    return IDS_MARK + "".join(chr(i) for i in ids if isinstance(i, int) and 0 <= i < 0x110000)


def _prompt_key(prompt: Any) -> str:
    """str | list[str] | list[int] | list[list[int]]: a batch routes by its first prompt."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, int):
            return _ids_key(prompt)
        return _prompt_key(first)
    return ""


def _turns(path: str, body: dict[str, Any]) -> list[tuple[str, str]] | None:
    """A conversation's (role, text) turns in order: chat messages; Anthropic's system and
    messages; the Responses API's instructions and input items (calls and their outputs by
    their arguments and output text)."""
    system = body.get("instructions" if path == "/v1/responses" else "system")
    turns = [("system", _content_text(system))] if system is not None else []
    items = body.get("input" if path == "/v1/responses" else "messages")
    if isinstance(items, str) and path == "/v1/responses":
        return turns + [("user", items)]
    if not isinstance(items, list):
        return None
    for m in items:
        if isinstance(m, dict):
            text = m.get("content", m.get("arguments", m.get("output")))
            turns.append((str(m.get("role", m.get("type", ""))), _content_text(text)))
    return turns


def routing_key(path: str, body: Any) -> str:
    """The key of a request to `path` with parsed JSON `body` ("" when there is none)."""
    if path not in GENERATION_PATHS or not isinstance(body, dict):
        return ""
    if path in ("/v1/chat/completions", "/v1/messages", "/v1/responses"):
        turns = _turns(path, body)
        if turns is None:
            return ""
        key = MESSAGE_SEP.join(f"{role}{ROLE_SEP}{text}" for role, text in turns)
    elif path == "/v1/completions":
        key = _prompt_key(body.get("prompt"))
    else:  # /generate: text or input_ids
        key = _prompt_key(body.get("text")) or _prompt_key(body.get("input_ids"))
    salt = body.get("cache_salt")
    if isinstance(salt, str) and salt:  # different salts never share KV on a replica
        key = f"{salt}{IDS_MARK}{key}"
    return key[:MAX_KEY_CHARS]
