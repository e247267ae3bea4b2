"""Shared helpers of the store tests: the corpus, Paper builders, a migrated SQLite file.

Papers come from the real API captures in tests/data/corpus through the real parser
(`digest.sources.hf_api.parse_api`), or are built directly when a test needs a
precise value.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from digest import store
from digest.config import Subscriber
from digest.pipeline import PlannedDigest, Planner, plan_due
from digest.records import Paper
from digest.sources.hf_api import parse_api
from tests import testdata

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
D1, D2, D3, D4, D5 = (dt.date(2025, 10, n) for n in (1, 2, 3, 6, 7))


def corpus_day(day: dt.date) -> list[Paper]:
    return parse_api(testdata.corpus_day(day).read_bytes(), day)


def paper(pid: str, day: dt.date = D1, **fields: object) -> Paper:
    base: dict[str, object] = {
        "title": f"Paper {pid}",
        "abstract": f"Abstract of {pid}.",
        "authors": ("Ada Lovelace", "Alan Turing"),
        "author_count": 2,
        "upvotes": 5,
        "num_comments": 1,
        "ai_keywords": ("diffusion", "distillation"),
        "submitter": "akhaliq",
        "published_at": dt.datetime(2025, 9, 29, 21, 55, tzinfo=dt.UTC),
    }
    base.update(fields)
    # the ignore below: **base mixes field types that mypy cannot match to Paper
    return Paper(id=pid, listed_on=day, **base)


def migrated_engine(folder: Path) -> Engine:
    """A real SQLite file in `folder`, opened and migrated to the current schema."""
    engine = store.open_engine(f"sqlite:///{folder}/digest.db")
    store.migrate(engine)
    return engine


def ids(papers: Sequence[Paper]) -> list[str]:
    return sorted(p.id for p in papers)


def dump(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the listing tables, for before/after comparisons."""
    with engine.connect() as conn:
        return {
            table: [tuple(r) for r in conn.execute(text(f"SELECT * FROM {table} ORDER BY 1, 2"))]
            for table in ("papers", "listings", "days")
        }


def plan_all(
    planner: Planner, subscribers: Sequence[Subscriber], now: dt.datetime, **kw: Any
) -> list[PlannedDigest]:
    """`pipeline.plan_due`, keeping each digest it planned (it returns only counts), and
    checking its counts against them."""
    got: list[PlannedDigest] = []
    report = plan_due(planner, subscribers, now, on_planned=got.append, **kw)
    assert report.due == len(got)
    assert report.written == sum(p.digest_id is not None for p in got)
    return got
