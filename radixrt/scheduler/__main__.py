"""python -m radixrt.scheduler: a scheduler process, started by ProcessGroup (its ChildSpec on stdin)."""

from radixrt.process_group import child_main
from radixrt.scheduler.process import run_scheduler

if __name__ == "__main__":
    child_main(run_scheduler)
