"""The serving benchmark suite: every workload against every system, one server at a time.

    python -m bench.run_suite --quick                       # ~15-20 min on 2 CPU cores
    python -m bench.run_suite --quick --workloads multi_turn --systems radixrt,radixrt-nocache
    python -m bench.run_suite --preset cpu-peer --systems radixrt,llamacpp
    python -m bench.run_suite --quick --peer-url http://host:8080 --systems peer

Systems: radixrt (radix cache on), radixrt-nocache (--disable-radix-cache), hf (the plain
transformers server in bench/baseline_hf_server.py), llamacpp (llama.cpp's C++ llama-server on
the default model's GGUF, built by `python -m bench.llama_cpp build`; skipped when not built),
and `peer`: any OpenAI-compatible server already running at --peer-url (vLLM, SGLang, ...).
Each started server runs on a free port with the same model, is warmed up, starts each workload
cold (POST /flush_cache where the server has it; llama-server, which has none, is restarted
before every workload) and is stopped before the next system starts.

Writes bench/results/<system>__<workload>.json (summary + every request's timings),
bench/results/suite.json, docs/benchmarks.md (bench/report.py) and its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import cpu, llama_cpp, metrics
from bench.client import OpenAIClient, Progress, RunResult, load_tokenizer, run_workload
from bench.report import previous_notes, render_docs
from bench.servers import ServerError, ServerProcess, free_port, hf_baseline_cmd, radixrt_cmd
from bench.workloads import GENERATORS, PRESETS, Workload, build_workloads

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("radixrt", "radixrt-nocache", "hf", "llamacpp")


def log(msg: str) -> None:
    print(f"[suite] {msg}", file=sys.stderr, flush=True)


@dataclass
class SystemRun:
    name: str
    base_url: str | None = None
    cmd: list[str] | None = None
    startup_s: float | None = None
    pgid: int | None = None  # the server's process group, for CPU accounting
    exit_code: int | None = None
    error: str | None = None
    version: str | None = None  # a non-radixrt server's own version string
    cold_start: bool = False  # restarted before every workload (no /flush_cache)
    summaries: list[dict[str, Any]] = field(default_factory=list)
    runs: list[RunResult] = field(default_factory=list)


# ------------------------------------------------------------------------------- machine


def loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def wait_idle(max_wait: float, threshold: float) -> float | None:
    """Wait (at most max_wait s) until less than `threshold` of the CPU is busy: torch threads
    that share cores with other work run many times slower. Returns the last busy fraction."""
    busy = cpu.busy_fraction(2.0)
    t0 = time.monotonic()
    while busy is not None and busy > threshold and time.monotonic() - t0 < max_wait:
        log(f"{100 * busy:.0f} % of the CPU is busy with other work: waiting for it to idle "
            f"({max_wait - (time.monotonic() - t0):.0f} s left)")
        time.sleep(8)
        busy = cpu.busy_fraction(2.0)
    return busy


# ------------------------------------------------------------------------------- running


def flush_cache(base_url: str) -> bool:
    """POST /flush_cache (radixrt, SGLang); servers without it just say 404."""
    try:
        return httpx.post(base_url.rstrip("/").removesuffix("/v1") + "/flush_cache",
                          timeout=60).status_code == 200
    except httpx.HTTPError:
        return False


async def warmup(client: OpenAIClient) -> None:
    """Two short requests so lazy initialisation does not land in the first measurement."""
    from bench.client import RequestRecord

    for api, body in (("chat", [{"role": "user", "content": "Say hello."}]),
                      ("completions", "The weather today is")):
        rec = RequestRecord(workload="warmup", sid="warmup", turn=0, api=api)  # type: ignore[arg-type]
        await client.send(rec, body, 4, time.perf_counter())
        if rec.error:
            raise ServerError(f"warm-up {api} request failed: {rec.error}")


def run_workloads(system: SystemRun, workloads: list[Workload], args: argparse.Namespace,
                  model: str | None, ignore_eos: bool, api_key: str | None,
                  restart: Callable[[str], None] | None = None) -> None:
    """Every workload (with its retries) against the system's server. restart, for servers
    without /flush_cache: called before each run to start a fresh server, so every run starts
    cold; it updates system.base_url."""

    async def one(w: Workload, attempt: int, warm: bool) -> dict[str, Any]:
        if args.wait_idle > 0:
            await asyncio.to_thread(wait_idle, args.wait_idle, args.idle_threshold)
        if restart is not None:
            await asyncio.to_thread(restart, w.name)
        assert system.base_url is not None
        async with OpenAIClient(system.base_url, model=model, api_key=api_key,
                                ignore_eos=ignore_eos) as client:
            if not warm or restart is not None:
                await warmup(client)
            flushed = restart is not None or flush_cache(system.base_url)
            load0 = loadavg()
            monitor = cpu.CpuMonitor(system.pgid)
            monitor.start()
            label = f"{system.name}/{w.name}" + (f" (try {attempt + 1})" if attempt else "")
            run = await run_workload(client, w, Progress(label, w.num_requests))
        s = metrics.summarize(run, w, system.name)
        s.update(monitor.stop(), loadavg_start=load0, loadavg_end=loadavg(),
                 cache_flushed=flushed, cold_start=restart is not None, attempt=attempt + 1)
        s["_run"] = run
        return s

    async def go() -> None:
        warm = False
        for w in workloads:
            best: dict[str, Any] | None = None
            for attempt in range(args.retries + 1):
                s = await one(w, attempt, warm)
                warm = True
                noise = s.get("foreign_cpu_share")
                if best is None or (noise or 0.0) < (best.get("foreign_cpu_share") or 0.0):
                    best = s
                if noise is None or noise <= args.max_foreign_cpu:
                    break
                log(f"{system.name}/{w.name}: other processes used {100 * noise:.0f} % of the "
                    f"CPU during the run (limit {100 * args.max_foreign_cpu:.0f} %)"
                    + ("; running it again" if attempt < args.retries else "; keeping the "
                       "least disturbed run"))
            assert best is not None
            run = best.pop("_run")
            system.runs.append(run)
            system.summaries.append(best)
            save_run(args.results_dir, system, w, run, best)
            log_summary(best)

    asyncio.run(go())


def log_summary(s: dict[str, Any]) -> None:
    hit = s["cache_hit_rate"]
    hit_s = "–" if hit is None else f"{100 * hit:.0f} %"
    failed = f", {s['failed']} failed" if s["failed"] else ""
    noise = s.get("foreign_cpu_share")
    noise_s = "" if noise is None else f", other processes {100 * noise:.0f} % CPU"
    log(f"{s['system']}/{s['workload']}: {s['duration_s']:.1f} s, "
        f"{s['request_throughput']:.2f} req/s, {s['output_throughput']:.1f} out tok/s, "
        f"TTFT p50 {s['ttft_ms']['p50'] or 0:.0f} ms, hit {hit_s}{failed}{noise_s}")


def save_run(results_dir: Path, system: SystemRun, w: Workload, run: RunResult,
             summary: dict[str, Any]) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{system.name}__{w.name}.json"
    path.write_text(json.dumps({"system": system.name, "server_cmd": system.cmd,
                                "summary": summary, "workload": w.summary(),
                                "run": run.to_dict()}, indent=1) + "\n")


def run_system(name: str, workloads: list[Workload], args: argparse.Namespace,
               model_dir: str, tokenizer: Any) -> SystemRun:
    system = SystemRun(name)
    if name == "peer":
        system.base_url = args.peer_url
        system.name = args.peer_name
        try:
            run_workloads(system, workloads, args, args.peer_model,
                          not args.peer_no_ignore_eos, args.peer_api_key)
        except (ServerError, httpx.HTTPError) as e:
            system.error = f"{type(e).__name__}: {e}"
        return system

    ready = "/health"
    if name == "llamacpp":
        peer = llama_cpp.peer_setup(args, workloads, tokenizer)
        if isinstance(peer, str):
            system.error = f"skipped: {peer}"
            log(f"{name}: {system.error}")
            return system
        make_cmd, system.version, system.cold_start = peer.cmd, peer.version, True
    elif name == "hf":
        ready = "/v1/models"
        make_cmd = functools.partial(hf_baseline_cmd, model_dir,
                                     dtype="float32" if args.dtype == "auto" else args.dtype)
    else:
        make_cmd = functools.partial(radixrt_cmd, model_dir, dtype=args.dtype,
                                     cache=(name == "radixrt"),
                                     extra=shlex.split(args.radixrt_args))
    server: ServerProcess | None = None

    def start(label: str = "") -> None:
        nonlocal server
        if server is not None:
            server.stop()
        port = free_port()
        cmd = make_cmd(port=port)
        system.cmd = system.cmd or cmd
        log_name = f"{name}__{label}.log" if label else f"{name}.log"
        server = ServerProcess(name, cmd, port, args.results_dir / "logs" / log_name,
                               ready_path=ready, startup_timeout=args.startup_timeout)
        log(f"{name}: starting `{' '.join(shlex.quote(c) for c in cmd)}`")
        server.start()
        startup = server.wait_ready()
        system.startup_s = system.startup_s or startup
        system.base_url = server.base_url
        system.pgid = server.proc.pid if server.proc is not None else None
        log(f"{name}: ready in {startup:.1f} s")

    try:
        if system.cold_start:
            run_workloads(system, workloads, args, None, True, None, restart=start)
        else:
            start()
            run_workloads(system, workloads, args, None, True, None)
    except (ServerError, httpx.HTTPError) as e:
        system.error = f"{type(e).__name__}: {e}"
        log(f"{name}: FAILED: {system.error}")
    finally:
        if server is not None:
            system.exit_code = server.stop()
            log(f"{name}: stopped (exit status {system.exit_code})")
        # -SIGTERM: uvicorn (the HF baseline) re-raises the SIGTERM we sent once it is done.
        if system.exit_code not in (0, None, -signal.SIGTERM) and system.error is None:
            system.error = f"server exited with status {system.exit_code}"
    return system


def output_agreement(a: SystemRun, b: SystemRun) -> dict[str, Any]:
    """Greedy outputs of two systems on the same requests: how many are identical.

    Multi-turn rounds after a differing reply see different prompts, so only round 1 and
    single-turn requests are compared.
    """
    outs = {(r.workload, r.sid): r.output_text for run in a.runs for r in run.records
            if r.turn == 0 and r.ok}
    same = total = 0
    first_diff: dict[str, Any] | None = None
    for run in b.runs:
        for r in run.records:
            key = (r.workload, r.sid)
            if r.turn == 0 and r.ok and key in outs:
                total += 1
                if outs[key] == r.output_text:
                    same += 1
                elif first_diff is None:
                    first_diff = {"workload": r.workload, "sid": r.sid,
                                  a.name: outs[key][:200], b.name: r.output_text[:200]}
    return {"a": a.name, "b": b.name, "identical": same, "compared": total,
            "first_difference": first_diff}


# ------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run_suite",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=None, choices=sorted(PRESETS),
                    help="workload sizes (bench/workloads.py PRESETS; default: full)")
    ap.add_argument("--quick", action="store_true", help="the same as --preset quick")
    ap.add_argument("--workloads", default=",".join(GENERATORS),
                    help=f"comma-separated, from {', '.join(GENERATORS)}")
    ap.add_argument("--systems", default=None,
                    help=f"comma-separated, from {', '.join(SYSTEMS)}, peer "
                         "(default: all three, plus peer with --peer-url)")
    ap.add_argument("--model", default=None, help="HF model dir (default: radixrt's default)")
    ap.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                    help="radixrt's --dtype (the HF server takes float32 for auto); default: "
                         "auto (radixrt's own default) with --preset cpu-peer, else float32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="WORKLOAD.KEY=VALUE",
                    help="override a preset size, e.g. --set multi_turn.num_clients=4 (repeatable)")
    ap.add_argument("--radixrt-args", default="",
                    help="extra flags for both radixrt servers, e.g. '--max-total-tokens 65536'")
    ap.add_argument("--peer-url", default=None, help="an OpenAI-compatible server to include")
    ap.add_argument("--peer-name", default="peer")
    ap.add_argument("--peer-model", default=None, help="model name (default: its first model)")
    ap.add_argument("--peer-api-key", default=None)
    ap.add_argument("--peer-no-ignore-eos", action="store_true",
                    help="do not send ignore_eos to the peer (servers that reject it)")
    llama_cpp.add_arguments(ap)
    ap.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--figures-dir", type=Path, default=ROOT / "docs" / "figures")
    ap.add_argument("--no-docs", action="store_true", help="write results JSON only")
    ap.add_argument("--from-json", type=Path, default=None, metavar="SUITE_JSON",
                    help="run nothing: rewrite the docs and figures from an earlier suite.json")
    ap.add_argument("--startup-timeout", type=float, default=600.0)
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="before each workload wait up to S seconds for the machine to idle")
    ap.add_argument("--idle-threshold", type=float, default=0.15, metavar="F",
                    help="'idle': less than this fraction of the CPU busy (default 0.15)")
    ap.add_argument("--max-foreign-cpu", type=float, default=0.10, metavar="F",
                    help="a run during which other processes used more than this fraction of "
                         "the CPU counts as disturbed (default 0.10)")
    ap.add_argument("--retries", type=int, default=0, metavar="N",
                    help="rerun a disturbed workload up to N times, keeping the least "
                         "disturbed run (default 0)")
    args = ap.parse_args(argv)
    if args.quick and args.preset not in (None, "quick"):
        ap.error("--quick contradicts --preset " + args.preset)
    args.preset = "quick" if args.quick else args.preset or "full"
    # Against llama-server radixrt runs with its defaults (issue 9); the older presets pinned
    # float32 and keep it so their numbers stay comparable.
    args.dtype = args.dtype or ("auto" if args.preset == "cpu-peer" else "float32")
    if args.systems is None:
        args.systems = ",".join(SYSTEMS) + (",peer" if args.peer_url else "")
    args.system_list = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.workload_list = [w.strip() for w in args.workloads.split(",") if w.strip()]
    args.overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        wl, dot, field_name = key.partition(".")
        if not sep or not dot or wl not in GENERATORS:
            ap.error(f"--set {item!r}: expected WORKLOAD.KEY=VALUE")
        try:
            parsed = json.loads(value)  # numbers, null, true/false
        except ValueError:
            parsed = value
        args.overrides.setdefault(wl, {})[field_name] = parsed
    for s in args.system_list:
        if s not in (*SYSTEMS, "peer"):
            ap.error(f"unknown system {s!r}")
    if "peer" in args.system_list and not args.peer_url:
        ap.error("--systems peer needs --peer-url")
    for w in args.workload_list:
        if w not in GENERATORS:
            ap.error(f"unknown workload {w!r}")
    return args


def write_docs(suite: dict[str, Any], args: argparse.Namespace) -> None:
    figures = metrics.plot_summaries(suite["summaries"], args.figures_dir)
    args.docs.parent.mkdir(parents=True, exist_ok=True)
    args.docs.write_text(render_docs(suite, figures, args.docs, previous_notes(args.docs)))
    log(f"wrote {args.docs} and {len(figures)} figures")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (kill, timeout) unwinds like Ctrl-C, so every server started is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    if args.from_json is not None:
        suite = json.loads(args.from_json.read_text())
        suite["targets"] = metrics.target_checks(suite["summaries"])  # current definitions
        write_docs(suite, args)
        return 0
    command = "python -m bench.run_suite " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    t_start, started = time.monotonic(), time.strftime("%Y-%m-%d %H:%M:%S %Z")
    machine = cpu.machine_info()
    model_dir = args.model
    if model_dir is None:
        from radixrt.default_model import default_model_dir

        model_dir = str(default_model_dir())
    preset = args.preset
    tokenizer = load_tokenizer(model_dir)
    try:
        workloads = build_workloads(args.workload_list, preset, args.seed, tokenizer,
                                    args.overrides)
    except TypeError as e:  # a --set key the generator does not take
        log(f"bad --set: {e}")
        return 2
    log(f"{preset} preset: {', '.join(f'{w.name} ({w.num_requests} requests)' for w in workloads)}"
        f" on {', '.join(args.system_list)}; model {model_dir}, {args.dtype}")
    busy = cpu.busy_fraction(2.0)
    if busy is not None and busy > args.idle_threshold:
        log(f"warning: {100 * busy:.0f} % of the CPU is busy before the suite starts: timings "
            "will be noisy (see --wait-idle, --retries)")

    systems: list[SystemRun] = []
    for name in args.system_list:
        systems.append(run_system(name, workloads, args, model_dir, tokenizer))

    summaries = [s for sys_run in systems for s in sys_run.summaries]
    by_name = {s.name: s for s in systems}
    agreement = [output_agreement(by_name[a], by_name[b])
                 for a, b in (("radixrt", "radixrt-nocache"), ("radixrt", "hf"),
                              ("radixrt", "llamacpp"))
                 if a in by_name and b in by_name]
    suite = {
        "command": command, "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "runtime_s": time.monotonic() - t_start, "preset": preset, "seed": args.seed,
        "model": model_dir, "dtype": args.dtype, "machine": machine,
        "presets": PRESETS[preset], "overrides": args.overrides,
        "workloads": [w.summary() for w in workloads],
        "systems": [{"name": s.name, "cmd": s.cmd, "base_url": s.base_url,
                     "startup_s": s.startup_s, "exit_code": s.exit_code, "error": s.error,
                     "version": s.version, "cold_start": s.cold_start}
                    for s in systems],
        "summaries": summaries,
        "targets": metrics.target_checks(summaries),
        "agreement": agreement,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "suite.json").write_text(json.dumps(suite, indent=1) + "\n")
    print(metrics.markdown_table(summaries))
    if suite["targets"]:
        print()
        print(metrics.targets_table(suite["targets"]))
    if not args.no_docs and summaries:
        write_docs(suite, args)
    log(f"done in {suite['runtime_s'] / 60:.1f} min")
    # A system skipped for want of its binary is reported in the table, not a failure.
    return 1 if any(s.error and not s.error.startswith("skipped") for s in systems) else 0


if __name__ == "__main__":
    raise SystemExit(main())
