"""CPU accounting from /proc, to tell a clean measurement from one that shared the cores.

On a small CPU box, torch's worker threads slow down many times over when anything else runs
(they spin and get preempted), so a benchmark must know how much CPU *other* processes used
while it ran: busy time of the whole machine minus that of the server's process group and
the benchmark client itself. Linux only; elsewhere every function returns None.
"""

from __future__ import annotations

import os
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_seconds() -> float | None:
    """CPU-seconds all cores spent busy since boot (user+nice+system+irq+softirq+steal)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICK


def _stat_fields(path: str) -> list[str] | None:
    """/proc/.../stat's fields after the comm (which may hold spaces and parentheses)."""
    try:
        with open(path) as f:
            stat = f.read()
    except OSError:
        return None  # exited meanwhile
    return stat[stat.rfind(")") + 2:].split()


def _with_descendants(roots: set[int], parent: dict[int, int]) -> set[int]:
    """roots and every process below them (parent: pid -> ppid)."""
    tree, grew = set(roots), True
    while grew:  # add children until nothing changes
        more = {pid for pid, ppid in parent.items() if ppid in tree} - tree
        tree |= more
        grew = bool(more)
    return tree


def descendants(pid: int) -> set[int]:
    """Every live process below pid (children, theirs, ...), from /proc."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (rest := _stat_fields(f"/proc/{name}/stat")) is not None:
            parent[int(name)] = int(rest[1])
    return _with_descendants({pid}, parent) - {pid}


def group_cpu_seconds(pgids: set[int], pids: set[int]) -> float | None:
    """CPU-seconds (user+system) of live processes in the given pid set or process groups,
    and of the groups' descendants (radixrt's children start process groups of their own)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    procs: dict[int, tuple[int, int, float]] = {}  # pid -> (ppid, pgid, cpu seconds)
    for name in entries:
        if name.isdigit() and (rest := _stat_fields(f"/proc/{name}/stat")) is not None:
            procs[int(name)] = (int(rest[1]), int(rest[2]),
                                (int(rest[11]) + int(rest[12])) / _TICK)
    server = _with_descendants({pid for pid, (_, pgid, _) in procs.items() if pgid in pgids},
                               {pid: ppid for pid, (ppid, _, _) in procs.items()})
    return sum(procs[pid][2] for pid in server | (pids & procs.keys()))


def tree_thread_cpu(root: int) -> dict[int, tuple[list[str], dict[int, float]]] | None:
    """root and its descendants: pid -> (argv, {thread id: CPU-seconds (user+system)})."""
    try:
        entries = [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return None
    parent: dict[int, int] = {}
    for pid in entries:
        if (fields := _stat_fields(f"/proc/{pid}/stat")) is not None:
            parent[pid] = int(fields[1])
    tree = _with_descendants({root}, parent)
    out: dict[int, tuple[list[str], dict[int, float]]] = {}
    for pid in tree:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        threads = {}
        for tid in tids:
            if (fields := _stat_fields(f"/proc/{pid}/task/{tid}/stat")) is not None:
                threads[tid] = (int(fields[11]) + int(fields[12])) / _TICK
        out[pid] = (argv, threads)
    return out


@dataclass
class CpuSnapshot:
    wall: float
    busy: float | None
    ours: float | None


class CpuMonitor:
    """Share of the machine's CPU that other processes used between start() and stop()."""

    def __init__(self, server_pgid: int | None) -> None:
        self.pgids = {server_pgid} if server_pgid is not None else set()
        self.pids = {os.getpid()}
        self._start: CpuSnapshot | None = None

    def snapshot(self) -> CpuSnapshot:
        return CpuSnapshot(time.monotonic(), machine_busy_seconds(),
                           group_cpu_seconds(self.pgids, self.pids))

    def start(self) -> None:
        self._start = self.snapshot()

    def stop(self) -> dict[str, float | None]:
        """{"foreign_cpu_share": other processes' CPU / capacity, "ours_cpu_share": ...}."""
        a, b = self._start, self.snapshot()
        ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        if a is None or None in (a.busy, b.busy, a.ours, b.ours) or b.wall <= a.wall:
            return {"foreign_cpu_share": None, "ours_cpu_share": None}
        capacity = (b.wall - a.wall) * (ncpu or 1)
        ours = (b.ours or 0.0) - (a.ours or 0.0)
        foreign = max(0.0, (b.busy or 0.0) - (a.busy or 0.0) - ours)
        return {"foreign_cpu_share": foreign / capacity, "ours_cpu_share": ours / capacity}


def busy_fraction(interval: float = 3.0) -> float | None:
    """Fraction of all cores busy over the next `interval` seconds."""
    a = machine_busy_seconds()
    t0 = time.monotonic()
    time.sleep(interval)
    b = machine_busy_seconds()
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if a is None or b is None:
        return None
    return (b - a) / ((time.monotonic() - t0) * (ncpu or 1))


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
