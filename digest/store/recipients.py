"""Recipients in control: the opaque keys of their links, suppressions and preferences.

Owns: reads and writes of `recipients` (each address's random link key, its pause and
muted topics) and `suppressions` (who unsubscribed, when, how). Suppressing an address
cancels its pending digests in the same transaction (`outbox.cancel_pending`), so a
person who clicked "unsubscribe" gets nothing more from the moment the answer is sent.
Does not own: tokens or URLs (`digest/web/tokens.py`), what planning does with all this
(`digest/pipeline.py`), or the file's subscribers (read-only to the program).

Every write is one short transaction; every write that can race (two clicks at once,
two processes planning) is an INSERT ... ON CONFLICT DO NOTHING. Every function takes
`now` where it records a time.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import (
    Connection,
    Engine,
    Insert,
    Table,
    bindparam,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from digest.models import RecipientRow, SuppressionRow
from digest.records import as_utc
from digest.store import outbox
from digest.store.engine import wrap_db_errors, write_bind

How = Literal["one-click", "page", "admin"]
HOWS: tuple[str, ...] = ("one-click", "page", "admin")
CHUNK = 500  # addresses per IN (...) list

_RECIPIENTS: Table = RecipientRow.__table__  # type: ignore[attr-defined]  # SQLModel: no __table__
_SUPPRESSIONS: Table = SuppressionRow.__table__  # type: ignore[attr-defined]  # as above


# built once: every page view and every one-click runs these
_BY_KEY = (
    select(
        _RECIPIENTS.c.email, _RECIPIENTS.c.key, _RECIPIENTS.c.paused_until,
        _RECIPIENTS.c.muted_topics_json, _SUPPRESSIONS.c.suppressed_at, _SUPPRESSIONS.c.how,
    )
    .select_from(
        _RECIPIENTS.outerjoin(_SUPPRESSIONS, _SUPPRESSIONS.c.email == _RECIPIENTS.c.email)
    )
    .where(_RECIPIENTS.c.key == bindparam("key"))
)  # fmt: skip
_SUPPRESS: dict[str, Insert] = {}  # per dialect: INSERT ... ON CONFLICT DO NOTHING RETURNING


@dataclass(frozen=True, slots=True)
class Recipient:
    """One address's web state, as planning and the pages need it."""

    email: str
    key: str
    paused_until: dt.datetime | None = None
    muted: frozenset[str] = frozenset()
    suppressed_at: dt.datetime | None = None
    how: str | None = None

    @property
    def suppressed(self) -> bool:
        return self.suppressed_at is not None

    def paused_at(self, instant: dt.datetime) -> bool:
        return self.paused_until is not None and as_utc(instant) < self.paused_until


@dataclass(frozen=True, slots=True)
class Suppression:
    email: str
    at: dt.datetime
    how: str


def new_key() -> str:
    """A random link key: 16 bytes, URL-safe, unrelated to the address."""
    return secrets.token_urlsafe(16)


def _insert_ignore(conn: Connection, table: Table) -> Insert:
    """INSERT that leaves an existing row (same primary or unique key) as it is."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return postgresql_insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite_insert(table).on_conflict_do_nothing()
    return insert(table).prefix_with("IGNORE")  # MySQL and the like


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _ensure_rows(conn: Connection, emails: Sequence[str], now: dt.datetime) -> None:
    if emails:
        conn.execute(
            _insert_ignore(conn, _RECIPIENTS),
            [
                {"email": e, "key": new_key(), "created_at": as_utc(now), "muted_topics_json": "[]"}
                for e in emails
            ],
        )


def ensure_recipients(engine: Engine, emails: Sequence[str], now: dt.datetime) -> dict[str, str]:
    """Each address's link key, made (randomly, once) where it has none yet."""
    wanted = sorted({e.strip().lower() for e in emails})
    keys: dict[str, str] = {}
    with wrap_db_errors("reading the recipients' link keys", engine.url):
        with engine.connect() as conn:
            for chunk in _chunks(wanted):
                query = select(_RECIPIENTS.c.email, _RECIPIENTS.c.key).where(
                    _RECIPIENTS.c.email.in_(chunk)
                )
                keys.update((email, key) for email, key in conn.execute(query))
        missing = [e for e in wanted if e not in keys]
        if missing:
            with write_bind(engine).begin() as conn:
                _ensure_rows(conn, missing, now)
                for chunk in _chunks(missing):
                    query = select(_RECIPIENTS.c.email, _RECIPIENTS.c.key).where(
                        _RECIPIENTS.c.email.in_(chunk)
                    )
                    keys.update((email, key) for email, key in conn.execute(query))
    return keys


def recipients_of(engine: Engine, emails: Sequence[str]) -> dict[str, Recipient]:
    """The web state of each of `emails` that has any (a key, a pause, a suppression):
    two reads per 500 addresses, for planning and `digest status`."""
    wanted = sorted(set(emails))
    out: dict[str, Recipient] = {}
    with wrap_db_errors("reading the recipients' preferences", engine.url), engine.connect() as c:
        suppressed: dict[str, tuple[dt.datetime, str]] = {}
        for chunk in _chunks(wanted):
            query = select(_SUPPRESSIONS).where(_SUPPRESSIONS.c.email.in_(chunk))
            for row in c.execute(query):
                suppressed[row.email] = (as_utc(row.suppressed_at), row.how)
            query = select(_RECIPIENTS).where(_RECIPIENTS.c.email.in_(chunk))
            for row in c.execute(query):
                out[row.email] = _recipient(row, suppressed.get(row.email))
        for email, (at, how) in suppressed.items():
            if email not in out:  # suppressed by an admin before any link was made
                out[email] = Recipient(email=email, key="", suppressed_at=at, how=how)
    return out


