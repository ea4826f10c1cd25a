"""Greedy decoding on one tensor-parallel rank's ModelRunner, for parity tests.

    python -m radixrt.testing.tp_run MODEL TP_SIZE RANK PORT OUT.npz [ATTENTION_BACKEND]

runs rank RANK of TP_SIZE (gloo, store on 127.0.0.1:PORT); rank 0 writes the greedy tokens and
every step's full logits to OUT.npz. `greedy_run` with tp size 1 is the reference. Rank 0
picks each token and broadcasts it (the server's scheduler does that job there).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from radixrt.config import EngineConfig
from radixrt.testing.batches import batch_from_chunks
from radixrt.worker.model_runner import ModelRunner

# Prompts of different lengths (one over a page), a prefill and decodes in one batch.
PROMPTS = [[1, 504, 3575, 282, 4649, 314], list(range(100, 137)), [9, 8, 7]]
PAGE = 16


def run_config(model: str, tp_size: int, backend: str = "torch") -> EngineConfig:
    return EngineConfig(model_path=model, dtype="float32", quantization="none",
                        attention_backend=backend, tp_size=tp_size, page_size=PAGE,
                        max_total_tokens=64 * PAGE, max_running_requests=8, num_threads=1)


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
    batch = batch_from_chunks(list(range(n)), [0] * n, PROMPTS, pages)
    for step in range(steps + 1):
        runner._apply_updates(batch)  # page tables, as step() does before its forward
        out = runner.forward(batch)
        ids = out.argmax(-1) if tp.rank == 0 else torch.zeros(n, dtype=torch.int64)
        if tp.size > 1:
            import torch.distributed as dist

            dist.broadcast(ids, src=0)
        tokens.append(ids.numpy().copy())
        logits.append(out.numpy().copy() if tp.rank == 0 else np.zeros(0, np.float32))
        starts = [len(p) + step for p in PROMPTS]
        batch = batch_from_chunks(list(range(n)), starts, [[int(t)] for t in ids], step=step + 1)
    return np.stack(tokens, axis=1), np.stack(logits) if tp.rank == 0 else np.zeros(0)


def main(argv: list[str]) -> None:
    from radixrt.worker.tp import init_tensor_parallel

    model, tp_size, rank, port, out = argv[:5]
    backend = argv[5] if len(argv) > 5 else "torch"
    config = run_config(model, int(tp_size), backend)
    torch.set_num_threads(1)
    tp = init_tensor_parallel(config, int(rank), int(port))
    runner = ModelRunner(config, tp=tp)
    tokens, logits = greedy_run(runner, steps=6)
    if tp.rank == 0:
        np.savez(out, tokens=tokens, logits=logits, kv_heads=runner.pool.shape.num_kv_heads,
                 params=sum(p.numel() for p in runner.model.parameters()))
    if tp.size > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
