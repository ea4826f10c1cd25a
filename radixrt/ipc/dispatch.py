"""One dispatch table per process: message type -> handler, instead of isinstance chains."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


class UnexpectedMessage(TypeError):
    """A process received a message type it has no handler for."""


class Dispatcher:
    """Routes each received message to the handler registered for its exact type.

    Exact types (no walk up the class tree) keep routing O(1) and make every accepted message
    visible in one table; a new message type needs a new row, or it fails loudly.
    """

    def __init__(self, owner: str, handlers: Mapping[type, Callable[[Any], Any]]) -> None:
        self.owner = owner
        self.handlers = dict(handlers)

    def __call__(self, msg: object) -> Any:
        handler = self.handlers.get(type(msg))
        if handler is None:
            raise UnexpectedMessage(f"{self.owner}: no handler for {type(msg).__name__}")
        return handler(msg)
