"""The package's shape, checked on the source: layers import only downward, modules stay small.

Layers (low to high): memory (kvcache = KV pool, cache = prefix caches) < compute (attention,
models) < worker, scheduler < tokenizer, frontend, engine, launch_server. Shared plain data
(config, model_info, sampling_params, ipc) sits below all of them; radixrt.testing (test
drivers) above everything, and nothing in the server imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "radixrt"
MAX_LINES = 450
TOP = {"engine", "launch_server", "backend", "testing"}
SERVING = {"frontend", "tokenizer"}
ENGINE_SIDE = {"worker", "scheduler"}
COMPUTE = {"attention", "models"}
MEMORY = {"kvcache", "cache"}

# Which top-level parts of radixrt each part must not import.
FORBIDDEN: dict[str, set[str]] = {
    "kvcache": COMPUTE | ENGINE_SIDE | SERVING | TOP | {"cache"},
    "cache": COMPUTE | ENGINE_SIDE | SERVING | TOP | {"kvcache"},
    "attention": ENGINE_SIDE | SERVING | TOP | {"cache"},
    "models": ENGINE_SIDE | SERVING | TOP | {"cache"},
    "worker": SERVING | TOP | {"scheduler", "cache"},
    "scheduler": SERVING | TOP | COMPUTE | {"worker", "kvcache"},
    # The serving side talks to the engine only through messages: no model, cache or torch code.
    "tokenizer": TOP | ENGINE_SIDE | COMPUTE | MEMORY | {"frontend"},
    "frontend": TOP | ENGINE_SIDE | COMPUTE | MEMORY | {"tokenizer"},
    "ipc": TOP | ENGINE_SIDE | COMPUTE | MEMORY | SERVING | {"process_group", "config"},
    "model_info": TOP | ENGINE_SIDE | COMPUTE | MEMORY | SERVING | {"ipc"},
    "process_group": TOP | ENGINE_SIDE | COMPUTE | MEMORY | SERVING,
}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def part_of(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def radixrt_imports(path: Path) -> set[str]:
    """Top-level parts of radixrt that the module imports (at any depth in the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "radixrt" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layers_import_downward(path: Path) -> None:
    part = part_of(path)
    bad = radixrt_imports(path) & FORBIDDEN.get(part, set())
    if part != "testing":
        bad |= radixrt_imports(path) & {"testing"}
    assert not bad, f"{path.relative_to(PACKAGE)} ({part}) imports {sorted(bad)}"


def test_modules_are_small() -> None:
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in modules()}
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}


def test_the_rules_can_fail(tmp_path: Path) -> None:
    """The import scan sees what these rules forbid (a guard against a scan that finds nothing)."""
    probe = tmp_path / "probe.py"
    probe.write_text("from radixrt.worker.model_runner import ModelRunner\n"
                     "import radixrt.cache.radix_cache\n"
                     "from radixrt import testing\n"
                     "def f():\n    from radixrt.models import llama\n")
    assert radixrt_imports(probe) == {"worker", "cache", "testing", "models"}
    assert radixrt_imports(PACKAGE / "worker" / "model_runner.py") >= {"attention", "models"}
