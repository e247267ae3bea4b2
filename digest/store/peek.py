"""What `digest status` reads, in plain SQL over any DB-API connection: no SQLAlchemy.

Owns: `StoreStats` (papers, listings, days, the outbox by status, the last poll) and
its lines, each subscriber's last handled slot (and for `digest match` its watermark
and the papers it has), the outbox health `--check` fails on, the recipients' choices
(unsubscribed, paused, muted), and `open_sqlite` (an SQLite file opened read-only
with sqlite3, when its schema is the one these reads know). `digest status` answers
in a fraction of a second on a small file because importing SQLAlchemy and SQLModel
alone takes longer. Does not own any write, the schema (`migrations.py`), or the ORM
reads the rest of the program uses (`state.py`, which builds its `store_stats` on
these same reads).

Each function reads whole small tables, or one grouped count, never one row per
subscriber: at 100k subscribers each is one query. Times come back as aware UTC.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from digest.config.dburl import BadURL, parse_db_url
from digest.errors import StoreError
from digest.humanize import count

T = TypeVar("T")

DIGEST_STATUSES = ("pending", "sent", "failed", "cancelled")
# "feed" (store/feeds.py: delivery = "feed", never mailed) is counted only where there are some
STATUS_WORDS = {"feed": "to feeds only (never mailed)"}
# The schema version these reads were written against (digest/store/migrations.py's
# SCHEMA_VERSION; a test keeps the two equal). A database at any other version is read
# through the full store instead, after `migrate`.
KNOWN_SCHEMA = 5
MAIL_TROUBLE_WINDOW = dt.timedelta(days=1)  # a digest refused longer ago is history


class DbApi(Protocol):
    def cursor(self) -> Any: ...


class Reader:
    """A DB-API connection and its parameter style: statements are written with `?`."""

    def __init__(self, connection: DbApi, paramstyle: str, where: str) -> None:
        self.connection = connection
        self.qmark = paramstyle == "qmark"
        self.where = where  # the database, for messages (password masked)

    def rows(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        if not self.qmark:
            sql = sql.replace("?", "%s")  # format/pyformat drivers (psycopg)
        cursor = self.connection.cursor()
        try:
            cursor.execute(sql, tuple(params))
            return [tuple(row) for row in cursor.fetchall()]
        finally:
            cursor.close()


@contextmanager
def open_sqlite(url: str) -> Iterator[Reader | None]:
    """A read-only sqlite3 Reader of the SQLite file `url` names, or None when the quick
    path cannot answer: not SQLite, no such file yet, or a schema at another version."""
    try:
        parsed = parse_db_url(url)
    except BadURL:
        yield None
        return
    db = parsed.database
    if parsed.backend != "sqlite" or not db or db == ":memory:" or db.startswith("file:"):
        yield None
        return
    path = Path(db)
    if not path.is_file():
        yield None
        return
    shown = parsed.masked()
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open database {shown}: {type(e).__name__}: {e}") from e
    try:
        reader = Reader(con, "qmark", shown)
        try:
            version = reader.rows("SELECT max(version) FROM schema_version")[0][0]
        except sqlite3.Error:  # no schema_version yet: the full store migrates it
            version = None
        yield reader if version == KNOWN_SCHEMA else None
    finally:
        con.close()


def through_engine(engine: Any, url: str, read: Callable[[Reader], T]) -> T:
    """`read` with a Reader over one of `engine`'s pooled DB-API connections (an
    SQLAlchemy Engine of the database `url` names, taken as it is: nothing imported
    here), the connection given back to the pool after."""
    connection = engine.raw_connection()
    try:
        return read(Reader(connection, engine.dialect.paramstyle, parse_db_url(url).masked()))
    finally:
        connection.close()


@contextmanager
def reading(reader: Reader, what: str) -> Iterator[None]:
    """A driver's exception inside, as one StoreError naming what and where."""
    try:
        yield
    except StoreError:
        raise
    except Exception as e:  # any DB-API driver's Error: its base class varies
        lines = str(e).strip().splitlines()
        detail = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
        raise StoreError(f"{what} failed on {reader.where}: {detail}") from e


def utc(value: object) -> dt.datetime | None:
    """A stored time (SQLite: naive UTC text; PostgreSQL: a datetime) as aware UTC."""
    if value is None:
        return None
    moment = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def day(value: object) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])


@dataclass(frozen=True)
class PollInfo:
    id: int
    started_at: dt.datetime
    finished_at: dt.datetime | None
    days: int
    new: int
    updated: int
    source: str | None
    ok: bool
    error: str | None


