"""radixrt.Engine from any entry point: a plain script without `if __name__ == "__main__":`,
`python -c`, and a program read from stdin (like a notebook kernel, its __main__ has no file).

The program never closes its Engine: the interpreter's exit must still stop every child
process and remove the sockets' directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from radixrt import Engine
from radixrt.process_group import StartupError
from radixrt.testing.processes import alive

REPO = Path(__file__).resolve().parents[2]

PROGRAM = """\
import json
from radixrt import Engine
engine = Engine({model!r}, dtype="float32", max_total_tokens=1024, page_size=8)
out = engine.generate(input_ids=[1, 504, 3575, 282],
                      sampling_params={{"temperature": 0, "max_new_tokens": 4, "ignore_eos": True}})
print(json.dumps({{"ids": out["output_ids"], "sockets": engine.group.endpoints.directory,
                  "children": [p.pid for p in engine.group.procs.values()]}}))
"""


@pytest.mark.timeout(900)
def test_engine_without_main_guard(make_tiny_model, tmp_path: Path) -> None:
    code = PROGRAM.format(model=str(make_tiny_model("llama")))
    script = tmp_path / "plain_script.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    forms = {
        "script": ([sys.executable, str(script)], None),
        "python -c": ([sys.executable, "-c", code], None),
        "stdin": ([sys.executable, "-"], code),
    }
    results = {}
    for form, (argv, stdin) in forms.items():
        run = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env,
                             cwd=tmp_path, timeout=600)
        assert run.returncode == 0, f"{form}: exit {run.returncode}\n{run.stderr[-3000:]}"
        results[form] = out = json.loads(run.stdout.strip().splitlines()[-1])
        assert len(out["ids"]) == 4, form
        assert len(out["children"]) == 3, form  # worker, scheduler, tokenizer
        deadline = time.monotonic() + 10
        while any(alive(p) for p in out["children"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(p) for p in out["children"]), f"{form}: orphan processes"
        assert not Path(out["sockets"]).exists(), f"{form}: sockets left behind"
    # Greedy on the same model: every entry point generates the same tokens.
    assert len({tuple(r["ids"]) for r in results.values()}) == 1


@pytest.mark.timeout(600)
def test_killed_parent_leaves_no_orphans(make_tiny_model, tmp_path: Path) -> None:
    """SIGKILL gives the parent no chance to clean up: PR_SET_PDEATHSIG stops the children."""
    code = PROGRAM.format(model=str(make_tiny_model("llama"))) + (
        "import os, signal, sys\nsys.stdout.flush()\nos.kill(os.getpid(), signal.SIGKILL)\n")
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=600)
    assert run.returncode == -9, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    deadline = time.monotonic() + 10
    while any(alive(p) for p in out["children"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in out["children"])
    shutil.rmtree(out["sockets"], ignore_errors=True)  # nobody could remove it


def test_start_failure_is_one_clear_error(make_tiny_model, tmp_path: Path) -> None:
    """A worker that cannot load its model: one StartupError naming it, nothing left running."""
    model = tmp_path / "broken"
    shutil.copytree(make_tiny_model("llama"), model)
    (model / "model.safetensors").unlink()
    with pytest.raises(StartupError, match=r"worker0 failed to start: ModelLoadError: .*"
                                           r"no \*\.safetensors"):
        Engine(str(model), dtype="float32", max_total_tokens=1024)
    me = os.getpid()
    left = [p for p in os.listdir("/proc") if p.isdigit() and alive(int(p))
            and f"PPid:\t{me}\n" in Path(f"/proc/{p}/status").read_text()]
    assert left == []
