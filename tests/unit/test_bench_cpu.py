"""bench.cpu tells our own CPU use from other processes'."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from bench import cpu

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc")


def spin(seconds: float) -> None:
    t0 = time.process_time()
    while time.process_time() - t0 < seconds:
        pass


def test_own_work_is_ours() -> None:
    m = cpu.CpuMonitor(server_pgid=None)
    m.start()
    spin(0.4)
    r = m.stop()
    assert r["ours_cpu_share"] is not None and r["ours_cpu_share"] > 0.05
    assert cpu.group_cpu_seconds(set(), {os.getpid()}) >= 0.4


def test_other_process_is_foreign_unless_in_the_server_group() -> None:
    code = "import time\nt=time.process_time()\nwhile time.process_time()-t<0.4: pass"
    for in_group in (False, True):
        proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
        m = cpu.CpuMonitor(server_pgid=proc.pid if in_group else None)
        m.start()
        # Sample before it exits: an exited process's time is no longer in /proc.
        time.sleep(0.3)
        busy_share = m.stop()
        proc.wait(30)
        if in_group:
            assert busy_share["ours_cpu_share"] is not None and busy_share["ours_cpu_share"] > 0.02
        else:
            assert busy_share["foreign_cpu_share"] is not None and busy_share["foreign_cpu_share"] > 0.02
    assert 0.0 <= (cpu.busy_fraction(0.2) or 0.0) <= 1.05


def test_descendants_are_children_and_theirs() -> None:
    """A shell with two sleeping children, under this process: both levels found, nothing
    else (bench.dos_probe finds the server's tokenizer process this way)."""
    shell = subprocess.Popen(["bash", "-c", "sleep 30 & sleep 30 & wait"],
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(cpu.descendants(shell.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        kids = cpu.descendants(shell.pid)
        assert len(kids) == 2 and shell.pid not in kids
        assert kids | {shell.pid} <= cpu.descendants(os.getpid())
    finally:
        os.killpg(shell.pid, signal.SIGKILL)  # the sleeps too
        shell.wait()
