"""Tool calling on chat completions: the request's tools, and how a request uses them.

A ToolPlan says, per request, what the template gets (`tools=` for templates that render
tools, else a system message describing them: the prompt-and-constrain fallback), what the
output is constrained to, and which parser (frontend/tool_parsers.py) reads calls out of it:

- `tool_choice` "required" / a named function: the output is generated under a JSON schema, an
  array of `{"name": <tool>, "arguments": <its parameters' schema>}` calls (one call when
  parallel_tool_calls is false), parsed by the `json` parser. Works with any model.
- "auto": the model's own format (hermes / llama3, from its chat template); for templates with
  no tool support, the tools are described in a system message and the output is constrained
  to either such a JSON array or free text that does not open with `[`.
- "none": tools rendered when the template supports them; the output is plain text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_serializer

from radixrt.frontend.fields import _Request
from radixrt.frontend.reasoning import resolve_reasoning_parser
from radixrt.frontend.tool_parsers import resolve_tool_parser
from radixrt.grammar.spec import to_regex
from radixrt.sampling_params import InvalidRequestError

# Free text that is not a call (the fallback's other branch): anything not opening with `[`.
FREE_TEXT = r"[^\[\s][\s\S]*"
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}

# ---------------------------------------------------------------- request models


class FunctionDef(_Request):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")  # OpenAI's rule (and dots)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(_Request):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class CalledFunction(_Request):
    name: str
    arguments: str


class AssistantToolCall(_Request):
    id: str
    type: Literal["function"]
    function: CalledFunction

    def to_template(self, where: str) -> dict[str, Any]:
        """As chat templates expect it: arguments as a dict (as vLLM and HF pass them)."""
        try:
            args = json.loads(self.function.arguments)
        except json.JSONDecodeError:
            raise InvalidRequestError(f"{where}.function.arguments is not valid JSON",
                                      "messages") from None
        return {"id": self.id, "type": "function",
                "function": {"name": self.function.name, "arguments": args}}


# ---------------------------------------------------------------- response models


class NoNulls(BaseModel):
    @model_serializer(mode="wrap")
    def _drop_nulls(self, handler: Any) -> dict[str, Any]:
        # OpenAI's deltas carry only what they set; explicit nulls trip strict clients.
        return {k: v for k, v in handler(self).items() if v is not None}


class FunctionOut(NoNulls):
    name: str | None = None
    arguments: str | None = None


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionOut


class ToolCallDelta(NoNulls):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionOut


# ---------------------------------------------------------------- what the server supports


def read_chat_template(model_path: str) -> str:
    """The model's chat template text ("" if none): chat_template.jinja, else the
    tokenizer_config.json entry (several named templates: all of them, for detection)."""
    d = Path(model_path)
    if (d / "chat_template.jinja").is_file():
        return (d / "chat_template.jinja").read_text()
    try:
        template = json.loads((d / "tokenizer_config.json").read_text()).get("chat_template")
    except (OSError, json.JSONDecodeError):
        return ""
    if isinstance(template, list):
        return "\n".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    return template or ""


@dataclass(frozen=True)
class ToolSupport:
    """The model's tool and reasoning formats, from its chat template and the flags."""

    parser: str  # hermes | llama3 | json | none: how `auto` output is read
    template_tools: bool  # the template renders `tools` itself
    reasoning: str  # qwen3 | deepseek_r1 | none

    @classmethod
    def detect(cls, template: str, tool_parser: str = "auto",
               reasoning_parser: str = "auto") -> ToolSupport:
        return cls(parser=resolve_tool_parser(tool_parser, template),
                   template_tools="tools" in template,
                   reasoning=resolve_reasoning_parser(reasoning_parser, template))


# ---------------------------------------------------------------- one request's plan


@dataclass(frozen=True)
class ToolPlan:
    parser: str | None  # the tool parser run on the output (None: plain text)
    forced: bool  # required / named: every output is calls
    template_tools: list[dict[str, Any]] | None  # passed to the template as `tools`
    system_prompt: str | None  # the fallback's description of the tools
    json_schema: str | None = None  # the calls' grammar (forced)
    regex: str | None = None  # the calls' grammar (auto fallback)

    @property
    def has_grammar(self) -> bool:
        return self.json_schema is not None or self.regex is not None


