"""--deterministic through the real server and the official client: a seeded sampled
completion comes back the same alone and while other requests share its steps; where radixrt
has no batch-invariant kernels the server refuses the flag at start, saying why."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from openai import AsyncOpenAI

if TYPE_CHECKING:
    from conftest import ServerProcess

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(default_model_dir: Path, launch_server: Callable[..., ServerProcess]) -> ServerProcess:
    return launch_server("--model", str(default_model_dir), "--dtype", "float32",
                         "--max-total-tokens", "4096", "--deterministic")


def test_seeded_sample_repeats_under_load(server: ServerProcess) -> None:
    async def run() -> tuple[str, list[str]]:
        client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)

        async def one(prompt: str, seed: int | None, tokens: int) -> str:
            r = await client.completions.create(model="default", prompt=prompt, seed=seed,
                                                max_tokens=tokens, temperature=0.9,
                                                top_p=0.95)
            return r.choices[0].text

        try:
            probe = "Once upon a time"
            alone = await one(probe, 42, 40)
            # The probe twice among 7 unseeded requests of other lengths: other batch
            # sizes, prefills beside its decodes, other rows in every step.
            loaded = await asyncio.gather(
                one(probe, 42, 40), *(one(f"Story {i}: the {'old ' * i}ship", None, 30 + 5 * i)
                                      for i in range(7)), one(probe, 42, 40))
            return alone, [loaded[0], loaded[-1]]
        finally:
            await client.close()

    alone, loaded = asyncio.run(run())
    assert len(alone) > 20  # a real completion, not an empty one that trivially repeats
    assert loaded == [alone, alone]
    assert "linears on batch-invariant kernels" in server.log()


def test_refused_where_there_are_no_invariant_kernels(default_model_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "radixrt.launch_server", "--model", str(default_model_dir),
         "--deterministic", "--attention-backend", "torch"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--deterministic needs the CPU, the cpu attention backend and one rank" in proc.stderr
    assert "attention torch" in proc.stderr
