"""The outbox: the digests table as a state machine, one short transaction per call.

A digest is one row keyed by (subscriber, slot) and moves ``pending -> sent``,
``pending -> failed`` or ``pending -> cancelled`` (its subscriber left the file or
unsubscribed: never sent, the row kept for the record with when and why).

Owns: the outbox's records (`OutboxItem`, `NewDigest`, `Handled`, `Pending`, the
statuses), adding a rendered digest exactly once (the row and its message bytes, which
live in ``digest_messages`` and are never rewritten) with the subscribers' handled
slots, cancelling the pending digests of people who left (``cancel_pending``,
``cancel_pending_except``), and the counts (``outbox_counts``, ``pending``).

Does not own: claiming rows, leases and recording outcomes (claims.py), rendering
(render/), SMTP or Maildir (delivery.py), or the engine (engine.py).
Every function takes ``now``; none reads the clock.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, func, insert, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from digest.errors import StoreError
from digest.models import DigestMessageRow, DigestRow, SubscriberRow
from digest.records import as_utc
from digest.store.engine import describe_error, dialect_insert, mask_url, upsert, write_bind

PENDING, SENT, FAILED, CANCELLED = "pending", "sent", "failed", "cancelled"
STATUSES = (PENDING, SENT, FAILED, CANCELLED)
_DIGESTS = DigestRow.__table__  # type: ignore[attr-defined]  # SQLModel types no __table__
_MESSAGES = DigestMessageRow.__table__  # type: ignore[attr-defined]  # as above
_SUBSCRIBERS = SubscriberRow.__table__  # type: ignore[attr-defined]  # as above
# the lease columns of a row no process holds (claims.py takes and hands back leases)
NO_LEASE = {"lease_host": None, "lease_pid": None, "lease_started": None}


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A claimed digest, as much as the transport needs to send it."""

    id: int
    recipient: str
    sender: str
    message: bytes
    attempts: int  # failed attempts so far
    message_id: str = ""
    maybe_sent: bool = False  # a reply to the final dot timed out once already


@dataclass(frozen=True, slots=True)
class NewDigest:
    """A rendered digest on its way into the outbox."""

    subscriber: str
    slot: dt.datetime
    recipient: str
    sender: str
    message_id: str
    subject: str
    paper_ids: tuple[str, ...]
    message: bytes


class Handled(NamedTuple):
    """A subscriber's slot that planning closed (its digest written, or it had nothing)."""

    email: str
    slot: dt.datetime | None  # None: first seen, nothing handled yet
    covered_until: dt.date | None = None  # the last listing day that slot's digest covered


HandledLike = Handled | tuple[str, dt.datetime | None]


def add_digest(
    engine: Engine,
    *,
    subscriber: str,
    slot: dt.datetime,
    recipient: str,
    sender: str,
    message_id: str,
    subject: str,
    paper_ids: Sequence[str],
    message: bytes,
    now: dt.datetime,
) -> int | None:
    """Put a rendered digest in the outbox; None when (subscriber, slot) already has one."""
    digest = NewDigest(
        subscriber, slot, recipient, sender, message_id, subject, tuple(paper_ids), message
    )
    return add_digests(engine, [digest], now=now)[0]


def add_digests(
    engine: Engine,
    digests: Sequence[NewDigest],
    *,
    now: dt.datetime,
    handled: Sequence[HandledLike] = (),
) -> list[int | None]:
    """Put rendered digests in the outbox, once each, and record the subscribers' handled
    slots (``handled``: email, slot and the last listing day it covered, the coverage
    watermark; slot None for "seen, nothing handled yet"), all in ONE
    transaction: a slot is never recorded as handled without its digest, and planning
    10,000 digests costs a few commits, not 30,000.

    Returns each digest's id, None where (subscriber, slot) already had one. Every row
    goes in with INSERT ... ON CONFLICT: two processes planning the same slots at once
    (PostgreSQL) both succeed, one digest each (subscriber, slot), never an error.
    """
    try:
        with write_bind(engine).begin() as conn:
            ids = _insert_digests(conn, digests, now)
            _record_handled(conn, handled, now)
            return ids
    except SQLAlchemyError as e:
        raise store_error(engine, f"add {len(digests)} digests", e) from e


