"""python -m radixrt.tokenizer: a tokenizer process, started by ProcessGroup (its ChildSpec on stdin)."""

from radixrt.process_group import child_main
from radixrt.tokenizer.process import run_tokenizer

if __name__ == "__main__":
    child_main(run_tokenizer)
