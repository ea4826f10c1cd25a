"""What a request constrains its output to, and the regex that stands for it.

Validated early (the tokenizer process calls `check_spec` before a request is queued) so a bad
schema or regex is a 400 naming it, not a failed stream. The scheduler compiles the same regex.
"""

from __future__ import annotations

import json
import re

import jsonschema
from outlines_core.json_schema import build_regex_from_schema

from radixrt.grammar.numbers import bound_numbers, fill_placeholders
from radixrt.sampling_params import InvalidRequestError

# Any JSON object (response_format {"type": "json_object"}).
JSON_OBJECT_SCHEMA = '{"type": "object"}'
# Whitespace the JSON grammar allows between tokens: a single optional space keeps the model
# from padding with newlines forever (outlines' default allows unbounded whitespace).
WHITESPACE = r"[ ]?"


def grammar_key(regex: str | None, json_schema: str | None) -> tuple[str, str] | None:
    """(kind, spec) of a request's constraint, the compile cache's key; None if unconstrained."""
    if regex is not None and json_schema is not None:
        raise InvalidRequestError("give at most one of regex and json_schema", "regex")
    if json_schema is not None:
        return ("json", json_schema)
    if regex is not None:
        return ("regex", regex)
    return None


def to_regex(kind: str, spec: str) -> str:
    """The regex of a constraint; InvalidRequestError naming the problem if it has one."""
    if kind == "regex":
        try:
            re.compile(spec)
        except re.error as exc:
            raise InvalidRequestError(f"invalid regex: {exc}", "regex") from None
        return spec
    try:
        schema = json.loads(spec)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"json_schema is not valid JSON: {exc}", "json_schema") from None
    if not isinstance(schema, dict) and not isinstance(schema, bool):
        raise InvalidRequestError("json_schema must be a JSON object", "json_schema")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except Exception as exc:  # noqa: BLE001 - jsonschema.SchemaError and friends
        msg = getattr(exc, "message", str(exc))
        raise InvalidRequestError(f"invalid json_schema: {msg}", "json_schema") from None
    try:
        schema, numbers = bound_numbers(schema)
        return fill_placeholders(build_regex_from_schema(json.dumps(schema), WHITESPACE),
                                 numbers)
    except Exception as exc:  # noqa: BLE001 - outlines raises ValueError (or panics) on these
        raise InvalidRequestError(f"unsupported json_schema: {exc}", "json_schema") from None


def check_spec(regex: str | None, json_schema: str | None) -> None:
    key = grammar_key(regex, json_schema)
    if key is not None:
        to_regex(*key)
