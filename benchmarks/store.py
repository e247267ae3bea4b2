"""Store benchmark (`.venv/bin/python benchmarks/store.py`).

Backfill of every corpus day through store.upsert_listings against a naive per-paper ORM
upsert (session.get + add per paper and per listing), each on a fresh SQLite file; then the
same data a second time (every paper unchanged). Parsing is done once, outside the timings."""

from __future__ import annotations

import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# E402 below: the checkout's root goes on sys.path first, so the package need not be installed
from sqlmodel import Session  # noqa: E402

from digest import store  # noqa: E402
from digest.models import ListingRow, PaperRow  # noqa: E402
from digest.records import Paper  # noqa: E402
from digest.sources.hf_api import parse_api  # noqa: E402
from tests.testdata import corpus_dir  # noqa: E402

CORPUS = corpus_dir()
NOW = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)


def naive_upsert(engine, day: dt.date, papers: list[Paper]) -> tuple[int, int]:
    new = updated = 0
    with Session(engine) as session:
        for p in papers:
            row = session.get(PaperRow, p.id)
            if row is None:
                new += 1
                session.add(
                    PaperRow(
                        id=p.id,
                        title=p.title,
                        abstract=p.abstract,
                        authors_json=json.dumps(list(p.authors)),
                        author_count=p.author_count,
                        organization=p.organization,
                        organization_fullname=p.organization_fullname,
                        upvotes=p.upvotes,
                        num_comments=p.num_comments,
                        thumbnail=p.thumbnail,
                        media_urls_json=json.dumps(list(p.media_urls)),
                        github_repo=p.github_repo,
                        github_stars=p.github_stars,
                        project_page=p.project_page,
                        ai_summary=p.ai_summary,
                        ai_keywords_json=json.dumps(list(p.ai_keywords)),
                        published_at=p.published_at,
                        first_seen_at=NOW,
                        updated_at=NOW,
                    )
                )
            elif p.upvotes > row.upvotes or (p.abstract and p.abstract != row.abstract):
                updated += 1
                row.upvotes = max(row.upvotes, p.upvotes)
                row.abstract = p.abstract or row.abstract
                row.updated_at = NOW
            session.flush()
            listing = session.get(ListingRow, (p.id, day))
            if listing is None:
                session.add(
                    ListingRow(
                        paper_id=p.id,
                        listed_on=day,
                        upvotes=p.upvotes,
                        num_comments=p.num_comments,
                        submitter=p.submitter,
                        first_seen_at=NOW,
                        last_seen_at=NOW,
                    )
                )
            else:
                listing.last_seen_at = NOW
        session.commit()
    return new, updated


def project_upsert(engine, day: dt.date, papers: list[Paper]) -> tuple[int, int]:
    report = store.upsert_listings(engine, day, papers, NOW)
    return len(report.new), len(report.updated)


def run(upsert, days) -> list[tuple[float, int, int]]:
    with tempfile.TemporaryDirectory() as folder:
        engine = store.open_engine(f"sqlite:///{folder}/bench.db")
        store.migrate(engine)
        results = []
        for _ in range(2):  # first backfill, then the same data again
            started, new, updated = time.perf_counter(), 0, 0
            for day, papers in days:
                n, u = upsert(engine, day, papers)
                new, updated = new + n, updated + u
            results.append((time.perf_counter() - started, new, updated))
        engine.dispose()
        return results


def main() -> None:
    days = [
        (dt.date.fromisoformat(f.stem), parse_api(f.read_bytes(), dt.date.fromisoformat(f.stem)))
        for f in sorted(CORPUS.glob("*.json"))
    ]
    listings = sum(len(p) for _, p in days)
    project = run(project_upsert, days)
    baseline = run(naive_upsert, days)
    print(f"{len(days)} days, {listings} listings, SQLite file, WAL")
    print(f"{'run':<22}{'store.upsert_listings':>24}{'naive per-paper ORM':>22}{'ratio':>8}")
    for label, (p, _, _), (b, _, _) in zip(
        ("backfill (all new)", "same data again"), project, baseline, strict=True
    ):
        print(f"{label:<22}{p:>22.3f} s{b:>20.3f} s{b / p:>7.1f}x")
    print(
        f"second run vs first (store.upsert_listings): {project[0][0] / project[1][0]:.1f}x faster"
    )
    print(
        f"new/updated reported: first {project[0][1]}/{project[0][2]}, "
        f"second {project[1][1]}/{project[1][2]}"
    )


if __name__ == "__main__":
    main()
