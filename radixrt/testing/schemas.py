"""Ten JSON schemas covering what structured output must handle (nested objects, bounded
arrays, enums, bounded numbers, patterns, optional and nullable fields, formats), all with
bounded outputs so sampling always terminates. Shared by tests/unit/test_grammar.py and
bench/bench_grammar.py."""

from __future__ import annotations

from typing import Any

SCHEMAS: list[dict[str, Any]] = [
    {"type": "object", "properties": {"user": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"]}}, "required": ["user"]},
    {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5},
     "minItems": 1, "maxItems": 4},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                      "size": {"enum": [1, 2, 3]}},
     "required": ["color", "size"]},
    {"type": "object", "properties": {
        "price": {"type": "number", "minimum": 0, "maximum": 100},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "delta": {"type": "number", "minimum": -2.5, "maximum": 2.5}},
     "required": ["price", "ratio", "delta"]},
    {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}},
     "required": ["code"]},
    {"type": "object", "properties": {"a": {"type": "boolean"},
                                      "b": {"type": "string", "maxLength": 5}},
     "required": ["a"]},
    {"type": "object", "properties": {
        "note": {"type": ["string", "null"], "maxLength": 6},
        "n": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "null"}]}},
     "required": ["note", "n"]},
    {"type": "array", "items": {"type": "object", "properties": {
        "id": {"type": "integer", "minimum": 1, "maximum": 999}, "ok": {"type": "boolean"}},
        "required": ["id", "ok"]}, "maxItems": 3},
    {"type": "object", "properties": {"day": {"type": "string", "format": "date"},
                                      "kind": {"const": "event"}}, "required": ["day", "kind"]},
    {"type": "object", "properties": {
        "matrix": {"type": "array", "items": {"type": "array", "items": {"type": "boolean"},
                                              "minItems": 1, "maxItems": 2},
                   "minItems": 1, "maxItems": 2},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 2}},
     "required": ["matrix", "tags"]},
]
