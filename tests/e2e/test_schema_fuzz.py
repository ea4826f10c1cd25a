"""Schema fuzzing of every endpoint from the server's own OpenAPI document (schemathesis):
valid and invalid requests generated from the request models. Every answer must be a
non-5xx within the time bound, invalid requests must be refused with a 4xx, and the server
must serve a normal request afterwards.

Marked slow (over 2,000 requests; a generated chat request asks for up to n=16 choices, so even
a ~100-request variant took minutes here on 2 shared cores: too dear for CI):

    python -m pytest -m slow tests/e2e/test_schema_fuzz.py -s
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection, not_a_server_error

if TYPE_CHECKING:
    from conftest import ServerProcess

REQUEST_TIMEOUT_S = 60.0  # a request without an answer by then counts as a hang
FULL_EXAMPLES = 320  # per operation (GETs without parameters run once)
FULL_MIN_REQUESTS = 2000
# What each run tried, by status code: {"full": Counter}.
TRIED: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
STARTED: dict[str, float] = {}


@pytest.fixture(scope="module")
def server(tiny_llama: Path, launch_server: Callable[..., ServerProcess]) -> ServerProcess:
    # A short context bounds every generation the fuzzer asks for (measured: with 256, a
    # generated chat request took ~20 s on 2 shared cores).
    return launch_server("--model", str(tiny_llama), "--dtype", "float32",
                         "--context-length", "64", "--max-total-tokens", "8192",
                         "--served-model-name", "tiny")


def _schema(server: ServerProcess, examples: int) -> Any:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                    max_examples=examples, deterministic=True)
    return schema


@pytest.fixture(scope="module")
def full_schema(server: ServerProcess) -> Any:
    return _schema(server, FULL_EXAMPLES)


def _call(case: Any, run: str) -> None:
    STARTED.setdefault(run, time.monotonic())
    response = case.call(timeout=REQUEST_TIMEOUT_S)
    TRIED[run][response.status_code] += 1
    case.validate_response(response, checks=[not_a_server_error, negative_data_rejection])


def _healthy_after(server: ServerProcess, run: str, minimum: int) -> None:
    tried = TRIED[run]
    took = time.monotonic() - STARTED.get(run, time.monotonic())
    print(f"\nschema fuzz ({run}): {sum(tried.values())} requests in {took:.0f} s, by status: "
          f"{dict(sorted(tried.items()))}")
    assert sum(tried.values()) >= minimum
    assert not any(code >= 500 for code in tried)
    assert httpx.get(f"{server.url}/health", timeout=5).json() == {"status": "ok"}
    r = httpx.post(f"{server.url}/v1/completions", timeout=30,
                   json={"prompt": "Hello", "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4


full = schemathesis.pytest.from_fixture("full_schema")
FUZZ_SETTINGS = settings(deadline=None, derandomize=True,
                         suppress_health_check=list(HealthCheck))


@pytest.mark.slow
@pytest.mark.timeout(3600)
@full.parametrize()
@FUZZ_SETTINGS
def test_fuzz_full(case: Any) -> None:
    _call(case, "full")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_healthy_after_full_fuzz(server: ServerProcess) -> None:
    _healthy_after(server, "full", FULL_MIN_REQUESTS)