@dataclass(frozen=True)
class StoreStats:
    """What `digest status` shows about the database."""

    papers: int
    listings: int
    days_fetched: int  # days with a recorded fetch (the `days` table)
    first_day: dt.date | None  # earliest listing day stored
    last_day: dt.date | None  # latest listing day stored
    digests: dict[str, int]  # by status; every one of DIGEST_STATUSES present
    last_poll: PollInfo | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: dates and times as ISO strings (times in UTC)."""
        poll = self.last_poll
        return {
            "papers": self.papers,
            "listings": self.listings,
            "days_fetched": self.days_fetched,
            "first_day": _iso(self.first_day),
            "last_day": _iso(self.last_day),
            "digests": dict(self.digests),
            "last_poll": None
            if poll is None
            else {
                "started_at": _iso(poll.started_at),
                "finished_at": _iso(poll.finished_at),
                "ok": poll.ok,
                "source": poll.source,
                "days": poll.days,
                "new": poll.new,
                "updated": poll.updated,
                "error": poll.error,
            },
        }

    def lines(self) -> list[str]:
        """The human summary `digest status` prints, one fact per line."""
        span = f", {self.first_day} to {self.last_day}" if self.first_day else ""
        counts = ", ".join(
            f"{n} {STATUS_WORDS.get(status, status)}" for status, n in self.digests.items()
        )
        return [
            _describe_poll(self.last_poll),
            f"papers: {self.papers} stored, {self.listings} listings, "
            f"{count(self.days_fetched, 'day')} fetched{span}",
            f"digests: {counts}",
        ]


def _iso(value: dt.date | None) -> str | None:
    return None if value is None else value.isoformat()


def _describe_poll(poll: PollInfo | None) -> str:
    if poll is None:
        return "last poll: never"
    started = f"{poll.started_at:%Y-%m-%d %H:%M} UTC"
    if poll.finished_at is None:
        return f"last poll: started {started}, not finished"
    error = poll.error or "unknown error"
    if len(error) > 300:  # a poll of many failing days: the first of them is enough here
        error = error[:300] + "..."
    outcome = "ok" if poll.ok else f"failed: {error}"
    return (
        f"last poll: {started}, {outcome} ({poll.source or 'no source'}, "
        f"{count(poll.days, 'day')}, {poll.new} new, {poll.updated} updated)"
    )


def last_poll(reader: Reader) -> PollInfo | None:
    """The most recently started poll, finished or not."""
    with reading(reader, "reading the last poll"):
        rows = reader.rows(
            "SELECT id, started_at, finished_at, days, new, updated, source, ok, error "
            "FROM polls ORDER BY started_at DESC, id DESC LIMIT 1"
        )
    if not rows:
        return None
    poll_id, started, finished, days, new, updated, source, ok, error = rows[0]
    started_at = utc(started)
    assert started_at is not None  # NOT NULL in the schema
    finished_at = utc(finished)
    return PollInfo(poll_id, started_at, finished_at, days, new, updated, source, bool(ok), error)


def store_stats(reader: Reader) -> StoreStats:
    with reading(reader, "reading the store statistics"):
        papers = reader.rows("SELECT count(*) FROM papers")[0][0]
        listings, first, last = reader.rows(
            "SELECT count(*), min(listed_on), max(listed_on) FROM listings"
        )[0]
        days = reader.rows("SELECT count(*) FROM days")[0][0]
        by_status = reader.rows("SELECT status, count(*) FROM digests GROUP BY status")
    digests = dict.fromkeys(DIGEST_STATUSES, 0)
    digests.update({status: n for status, n in by_status})
    return StoreStats(
        papers=papers,
        listings=listings,
        days_fetched=days,
        first_day=day(first),
        last_day=day(last),
        digests=digests,
        last_poll=last_poll(reader),
    )


def last_slots(reader: Reader, emails: Collection[str]) -> dict[str, dt.datetime]:
    """Each of `emails`' last handled slot, where one is saved: one read of the table,
    each distinct stored value parsed once (a cycle's subscribers share a few)."""
    wanted = set(emails)
    with reading(reader, "reading the subscribers' state"):
        rows = reader.rows("SELECT email, last_slot FROM subscribers WHERE last_slot IS NOT NULL")
    known: dict[object, dt.datetime | None] = {}
    slots = {}
    for email, slot in rows:
        if email in wanted:
            moment = known.get(slot)
            if moment is None:
                moment = known[slot] = utc(slot)
            if moment is not None:
                slots[email] = moment
    return slots


def slot_states(
    reader: Reader, emails: Collection[str]
) -> dict[str, tuple[dt.datetime | None, dt.date | None]]:
    """Each of `emails`' saved state, where one is saved: (its last handled slot, the
    last listing day its digests covered). One read of the table, plain rows (the ORM's
    instances for 100k subscribers took seconds)."""
    wanted = set(emails)
    with reading(reader, "reading the subscribers' state"):
        rows = reader.rows("SELECT email, last_slot, covered_until FROM subscribers")
    # everyone handled in one cycle shares a few stored values: each is parsed once
    known: dict[tuple[object, object], tuple[dt.datetime | None, dt.date | None]] = {}
    states = {}
    for email, slot, until in rows:
        if email in wanted:
            state = known.get((slot, until))
            if state is None:
                state = known[slot, until] = utc(slot), day(until)
            states[email] = state
    return states


def papers_held(
    reader: Reader, paper_ids: Collection[str]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """What `state.papers_taken` reads for everyone, as plain rows: every pending digest
    (subscriber, paper_ids_json: the caller decodes only those it needs) and each
    delivery of one of `paper_ids` (subscriber, paper_id). Pending first, deliveries
    second, for the reason papers_taken gives."""
    ids = sorted(set(paper_ids))
    delivered: list[tuple[Any, ...]] = []
    with reading(reader, "reading the papers already delivered"):
        pending = reader.rows(
            "SELECT subscriber, paper_ids_json FROM digests WHERE status = 'pending'"
        )
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            delivered += reader.rows(
                f"SELECT subscriber, paper_id FROM deliveries WHERE paper_id IN ({marks})", chunk
            )
    return pending, delivered


@dataclass(frozen=True, slots=True)
class Choice:
    """What one address chose, as `check` and `status` report it."""

    suppressed_at: dt.datetime | None = None
    how: str | None = None
    paused_until: dt.datetime | None = None
    muted: frozenset[str] = frozenset()

    def paused_at(self, instant: dt.datetime) -> bool:
        return self.paused_until is not None and instant < self.paused_until


def choices(reader: Reader, emails: Collection[str]) -> dict[str, Choice]:
    """The addresses of `emails` that unsubscribed, paused or muted a topic: two reads
    (suppressions, and the recipients rows that hold a choice), whatever their number."""
    wanted = set(emails)
    out: dict[str, Choice] = {}
    with reading(reader, "reading the recipients' preferences"):
        for email, at, how in reader.rows("SELECT email, suppressed_at, how FROM suppressions"):
            if email in wanted:
                out[email] = Choice(suppressed_at=utc(at), how=how)
        for email, paused, muted_json in reader.rows(
            "SELECT email, paused_until, muted_topics_json FROM recipients "
            "WHERE paused_until IS NOT NULL OR muted_topics_json <> '[]'"
        ):
            if email in wanted and email not in out:
                muted = frozenset(json.loads(muted_json))
                out[email] = Choice(paused_until=utc(paused), muted=muted)
    return out


def health_problems(reader: Reader, now: dt.datetime) -> list[str]:
    """What `digest status --check` fails on, one phrase each: the last poll failed (or
    none ever ran), digests waiting after failed attempts, digests refused permanently
    within the last day. Empty when all is well."""
    problems = []
    poll = last_poll(reader)
    if poll is None:
        problems.append("no poll has run yet")
    elif poll.finished_at is not None and not poll.ok:
        error = (poll.error or "unknown error")[:200]
        problems.append(f"the last poll ({poll.started_at:%Y-%m-%d %H:%M} UTC) failed: {error}")
    since = (now - MAIL_TROUBLE_WINDOW).astimezone(dt.UTC)
    param: object = since  # SQLite: in the text form the rows store
    if reader.qmark:
        param = since.replace(tzinfo=None).isoformat(" ", "microseconds")
    with reading(reader, "reading the outbox health"):
        retrying, reply = reader.rows(
            "SELECT count(*), max(last_reply) FROM digests "
            "WHERE status = 'pending' AND attempts > 0"
        )[0]
        refused = reader.rows(
            "SELECT count(*) FROM digests WHERE status = 'failed' AND created_at >= ?",
            [param],
        )[0][0]
    if retrying:
        last = f" (last reply: {reply[:200]})" if reply else ""
        problems.append(f"{count(retrying, 'digest')} waiting after failed attempts{last}")
    if refused:
        problems.append(f"{count(refused, 'digest')} refused permanently in the last day")
    return problems
