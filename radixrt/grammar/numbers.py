"""Numeric bounds outlines-core ignores: integers and numbers with minimum / maximum (and their
exclusive forms) become regexes that only match values inside the bounds.

outlines-core 0.2 turns {"type": "integer", "minimum": 0, "maximum": 100} into any integer,
so a sampled value could break the schema. `bound_numbers` swaps every bounded numeric node
for a string constant placeholder before the schema is compiled, and `fill_placeholders`
puts the range regex in its place afterwards. The regexes match a subset of the valid values
(decimals with up to 6 fraction digits, no exponents), never an invalid one.
"""

from __future__ import annotations

import json
import math
from typing import Any

PLACEHOLDER = "RADIXRTNUM{}"
FRACTION = r"\.[0-9]{0,5}[1-9]"  # a non-zero fraction: k.f lies strictly between k and k+1


def _same_len(lo: int, hi: int) -> list[str]:
    """Patterns for lo..hi, both >= 0 with the same number of digits."""
    a, b = str(lo), str(hi)
    if a == b:
        return [a]
    i = 0
    while a[i] == b[i]:
        i += 1
    prefix, ra, rb = a[:i], a[i:], b[i:]
    n = len(ra)
    if n == 1:
        return [f"{prefix}[{ra}-{rb}]"]
    out: list[str] = []
    mid_lo, mid_hi = int(ra[0]), int(rb[0])
    if ra[1:] != "0" * (n - 1):
        out += _same_len(int(a), int(prefix + ra[0] + "9" * (n - 1)))
        mid_lo += 1
    if rb[1:] != "9" * (n - 1):
        mid_hi -= 1
    if mid_lo <= mid_hi:
        out.append(f"{prefix}[{mid_lo}-{mid_hi}][0-9]{{{n - 1}}}")
    if rb[1:] != "9" * (n - 1):
        out += _same_len(int(prefix + rb[0] + "0" * (n - 1)), int(b))
    return out


def _nonneg(lo: int, hi: int | None) -> list[str]:
    """Patterns for the integers lo..hi (hi None: unbounded), lo >= 0."""
    if hi is not None and lo > hi:
        return []
    out: list[str] = []
    digits = len(str(lo))
    top = 10**digits - 1
    while hi is None or lo <= hi:
        if hi is None and lo == 10 ** (digits - 1) and digits > 1:
            out.append(f"[1-9][0-9]{{{digits - 1},}}")
            return out
        end = top if hi is None else min(hi, top)
        out += _same_len(lo, end)
        if hi is None:
            out.append(f"[1-9][0-9]{{{digits},}}")
            return out
        lo, digits = end + 1, digits + 1
        top = 10**digits - 1
    return out


def _alt(parts: list[str]) -> str:
    return "(" + "|".join(parts) + ")" if parts else ""


def int_range(lo: int | None, hi: int | None) -> str:
    """A regex for the JSON integers in [lo, hi] (None: unbounded); "" if there are none."""
    parts: list[str] = []
    if hi is None or hi >= 0:
        parts += _nonneg(max(lo, 0) if lo is not None else 0, hi)
    if lo is None or lo < 0:
        neg = _nonneg(max(-hi, 1) if hi is not None else 1, None if lo is None else -lo)
        parts += ["-" + p if "|" not in p else f"-({p})" for p in neg]
    return _alt(parts)


def _bounds(node: dict[str, Any]) -> tuple[Any, Any, bool, bool]:
    lo, hi = node.get("minimum"), node.get("maximum")
    xlo, xhi = node.get("exclusiveMinimum"), node.get("exclusiveMaximum")
    lo_ex = hi_ex = False
    if isinstance(xlo, (int, float)) and not isinstance(xlo, bool) and (lo is None or xlo >= lo):
        lo, lo_ex = xlo, True
    if isinstance(xhi, (int, float)) and not isinstance(xhi, bool) and (hi is None or xhi <= hi):
        hi, hi_ex = xhi, True
    return lo, hi, lo_ex, hi_ex


def number_regex(node: dict[str, Any]) -> str:
    integer = node.get("type") == "integer"
    lo, hi, lo_ex, hi_ex = _bounds(node)
    ilo = None if lo is None else (math.floor(lo) + 1 if lo_ex else math.ceil(lo))
    ihi = None if hi is None else (math.ceil(hi) - 1 if hi_ex else math.floor(hi))
    parts = [p for p in [int_range(ilo, ihi)] if p]
    if not integer:
        # k.f in (k, k + 1) for k >= 0; -(k.f) in (-(k + 1), -k) for the negative side.
        top = None if hi is None else math.floor(hi) - 1
        pos = _nonneg(max(math.ceil(lo), 0) if lo is not None else 0, top)
        if pos:
            parts.append(_alt(pos) + FRACTION)
        nlo = max(math.ceil(-hi), 0) if hi is not None else 0
        neg = _nonneg(nlo, None if lo is None else math.floor(-lo) - 1)
        if neg:
            parts.append("-" + _alt(neg) + FRACTION)
    if not parts:
        raise ValueError(f"no {node.get('type')} satisfies the bounds in {json.dumps(node)}")
    return _alt(parts)


def _is_bounded_number(node: Any) -> bool:
    return (isinstance(node, dict) and node.get("type") in ("integer", "number")
            and any(k in node for k in ("minimum", "maximum", "exclusiveMinimum",
                                        "exclusiveMaximum")))


def bound_numbers(schema: Any) -> tuple[Any, dict[str, str]]:
    """The schema with bounded numeric nodes replaced by placeholders, and their regexes."""
    found: dict[str, str] = {}

    def walk(node: Any) -> Any:
        if _is_bounded_number(node):
            name = PLACEHOLDER.format(len(found))
            found[name] = number_regex(node)
            return {"const": name}
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema), found


def fill_placeholders(regex: str, found: dict[str, str]) -> str:
    for name, pattern in found.items():
        regex = regex.replace(f'"{name}"', pattern)
    return regex
