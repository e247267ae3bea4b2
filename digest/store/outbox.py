"""The outbox: the digests table as a state machine, one short transaction per call.

A digest is one row keyed by (subscriber, slot) and moves ``pending -> sent``,
``pending -> failed`` or ``pending -> cancelled`` (its subscriber left the file or
unsubscribed: never sent, the row kept for the record with when and why).

Owns: adding a rendered digest exactly once (the row and its message bytes, which live
in ``digest_messages`` and are never rewritten), claiming due rows (``FOR UPDATE SKIP
LOCKED`` plus a short lease on PostgreSQL, so several processes can drain one outbox;
the same code without row locks on SQLite), recording each outcome, and cancelling the
pending digests of people who left (``cancel_pending``, ``cancel_pending_except``).
``mark_sent`` writes the DeliveryRows in the same transaction, so a paper counts as
delivered only when its digest is sent.

The lease is the caller's: delivery.py claims a row just before sending it, with a lease
as long as one message can take (renewed while a send goes on), so only the messages
really in flight are invisible to others. A lease names its owner process (host, pid,
start time: owner.py); `take_over_dead_leases` hands back at once the leases of a
process on this host that is gone (kill -9), so a rerun right after a crash sends them.

Does not own: rendering (render.py), SMTP or Maildir (delivery.py), the retry policy
(delivery.py decides the delay and when to give up), or the engine (store.py).
Every function takes ``now``; none reads the clock.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy import Connection, Engine, bindparam, func, insert, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from digest.errors import StoreError
from digest.models import DeliveryRow, DigestMessageRow, DigestRow, SubscriberRow, as_utc
from digest.store.engine import describe_error, dialect_insert, mask_url, upsert, write_bind
from digest.store.owner import Owner, is_running, this_process

PENDING, SENT, FAILED, CANCELLED = "pending", "sent", "failed", "cancelled"
STATUSES = (PENDING, SENT, FAILED, CANCELLED)
_DIGESTS = DigestRow.__table__  # type: ignore[attr-defined]  # SQLModel types no __table__
_MESSAGES = DigestMessageRow.__table__  # type: ignore[attr-defined]  # as above
_SUBSCRIBERS = SubscriberRow.__table__  # type: ignore[attr-defined]  # as above
# how long a claimed row stays invisible to others when the caller names no lease;
# drain_outbox passes its transport's much shorter claim_lease
DEFAULT_LEASE = dt.timedelta(minutes=10)


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
        raise _store_error(engine, f"add {len(digests)} digests", e) from e


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
    statement = (
        dialect_insert(conn.dialect.name, _DIGESTS)
        .on_conflict_do_nothing(index_elements=["subscriber", "slot"])
        .returning(_DIGESTS.c.id, _DIGESTS.c.subscriber, _DIGESTS.c.slot)
    )
    rows = [_digest_values(digests[first[key]], now) for key in order]
    inserted = {
        (subscriber, as_utc(slot)): digest_id
        for digest_id, subscriber, slot in conn.execute(statement, rows)
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
        conn.execute(insert(_MESSAGES), messages)
    return ids


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
        statement = upsert(dialect, _SUBSCRIBERS, ["email"], ["last_slot", "covered_until"])
        conn.execute(statement, covered)
    if with_slot:
        conn.execute(upsert(dialect, _SUBSCRIBERS, ["email"], ["last_slot"]), with_slot)
    if seen_only:
        conn.execute(upsert(dialect, _SUBSCRIBERS, ["email"], []), seen_only)


def _digest_values(digest: NewDigest, now: dt.datetime) -> dict[str, object]:
    """A new `digests` row: pending, no attempts yet."""
    return {
        "subscriber": digest.subscriber,
        "slot": as_utc(digest.slot),
        "status": PENDING,
        "attempts": 0,
        "message_id": digest.message_id,
        "recipient": digest.recipient,
        "sender": digest.sender,
        "subject": digest.subject,
        "paper_ids_json": json.dumps(list(digest.paper_ids)),
        "created_at": as_utc(now),
    }


# claim_due runs once per message sent: its statements are built once, here.
_DUE = (
    sa_select(  # OutboxItem's fields, in order
        _DIGESTS.c.id,
        _DIGESTS.c.recipient,
        _DIGESTS.c.sender,
        _MESSAGES.c.message,
        _DIGESTS.c.attempts,
        _DIGESTS.c.message_id,
        _DIGESTS.c.maybe_sent_at.is_not(None),
    )
    .join(_MESSAGES, _MESSAGES.c.digest_id == _DIGESTS.c.id)
    .where(
        _DIGESTS.c.status == PENDING,
        or_(_DIGESTS.c.next_attempt_at.is_(None), _DIGESTS.c.next_attempt_at <= bindparam("now")),
        _DIGESTS.c.id.not_in(bindparam("skip", expanding=True)),
    )
    .order_by(_DIGESTS.c.id)  # the status index walks pending rows in id order: no sort
    .limit(bindparam("limit"))
)
_DUE_BY_DIALECT = {  # PostgreSQL: other processes skip the rows this one locked
    "postgresql": _DUE.with_for_update(skip_locked=True, of=_DIGESTS),
}
_LEASE = (
    update(_DIGESTS)
    .where(_DIGESTS.c.id.in_(bindparam("ids", expanding=True)))
    .values(
        next_attempt_at=bindparam("until"),
        lease_host=bindparam("host"),
        lease_pid=bindparam("pid"),
        lease_started=bindparam("started"),
    )
)
NO_LEASE = {"lease_host": None, "lease_pid": None, "lease_started": None}


def claim_due(
    engine: Engine,
    now: dt.datetime,
    limit: int,
    lease: dt.timedelta = DEFAULT_LEASE,
    skip: Collection[int] = (),
    owner: Owner | None = None,
) -> list[OutboxItem]:
    """Claim up to `limit` pending digests that are due, oldest first, with their messages.

    A claimed row gets ``next_attempt_at = now + lease`` and its owner (default: this
    process), so another process does not pick it up while it is being sent; after the
    lease, or at once when the owner on this host is gone, it is due again. `skip`: ids
    the caller is sending right now (never claimed twice by one drain).
    """
    try:
        with write_bind(engine).begin() as conn:  # SQLite: the write lock at BEGIN
            return _claim(
                conn, engine.dialect.name, as_utc(now), limit, lease, skip, owner or this_process()
            )
    except SQLAlchemyError as e:
        raise _store_error(engine, "claim due digests", e) from e


def _claim(
    conn: Connection,
    dialect: str,
    now: dt.datetime,
    limit: int,
    lease: dt.timedelta,
    skip: Collection[int],
    owner: Owner,
) -> list[OutboxItem]:
    """claim_due inside the caller's transaction."""
    due = _DUE_BY_DIALECT.get(dialect, _DUE)
    found = conn.execute(due, {"now": now, "skip": list(skip), "limit": limit})
    items = [OutboxItem(*row) for row in found]
    if items:
        conn.execute(
            _LEASE,
            {"ids": [i.id for i in items], "until": now + lease, "host": owner.host,
             "pid": owner.pid, "started": owner.started},
        )  # fmt: skip
    return items


