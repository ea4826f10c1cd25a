"""Small JSON files of cached verdicts under the radixrt cache directory (the CPU dtype probe,
the tokenizer class AutoTokenizer picks), shared by processes that may start at once."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def read_entries(file: Path) -> dict:
    """The file's entries; empty when it is missing or unreadable."""
    try:
        data = json.loads(file.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_entry(file: Path, key: str, entry: Any) -> None:
    """Merge one entry into the file; atomic rename, so readers never see half a file. (Two
    writers at once: the last one's entries stay.) A read-only cache is left alone: it only
    costs the work again at the next start."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        data = read_entries(file)
        data[key] = entry
        fd, tmp = tempfile.mkstemp(prefix=f".{file.stem}-", dir=file.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, file)
    except OSError:
        pass
