"""Backfill benchmark: the 413 corpus days from the local fixture server into a fresh SQLite file.

Runs the real path (polling.poll -> httpx -> parse -> store) twice in one process: the
first run stores everything; the second finds every day unchanged (conditional GET -> 304).
The baseline is the first run: the second should be at least 5x faster.

    .venv/bin/python benchmarks/backfill.py
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlmodel import Session  # noqa: E402 (after the sys.path line that finds tests/)

from digest import polling, store  # noqa: E402
from digest.config import Config, SourceConfig, StorageConfig  # noqa: E402
from digest.sources.fetch import make_client  # noqa: E402
from tests.testdata import corpus_dir  # noqa: E402


def corpus_days() -> list[dt.date]:
    folder = corpus_dir()
    return sorted(dt.date.fromisoformat(p.stem) for p in folder.glob("*.json"))


def distinct_ids(days: list[dt.date]) -> int:
    folder = corpus_dir()
    ids = set()
    for day in days:
        ids |= {r["paper"]["id"] for r in json.loads((folder / f"{day}.json").read_bytes())}
    return len(ids)


async def backfill(config: Config, days: list[dt.date]) -> tuple[float, polling.PollReport]:
    engine = store.open_engine(config.storage.url)
    store.migrate(engine)
    started = time.perf_counter()
    async with make_client(config.source) as client:
        report = await polling.poll(
            config, engine, client, days, now=lambda: dt.datetime.now(dt.UTC)
        )
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds, report


SERVE = (
    "import sys; from tests.hfserver import HFServer\n"
    "with HFServer() as hf:\n"
    "    print(hf.base_url, flush=True); sys.stdin.read()\n"
)


@contextlib.contextmanager
def fixture_server() -> Iterator[str]:
    """The fixture server in its own process, so its work doesn't share our GIL."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.communicate(timeout=10)


def main() -> None:
    days = corpus_days()
    with fixture_server() as base_url, tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/backfill.db"
        config = Config(
            path=Path(tmp) / "digest.toml",
            source=SourceConfig(base_url=base_url, mode="api", concurrency=4),
            storage=StorageConfig(url=url),
        )
        first_s, first = asyncio.run(backfill(config, days))
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        second_s, second = asyncio.run(backfill(config, days))
        engine = store.open_engine(url)
        with Session(engine) as session:
            stats = store.store_stats(session)
    assert first.ok and second.ok, (first.errors, second.errors)
    expected = distinct_ids(days)
    print(f"backfill of {len(days)} corpus days from 127.0.0.1 into a fresh SQLite file")
    print(
        f"papers stored {stats.papers} (distinct ids in corpus {expected}), "
        f"listings {stats.listings}, peak RSS {rss_mb:.0f} MB "
        "(this process; the server runs in its own)"
    )
    print()
    print(f"{'run':<28}{'wall s':>9}{'papers/s':>11}{'304s':>7}{'new':>7}")
    print(
        f"{'1st (fresh DB)':<28}{first_s:>9.2f}{stats.listings / first_s:>11.0f}"
        f"{sum(d.not_modified for d in first.days):>7}{len(first.new):>7}"
    )
    print(
        f"{'2nd (all unchanged)':<28}{second_s:>9.2f}{stats.listings / second_s:>11.0f}"
        f"{sum(d.not_modified for d in second.days):>7}{len(second.new):>7}"
    )
    print(f"{'ratio 1st/2nd':<28}{first_s / second_s:>9.1f}x")


if __name__ == "__main__":
    main()
