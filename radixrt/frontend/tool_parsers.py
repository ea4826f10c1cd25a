"""Tool-call parsers: a model's output text split into content and tool calls, incrementally.

Formats (chosen per model from its chat template, frontend/tools.py):
- `hermes` (Qwen2.5/Qwen3, Hermes): calls anywhere in the text as
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`; the text around them is content.
- `llama3` (Llama 3.1/3.2 JSON tool calling): an output that opens with `{` (or
  `<|python_tag|>`) is calls `{"name": ..., "parameters": {...}}`, separated by `;`.
- `json` (radixrt's own, for tool_choice required / named and the prompt-and-constrain
  fallback): an output that opens with `[` is a JSON array of `{"name", "arguments"}` calls.

The parser is fed the text as it arrives and answers OpenAI-style pieces: content, and per call
a first delta (index, id, name) then its arguments as they are generated (raw text, so the
streamed pieces join to exactly the final `arguments` string). It holds back only a possibly
arriving opener; a call's object is tracked with a small JSON scanner (strings, escapes,
nesting), so every character is looked at once. The whole (non-streamed) answer is the same
parser fed once, so both paths agree.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from radixrt.config import TOOL_PARSERS
from radixrt.frontend.reasoning import partial_suffix

# The canonical head of a call object: its name, then its arguments (streamed from here on).
HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*')


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class CallDelta:
    """One streamed piece of a tool call (OpenAI's delta.tool_calls[i])."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object's text


@dataclass
class Parsed:
    """What a piece of output holds: content text and call pieces."""

    content: str = ""
    calls: list[CallDelta] = field(default_factory=list)

    def add(self, other: Parsed) -> None:
        self.content += other.content
        self.calls += other.calls


def merge_calls(pieces: list[CallDelta]) -> list[ToolCall]:
    """Whole calls from their streamed pieces."""
    calls: dict[int, ToolCall] = {}
    for p in pieces:
        c = calls.setdefault(p.index, ToolCall(p.id or "", p.name or "", ""))
        c.arguments += p.arguments
    return [calls[i] for i in sorted(calls)]


class _JsonScanner:
    """Finds where one JSON object or array ends, a chunk at a time."""

    def __init__(self) -> None:
        self.depth, self.in_str, self.esc = 0, False, False

    def feed(self, text: str) -> int | None:
        """Index in `text` just past the end of the value, or None while it is still open."""
        for i, ch in enumerate(text):
            if self.in_str:
                if self.esc:
                    self.esc = False
                elif ch == "\\":
                    self.esc = True
                elif ch == '"':
                    self.in_str = False
            elif ch == '"':
                self.in_str = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth <= 0:
                    return i + 1
        return None


class _CallObject:
    """One call's object text as it arrives: its head sent once known, then the arguments."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.text = ""
        self.scanner = _JsonScanner()
        self.args: _JsonScanner | None = None  # set once the head is parsed
        self.args_started = self.args_done = False
        self.name: str | None = None

    def feed(self, text: str) -> tuple[list[CallDelta], int | None]:
        """Pieces to send, and where in `text` the object ended (None: still open)."""
        end = self.scanner.feed(text)
        part = text if end is None else text[:end]
        start = len(self.text)
        self.text += part
        out: list[CallDelta] = []
        if self.args is None:
            m = HEAD.match(self.text)
            if m is None:
                return out, end
            self.name = _unescape(m.group(1))
            out.append(CallDelta(self.index, call_id(), self.name, ""))
            self.args = _JsonScanner()
            start = m.end()
        if not self.args_done:
            piece = self.text[start:]
            if not self.args_started:  # the value's first character is the arguments' first
                piece = piece.lstrip()
                self.args_started = bool(piece)
            stop = self.args.feed(piece)
            if stop is not None:
                piece, self.args_done = piece[:stop], True
            if piece:
                out.append(CallDelta(self.index, arguments=piece))
        return out, end

    def whole(self) -> list[CallDelta] | None:
        """A closed object in another layout (keys reordered): the call, if it is one."""
        if self.args is not None:
            return []  # already sent
        try:
            obj = json.loads(self.text)
        except json.JSONDecodeError:
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None
        args = obj.get("arguments", obj.get("parameters", {}))
        return [CallDelta(self.index, call_id(), obj["name"], json.dumps(args))]


def _unescape(s: str) -> str:
    try:
        return json.loads(f'"{s}"')
    except json.JSONDecodeError:
        return s


@dataclass(frozen=True)
class Format:
    opener: str  # what starts the calls ("" for none: the object itself)
    closer: str  # what ends them ("" for none: the end of the output)
    separators: str  # between calls
    at_start: bool  # calls only where the output opens (else anywhere in the text)
    consume_opener: bool = True  # False: the opener is the object's own first character


FORMATS = {
    "hermes": Format("<tool_call>", "</tool_call>", "", at_start=False),
    "llama3": Format("{", "", ";", at_start=True, consume_opener=False),
    "json": Format("[", "]", ",", at_start=True),
}
PYTHON_TAG = "<|python_tag|>"  # Llama 3's tool-call marker, before the JSON


class ToolCallParser:
    """Incremental parser of one output (one choice) in one Format."""

    def __init__(self, kind: str) -> None:
        self.fmt = FORMATS[kind]
        self.state = "start" if self.fmt.at_start else "text"
        self.pending = ""
        self.calls = 0
        self.obj: _CallObject | None = None
        self.raw = ""  # the call text so far, content if it turns out not to be a call

    @property
    def called(self) -> bool:
        return self.calls > 0

    def feed(self, text: str) -> Parsed:
        self.pending += text
        out = Parsed()
        while self.pending and self._step(out):
            pass
        return out

    def _step(self, out: Parsed) -> bool:
        """One move of the state machine; False when it must wait for more text."""
        fmt = self.fmt
        if self.state == "plain":
            out.content += self.pending
            self.pending = ""
        elif self.state == "start":
            head = self.pending.lstrip()
            if head.startswith(PYTHON_TAG) and fmt is FORMATS["llama3"]:
                self.pending, self.state = head[len(PYTHON_TAG):], "calls"
            elif head.startswith(fmt.opener):
                self.pending = head[len(fmt.opener):] if fmt.consume_opener else head
                self.raw = fmt.opener if fmt.consume_opener else ""
                self.state = "calls"
            elif not head or (fmt is FORMATS["llama3"] and PYTHON_TAG.startswith(head)):
                return False
            else:
                self.state = "plain"
        elif self.state == "text":
            at = self.pending.find(fmt.opener)
            if at < 0:
                # Held back: a partial opener, and trailing whitespace (a call may follow).
                keep = partial_suffix(self.pending, fmt.opener)
                cut = len(self.pending[:len(self.pending) - keep].rstrip())
                out.content += self.pending[:cut]
                self.pending = self.pending[cut:]
                return False
            out.content += self.pending[:at].rstrip()
            self.raw = fmt.opener
            self.pending, self.state = self.pending[at + len(fmt.opener):], "calls"
        elif self.state == "calls":
            return self._between_calls(out)
        else:  # "object"
            assert self.obj is not None
            pieces, end = self.obj.feed(self.pending)
            out.calls += pieces
            if end is None:
                self.pending = ""
                return False
            self.pending, self.state = self.pending[end:], "calls"
            self._close_object(out)
        return True

    def _between_calls(self, out: Parsed) -> bool:
        fmt = self.fmt
        rest = self.pending.lstrip()
        while rest and rest[0] in fmt.separators:
            rest = rest[1:].lstrip()
        self.pending = rest
        if not rest:
            return False
        if rest[0] == "{":
            self.obj, self.state = _CallObject(self.calls), "object"
            return True
        if fmt.closer and rest.startswith(fmt.closer):
            self.pending, self.raw = rest[len(fmt.closer):], ""
            self.state = "plain" if fmt.at_start else "text"
            return True
        if fmt.closer and fmt.closer.startswith(rest):
            return False  # the closer may be arriving
        # Not the format after all: what follows is text.
        out.content += self.raw
        self.raw = ""
        self.state = "plain" if fmt.at_start else "text"
        return True

    def _close_object(self, out: Parsed) -> None:
        obj = self.obj
        assert obj is not None
        self.obj = None
        whole = obj.whole()
        if whole is None:  # not a call: its text is content
            out.content += self.raw + obj.text
            self.raw = ""
            return
        out.calls += whole
        self.calls += 1
        self.raw = ""

    def finish(self) -> Parsed:
        """What is held back, once the output ended (an unclosed call stays what it was)."""
        out = Parsed()
        if self.state == "object" and self.obj is not None and self.obj.args is None:
            out.content += self.raw + self.obj.text
        elif self.state in ("text", "start", "plain"):
            out.content += self.pending.rstrip() if self.called else self.pending
        elif self.state == "calls" and not self.called:
            out.content += self.raw + self.pending
        self.pending = ""
        return out


def resolve_tool_parser(choice: str, template: str) -> str:
    """The parser for a --tool-call-parser choice. auto: from the chat template: Hermes
    `<tool_call>` tags, Llama 3's JSON calls, else `json` (the prompt-and-constrain fallback,
    for templates that know no tools)."""
    if choice not in TOOL_PARSERS:
        raise ValueError(f"unknown tool-call parser {choice!r}; choose from {TOOL_PARSERS}")
    if choice != "auto":
        return choice
    if "<tool_call>" in template:
        return "hermes"
    if PYTHON_TAG in template or ('"parameters"' in template and "tools" in template):
        return "llama3"
    return "json"
