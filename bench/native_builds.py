"""Another tree's native kernels in this process, for in-process A/B benchmarks.

On a shared VM the same binary's timings move 10-25 % between processes, more than most
kernel changes; calls of two builds alternated in one process see the same machine. The
other tree is e.g. a `git worktree` of an older commit.

_quant_cpu has no pybind classes: the other tree's own build loads as is. _attention_cpu
registers pybind classes (Plan, PlanOptions), which pybind keys by C++ type name, so the
other tree's copy is compiled here with its namespace renamed (same flags as setup.py).
"""

from __future__ import annotations

import glob
import importlib.machinery
import importlib.util
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from types import ModuleType

# What setup.py's Pybind11Extension adds to a csrc/*.flags file's flags for a module.
MODULE_FLAGS = ["-std=c++17", "-shared", "-fPIC"]


def attention_flags(tree: Path) -> list[str]:
    """tree's flags for radixrt._attention_cpu: its csrc/attention_cpu.flags, or this
    checkout's for a tree from before that file (they were the same then)."""
    path = tree / "csrc" / "attention_cpu.flags"
    if not path.exists():
        path = Path(__file__).resolve().parent.parent / "csrc" / "attention_cpu.flags"
    text = path.read_text()
    return [f for line in text.splitlines() for f in line.split("#", 1)[0].split()]


def load_extension(path: Path, name: str) -> ModuleType:
    """The extension module at `path` as `other_build.<name>` (name: its PyInit_ name)."""
    full = f"other_build.{name}"
    loader = importlib.machinery.ExtensionFileLoader(full, str(path))
    spec = importlib.util.spec_from_file_location(full, str(path), loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def built_extension(tree: Path, name: str) -> Path:
    """radixrt/<name>*.so as built in `tree` (python setup.py build_ext --inplace there)."""
    found = glob.glob(str(tree / "radixrt" / f"{name}*.so"))
    if not found:
        raise SystemExit(f"no radixrt/{name}*.so under {tree}: build it there first")
    return Path(found[0])


def build_attention(tree: Path) -> Path:
    """Compiles tree's csrc/attention_cpu.cpp with its namespace renamed, once per source
    (the .so lands in tree/build/ab_attention/, rebuilt when a source is newer)."""
    import pybind11  # setup.py's build dependency

    src = tree / "csrc" / "attention_cpu.cpp"
    if not src.exists():
        raise SystemExit(f"no {src}")
    out_dir = tree / "build" / "ab_attention"
    out = out_dir / f"_attention_cpu{sysconfig.get_config_var('EXT_SUFFIX')}"
    newest = max(p.stat().st_mtime for p in (tree / "csrc").glob("attention_cpu*"))
    if out.exists() and out.stat().st_mtime >= newest:
        return out
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = ["g++", *attention_flags(tree), *MODULE_FLAGS, "-Dradixrt_attn=radixrt_attn_other",
           f"-I{sysconfig.get_paths()['include']}", f"-I{pybind11.get_include()}",
           str(src), "-o", str(out)]
    print(f"building {tree}'s attention kernels (about a minute) ...", file=sys.stderr,
          flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"built in {time.perf_counter() - t0:.0f} s: {out}", file=sys.stderr, flush=True)
    return out
