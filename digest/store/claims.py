"""Claims: who is sending which pending digest, and what came of it.

Owns the sending side of the outbox's state machine (outbox.py): claiming due rows
(``FOR UPDATE SKIP LOCKED`` plus a short lease on PostgreSQL, so several processes can
drain one outbox; the same code without row locks on SQLite), renewing, releasing and
taking over leases, and recording each outcome (sent, retry, maybe sent, failed).
``mark_sent`` writes the DeliveryRows in the same transaction, so a paper counts as
delivered only when its digest is sent.

The lease is the caller's: delivery.py claims a row just before sending it, with a lease
as long as one message can take (renewed while a send goes on), so only the messages
really in flight are invisible to others. A lease names its owner process (host, pid,
start time: owner.py); `take_over_dead_leases` hands back at once the leases of a
process on this host that is gone (kill -9), so a rerun right after a crash sends them.

Does not own: the record types, adding digests, cancelling, counts and pending
(outbox.py), SMTP or Maildir (delivery.py), the retry policy (delivery.py decides the
delay and when to give up), or the engine (engine.py).
Every function takes ``now``; none reads the clock.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Iterable, Sequence

from sqlalchemy import Connection, Engine, bindparam, func, insert, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col

from digest.errors import StoreError
from digest.models import DeliveryRow, DigestMessageRow, DigestRow, as_utc
from digest.store.engine import write_bind
from digest.store.outbox import FAILED, NO_LEASE, PENDING, SENT, OutboxItem, store_error
from digest.store.owner import Owner, is_running, this_process

_DIGESTS = DigestRow.__table__  # type: ignore[attr-defined]  # SQLModel types no __table__
_MESSAGES = DigestMessageRow.__table__  # type: ignore[attr-defined]  # as above
# how long a claimed row stays invisible to others when the caller names no lease;
# drain_outbox passes its transport's much shorter claim_lease
DEFAULT_LEASE = dt.timedelta(minutes=10)


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
        raise store_error(engine, "claim due digests", e) from e


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
        raise store_error(engine, "renew leases", e) from e


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
        raise store_error(engine, "count the digests other processes are sending", e) from e


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
        raise store_error(engine, "take over the leases of dead processes", e) from e
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
        raise store_error(engine, what, e) from e


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
        raise store_error(engine, what, e) from e