def renew_leases(
    engine: Engine,
    digest_ids: Collection[int],
    now: dt.datetime,
    lease: dt.timedelta,
    owner: Owner | None = None,
) -> int:
    """Extend the leases `owner` (default: this process) holds on `digest_ids` to
    ``now + lease``: a send that goes on (a retry inside it) keeps its digest. Returns
    how many leases were renewed (a row sent, retried or taken over meanwhile is not)."""
    if not digest_ids:
        return 0
    me = owner or this_process()
    statement = (
        update(_DIGESTS)
        .where(
            _DIGESTS.c.id.in_(sorted(digest_ids)),
            _DIGESTS.c.status == PENDING,
            _DIGESTS.c.lease_host == me.host,
            _DIGESTS.c.lease_pid == me.pid,
        )
        .values(next_attempt_at=as_utc(now) + lease)
    )
    try:
        with write_bind(engine).begin() as conn:
            return int(conn.execute(statement).rowcount)
    except SQLAlchemyError as e:
        raise _store_error(engine, "renew leases", e) from e


def leased_by_others(engine: Engine, now: dt.datetime, owner: Owner | None = None) -> int:
    """How many pending digests another process (not `owner`, default this one) holds a
    lease on now: being sent there, or held by a process gone on another host until its
    lease ends."""
    me = owner or this_process()
    query = sa_select(func.count()).where(
        _DIGESTS.c.status == PENDING,
        _DIGESTS.c.lease_pid.is_not(None),
        _DIGESTS.c.next_attempt_at > as_utc(now),
        or_(_DIGESTS.c.lease_host != me.host, _DIGESTS.c.lease_pid != me.pid),
    )
    try:
        with engine.connect() as conn:
            return int(conn.execute(query).scalar_one())
    except SQLAlchemyError as e:
        raise _store_error(engine, "count the digests other processes are sending", e) from e


