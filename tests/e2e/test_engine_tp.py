"""radixrt.Engine and the server with --tp-size 2: real rank processes over gloo."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from openai import OpenAI

from radixrt import Engine
from radixrt.config import build_engine_config
from radixrt.engine import EngineDeadError
from radixrt.process_group import StartupError
from radixrt.testing.local_engine import LocalEngine
from radixrt.testing.processes import children_of, wait_gone

if TYPE_CHECKING:
    from conftest import ServerProcess

pytestmark = pytest.mark.timeout(600)

GREEDY = {"temperature": 0, "max_new_tokens": 16, "ignore_eos": True}
SEEDED = {"temperature": 0.9, "top_p": 0.95, "seed": 7, "max_new_tokens": 16,
          "ignore_eos": True}
OPTIONS = {"device": "cpu", "dtype": "float32", "max_total_tokens": 2048}


def local_outputs(model: str, prompts: list[list[int]], params: list[dict]) -> list[list[int]]:
    """tp 1, the scheduler and ModelRunner in this process: the reference."""
    engine = LocalEngine(build_engine_config(model, quantization="none", **OPTIONS))
    for i, (p, sp) in enumerate(zip(prompts, params)):
        engine.add(f"r{i}", p, sp)
    while engine.scheduler.has_work:
        engine.step()
    return [engine.outputs[f"r{i}"].output_ids for i in range(len(prompts))]


def test_engine_tp2_matches_tp1(make_tiny_model) -> None:
    model = str(make_tiny_model("llama"))
    prompts = [[1, 504, 3575, 282, 4649, 314], list(range(200, 240)), [5, 6, 7]]
    params = [GREEDY, GREEDY, SEEDED]
    want = local_outputs(model, prompts, params)
    with Engine(model, tp_size=2, **OPTIONS) as engine:
        assert engine.config.tp_size == 2 and engine.config.quantization == "none"
        got = engine.generate(input_ids=prompts, sampling_params=params)
        assert [g["output_ids"] for g in got] == want
        # The radix cache works the same over ranks: a repeated prompt reuses its pages.
        again = engine.generate(input_ids=prompts[1], sampling_params=GREEDY)
        assert again["output_ids"] == want[1]
        assert again["meta_info"]["cached_tokens"] >= 32
        stats = engine.get_stats()
        assert stats.running == 0 and stats.pages_protected == 0


def test_killed_rank_stops_the_engine(make_tiny_model) -> None:
    with Engine(str(make_tiny_model("llama")), tp_size=2, **OPTIONS) as engine:
        assert len(engine.generate("Hello", GREEDY)["output_ids"]) == 16
        children = [p.pid for p in engine.group.procs.values()]
        sockets = engine.group.endpoints.directory
        os.kill(engine.group.procs["worker1"].pid, signal.SIGKILL)
        with pytest.raises(EngineDeadError, match=r"the worker1 process died \(exit code -9\)"):
            engine.generate("Hello again", GREEDY)
    assert wait_gone(children, 10) == [], "orphan processes"
    assert not Path(sockets).exists()


def test_heads_that_do_not_split_are_a_start_error(make_tiny_model) -> None:
    """4 query heads over 3 ranks: refused before any worker starts."""
    with pytest.raises(StartupError, match=re.escape(
            "--tp-size 3: the model's query heads (4) is not a multiple of 3")):
        Engine(str(make_tiny_model("llama")), tp_size=3, **OPTIONS)
    assert children_of(os.getpid()) == []


@pytest.mark.slow
def test_server_tp2_serves_and_a_killed_rank_stops_it(
        make_tiny_model, launch_server: Callable[..., ServerProcess]) -> None:
    server = launch_server("--model", str(make_tiny_model("llama")), "--dtype", "float32",
                           "--tp-size", "2", "--max-total-tokens", "2048")
    client = OpenAI(base_url=f"{server.url}/v1", api_key="none")
    out = client.completions.create(model="default", prompt="The capital of France is",
                                    max_tokens=8, temperature=0)
    assert out.usage.completion_tokens == 8
    everyone = server.descendants()
    workers = [p for p in everyone if "radixrt.worker" in server.cmdline(p)]
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)
    assert server.proc.wait(60) != 0
    # Which rank got the signal is not known here (pids do not say); the killed one, not its
    # peer that followed it (radixrt.process_group.PEER_LOST_EXIT), is the one named.
    assert re.search(r"the worker[01] process died \(exit code -9\)", server.log())
    assert server.wait_gone(everyone, 10) == []
