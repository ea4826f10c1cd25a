"""A/B against another checkout in one process: load a module from a source file of that
tree (say, a git worktree of an older commit) beside this tree's own."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_source(name: str, file: str | Path) -> ModuleType:
    """The module in `file`, registered as `name` (its dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