def take_over_dead_leases(engine: Engine, now: dt.datetime, host: str | None = None) -> int:
    """Hand back at once the leases held by processes of this host that are gone (killed,
    crashed: a pid that no longer runs, or runs a younger process): those digests are due
    now, not when the lease would end. Leases of live processes and of other hosts are
    left to run out. Returns how many digests were handed back."""
    host = host if host is not None else this_process().host
    me = this_process()
    held = (
        sa_select(_DIGESTS.c.lease_pid, _DIGESTS.c.lease_started)
        .where(
            _DIGESTS.c.status == PENDING,
            _DIGESTS.c.lease_host == host,
            _DIGESTS.c.lease_pid.is_not(None),
            _DIGESTS.c.next_attempt_at > as_utc(now),
        )
        .distinct()
    )
    taken = 0
    try:
        with write_bind(engine).begin() as conn:
            for pid, started in conn.execute(held).all():
                holder = Owner(host, int(pid), started or "")
                if holder == me or is_running(holder):
                    continue
                taken += conn.execute(
                    update(_DIGESTS)
                    .where(
                        _DIGESTS.c.status == PENDING,
                        _DIGESTS.c.lease_host == host,
                        _DIGESTS.c.lease_pid == pid,
                        _DIGESTS.c.lease_started == started,
                    )
                    .values(next_attempt_at=None, **NO_LEASE)
                ).rowcount
    except SQLAlchemyError as e:
        raise _store_error(engine, "take over the leases of dead processes", e) from e
    return taken


def release(engine: Engine, digest_ids: Iterable[int]) -> None:
    """Hand claimed but unsent digests back: due again at once (a stop before sending)."""
    ids = list(digest_ids)
    if not ids:
        return
    _update(
        engine,
        ids,
        {"next_attempt_at": None, **NO_LEASE},
        what="release claimed digests",
    )


# mark_sent runs once per message sent: its statements are built once, here.
_SENT_DIGESTS = sa_select(
    col(DigestRow.id), col(DigestRow.subscriber), col(DigestRow.paper_ids_json)
).where(col(DigestRow.id).in_(bindparam("ids", expanding=True)))
_MARK_SENT = (
    update(DigestRow)
    .where(col(DigestRow.id) == bindparam("digest_id"))
    .values(
        status=SENT,
        sent_at=bindparam("when"),
        last_reply=bindparam("reply_text"),
        next_attempt_at=None,
        **NO_LEASE,
    )
)
_INSERT_NEW_DELIVERIES = {  # keep the first delivery of a paper sent again
    "sqlite": sqlite_insert(DeliveryRow).on_conflict_do_nothing(),
    "postgresql": postgresql_insert(DeliveryRow).on_conflict_do_nothing(),
}


def mark_sent(engine: Engine, digest_id: int, reply: str, now: dt.datetime) -> None:
    """The server accepted the digest: mark it sent and record its papers as delivered,
    all in one transaction."""
    mark_sent_and_claim(engine, [(digest_id, reply)], now, 0)


