"""Request fields this server knows but does not act on: each is a 400 naming it, unless its
value asks for exactly what the server does anyway (the owners' rule: never accept a field and
silently ignore it; accept it only where ignoring it IS its meaning).

Fields not listed here and not declared on a request model are a 400 as well ("Unrecognized
request argument"); the tables only give the known ones a clearer message.
"""

from __future__ import annotations

from typing import Any

# field -> values that request what this server does anyway (accepted, nothing to do).
OPENAI_DEFAULT_VALUES: dict[str, tuple[Any, ...]] = {
    "store": (False,),  # nothing is ever stored
    "service_tier": ("auto", "default"),  # one tier: the standard one
    "modalities": (["text"],),  # text out is all there is
    "best_of": (1,),  # one candidate per choice
    "echo": (False,),
    "suffix": ("",),
}

# field -> why it is refused.
OPENAI_UNSUPPORTED: dict[str, str] = {
    "reasoning_effort": "this server runs no reasoning budget",
    "verbosity": "this server has no verbosity control",
    "functions": "the deprecated function-calling API is not implemented",
    "function_call": "the deprecated function-calling API is not implemented",
    "audio": "audio output is not implemented",
    "modalities": "only text output (modalities [\"text\"]) is implemented",
    "prediction": "predicted outputs are not implemented",
    "web_search_options": "web search is not implemented",
    "service_tier": "there is one service tier (\"auto\" or \"default\")",
    "store": "this server stores no completions (only store: false)",
    "metadata": "metadata is kept with stored completions, and this server stores none",
    "moderation": "moderation is not implemented",
    "prompt_cache_retention": "the prefix cache keeps entries until memory runs out; no "
                              "retention policy can be set",
    "prompt_cache_options": "the prefix cache has no options per request",
    "best_of": "only best_of 1 is implemented",
    "echo": "echoing the prompt is not implemented",
    "suffix": "suffix (insertion) is not implemented",
}


def accepted_as_default(field: str, value: Any, table: dict[str, tuple[Any, ...]]) -> bool:
    """True when `value` of a listed field asks for what the server does anyway (types must
    match: 0 is not false)."""
    return any(type(value) is type(ok) and value == ok for ok in table.get(field, ()))


def unsupported_message(field: str, reasons: dict[str, str]) -> str:
    reason = reasons.get(field)
    if reason is None:
        return f"Unrecognized request argument supplied: {field}"
    return f"{field} is not supported: {reason}"
