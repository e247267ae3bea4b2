"""Papers and their listings: the upsert that tells what is new, and the candidate query.

Owns: turning `Paper` records into `papers`/`listings` rows and back, the merge
rule, and the new/updated/unchanged classification. Does not own fetching, the
day validators (`state.py`) or the outbox tables.

Merge rule: a None or empty value in an incoming Paper never clears a stored one
(the HTML cards carry no abstract); counts (upvotes, comments, author count) keep
the highest value seen; any other non-empty incoming value replaces the stored one.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Table, and_, bindparam, func, select, text
from sqlmodel import Session, SQLModel

from digest.errors import StoreError
from digest.records import Paper, as_utc
from digest.store.engine import (
    dialect_insert,
    session_url,
    to_db_time,
    wrap_db_errors,
    write_bind,
)

PAPERS: Table = SQLModel.metadata.tables["papers"]
LISTINGS: Table = SQLModel.metadata.tables["listings"]

# A known paper is reported as updated only when one of these changes.
REPORTED_COLUMNS = frozenset(
    {"upvotes", "abstract", "ai_summary", "github_repo", "github_stars", "project_page", "title"}
)
_MAX_COLUMNS = frozenset({"upvotes", "num_comments", "author_count"})
_EMPTY_VALUES = (None, "", "[]")  # "[]" is an empty JSON list column
_IN_CHUNK = 500  # ids per IN (...) clause, well under every database's parameter limit

# Built once: SQLAlchemy caches their compiled form; `ids` expands to the chunk given.
_SELECT_PAPERS = (
    select(PAPERS).where(PAPERS.c.id.in_(bindparam("ids", expanding=True))).order_by(PAPERS.c.id)
)
_SELECT_DAY = (
    select(LISTINGS).where(LISTINGS.c.listed_on == bindparam("day")).order_by(LISTINGS.c.paper_id)
)
# PostgreSQL: the rows an upsert read stay locked until it commits, so two processes
# storing the same papers take turns (ids in order: no deadlock) and neither overwrites
# the other's merge with one computed from an older read. SQLite's writers take turns
# at BEGIN already.
_LOCKING = {"postgresql": (_SELECT_PAPERS.with_for_update(), _SELECT_DAY.with_for_update())}
_ROUNDS = 3  # a paper whose INSERT found another process's row is merged again, once
_TOUCH_LISTINGS = (
    LISTINGS.update()
    .where(
        LISTINGS.c.listed_on == bindparam("day"),
        LISTINGS.c.paper_id.in_(bindparam("ids", expanding=True)),
    )
    .values(last_seen_at=bindparam("stamp"))
)
_UPDATE_PAPER = PAPERS.update().where(PAPERS.c.id == bindparam("_id"))
_UPDATE_LISTING = LISTINGS.update().where(
    LISTINGS.c.paper_id == bindparam("_id"), LISTINGS.c.listed_on == bindparam("_day")
)


@dataclass(frozen=True)
class UpsertReport:
    """What one day's upsert changed. `new` and `updated` hold the papers as now stored."""

    new: list[Paper]
    updated: list[Paper]
    unchanged: int


_JSON = json.JSONEncoder(ensure_ascii=False)


def _dump_list(values: Sequence[str]) -> str:
    return _JSON.encode(list(values)) if values else "[]"


def _paper_columns(paper: Paper) -> dict[str, Any]:
    """The `papers` columns a Paper provides (not first_seen_at/updated_at)."""
    return {
        "id": paper.id,
        "title": paper.title,
        "abstract": paper.abstract,
        "authors_json": _dump_list(paper.authors),
        "author_count": paper.author_count,
        "organization": paper.organization,
        "organization_fullname": paper.organization_fullname,
        "upvotes": paper.upvotes,
        "num_comments": paper.num_comments,
        "thumbnail": paper.thumbnail,
        "media_urls_json": _dump_list(paper.media_urls),
        "github_repo": paper.github_repo,
        "github_stars": paper.github_stars,
        "project_page": paper.project_page,
        "ai_summary": paper.ai_summary,
        "ai_keywords_json": _dump_list(paper.ai_keywords),
        "published_at": to_db_time(paper.published_at) if paper.published_at else None,
    }


def _listing_columns(paper: Paper) -> dict[str, Any]:
    return {
        "upvotes": paper.upvotes,
        "num_comments": paper.num_comments,
        "submitter": paper.submitter,
    }


def merge_columns(stored: Mapping[Any, Any], incoming: Mapping[str, Any]) -> dict[str, Any]:
    """`stored` updated by `incoming` under the merge rule (see the module docstring)."""
    merged = dict(stored)
    for name, value in incoming.items():
        if name in _MAX_COLUMNS:
            merged[name] = max(stored[name], value)
        elif value not in _EMPTY_VALUES:
            merged[name] = value
    return merged


def _load_list(row: Mapping[Any, Any], column: str) -> tuple[str, ...]:
    try:
        return tuple(json.loads(row[column]))
    except (TypeError, ValueError) as e:
        raise StoreError(f"paper {row['id']}: column {column} is not a JSON list") from e