NO_TOOLS = ToolPlan(parser=None, forced=False, template_tools=None, system_prompt=None)


def calls_schema(tools: list[ToolDef], parallel: bool) -> dict[str, Any]:
    """An array of calls, each one of the tools with its parameters' schema."""
    items = [{"type": "object", "properties": {
        "name": {"const": t.function.name},
        "arguments": t.function.parameters or NO_PARAMETERS},
        "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    schema: dict[str, Any] = {"type": "array", "minItems": 1,
                              "items": items[0] if len(items) == 1 else {"anyOf": items}}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def describe_tools(tools: list[ToolDef], parallel: bool) -> str:
    """The fallback's system message: the tools, and how to call them."""
    specs = json.dumps([t.function.model_dump(exclude_none=True) for t in tools], indent=1)
    many = "one or more calls" if parallel else "exactly one call"
    return ("You can call these functions (tools):\n" + specs + "\n\nTo call a function, "
            f"answer with only a JSON array of {many}, each "
            '{"name": <function name>, "arguments": <arguments object>}, and nothing else. '
            "Otherwise answer in plain text.")


def plan_tools(tools: list[ToolDef] | None, choice: ToolChoice | None, parallel: bool,
               support: ToolSupport) -> ToolPlan:
    """How a request uses its tools; InvalidRequestError naming the field at fault."""
    if not tools:
        if choice is not None and choice != "none":
            raise InvalidRequestError("tool_choice needs tools", "tool_choice")
        return NO_TOOLS
    names = [t.function.name for t in tools]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InvalidRequestError(f"tools: duplicate function name(s) {', '.join(dup)}", "tools")
    for i, t in enumerate(tools):
        try:
            to_regex("json", json.dumps(t.function.parameters or NO_PARAMETERS))
        except InvalidRequestError as exc:
            raise InvalidRequestError(f"tools[{i}].function.parameters: {exc}",
                                      "tools") from None
    choice = choice or "auto"
    rendered = [t.model_dump(exclude_none=True) for t in tools]
    in_template = rendered if support.template_tools else None
    if choice == "none":
        return ToolPlan(None, False, in_template, None)
    if isinstance(choice, NamedToolChoice):
        picked = [t for t in tools if t.function.name == choice.function.name]
        if not picked:
            raise InvalidRequestError(f"tool_choice names function {choice.function.name!r}, "
                                      "which is not among the tools", "tool_choice")
        tools = picked
    prompt = None if support.template_tools else describe_tools(tools, parallel)
    schema = calls_schema(tools, parallel)
    if choice != "auto":
        return ToolPlan("json", True, in_template, prompt, json_schema=json.dumps(schema))
    if support.parser == "json":  # the fallback: calls or free text
        calls = to_regex("json", json.dumps(schema))
        return ToolPlan("json", False, in_template, prompt, regex=f"(?:{calls})|(?:{FREE_TEXT})")
    return ToolPlan(None if support.parser == "none" else support.parser, False, in_template,
                    None)


def tool_messages(messages: list[dict[str, Any]], plan: ToolPlan,
                  support: ToolSupport) -> list[dict[str, Any]]:
    """The chat as the template gets it. For a template that knows no tools (the fallback),
    earlier calls become the assistant's text in the format the model is told to use (with
    or without tools in this request), and the tools' description joins the system message."""
    if support.template_tools:
        return messages
    out = []
    for m in messages:
        calls = m.get("tool_calls")
        if calls:
            text = json.dumps([{"name": c["function"]["name"],
                                "arguments": c["function"]["arguments"]} for c in calls])
            m = {k: v for k, v in m.items() if k != "tool_calls"}
            before = m.get("content") or ""
            if isinstance(before, list):
                before = "\n".join(str(p.get("text", "")) for p in before)
            m["content"] = f"{before}\n{text}" if before else text
        out.append(m)
    if plan.system_prompt is None:
        return out
    if out and out[0]["role"] in ("system", "developer") and isinstance(out[0]["content"], str):
        out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + plan.system_prompt}
    else:
        out.insert(0, {"role": "system", "content": plan.system_prompt})
    return out