def mark_sent_and_claim(
    engine: Engine,
    sent: Sequence[tuple[int, str]],
    now: dt.datetime,
    limit: int,
    lease: dt.timedelta = DEFAULT_LEASE,
    skip: Collection[int] = (),
    owner: Owner | None = None,
) -> list[OutboxItem]:
    """mark_sent for every (digest id, reply) in `sent`, then claim_due(limit, lease, skip,
    owner), in one transaction: a drain's group commit (one BEGIN/COMMIT for several outcomes
    and the next claims). Returns the claimed digests."""
    now = as_utc(now)
    ids = [digest_id for digest_id, _ in sent]
    what = f"mark digest {ids[0]} sent" if len(ids) == 1 else "mark digests sent"
    try:
        with write_bind(engine).begin() as conn:  # SQLite: the write lock at BEGIN
            if sent:
                _mark_sent(conn, engine.dialect.name, sent, now)
            if limit <= 0:
                return []
            what = "claim due digests"
            return _claim(
                conn, engine.dialect.name, now, limit, lease, skip, owner or this_process()
            )
    except SQLAlchemyError as e:
        raise _store_error(engine, what, e) from e


def _mark_sent(
    conn: Connection, dialect: str, sent: Sequence[tuple[int, str]], now: dt.datetime
) -> None:
    """mark_sent inside the caller's transaction."""
    found = {
        digest_id: (subscriber, paper_ids_json)
        for digest_id, subscriber, paper_ids_json in conn.execute(
            _SENT_DIGESTS, {"ids": [digest_id for digest_id, _ in sent]}
        )
    }
    deliveries = []
    for digest_id, _ in sent:
        if digest_id not in found:
            raise StoreError(f"outbox: digest {digest_id} does not exist")
        subscriber, paper_ids_json = found[digest_id]
        deliveries += [
            {"subscriber": subscriber, "paper_id": paper_id, "digest_id": digest_id,
             "delivered_at": now}
            for paper_id in json.loads(paper_ids_json)
        ]  # fmt: skip
    conn.execute(
        _MARK_SENT,
        [{"digest_id": digest_id, "when": now, "reply_text": reply} for digest_id, reply in sent],
    )
    if deliveries:
        # elsewhere a plain INSERT: a repeated paper is an IntegrityError, never silent
        conn.execute(_INSERT_NEW_DELIVERIES.get(dialect, insert(DeliveryRow)), deliveries)


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
            **NO_LEASE,
        },
        what=f"mark digest {digest_id} for retry",
        only_pending=True,
    )


def mark_maybe_sent(
    engine: Engine, digest_id: int, reply: str, now: dt.datetime, delay: dt.timedelta
) -> None:
    """The message went out whole but its final reply never came: it may have been
    delivered. Record when (``maybe_sent_at``), count the attempt, keep it pending and
    due again only after `delay`; delivery.py resends such a digest at most once."""
    _update(
        engine,
        [digest_id],
        {
            "attempts": DigestRow.attempts + 1,  # an SQL expression: no lost update
            "last_reply": reply,
            "maybe_sent_at": as_utc(now),
            "next_attempt_at": as_utc(now) + delay,
            **NO_LEASE,
        },
        what=f"mark digest {digest_id} maybe delivered",
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
            **NO_LEASE,
        },
        what=f"mark digest {digest_id} failed",
        only_pending=True,
    )


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
        raise _store_error(engine, f"cancel the pending digests of {len(wanted)} people", e) from e


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
        raise _store_error(engine, "read who has pending digests", e) from e
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
        raise _store_error(engine, "count digests", e) from e
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
        raise _store_error(engine, "count pending digests", e) from e
    now = as_utc(now)

    def when(value: dt.datetime | None) -> dt.datetime | None:
        return None if value is None or as_utc(value) <= now else as_utc(value)

    first_due = None if timed < count else when(first)  # a NULL is due now
    return Pending(int(count), first_due, when(last))


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
