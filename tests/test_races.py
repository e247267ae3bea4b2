"""Several real processes making the same store call at the same moment, on SQLite and on
PostgreSQL: migrating an empty database, storing the same day's list, recording the same
new subscribers. Each process is `tests/race_child.py`, released by one `go` line.

Every process must succeed, and the outcome must be as if they had run one by one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, inspect, text
from sqlmodel import Session, SQLModel, select

from digest import store
from digest.models import SubscriberRow
from digest.records import as_utc
from tests.backends import Backend
from tests.race_child import run_together
from tests.store_helpers import D1, corpus_day

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
WAIT = 60.0  # seconds a whole race may take on a loaded machine


def race(url: str, action: str, *args: str, processes: int) -> list[tuple[int, dict[str, Any]]]:
    """Start `processes` children, release them together; each one's exit code and result."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.race_child", url, action, *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    results = []
    for code, out, err in run_together(children, WAIT):
        lines = out.strip().splitlines()
        assert lines, err
        results.append((code, json.loads(lines[-1])))
    return results


def test_processes_migrating_an_empty_database_at_once_all_succeed(backend: Backend) -> None:
    """Was: CREATE TABLE IF NOT EXISTS raced on PostgreSQL, UniqueViolation in 7 of 8 trials."""
    url = backend.url("empty", migrated=False)
    results = race(url, "migrate", processes=5)
    assert results == [(0, {"version": store.SCHEMA_VERSION})] * 5
    engine = backend.engine("empty")
    tables = set(inspect(engine).get_table_names())
    assert tables == {*SQLModel.metadata.tables, "schema_version"}
    with engine.connect() as conn:
        versions = conn.execute(text("SELECT version FROM schema_version")).all()
    assert versions == [(store.SCHEMA_VERSION,)]  # one row, migrated once


def test_processes_storing_the_same_day_at_once_all_succeed_and_one_reports_it_new(
    backend: Backend,
) -> None:
    """Was: upsert_listings read, then inserted: `papers_pkey` failed all but one."""
    url = backend.url()
    results = race(url, "upsert", D1.isoformat(), processes=4)
    assert [code for code, _ in results] == [0] * 4, results
    papers = sorted(p.id for p in corpus_day(D1))
    reported_new = sorted(pid for _, result in results for pid in result["new"])
    assert reported_new == papers  # each paper new exactly once, across all processes
    for _, result in results:
        assert result["updated"] == []  # the same list: nothing changed for the others
        assert result["unchanged"] == len(papers) - len(result["new"])
    engine = backend.engine()
    with engine.connect() as conn:
        listings = conn.execute(text("SELECT count(*) FROM listings")).scalar()
        stored = conn.execute(text("SELECT count(*) FROM papers")).scalar()
    assert (stored, listings) == (len(papers), len(papers))


def test_processes_seeing_the_same_new_subscribers_at_once_all_succeed(backend: Backend) -> None:
    """Was: a planning batch with no digests raced on `subscribers_pkey` (start-up
    planning and SIGHUP reload of two daemons)."""
    url = backend.url()
    emails = [f"reader{n}@example.org" for n in range(40)]
    results = race(url, "handled", *emails, processes=4)
    assert results == [(0, {"handled": len(emails)})] * 4
    with Session(backend.engine()) as session:
        rows = session.exec(select(SubscriberRow)).all()
        count = session.exec(select(func.count()).select_from(SubscriberRow)).one()
    assert count == len(emails)
    assert sorted(r.email for r in rows) == sorted(emails)
    assert {as_utc(r.last_slot) for r in rows if r.last_slot} == {
        dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
    }
