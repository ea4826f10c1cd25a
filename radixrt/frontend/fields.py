"""The base of every request model, and the fields the server knows but does not act on.

An unknown field is a 400 naming it ("Unrecognized request argument"); a known but
unimplemented one is a 400 saying why, unless its value asks for exactly what the server does
anyway (the owners' rule: never accept a field and silently ignore it; accept it only where
ignoring it IS its meaning). An explicit null means the field's default.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

# field -> values that request what this server does anyway (accepted, nothing to do).
OPENAI_DEFAULT_VALUES: dict[str, tuple[Any, ...]] = {
    "store": (False,),  # nothing is ever stored
    "service_tier": ("auto", "default"),  # one tier: the standard one
    "modalities": (["text"],),  # text out is all there is
    "best_of": (1,),  # one candidate per choice
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


def _nullable_optionals(schema: dict[str, Any], cls: type) -> None:
    """The OpenAPI schema says what parsing does: every optional field may be null."""
    required = set(schema.get("required", ()))
    props = schema.get("properties", {})
    for name, prop in props.items():
        options = prop.get("anyOf", [prop])
        if name in required or any(o.get("type") == "null" for o in options):
            continue
        keep = {k: prop.pop(k) for k in ("title", "default", "description") if k in prop}
        props[name] = {"anyOf": [prop, {"type": "null"}], **keep}


class _Request(BaseModel):
    """Base of every request model: an unknown field is a 400 naming it, and an explicit null
    means the field's default (the OpenAI spec allows null for every optional field)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_nullable_optionals)
    # Undeclared fields whose value asks for what the server does anyway (dropped), and the
    # reasons the other known ones are refused (frontend/fields.py).
    DEFAULT_VALUES: ClassVar[dict[str, tuple[Any, ...]]] = {}
    UNSUPPORTED: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {k: v for k, v in data.items()
                if v is not None and not accepted_as_default(k, v, cls.DEFAULT_VALUES)}
