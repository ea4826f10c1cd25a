"""gemm_cuda's choice of cuBLASLt algorithms per projection and batch size, on a CPU.

The library and the timer are stand-ins with the documented semantics (a shape's ranked
algorithms; a call of one by rank; seconds per call): the bookkeeping is what is checked here,
that an algorithm is used only where it is faster by the margin and agrees with F.linear, and
that the swapped modules dispatch on the batch size. tests/gpu/test_lt_gemm.py runs the real
module on CUDA.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from radixrt.models import gemm_cuda, gemv_cuda


class FakeLibrary:
    """Five algorithms for every shape: 3 gives wrong numbers, 4 refuses to run."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []  # (rows, algorithm)
        self.last: int | None = None

    def algorithms(self, x: torch.Tensor, weight: torch.Tensor) -> int:
        return 5

    def run(self, x: torch.Tensor, weight: torch.Tensor, algo: int) -> torch.Tensor:
        if algo == 4:
            raise RuntimeError("algorithm 4 does not take this shape")
        self.calls.append((x.shape[0], algo))
        self.last = algo
        y = F.linear(x, weight)
        return 2 * y if algo == 3 else y


# Microseconds per call by batch rows and algorithm (None: F.linear).
TIMES = {4: {None: 10.0, 0: 12.0, 1: 8.0, 2: 9.0, 3: 1.0},
         8: {None: 10.0, 0: 9.9, 1: 11.0, 2: 12.0, 3: 1.0}}


def make_timer(lib: FakeLibrary) -> Any:
    def timer(fn: Any, weights: list[torch.Tensor]) -> float:
        lib.last = None
        out = fn(weights[0])
        return TIMES[out.shape[0]][lib.last] * 1e-6

    return timer


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.o_proj = nn.Linear(16, 8, bias=False, dtype=torch.bfloat16)
        self.down_proj = gemv_cuda.GemvLinear(nn.Linear(16, 8, bias=False,
                                                        dtype=torch.bfloat16), (4, 16, 4))
        self.bias_proj = nn.Linear(16, 8, bias=True, dtype=torch.bfloat16)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(Layer(), Layer())


def test_faster_agreeing_algorithm_is_used_where_it_wins() -> None:
    m, lib = model(), FakeLibrary()
    status = gemm_cuda.choose(m, lib, [4, 8], 0.03, make_timer(lib))
    # Batch 4: algorithm 1 (8 us) beats F.linear (10 us); 3 is faster still but wrong, 4 fails.
    # Batch 8: the best agreeing one (0: 9.9 us) is within the 3 % margin, so F.linear.
    assert set(status) == {"o_proj", "down_proj"}  # the biased projection is left alone
    for role in ("o_proj", "down_proj"):
        assert "4: algo 1 8.0 us vs 10.0" in status[role], status[role]
        assert "8: F.linear 10.0 us vs 9.9" in status[role], status[role]
    for layer in m:
        assert isinstance(layer.o_proj, gemm_cuda.LtLinear)
        assert isinstance(layer.down_proj, gemv_cuda.GemvLinear)  # keeps its GEMV
        assert layer.down_proj.lt_gemm.algos == {4: 1} == layer.o_proj.lt_gemm.algos
        assert type(layer.bias_proj) is nn.Linear
    # The weights are the same Parameters: state-dict names and values unchanged.
    assert set(m.state_dict()) == set(model().state_dict())


def test_swapped_modules_dispatch_on_batch_rows() -> None:
    m, lib = model(), FakeLibrary()
    gemm_cuda.choose(m, lib, [4, 8], 0.03, make_timer(lib))
    layer = m[0]
    for proj in (layer.o_proj, layer.down_proj):
        for rows, tuned in ((4, True), (8, False), (5, False)):
            x = torch.randn(rows, 16, dtype=torch.bfloat16)
            lib.calls.clear()
            y = proj(x)
            torch.testing.assert_close(y, F.linear(x, proj.weight))
            assert lib.calls == ([(rows, 1)] if tuned else [])
        gemm_cuda.enabled = False
        try:
            lib.calls.clear()
            proj(torch.randn(4, 16, dtype=torch.bfloat16))
            assert lib.calls == []
        finally:
            gemm_cuda.enabled = True


def test_no_win_no_swap_and_mixed_shapes_stay() -> None:
    m, lib = model(), FakeLibrary()
    m[1].o_proj = nn.Linear(16, 4, bias=False, dtype=torch.bfloat16)  # o_proj shapes differ
    status = gemm_cuda.choose(m, lib, [8], 0.03, make_timer(lib))
    assert status["o_proj"] == "F.linear (mixed shapes)"
    assert not any(isinstance(x, gemm_cuda.LtLinear) for x in m.modules())
    assert not hasattr(m[0].down_proj, "lt_gemm")


def test_float32_weights_are_left_to_cublas() -> None:
    m = nn.Sequential(nn.Linear(16, 8, bias=False))
    lib = FakeLibrary()
    status = gemm_cuda.choose(m, lib, [4], -1.0, make_timer(lib))
    assert "bfloat16" in status["0"] and type(m[0]) is nn.Linear


def test_install_is_off_on_cpu_and_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert gemm_cuda.install(model(), torch.device("cpu"), [1, 4, 8]) == {}
    monkeypatch.setenv(gemm_cuda.ENV, "0")
    assert gemm_cuda.install(model(), torch.device("cuda"), [4]) == {}


def test_a_module_that_cannot_build_is_tried_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without FlashInfer (this machine) the install says why and keeps F.linear; later
    runners in the process do not try the build again."""
    monkeypatch.setattr(gemm_cuda, "_unavailable", None)
    calls = []

    class NoModule:
        def __init__(self, device: torch.device) -> None:
            calls.append(device)
            raise ModuleNotFoundError("No module named 'flashinfer'")

    monkeypatch.setattr(gemm_cuda, "CublasLt", NoModule)
    for _ in range(2):
        m = model()
        status = gemm_cuda.install(m, torch.device("cuda"), [1, 4])
        assert status == {"all": "F.linear (FlashInfer's cuBLASLt module: "
                                 "ModuleNotFoundError: No module named 'flashinfer')"}
        assert not any(isinstance(x, gemm_cuda.LtLinear) for x in m.modules())
    assert len(calls) == 1


def test_cold_cycle_takes_the_fewest_layers_past_the_l2() -> None:
    from radixrt.models.cuda_timing import cold_cycle

    mib = 2**20 // 4  # float32 elements in a MiB
    layers = [torch.empty(40 * mib) for _ in range(32)]  # 40 MiB each; CPU: a 64 MiB "L2"
    got = cold_cycle(layers)
    assert got == layers[:7]  # 7 x 40 = 280 MiB > 4 x 64 MiB, 6 x 40 is not
    assert cold_cycle(layers, l2_multiple=0) == layers[:2]  # always two at least
    small = [torch.empty(1) for _ in range(3)]
    assert cold_cycle(small) == small and cold_cycle([]) == []