def recipient_by_key(engine: Engine, key: str) -> Recipient | None:
    """The recipient whose links carry `key`, with their suppression, if any (one read)."""
    with wrap_db_errors("reading a recipient", engine.url), engine.connect() as conn:
        row = conn.execute(_BY_KEY, {"key": key}).first()
    if row is None:
        return None
    suppression = (as_utc(row.suppressed_at), row.how) if row.suppressed_at is not None else None
    return _recipient(row, suppression)


def _recipient(row: object, suppression: tuple[dt.datetime, str] | None) -> Recipient:
    paused = getattr(row, "paused_until")  # noqa: B009  # a Row's attribute, typed as object
    return Recipient(
        email=getattr(row, "email"),  # noqa: B009  # as above
        key=getattr(row, "key"),  # noqa: B009  # as above
        paused_until=as_utc(paused) if paused is not None else None,
        muted=frozenset(json.loads(getattr(row, "muted_topics_json"))),  # noqa: B009  # as above
        suppressed_at=suppression[0] if suppression else None,
        how=suppression[1] if suppression else None,
    )


def suppress(engine: Engine, email: str, how: How, now: dt.datetime) -> bool:
    """Unsubscribe `email` and cancel its pending digests, in one transaction. True when
    this call suppressed it, False when it already was (the first time and way stay)."""
    if how not in HOWS:
        raise ValueError(f"unknown way of unsubscribing: {how!r}")
    email = email.strip().lower()
    with (
        wrap_db_errors(f"unsubscribing {email}", engine.url),
        write_bind(engine).begin() as conn,
    ):
        # RETURNING, not rowcount: drivers disagree on the rowcount of a skipped insert
        statement = _SUPPRESS.get(conn.dialect.name)
        if statement is None:
            statement = _insert_ignore(conn, _SUPPRESSIONS).returning(_SUPPRESSIONS.c.email)
            _SUPPRESS[conn.dialect.name] = statement
        inserted = conn.execute(
            statement, {"email": email, "suppressed_at": as_utc(now), "how": how}
        ).first()
        outbox.cancel_pending_in(conn, [email], f"unsubscribed ({how})", now)
        return inserted is not None


def resubscribe(engine: Engine, email: str, now: dt.datetime) -> bool:
    """Lift `email`'s suppression and pause; True when it was suppressed. Their next digest
    is their next slot: the slots in between were handled as skipped."""
    email = email.strip().lower()
    with (
        wrap_db_errors(f"resubscribing {email}", engine.url),
        write_bind(engine).begin() as conn,
    ):
        result = conn.execute(delete(_SUPPRESSIONS).where(_SUPPRESSIONS.c.email == email))
        conn.execute(
            update(_RECIPIENTS)
            .where(_RECIPIENTS.c.email == email)
            .values(paused_until=None, updated_at=as_utc(now))
        )
        return bool(result.rowcount)


def set_pause(engine: Engine, email: str, until: dt.datetime | None, now: dt.datetime) -> None:
    """Pause `email` until `until` (None: resume now)."""
    _set(engine, email, now, paused_until=as_utc(until) if until is not None else None)


def set_muted(engine: Engine, email: str, topics: Iterable[str], now: dt.datetime) -> None:
    """The topics of `email` that are muted (names from the file)."""
    _set(engine, email, now, muted_topics_json=json.dumps(sorted(set(topics))))


def _set(engine: Engine, email: str, now: dt.datetime, **values: object) -> None:
    email = email.strip().lower()
    with (
        wrap_db_errors(f"saving the preferences of {email}", engine.url),
        write_bind(engine).begin() as conn,
    ):
        _ensure_rows(conn, [email], now)
        conn.execute(
            update(_RECIPIENTS)
            .where(_RECIPIENTS.c.email == email)
            .values(updated_at=as_utc(now), **values)
        )


def suppressions(engine: Engine) -> list[Suppression]:
    """Every suppressed address, oldest first."""
    with wrap_db_errors("reading the suppressions", engine.url), engine.connect() as conn:
        rows = conn.execute(
            select(_SUPPRESSIONS).order_by(_SUPPRESSIONS.c.suppressed_at, _SUPPRESSIONS.c.email)
        )
        return [Suppression(r.email, as_utc(r.suppressed_at), r.how) for r in rows]


def cancel_suppressed(engine: Engine, emails: Sequence[str], now: dt.datetime) -> int:
    """Cancel the pending digests of those of `emails` who are suppressed (the end of a
    planning run: an unsubscribe that came while the run was rendering). How many."""
    if not emails:
        return 0
    cancelled = 0
    with (
        wrap_db_errors("cancelling the digests of unsubscribed addresses", engine.url),
        write_bind(engine).begin() as conn,
    ):
        for chunk in _chunks(sorted(set(emails))):
            gone = [
                e
                for (e,) in conn.execute(
                    select(_SUPPRESSIONS.c.email).where(_SUPPRESSIONS.c.email.in_(chunk))
                )
            ]
            if gone:
                cancelled += outbox.cancel_pending_in(conn, gone, "unsubscribed", now)
    return cancelled
