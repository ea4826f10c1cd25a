"""Reasoning content: a thinking model's `<think>…</think>` block, split from its answer.

`qwen3`: the output may open with `<think>`; what follows up to `</think>` is reasoning, the
rest content (an output that does not open with `<think>`, as with enable_thinking false, is
all content). `deepseek_r1`: the prompt already opened the block, so the output is reasoning
up to `</think>` (a leading `<think>` is dropped too). The parser is incremental: it holds back
only a partial `<think>` / `</think>` at the end of what it has seen.
"""

from __future__ import annotations

from radixrt.config import REASONING_PARSERS

OPEN, CLOSE = "<think>", "</think>"


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a proper start of `marker` (held back: the
    marker may be arriving)."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def resolve_reasoning_parser(choice: str, template: str) -> str:
    """The parser for a --reasoning-parser choice ("auto": qwen3 when the template thinks)."""
    if choice not in REASONING_PARSERS:
        raise ValueError(f"unknown reasoning parser {choice!r}; choose from {REASONING_PARSERS}")
    if choice == "auto":
        return "qwen3" if OPEN in template else "none"
    return choice


class ReasoningParser:
    """Splits a stream of text into (reasoning, content) pieces."""

    def __init__(self, kind: str) -> None:
        self.state = "start"
        # Where an output without a leading <think> goes: deepseek_r1's prompt opened it.
        self.unopened = "reasoning" if kind == "deepseek_r1" else "content"
        self.pending = ""
        # Newlines right after <think> and </think> belong to the block, not to the text.
        self.strip = False

    def feed(self, text: str) -> tuple[str, str]:
        self.pending += text
        reasoning = content = ""
        while self.pending:
            if self.state == "start":
                head = self.pending.lstrip()
                if head.startswith(OPEN):
                    self.pending, self.state = head[len(OPEN):], "reasoning"
                    self.strip = True
                elif not head or OPEN.startswith(head):
                    break  # could still be the opener
                else:
                    self.state = self.unopened
            elif self.strip and not self._strip("\n"):
                break
            elif self.state == "reasoning":
                end = self.pending.find(CLOSE)
                if end < 0:
                    cut = len(self.pending) - partial_suffix(self.pending, CLOSE)
                    reasoning += self.pending[:cut]
                    self.pending = self.pending[cut:]
                    break
                reasoning += self.pending[:end]
                self.pending = self.pending[end + len(CLOSE):]
                self.state, self.strip = "content", True
            else:
                content += self.pending
                self.pending = ""
        return reasoning, content

    def _strip(self, chars: str) -> bool:
        """Drop leading `chars` from pending; False when nothing is left to look at."""
        self.pending = self.pending.lstrip(chars)
        self.strip = not self.pending
        return bool(self.pending)

    def finish(self) -> tuple[str, str]:
        """What is held back, once the output ended."""
        rest, self.pending = self.pending, ""
        if self.state == "reasoning":
            return rest, ""
        return "", rest
