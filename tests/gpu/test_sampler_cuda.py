"""The sampler on CUDA: the exponential race, and truncation without host reads (a host
read in sampling would make a launched step wait for the one in flight)."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

from radixrt.ipc.messages import NewSlot  # noqa: E402
from radixrt.sampling_params import SamplingParams  # noqa: E402
from radixrt.worker.sampler import Sampler, truncate_rows  # noqa: E402

DEV = torch.device("cuda")


def test_truncation_on_cuda_matches_the_cpu_and_never_syncs() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.softmax(torch.randn(6, 49152, generator=g) * torch.tensor(
        [6.0, 1.5, 0.05, 6.0, 1.5, 6.0])[:, None], dim=-1)
    args = ([0, 50, 0, 0, 0, 200], [0.9, 0.9, 0.95, 1.0, 0.8, 0.7], [0.0, 0.0, 0.0, 0.05, 0.0, 0.0])
    want = truncate_rows(x.clone(), *args)
    on_dev = x.to(DEV)  # a pageable upload waits for the device: before the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # a host read of a CUDA tensor raises
    try:
        got = truncate_rows(on_dev, *args)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(got.cpu() > 0, want > 0)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-7)


def test_sampling_on_cuda_uses_the_race_and_respects_top_p() -> None:
    s = Sampler(1000, DEV, seed=0)
    assert s.draw == "race"
    s.add(NewSlot(0, SamplingParams(temperature=0.7, top_p=0.5), eos_ids=(0,)))
    logits = torch.full((1, 1000), -20.0, device=DEV)
    logits[0, [3, 4]] = torch.tensor([5.0, 4.0], device=DEV)
    ids = {int(s.sample(logits, [0]).next_ids[0]) for _ in range(50)}
    assert ids == {3}


@pytest.mark.parametrize("rows", [1, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_two_pass_argmax_matches_torch(rows: int, dtype: torch.dtype) -> None:
    pytest.importorskip("triton")
    from radixrt.worker import argmax_cuda

    x = torch.randn(rows, 128256, device=DEV).to(dtype)
    x[:, 77] = x.max()  # ties with each row's maximum somewhere later: the first wins
    x[:, 128255] = x.max()
    assert torch.equal(argmax_cuda.row_argmax(x), x.argmax(-1))
    fn, why = argmax_cuda.pick(128256, DEV, dtype)
    assert fn in (argmax_cuda.row_argmax, argmax_cuda.torch_argmax) and why
    assert torch.equal(fn(x), x.argmax(-1))
    # Greedy sampling through it never reads the device on the host.
    s = Sampler(128256, DEV, seed=0, argmax=argmax_cuda.row_argmax)
    for slot in range(rows):
        s.add(NewSlot(slot, SamplingParams(temperature=0), eos_ids=(0,)))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = s.sample(x, list(range(rows)))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(out.next_ids, x.argmax(-1))
