"""Server start-up: seconds from `python -m radixrt.launch_server` to the first /health 200,
median over rounds, and when each stage logged (model loaded, KV pool, serving).

`--baseline-tree DIR` starts the server from another checkout (a git worktree of an older
commit, its native extensions built or copied in) in alternate rounds, so a noisy machine
slows both alike:

    git worktree add /tmp/base <commit> && cp radixrt/*.so /tmp/base/radixrt/
    python -m bench.bench_startup --rounds 5 --baseline-tree /tmp/base
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STAGES = {"loaded": re.compile(r"\] loaded "), "kv_pool": re.compile(r"\] KV pool: "),
          "serving": re.compile(r"\] radixrt serving ")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_once(tree: Path, server_args: list[str], timeout_s: float) -> dict[str, Any]:
    """Seconds to the first /health 200 and to each stage's log line, then a SIGTERM."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "radixrt.launch_server", "--port", str(port),
                             *server_args], cwd=tree, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    stages: dict[str, float] = {}

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            for name, pattern in STAGES.items():
                if name not in stages and pattern.search(line):
                    stages[name] = time.monotonic() - t0

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    ready = None
    try:
        while time.monotonic() - t0 < timeout_s and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        ready = time.monotonic() - t0
                        break
            except OSError:
                time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(timeout=5)
    if ready is None:
        raise RuntimeError(f"the server from {tree} was not ready within {timeout_s:g} s "
                           f"(exit code {proc.returncode})")
    return {"ready_s": ready, **{f"{k}_s": v for k, v in stages.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_startup", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baseline-tree", default=None, metavar="DIR")
    ap.add_argument("--server-args", default="", help="extra launch_server flags, one string")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    trees = {"this tree": REPO}
    if args.baseline_tree:
        trees["baseline"] = Path(args.baseline_tree).resolve()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for rnd in range(args.rounds):
        order = list(trees) if rnd % 2 == 0 else list(trees)[::-1]
        for name in order:
            res = start_once(trees[name], args.server_args.split(), args.timeout)
            results[name].append(res)
            print(f"round {rnd + 1}/{args.rounds}, {name}: ready in {res['ready_s']:.2f} s",
                  flush=True)
    cols = ["ready_s", *(f"{k}_s" for k in STAGES)]
    print(f"\nseconds from launch, median of {args.rounds} rounds")
    print("| Tree | Ready (/health 200) | Model loaded | KV pool | Serving line |")
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        meds = [statistics.median(r[c] for r in rows) if all(c in r for r in rows) else
                float("nan") for c in cols]
        print(f"| {name} | " + " | ".join(f"{m:.2f}" for m in meds) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
