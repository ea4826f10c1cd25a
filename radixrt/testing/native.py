"""Whether radixrt's native extensions are built, for the tests that need them."""

from __future__ import annotations

import importlib.util
import os

import pytest


def require_native(*modules: str) -> None:
    """Skip the calling test module when one of `modules` (e.g. "radixrt._dense_cpu") is not
    built. With RADIXRT_REQUIRE_NATIVE=1 (scripts/test.sh, so CI) fail instead: there the
    build must exist, and a skip would hide that it does not."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return
    what = (f"{', '.join(missing)} not built (`pip install -e .` or "
            f"`python setup.py build_ext --inplace`)")
    if os.environ.get("RADIXRT_REQUIRE_NATIVE") == "1":
        raise RuntimeError(f"RADIXRT_REQUIRE_NATIVE=1 but {what}")
    pytest.skip(what, allow_module_level=True)
