"""lm-evaluation-harness through radixrt against lm-eval's own transformers backend: the same
multiple-choice task scored both ways on the default model's weights (float32, unquantized),
per-choice loglikelihoods compared. radixrt serves the scoring requests lm-eval's
`local-completions` model sends (/v1/completions with echo and logprobs).

lm-eval is not a dependency of radixrt; install it beside it first (it reuses this torch):

    python -m venv --system-site-packages /tmp/lmeval && /tmp/lmeval/bin/pip install "lm-eval[api]"
    python scripts/lm_eval_parity.py --lm-eval /tmp/lmeval/bin/lm_eval

Exit status 1 when a loglikelihood differs by more than --tolerance or a greedy flag differs.
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

# A small zero-shot task any tiny model can take; answers are the first choice's index.
QUESTIONS = [
    ("The capital of France is", [" Paris", " London", " Berlin", " Madrid"], 0),
    ("The capital of Japan is", [" Beijing", " Tokyo", " Seoul", " Bangkok"], 1),
    ("Water freezes at zero degrees", [" Fahrenheit", " Kelvin", " Celsius", " Rankine"], 2),
    ("The largest planet in the solar system is", [" Mars", " Venus", " Mercury", " Jupiter"],
     3),
    ("Two plus two equals", [" four", " five", " three", " seven"], 0),
    ("The color of a clear daytime sky is", [" green", " blue", " red", " purple"], 1),
    ("Bees make", [" milk", " silk", " honey", " wool"], 2),
    ("The opposite of hot is", [" warm", " loud", " bright", " cold"], 3),
    ("A week has seven", [" days", " hours", " months", " years"], 0),
    ("The Eiffel Tower is in", [" Rome", " Paris", " Berlin", " Vienna"], 1),
    ("Cats are animals that say", [" woof", " moo", " meow", " quack"], 2),
    ("The sun rises in the", [" west", " north", " south", " east"], 3),
]
TASK = """task: radixrt_parity_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def write_task(folder: Path) -> None:
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                            for q, c, a in QUESTIONS))
    (folder / "task.yaml").write_text(TASK.format(data=data))


def lm_eval(exe: str, model: str, model_args: str, folder: Path, out: Path) -> list[dict]:
    cmd = [exe, "--model", model, "--model_args", model_args, "--tasks",
           "radixrt_parity_mc", "--include_path", str(folder), "--output_path", str(out),
           "--log_samples", "--device", "cpu"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    [samples] = glob.glob(f"{out}/**/samples_radixrt_parity_mc*.jsonl", recursive=True)
    rows = [json.loads(line) for line in Path(samples).read_text().splitlines()]
    return sorted(rows, key=lambda r: r["doc_id"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lm-eval", default="lm_eval", help="the lm_eval executable")
    ap.add_argument("--port", type=int, default=30170)
    ap.add_argument("--tolerance", type=float, default=1e-3)
    args = ap.parse_args()
    from radixrt.default_model import default_model_dir

    model = str(default_model_dir())
    folder = Path(tempfile.mkdtemp(prefix="radixrt-lm-eval-"))
    write_task(folder)
    print(f"starting radixrt on {model} (float32, unquantized) ...", flush=True)
    server = subprocess.Popen([sys.executable, "-m", "radixrt.launch_server", "--model", model,
                               "--quantization", "none", "--dtype", "float32",
                               "--port", str(args.port)])
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{args.port}/health", timeout=2).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(1)
        ours = lm_eval(args.lm_eval, "local-completions",
                       f"model=default,base_url=http://127.0.0.1:{args.port}/v1/completions,"
                       f"tokenizer_backend=huggingface,tokenizer={model},num_concurrent=1",
                       folder, folder / "radixrt")
    finally:
        server.terminate()
        server.wait(60)
    theirs = lm_eval(args.lm_eval, "hf", f"pretrained={model},dtype=float32", folder,
                     folder / "hf")
    worst, flags = 0.0, 0
    for a, b in zip(ours, theirs, strict=True):
        for (la, ga), (lb, gb) in zip((r[0] for r in a["resps"]), (r[0] for r in b["resps"]),
                                      strict=True):
            worst = max(worst, abs(float(la) - float(lb)))
            flags += ga != gb
    choices = sum(len(r["resps"]) for r in ours)
    print(f"{len(ours)} questions, {choices} choices: max |loglikelihood difference| "
          f"{worst:.2e}, greedy flags differing {flags}")
    return 0 if worst <= args.tolerance and flags == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
