"""Where the tests and benchmarks find their data: everything lives in tests/data/.

Owns: the paths of the real huggingface.co captures (`HF`, with STRUCTURE.md and
SOURCES.md beside them, and each golden `*.expected.json` beside its capture), the
seed papers, and the 413-day API corpus, shipped as one `hf-api.tar.xz` and unpacked
once into `tests/data/.cache/hf-api/` (gitignored) the first time `corpus_dir()` is
called. Does not own serving them (`tests/hfserver.py`) or any assertion.

Nothing outside the repository is read: a clone with nothing beside it passes.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from functools import cache
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
HF = DATA / "hf"
SEED_PAPERS = DATA / "corpus" / "seed-papers.jsonl"
CORPUS_ARCHIVE = DATA / "corpus" / "hf-api.tar.xz"
CACHE = DATA / ".cache"
CORPUS_DAYS = 413


@cache
def corpus_dir() -> Path:
    """The folder of the 413 `YYYY-MM-DD.json` API days, unpacked on first use.

    Unpacked into a temporary folder and renamed into place, so two processes that
    start at once both end up with the whole corpus, never with half of it.
    """
    target = CACHE / "hf-api"
    if len(list(target.glob("*.json"))) == CORPUS_DAYS:
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp, tarfile.open(CORPUS_ARCHIVE) as tar:
        tar.extractall(tmp, filter="data")
        try:
            os.rename(Path(tmp) / "hf-api", target)
        except OSError:  # another process got there first (or a stale partial folder)
            if len(list(target.glob("*.json"))) != CORPUS_DAYS:
                raise
    return target


def corpus_day(day: str) -> Path:
    """One API day of the corpus, e.g. corpus_day("2025-10-01")."""
    return corpus_dir() / f"{day}.json"
