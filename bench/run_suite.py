"""The serving benchmark suite: every workload against every system, one server at a time.

    python -m bench.run_suite --quick                       # ~15-20 min on 2 CPU cores
    python -m bench.run_suite --quick --workloads multi_turn --systems radixrt,radixrt-nocache
    python -m bench.run_suite --quick --peer-url http://host:8080 --systems peer

Systems: radixrt (radix cache on), radixrt-nocache (--disable-radix-cache), hf (the plain
transformers server in bench/baseline_hf_server.py), and `peer`: any OpenAI-compatible server
already running at --peer-url (vLLM, SGLang, llama.cpp, ...). Each started server runs on a
free port with the same model and dtype, is warmed up, has its prefix cache flushed before each
workload (POST /flush_cache where the server has it), and is stopped before the next starts.

Writes bench/results/<system>__<workload>.json (summary + every request's timings),
bench/results/suite.json, docs/benchmarks.md and its figures under docs/figures/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import cpu, metrics
from bench.client import OpenAIClient, Progress, RunResult, load_tokenizer, run_workload
from bench.servers import ServerError, ServerProcess, free_port, hf_baseline_cmd, radixrt_cmd
from bench.workloads import GENERATORS, PRESETS, Workload, build_workloads

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("radixrt", "radixrt-nocache", "hf")
NOTES_BEGIN, NOTES_END = "<!-- notes:begin -->", "<!-- notes:end -->"


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
    summaries: list[dict[str, Any]] = field(default_factory=list)
    runs: list[RunResult] = field(default_factory=list)


# ------------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "os_cpu_count": os.cpu_count()}
    try:
        info["nproc"] = len(os.sched_getaffinity(0))
    except AttributeError:
        info["nproc"] = os.cpu_count()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
        info["cpu"] = m.group(1).strip() if m else None
        flags = set((re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M) or ["", ""])[1].split())
        info["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    try:
        m = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        info["memory_gib"] = round(int(m.group(1)) / 2**20, 1) if m else None
    except OSError:
        pass
    for mod in ("torch", "transformers"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    return info


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
                  model: str | None, ignore_eos: bool, api_key: str | None) -> None:
    assert system.base_url is not None
    base_url = system.base_url

    async def one(client: OpenAIClient, w: Workload, attempt: int) -> dict[str, Any]:
        if args.wait_idle > 0:
            await asyncio.to_thread(wait_idle, args.wait_idle, args.idle_threshold)
        flushed = flush_cache(base_url)
        load0 = loadavg()
        monitor = cpu.CpuMonitor(system.pgid)
        monitor.start()
        label = f"{system.name}/{w.name}" + (f" (try {attempt + 1})" if attempt else "")
        run = await run_workload(client, w, Progress(label, w.num_requests))
        s = metrics.summarize(run, w, system.name)
        s.update(monitor.stop(), loadavg_start=load0, loadavg_end=loadavg(),
                 cache_flushed=flushed, attempt=attempt + 1)
        s["_run"] = run
        return s

    async def go() -> None:
        async with OpenAIClient(base_url, model=model, api_key=api_key,
                                ignore_eos=ignore_eos) as client:
            await warmup(client)
            for w in workloads:
                best: dict[str, Any] | None = None
                for attempt in range(args.retries + 1):
                    s = await one(client, w, attempt)
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
               model_dir: str) -> SystemRun:
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

    port = free_port()
    if name == "hf":
        cmd, ready = hf_baseline_cmd(model_dir, port, args.dtype), "/v1/models"
    else:
        cmd = radixrt_cmd(model_dir, port, args.dtype, cache=(name == "radixrt"),
                          extra=shlex.split(args.radixrt_args))
        ready = "/health"
    system.cmd = cmd
    server = ServerProcess(name, cmd, port, args.results_dir / "logs" / f"{name}.log",
                           ready_path=ready, startup_timeout=args.startup_timeout)
    log(f"{name}: starting `{' '.join(shlex.quote(c) for c in cmd)}`")
    server.start()
    try:
        system.startup_s = server.wait_ready()
        system.base_url = server.base_url
        system.pgid = server.proc.pid if server.proc is not None else None
        log(f"{name}: ready in {system.startup_s:.1f} s")
        run_workloads(system, workloads, args, None, True, None)
    except (ServerError, httpx.HTTPError) as e:
        system.error = f"{type(e).__name__}: {e}"
        log(f"{name}: FAILED: {system.error}")
    finally:
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


# ------------------------------------------------------------------------------- docs


def render_docs(suite: dict[str, Any], figures: list[Path], docs_path: Path,
                notes: str) -> str:
    m = suite["machine"]
    summaries = suite["summaries"]
    rel = [os.path.relpath(f, docs_path.parent) for f in figures]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `bench/run_suite.py`; rerun it to refresh every number on this page.",
        "",
        "```",
        suite["command"],
        "```",
        "",
        f"Run {suite['started']} – {suite['finished']} ({suite['runtime_s'] / 60:.1f} min).",
        "",
        "## Machine",
        "",
        f"- CPU: {m.get('cpu')} — {m.get('nproc')} cores usable (`nproc`), "
        f"{m.get('memory_gib')} GiB RAM; SIMD: {', '.join(m.get('cpu_flags') or []) or '–'}",
        f"- Python {m.get('python')}, torch {m.get('torch')}, transformers "
        f"{m.get('transformers')}; {m.get('platform')}",
        f"- Model: `{suite['model']}`, dtype {suite['dtype']}, no GPU",
        "- Other processes shared this machine: the *Other CPU* column below is the share of "
        "all cores that processes other than the server and the benchmark client used during "
        "each run (from /proc). Torch's worker threads slow down several-fold when they share "
        "cores, so a run with more than a few percent there is disturbed.",
        "",
        "## Systems",
        "",
        "| System | How it ran | Startup (s) | Status |",
        "|---|---|---|---|",
    ]
    for s in suite["systems"]:
        how = (f"`{' '.join(s['cmd'][1:])}`" if s.get("cmd")
               else f"external server at {s.get('base_url')}")
        startup = "–" if s.get("startup_s") is None else f"{s['startup_s']:.1f}"
        status = "ok" if not s.get("error") else "error: " + s["error"][:200].replace("\n", " ")
        lines.append(f"| {s['name']} | {how} | {startup} | {status} |")
    lines += [
        "",
        "## Workloads",
        "",
        f"Prompts are seeded random text (seed {suite['seed']}, sized with the model's "
        "tokenizer); every server gets byte-identical requests (multi-turn: until the replies "
        "differ). All requests stream, greedy (temperature 0), with `ignore_eos` so every "
        "reply has exactly max_tokens tokens.",
        "",
        "| Workload | Requests | Concurrency | Arrivals | Shape |",
        "|---|---|---|---|---|",
    ]
    for w in suite["workloads"]:
        arrivals = "all at once" if not w["request_rate"] else f"Poisson {w['request_rate']}/s"
        lines.append(f"| {w['name']} | {w['num_requests']} | {w['max_concurrency']} | {arrivals} "
                     f"| {w['description']} |")
    lines += ["", "## Results", "", metrics.markdown_table(summaries), "",
              "TTFT: time to the first streamed content; ITL: gaps between streamed chunks "
              "(the HF baseline's TextIteratorStreamer sends a word at a time); cache hit: "
              "sum(cached_tokens) / sum(prompt_tokens) from the servers' usage.", ""]
    rounds = metrics.round_table(summaries)
    if rounds:
        lines += ["### Multi-turn: TTFT p50 by round (cache hit rate)", "", rounds, ""]
    if suite["targets"]:
        lines += ["### Against the targets", "", metrics.targets_table(suite["targets"]), ""]
    if suite["agreement"]:
        lines += ["### Output agreement", "",
                  "Greedy replies to the same single-turn requests and first rounds "
                  "(identical / compared):", ""]
        for a in suite["agreement"]:
            lines.append(f"- {a['a']} vs {a['b']}: {a['identical']} / {a['compared']}")
        lines.append("")
    if rel:
        lines += ["## Figures", ""] + [f"![{Path(r).stem}]({r})" for r in rel] + [""]
    lines += ["## Notes", "", NOTES_BEGIN, notes.strip("\n"), NOTES_END, "",
              "## Reproduce", "",
              "```",
              "pip install -e '.[bench]'",
              "python -m bench.run_suite --quick            # all systems, all workloads",
              "python -m bench.run_suite --quick --wait-idle 600 --retries 2   # on a shared box",
              "python -m bench.run_suite --quick --workloads multi_turn --systems radixrt,hf",
              "python -m bench.run_suite --quick --peer-url http://127.0.0.1:8080 --systems peer",
              "python -m bench.client --base-url http://127.0.0.1:30000 --workload rag",
              "```", "",
              "`--quick` sizes are in `bench/workloads.py` (PRESETS['quick']); without it the "
              "`full` preset runs (3-4x the requests, twice the lengths).", ""]
    return "\n".join(lines)


def previous_notes(docs_path: Path) -> str:
    try:
        text = docs_path.read_text()
    except OSError:
        return ""
    if NOTES_BEGIN in text and NOTES_END in text:
        return text.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0]
    return ""


# ------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run_suite",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="the quick preset (minutes on a 2-core CPU); default: the full preset")
    ap.add_argument("--workloads", default=",".join(GENERATORS),
                    help=f"comma-separated, from {', '.join(GENERATORS)}")
    ap.add_argument("--systems", default=None,
                    help=f"comma-separated, from {', '.join(SYSTEMS)}, peer "
                         "(default: all three, plus peer with --peer-url)")
    ap.add_argument("--model", default=None, help="HF model dir (default: radixrt's default)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        suite = json.loads(args.from_json.read_text())
        suite["targets"] = metrics.target_checks(suite["summaries"])  # current definitions
        write_docs(suite, args)
        return 0
    command = "python -m bench.run_suite " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    t_start, started = time.monotonic(), time.strftime("%Y-%m-%d %H:%M:%S %Z")
    machine = machine_info()
    model_dir = args.model
    if model_dir is None:
        from radixrt.default_model import default_model_dir

        model_dir = str(default_model_dir())
    preset = "quick" if args.quick else "full"
    try:
        workloads = build_workloads(args.workload_list, preset, args.seed,
                                    load_tokenizer(model_dir), args.overrides)
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
        systems.append(run_system(name, workloads, args, model_dir))

    summaries = [s for sys_run in systems for s in sys_run.summaries]
    by_name = {s.name: s for s in systems}
    agreement = [output_agreement(by_name[a], by_name[b])
                 for a, b in (("radixrt", "radixrt-nocache"), ("radixrt", "hf"))
                 if a in by_name and b in by_name]
    suite = {
        "command": command, "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "runtime_s": time.monotonic() - t_start, "preset": preset, "seed": args.seed,
        "model": model_dir, "dtype": args.dtype, "machine": machine,
        "presets": PRESETS[preset], "overrides": args.overrides,
        "workloads": [w.summary() for w in workloads],
        "systems": [{"name": s.name, "cmd": s.cmd, "base_url": s.base_url,
                     "startup_s": s.startup_s, "exit_code": s.exit_code, "error": s.error}
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
    return 1 if any(s.error for s in systems) else 0


if __name__ == "__main__":
    raise SystemExit(main())
