"""One chat choice's output read as reasoning, content and tool calls, whole or streamed.

The reasoning parser runs first (a thinking model thinks, then answers or calls), the tool
parser on what it leaves as content. Both are incremental; a whole answer is the same parsers
fed once, so streamed and whole answers agree.
"""

from __future__ import annotations

from radixrt.frontend.reasoning import ReasoningParser
from radixrt.frontend.tool_parsers import CallDelta, Parsed, ToolCallParser, merge_calls
from radixrt.frontend.tools import FunctionOut, ToolCallDelta, ToolCallOut


class ChatOutput:
    def __init__(self, reasoning: str = "none", tool_parser: str | None = None) -> None:
        self.reasoning = ReasoningParser(reasoning) if reasoning != "none" else None
        self.tools = ToolCallParser(tool_parser) if tool_parser else None

    def feed(self, text: str, final: bool) -> tuple[str, Parsed]:
        """(reasoning, content and call pieces) of the next piece of output; `final`: the
        output ended with it, so nothing is held back."""
        reasoning, content = self.reasoning.feed(text) if self.reasoning else ("", text)
        if final and self.reasoning:
            r, c = self.reasoning.finish()
            reasoning, content = reasoning + r, content + c
        if self.tools is None:
            return reasoning, Parsed(content)
        parsed = self.tools.feed(content)
        if final:
            parsed.add(self.tools.finish())
        return reasoning, parsed

    def finish_reason(self, reason: str | None) -> str | None:
        """OpenAI's "tool_calls" when the model stopped after calling."""
        called = self.tools is not None and self.tools.called
        return "tool_calls" if called and reason == "stop" else reason


def call_deltas(pieces: list[CallDelta]) -> list[ToolCallDelta]:
    """Streamed call pieces in OpenAI's shape: a call's first delta carries its index, id,
    type and name (arguments ""), later ones arguments (adjacent pieces joined)."""
    out: list[ToolCallDelta] = []
    for p in pieces:
        if p.id is not None:
            out.append(ToolCallDelta(index=p.index, id=p.id, type="function",
                                     function=FunctionOut(name=p.name, arguments="")))
        if not p.arguments:
            continue
        last = out[-1] if out else None
        if last is not None and last.id is None and last.index == p.index:
            last.function.arguments = (last.function.arguments or "") + p.arguments
        else:
            out.append(ToolCallDelta(index=p.index, function=FunctionOut(arguments=p.arguments)))
    return out


def whole_calls(pieces: list[CallDelta]) -> list[ToolCallOut] | None:
    calls = merge_calls(pieces)
    if not calls:
        return None
    return [ToolCallOut(id=c.id, function=FunctionOut(name=c.name, arguments=c.arguments))
            for c in calls]