def _insert_digests(
    conn: Connection, digests: Sequence[NewDigest], now: dt.datetime
) -> list[int | None]:
    """The digests not already in the outbox, and their messages; each one's id or None."""
    first: dict[tuple[str, dt.datetime], int] = {}  # (subscriber, slot) -> index in digests
    for index, digest in enumerate(digests):
        first.setdefault((digest.subscriber, as_utc(digest.slot)), index)
    if not first:
        return []
    # sorted by key: two processes inserting overlapping batches lock rows in one order
    order = sorted(first)
    created = as_utc(now)
    rows = [_digest_values(digests[first[key]], created) for key in order]
    inserted = {
        (subscriber, as_utc(slot)): digest_id
        for digest_id, subscriber, slot in conn.execute(_insert_digest(conn.dialect.name), rows)
    }
    ids: list[int | None] = [None] * len(digests)
    for key, digest_id in inserted.items():
        ids[first[key]] = digest_id
    messages = [
        {"digest_id": digest_id, "message": digests[index].message}
        for index, digest_id in enumerate(ids)
        if digest_id is not None
    ]
    if messages:
        conn.execute(_INSERT_MESSAGE, messages)
    return ids


_INSERT_MESSAGE = insert(_MESSAGES)


@functools.cache
def _insert_digest(dialect: str) -> Any:
    """INSERT ... ON CONFLICT (subscriber, slot) DO NOTHING RETURNING id, subscriber, slot:
    built once per dialect (the rows are the same shape every time)."""
    return (
        dialect_insert(dialect, _DIGESTS)
        .on_conflict_do_nothing(index_elements=["subscriber", "slot"])
        .returning(_DIGESTS.c.id, _DIGESTS.c.subscriber, _DIGESTS.c.slot)
    )


@functools.cache
def _upsert_subscriber(dialect: str, update: tuple[str, ...]) -> Any:
    return upsert(dialect, _SUBSCRIBERS, ["email"], list(update))


def _record_handled(conn: Connection, handled: Sequence[HandledLike], now: dt.datetime) -> None:
    """Each subscriber's last handled slot and coverage watermark; a first sight records
    `now` as first seen.

    INSERT ... ON CONFLICT: a subscriber two processes see for the first time at once
    (start-up planning, a reload) is one row, never a primary key error."""
    last: dict[str, Handled] = {}
    for item in handled:  # in order: the last slot given wins, None changes nothing
        h = Handled(*item)
        if h.slot is not None or h.email not in last:
            last[h.email] = h
    dialect = conn.dialect.name

    def values(h: Handled) -> dict[str, object]:
        slot = as_utc(h.slot) if h.slot is not None else None
        return {"email": h.email, "first_seen_at": as_utc(now), "last_slot": slot,
                "covered_until": h.covered_until}  # fmt: skip

    chosen = [last[email] for email in sorted(last)]
    covered = [values(h) for h in chosen if h.slot is not None and h.covered_until is not None]
    with_slot = [values(h) for h in chosen if h.slot is not None and h.covered_until is None]
    seen_only = [values(h) for h in chosen if h.slot is None]
    if covered:
        conn.execute(_upsert_subscriber(dialect, ("last_slot", "covered_until")), covered)
    if with_slot:
        conn.execute(_upsert_subscriber(dialect, ("last_slot",)), with_slot)
    if seen_only:
        conn.execute(_upsert_subscriber(dialect, ()), seen_only)


def _digest_values(digest: NewDigest, created: dt.datetime) -> dict[str, object]:
    """A new `digests` row: pending, no attempts yet (`created`: now, in UTC)."""
    return {
        "subscriber": digest.subscriber,
        "slot": as_utc(digest.slot),
        "status": PENDING,
        "attempts": 0,
        "message_id": digest.message_id,
        "recipient": digest.recipient,
        "sender": digest.sender,
        "subject": digest.subject,
        "paper_ids_json": json.dumps(digest.paper_ids),  # a tuple: a JSON list
        "created_at": created,
    }