def paper_from_columns(row: Mapping[Any, Any], listed_on: dt.date, submitter: str | None) -> Paper:
    """A Paper from a `papers` row (JSON columns decoded, times aware UTC)."""
    published_at = row["published_at"]
    return Paper(
        id=row["id"],
        title=row["title"],
        listed_on=listed_on,
        abstract=row["abstract"],
        authors=_load_list(row, "authors_json"),
        author_count=row["author_count"],
        organization=row["organization"],
        organization_fullname=row["organization_fullname"],
        upvotes=row["upvotes"],
        num_comments=row["num_comments"],
        thumbnail=row["thumbnail"],
        media_urls=_load_list(row, "media_urls_json"),
        github_repo=row["github_repo"],
        github_stars=row["github_stars"],
        project_page=row["project_page"],
        ai_summary=row["ai_summary"],
        ai_keywords=_load_list(row, "ai_keywords_json"),
        submitter=submitter,
        published_at=as_utc(published_at) if published_at is not None else None,
    )


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _IN_CHUNK):
        yield items[start : start + _IN_CHUNK]


def _fold_duplicates(papers: Sequence[Paper]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Paper and listing columns per id; a paper twice in one list is merged into one."""
    folded: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for paper in papers:
        if not paper.id:
            raise StoreError(f"a paper without an id in the listing (title {paper.title!r})")
        columns, listing = _paper_columns(paper), _listing_columns(paper)
        if paper.id in folded:
            old_columns, old_listing = folded[paper.id]
            columns = merge_columns(old_columns, columns)
            listing = merge_columns(old_listing, listing)
        folded[paper.id] = (columns, listing)
    return folded


@dataclass
class _Plan:
    """The statements one upsert will run, and the report it will return."""

    paper_inserts: list[dict[str, Any]] = field(default_factory=list)
    paper_updates: list[dict[str, Any]] = field(default_factory=list)
    listing_inserts: list[dict[str, Any]] = field(default_factory=list)
    listing_updates: list[dict[str, Any]] = field(default_factory=list)
    relisted_ids: list[str] = field(default_factory=list)  # listings already stored for the day
    new: list[Paper] = field(default_factory=list)
    updated: list[Paper] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)  # ids


def _plan_upsert(
    day: dt.date,
    stamp: dt.datetime,
    folded: Mapping[str, tuple[dict[str, Any], dict[str, Any]]],
    stored: Mapping[str, Mapping[Any, Any]],
    listed: Mapping[str, Mapping[Any, Any]],
) -> _Plan:
    """Pure: compare the incoming columns with the stored rows and decide every write."""
    plan = _Plan()
    for paper_id, (incoming, incoming_listing) in folded.items():
        old_listing = listed.get(paper_id)
        if old_listing is None:
            listing = incoming_listing
            plan.listing_inserts.append(
                {**listing, "paper_id": paper_id, "listed_on": day,
                 "first_seen_at": stamp, "last_seen_at": stamp}
            )  # fmt: skip
        else:
            plan.relisted_ids.append(paper_id)
            listing = merge_columns(old_listing, incoming_listing)
            if any(listing[k] != old_listing[k] for k in incoming_listing):
                plan.listing_updates.append({k: listing[k] for k in incoming_listing})
                plan.listing_updates[-1]["_id"] = paper_id

        old = stored.get(paper_id)
        if old is None:
            plan.paper_inserts.append({**incoming, "first_seen_at": stamp, "updated_at": stamp})
            plan.new.append(paper_from_columns(incoming, day, listing["submitter"]))
            continue
        merged = merge_columns(old, incoming)
        changed = {k for k in incoming if merged[k] != old[k]}
        if changed:  # write every column but the key; first_seen_at never changes
            plan.paper_updates.append({k: merged[k] for k in incoming if k != "id"})
            plan.paper_updates[-1].update(_id=paper_id, updated_at=stamp)
        if changed & REPORTED_COLUMNS:
            plan.updated.append(paper_from_columns(merged, day, listing["submitter"]))
        else:
            plan.unchanged.append(paper_id)
    return plan


def _write_plan(conn: Connection, day: dt.date, stamp: dt.datetime, plan: _Plan) -> set[str]:
    """The bulk statements of one upsert: papers first (listings reference them), each in
    id order. Returns the ids whose INSERT found a row that another process wrote after
    our read (ON CONFLICT DO NOTHING skipped it): those are merged again."""
    dialect = conn.dialect.name
    lost: set[str] = set()
    if plan.paper_inserts:
        rows = sorted(plan.paper_inserts, key=lambda row: str(row["id"]))
        statement = dialect_insert(dialect, PAPERS).on_conflict_do_nothing()
        stored = set(conn.execute(statement.returning(PAPERS.c.id), rows).scalars())
        lost.update(row["id"] for row in rows if row["id"] not in stored)
    if plan.paper_updates:
        conn.execute(_UPDATE_PAPER, sorted(plan.paper_updates, key=lambda row: str(row["_id"])))
    if plan.listing_inserts:
        rows = sorted(plan.listing_inserts, key=lambda row: str(row["paper_id"]))
        statement = dialect_insert(dialect, LISTINGS).on_conflict_do_nothing()
        stored = set(conn.execute(statement.returning(LISTINGS.c.paper_id), rows).scalars())
        lost.update(row["paper_id"] for row in rows if row["paper_id"] not in stored)
    for chunk in _chunks(sorted(plan.relisted_ids)):  # one statement marks every re-seen listing
        conn.execute(_TOUCH_LISTINGS, {"day": day, "ids": chunk, "stamp": stamp})
    if plan.listing_updates:
        rows = sorted(plan.listing_updates, key=lambda row: str(row["_id"]))
        conn.execute(_UPDATE_LISTING, [{**row, "_day": day} for row in rows])
    return lost


# pg_advisory_xact_lock's key for upsert_listings: any fixed 64-bit number, ours alone
_UPSERT_LOCK_KEY = 0x5061_7065_7273_4C73  # "PapersLs"


def upsert_listings(
    engine: Engine, day: dt.date, papers: Sequence[Paper], now: dt.datetime
) -> UpsertReport:
    """Store one day's list in one transaction; report each paper as new, updated or unchanged.

    `day` is the listing day (each Paper's own `listed_on` is not consulted). The
    transaction is its own and commits before returning; on any error nothing of
    this call is stored and StoreError is raised. Cost: two SELECTs for the day
    plus bulk INSERT/UPDATEs, so an unchanged day is cheap.

    Several processes may store the same day at once (PostgreSQL): inserts are
    INSERT ... ON CONFLICT DO NOTHING; a paper another process inserted in between is
    read again and merged like any stored paper, so exactly one process reports it new.
    """
    folded = _fold_duplicates(papers)
    if not folded:
        return UpsertReport(new=[], updated=[], unchanged=0)
    stamp = to_db_time(now)
    new: list[Paper] = []
    updated: list[Paper] = []
    unchanged = 0
    with (
        wrap_db_errors(f"saving the listings of {day}", engine.url),
        write_bind(engine).begin() as conn,
    ):
        if conn.dialect.name == "postgresql":
            # One listing writer at a time across processes: two upserts of overlapping
            # days locked paper and listing rows in different orders and deadlocked
            # (seen in CI: DeadlockDetected). A day's upsert takes milliseconds.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPSERT_LOCK_KEY})
        select_papers, select_day = _LOCKING.get(conn.dialect.name, (_SELECT_PAPERS, _SELECT_DAY))
        ours: set[str] = set()  # papers this call inserted: new, whatever a later round reads
        pending = folded
        for _ in range(_ROUNDS):
            ids = list(pending)
            stored = {
                row.id: row._mapping
                for chunk in _chunks(sorted(ids))
                for row in conn.execute(select_papers, {"ids": chunk})
            }
            listed = {row.paper_id: row._mapping for row in conn.execute(select_day, {"day": day})}
            plan = _plan_upsert(day, stamp, pending, stored, listed)
            lost = _write_plan(conn, day, stamp, plan)
            fresh = [p for p in plan.new if p.id not in lost]
            ours.update(p.id for p in fresh)
            new += fresh
            updated += [p for p in plan.updated if p.id not in lost and p.id not in ours]
            unchanged += sum(1 for i in plan.unchanged if i not in lost and i not in ours)
            if not lost:
                break
            pending = {paper_id: folded[paper_id] for paper_id in sorted(lost)}
        else:
            raise StoreError(
                f"saving the listings of {day}: {len(pending)} papers kept changing under "
                f"other processes' writes ({', '.join(list(pending)[:3])} ...)"
            )
    return UpsertReport(new=new, updated=updated, unchanged=unchanged)


def candidate_papers(session: Session, first_day: dt.date, last_day: dt.date) -> list[Paper]:
    """Every paper listed in [first_day, last_day], once, as of its latest listing there.

    `listed_on` and `submitter` come from that latest listing, everything else
    from the paper row. Ordered newest listing first, then upvotes, then id.
    """
    latest = (
        select(LISTINGS.c.paper_id, func.max(LISTINGS.c.listed_on).label("latest_day"))
        .where(LISTINGS.c.listed_on.between(first_day, last_day))
        .group_by(LISTINGS.c.paper_id)
        .subquery()
    )
    query = (
        select(PAPERS, latest.c.latest_day, LISTINGS.c.submitter.label("latest_submitter"))
        .join(latest, PAPERS.c.id == latest.c.paper_id)
        .join(
            LISTINGS,
            and_(
                LISTINGS.c.paper_id == latest.c.paper_id,
                LISTINGS.c.listed_on == latest.c.latest_day,
            ),
        )
        .order_by(latest.c.latest_day.desc(), PAPERS.c.upvotes.desc(), PAPERS.c.id)
    )
    with wrap_db_errors(f"reading the papers listed {first_day}..{last_day}", session_url(session)):
        rows = session.connection().execute(query).all()
    return [paper_from_columns(row._mapping, row.latest_day, row.latest_submitter) for row in rows]
