"""python -m radixrt.worker: a worker process, started by ProcessGroup (its ChildSpec on stdin)."""

from radixrt.process_group import child_main
from radixrt.worker.tp import run_rank

if __name__ == "__main__":
    child_main(run_rank)