def cancel_pending(
    engine: Engine, emails: Iterable[str], reason: str, now: dt.datetime
) -> int:
    """Cancel every pending digest of the subscribers `emails` (lower-cased addresses):
    they become ``cancelled``, are never claimed again, and keep `reason` and `now` in
    ``last_reply`` for the record. Returns how many were cancelled.

    A digest being sent at this moment may still be accepted; mark_sent then records it
    as sent (which it is)."""
    wanted = sorted(set(emails))
    try:
        with write_bind(engine).begin() as conn:
            return cancel_pending_in(conn, wanted, reason, now)
    except SQLAlchemyError as e:
        raise store_error(engine, f"cancel the pending digests of {len(wanted)} people", e) from e


def cancel_pending_in(
    conn: Connection, emails: Iterable[str], reason: str, now: dt.datetime
) -> int:
    """cancel_pending inside the caller's transaction, with the write that causes it (an
    unsubscribe and its cancel commit together)."""
    wanted = sorted(set(emails))
    note = f"cancelled {as_utc(now):%Y-%m-%d %H:%M:%S} UTC: {reason}"[:2000]
    cancelled = 0
    for start in range(0, len(wanted), 500):
        result = conn.execute(
            update(_DIGESTS)
            .where(
                _DIGESTS.c.status == PENDING,
                _DIGESTS.c.subscriber.in_(wanted[start : start + 500]),
            )
            .values(status=CANCELLED, last_reply=note, next_attempt_at=None, **NO_LEASE)
        )
        cancelled += result.rowcount
    return cancelled


def cancel_pending_except(
    engine: Engine, keep: Collection[str], reason: str, now: dt.datetime
) -> int:
    """Cancel the pending digests of everyone not in `keep` (the subscribers the file
    still lists): see cancel_pending. Returns how many were cancelled. Keys with a
    ``kind:`` prefix are not subscribers (alerts.py queues ``alert:admin@...``) and are
    left alone: an address in the file never contains a colon."""
    try:
        with Session(engine) as session:
            waiting = set(
                session.exec(
                    select(DigestRow.subscriber).where(DigestRow.status == PENDING).distinct()
                )
            )
    except SQLAlchemyError as e:
        raise store_error(engine, "read who has pending digests", e) from e
    gone = {key for key in waiting - set(keep) if ":" not in key}
    return cancel_pending(engine, gone, reason, now) if gone else 0


def outbox_counts(engine: Engine) -> dict[str, int]:
    """How many digests are pending, sent, failed and cancelled (every key present)."""
    counts = dict.fromkeys(STATUSES, 0)
    try:
        with Session(engine) as session:
            rows = session.exec(
                select(DigestRow.status, func.count()).group_by(col(DigestRow.status))
            ).all()
    except SQLAlchemyError as e:
        raise store_error(engine, "count digests", e) from e
    counts.update({status: int(n) for status, n in rows})
    return counts


@dataclass(frozen=True, slots=True)
class Pending:
    """The pending digests: how many, and when the first and the last are due (None: now)."""

    count: int
    first_due: dt.datetime | None
    last_due: dt.datetime | None


def pending(engine: Engine, now: dt.datetime) -> Pending:
    """How many digests are pending and when they are due (a lease or a backoff delays
    one; a row due already counts as due at `now`)."""
    query = sa_select(
        func.count(), func.min(_DIGESTS.c.next_attempt_at), func.max(_DIGESTS.c.next_attempt_at),
        func.count(_DIGESTS.c.next_attempt_at),
    ).where(_DIGESTS.c.status == PENDING)  # fmt: skip
    try:
        with engine.connect() as conn:
            count, first, last, timed = conn.execute(query).one()
    except SQLAlchemyError as e:
        raise store_error(engine, "count pending digests", e) from e
    now = as_utc(now)

    def when(value: dt.datetime | None) -> dt.datetime | None:
        return None if value is None or as_utc(value) <= now else as_utc(value)

    first_due = None if timed < count else when(first)  # a NULL is due now
    return Pending(int(count), first_due, when(last))


def store_error(engine: Engine, action: str, error: SQLAlchemyError) -> StoreError:
    """One line: what the outbox tried, on which database, and the driver's complaint."""
    return StoreError(f"outbox: cannot {action} on {mask_url(engine.url)}: {describe_error(error)}")


def _id(row: DigestRow) -> int:
    if row.id is None:  # only a row never flushed has no id
        raise StoreError("outbox: a stored digest has no id")
    return row.id
