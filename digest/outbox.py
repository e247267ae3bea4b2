"""The outbox: the digests table as a state machine, one short transaction per call.

A digest is one row keyed by (subscriber, slot) and moves ``pending -> sent`` or
``pending -> failed``. Owns: adding a rendered digest exactly once, claiming due rows
(``FOR UPDATE SKIP LOCKED`` plus a short lease on PostgreSQL, so several processes can
drain one outbox; the same code without row locks on SQLite), and recording each outcome.
``mark_sent`` writes the DeliveryRows in the same transaction, so a paper counts as
delivered only when its digest is sent.

Does not own: rendering (render.py), SMTP or Maildir (delivery.py), the retry policy
(delivery.py decides the delay and when to give up), or the engine (store.py).
Every function takes ``now``; none reads the clock.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, bindparam, func, insert, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, col, select

from digest.errors import StoreError
from digest.models import DeliveryRow, DigestRow, as_utc
from digest.store.engine import describe_error, mask_url, write_bind

PENDING, SENT, FAILED = "pending", "sent", "failed"
DEFAULT_LEASE = dt.timedelta(minutes=10)  # a claimed row is invisible to others this long


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """A claimed digest, as much as the transport needs to send it."""

    id: int
    recipient: str
    sender: str
    message: bytes
    attempts: int  # failed attempts so far
    message_id: str = ""


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
    row = DigestRow(
        subscriber=subscriber,
        slot=as_utc(slot),
        recipient=recipient,
        sender=sender,
        message_id=message_id,
        subject=subject,
        paper_ids_json=json.dumps(list(paper_ids)),
        message=message,
        created_at=as_utc(now),
    )
    try:
        with Session(engine) as session:
            session.add(row)
            session.commit()
            session.refresh(row)
            return row.id
    except IntegrityError:
        return None  # the unique (subscriber, slot) constraint: already in the outbox
    except SQLAlchemyError as e:
        raise _store_error(engine, f"add the digest for {subscriber} at {slot}", e) from e


def claim_due(
    engine: Engine,
    now: dt.datetime,
    limit: int,
    lease: dt.timedelta = DEFAULT_LEASE,
) -> list[OutboxItem]:
    """Claim up to `limit` pending digests that are due, oldest first.

    A claimed row gets ``next_attempt_at = now + lease``, so another process (or a restart
    after a crash) does not pick it up while it is being sent; after the lease it is due again.
    """
    now = as_utc(now)
    due = (
        select(DigestRow)
        .where(
            DigestRow.status == PENDING,
            or_(col(DigestRow.next_attempt_at).is_(None), col(DigestRow.next_attempt_at) <= now),
        )
        .order_by(col(DigestRow.next_attempt_at).is_not(None), col(DigestRow.id))
        .limit(limit)
    )
    try:
        with Session(write_bind(engine)) as session:  # SQLite: the write lock at BEGIN
            if engine.dialect.name == "postgresql":
                due = due.with_for_update(skip_locked=True)
            rows = session.exec(due).all()
            items = [
                OutboxItem(
                    id=_id(row),
                    recipient=row.recipient,
                    sender=row.sender,
                    message=row.message,
                    attempts=row.attempts,
                    message_id=row.message_id,
                )
                for row in rows
            ]
            if items:
                session.execute(
                    update(DigestRow)
                    .where(col(DigestRow.id).in_([i.id for i in items]))
                    .values(next_attempt_at=now + lease)
                )
            session.commit()
            return items
    except SQLAlchemyError as e:
        raise _store_error(engine, "claim due digests", e) from e


def release(engine: Engine, digest_ids: Iterable[int]) -> None:
    """Hand claimed but unsent digests back: due again at once (a stop before sending)."""
    ids = list(digest_ids)
    if not ids:
        return
    _update(
        engine,
        ids,
        {"next_attempt_at": None},
        what="release claimed digests",
    )


# mark_sent runs once per message sent: its statements are built once, here.
_SENT_DIGEST = sa_select(col(DigestRow.subscriber), col(DigestRow.paper_ids_json)).where(
    col(DigestRow.id) == bindparam("digest_id")
)
_MARK_SENT = (
    update(DigestRow)
    .where(col(DigestRow.id) == bindparam("digest_id"))
    .values(
        status=SENT,
        sent_at=bindparam("when"),
        last_reply=bindparam("reply_text"),
        next_attempt_at=None,
    )
)
_INSERT_NEW_DELIVERIES = {  # keep the first delivery of a paper sent again
    "sqlite": sqlite_insert(DeliveryRow).on_conflict_do_nothing(),
    "postgresql": postgresql_insert(DeliveryRow).on_conflict_do_nothing(),
}


def mark_sent(engine: Engine, digest_id: int, reply: str, now: dt.datetime) -> None:
    """The server accepted the digest: mark it sent and record its papers as delivered,
    all in one transaction."""
    now = as_utc(now)
    try:
        with write_bind(engine).begin() as conn:
            found = conn.execute(_SENT_DIGEST, {"digest_id": digest_id}).first()
            if found is None:
                raise StoreError(f"outbox: digest {digest_id} does not exist")
            subscriber, paper_ids_json = found
            conn.execute(_MARK_SENT, {"digest_id": digest_id, "when": now, "reply_text": reply})
            deliveries = [
                {"subscriber": subscriber, "paper_id": paper_id, "digest_id": digest_id,
                 "delivered_at": now}
                for paper_id in json.loads(paper_ids_json)
            ]  # fmt: skip
            if deliveries:
                # elsewhere a plain INSERT: a repeated paper is an IntegrityError, never silent
                add = _INSERT_NEW_DELIVERIES.get(engine.dialect.name, insert(DeliveryRow))
                conn.execute(add, deliveries)
    except SQLAlchemyError as e:
        raise _store_error(engine, f"mark digest {digest_id} sent", e) from e


def mark_retry(
    engine: Engine, digest_id: int, reply: str, now: dt.datetime, delay: dt.timedelta
) -> None:
    """A transient failure: count the attempt, keep it pending, due again after `delay`."""
    _update(
        engine,
        [digest_id],
        {
            "attempts": DigestRow.attempts + 1,  # an SQL expression: no lost update
            "last_reply": reply,
            "next_attempt_at": as_utc(now) + delay,
        },
        what=f"mark digest {digest_id} for retry",
        only_pending=True,
    )


def mark_failed(engine: Engine, digest_id: int, reply: str, now: dt.datetime) -> None:
    """A permanent failure: the digest will never be sent; `reply` says why.

    `now` is part of the contract (a failed_at column may come); nothing stores it yet."""
    _update(
        engine,
        [digest_id],
        {
            "status": FAILED,
            "attempts": DigestRow.attempts + 1,  # an SQL expression: no lost update
            "last_reply": reply,
            "next_attempt_at": None,
        },
        what=f"mark digest {digest_id} failed",
        only_pending=True,
    )


def outbox_counts(engine: Engine) -> dict[str, int]:
    """How many digests are pending, sent and failed (every key present)."""
    counts = {PENDING: 0, SENT: 0, FAILED: 0}
    try:
        with Session(engine) as session:
            rows = session.exec(
                select(DigestRow.status, func.count()).group_by(col(DigestRow.status))
            ).all()
    except SQLAlchemyError as e:
        raise _store_error(engine, "count digests", e) from e
    counts.update({status: int(n) for status, n in rows})
    return counts


def _update(
    engine: Engine,
    ids: list[int],
    values: dict[str, object],
    *,
    what: str,
    only_pending: bool = False,
) -> None:
    statement = update(DigestRow).where(col(DigestRow.id).in_(ids))
    if only_pending:
        statement = statement.where(col(DigestRow.status) == PENDING)
    try:
        with Session(engine) as session:
            session.execute(statement.values(values))
            session.commit()
    except SQLAlchemyError as e:
        raise _store_error(engine, what, e) from e


def _store_error(engine: Engine, action: str, error: SQLAlchemyError) -> StoreError:
    """One line: what the outbox tried, on which database, and the driver's complaint."""
    return StoreError(f"outbox: cannot {action} on {mask_url(engine.url)}: {describe_error(error)}")


def _id(row: DigestRow) -> int:
    if row.id is None:  # only a row never flushed has no id
        raise StoreError("outbox: a stored digest has no id")
    return row.id
