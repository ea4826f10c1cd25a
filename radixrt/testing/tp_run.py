"""Greedy decoding on one tensor-parallel rank's ModelRunner, for parity tests.

    python -m radixrt.testing.tp_run MODEL TP_SIZE RANK PORT OUT.npz [BACKEND [DEVICE]]

runs rank RANK of TP_SIZE (gloo on cpu, NCCL on cuda; store on 127.0.0.1:PORT); rank 0 writes
the greedy tokens and every step's full logits to OUT.npz (`launch_ranks` starts them all).
`greedy_run` with tp size 1 is the reference. Rank 0 picks each token and broadcasts it (the
server's scheduler does that job there).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from radixrt.config import EngineConfig
from radixrt.testing.batches import batch_from_chunks
from radixrt.worker.model_runner import ModelRunner

# Prompts of different lengths (one over a page), a prefill and decodes in one batch.
PROMPTS = [[1, 504, 3575, 282, 4649, 314], list(range(100, 137)), [9, 8, 7]]
PAGE = 16


def run_config(model: str, tp_size: int, backend: str = "torch", device: str = "cpu"
               ) -> EngineConfig:
    return EngineConfig(model_path=model, device=device, dtype="float32", quantization="none",
                        attention_backend=backend, tp_size=tp_size, page_size=PAGE,
                        max_total_tokens=64 * PAGE, max_running_requests=8, num_threads=1,
                        disable_cuda_graph=True)


def greedy_run(runner: ModelRunner, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Prefill PROMPTS, then decode `steps` tokens greedily. Returns (tokens [P, steps + 1],
    logits [steps + 1, P, V]); on ranks other than 0 both are rank 0's, logits zero."""
    tp = runner.tp
    n = len(PROMPTS)
    pages, nxt = {}, 0
    for slot, p in enumerate(PROMPTS):
        need = -(-(len(p) + steps + 1) // PAGE)
        pages[slot] = list(range(nxt, nxt + need))
        nxt += need
    tokens, logits = [], []
    dev = runner.device
    batch = batch_from_chunks(list(range(n)), [0] * n, PROMPTS, pages)
    for step in range(steps + 1):
        runner._apply_updates(batch)  # page tables, as step() does before its forward
        out = runner.forward(batch)
        ids = out.argmax(-1) if tp.rank == 0 else torch.zeros(n, dtype=torch.int64, device=dev)
        if tp.size > 1:
            import torch.distributed as dist

            dist.broadcast(ids, src=0)
        tokens.append(ids.cpu().numpy())
        logits.append(out.cpu().numpy() if tp.rank == 0 else np.zeros(0, np.float32))
        starts = [len(p) + step for p in PROMPTS]
        batch = batch_from_chunks(list(range(n)), starts, [[int(t)] for t in ids], step=step + 1)
    return np.stack(tokens, axis=1), np.stack(logits) if tp.rank == 0 else np.zeros(0)


def reference_run(model: Path, backend: str = "torch", device: str = "cpu"
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    """tp 1 in this process: (tokens, logits, parameter count) to compare the ranks with."""
    runner = ModelRunner(run_config(str(model), 1, backend, device))
    tokens, logits = greedy_run(runner, steps=6)
    return tokens, logits, sum(p.numel() for p in runner.model.parameters())


def launch_ranks(model: Path, tp: int, out: Path, backend: str = "torch",
                 device: str = "cpu", timeout_s: float = 300) -> dict[str, np.ndarray]:
    """Run the tp rank processes to the end; rank 0's results (AssertionError with the
    failing rank's stderr if one fails)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    here = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, *filter(None, sys.path)])}
    procs = [subprocess.Popen([sys.executable, "-m", "radixrt.testing.tp_run", str(model),
                               str(tp), str(r), str(port), str(out), backend, device],
                              env=env, stderr=subprocess.PIPE, text=True)
             for r in range(tp)]
    try:
        errs = [p.communicate(timeout=timeout_s)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, (p, err) in enumerate(zip(procs, errs)):
        assert p.returncode == 0, f"rank {r} exited with {p.returncode}:\n{err[-3000:]}"
    return dict(np.load(out))


def main(argv: list[str]) -> None:
    from radixrt.worker.tp import init_tensor_parallel, rank_config

    model, tp_size, rank, port, out = argv[:5]
    backend = argv[5] if len(argv) > 5 else "torch"
    device = argv[6] if len(argv) > 6 else "cpu"
    config = rank_config(run_config(model, int(tp_size), backend, device), int(rank))
    torch.set_num_threads(1)
    tp = init_tensor_parallel(config, int(rank), int(port))
    runner = ModelRunner(config, tp=tp)
    tokens, logits = greedy_run(runner, steps=6)
    if tp.rank == 0:
        np.savez(out, tokens=tokens, logits=logits, kv_heads=runner.pool.shape.num_kv_heads,
                 params=sum(p.numel() for p in runner.model.parameters()),
                 matrix_dtype=str(runner.model.embed_tokens.weight.dtype))
    if tp.size > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
