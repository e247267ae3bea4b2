"""The Debian programs some tests drive (Chromium, SpamAssassin): present, or skipped.

Owns the one rule for a missing program, the same as for a missing PostgreSQL server
(`tests/backends.py`): without it the tests that need it skip, saying what to install;
under `CI=true`, where `.ci/run` installs it, a missing program fails them instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def require(program: Path | str, package: str) -> None:
    """Skip (or, under CI=true, fail) the calling test when `program` is not installed."""
    if Path(program).is_file():
        return
    reason = f"{program} is missing: apt-get install {package} (as .ci/run does)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true requires every test to run", pytrace=False)
    pytest.skip(reason)
