"""Claims: taking due digests to send and recording what came of each (the drain's hot path).

Owns the sending side of the outbox's state machine (outbox.py): claiming due rows
(``FOR UPDATE SKIP LOCKED`` plus a lease on PostgreSQL, so several processes can drain
one outbox; the same SQL without row locks on SQLite, whose writers take turns) and
recording each outcome: sent (with the DeliveryRows, in the same transaction, so a paper
counts as delivered only when its digest is sent), retry, maybe sent, failed.

A drain does it in group commits: a `Settler` holds one connection for the whole drain
and each `settle` is ONE transaction that records every outcome the drain's workers
gathered meanwhile, tells which claimed digests it must not send any more (cancelled
meanwhile, or leased by another process now), and claims the next batch. On SQLite its
few statements are plain SQL written here and run through the driver, each once per
transaction with all its rows (executemany): no ORM, no statement compiled per message.
On PostgreSQL the same transaction is pgsettle.py's array statements, pipelined: three
round trips (statements, commit, the pipeline's end) where these take eight.
`claim_due`, `mark_sent`, ... are the same transaction for one call.

A claimed row's lease (``next_attempt_at = now + lease``) names its owner process
(host, pid, start time: owner.py); leases.py renews, hands back and takes over leases.

Does not own: the record types, adding digests, cancelling, counts (outbox.py), lease
upkeep (leases.py), SMTP or Maildir and the retry policy (delivery.py), or the engine
(engine.py). Every function takes ``now``; none reads the clock.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from digest.errors import StoreError
from digest.models import DigestRow, as_utc
from digest.store import pgsettle
from digest.store.engine import describe_error, mask_url
from digest.store.outbox import FAILED, PENDING, SENT, OutboxItem
from digest.store.owner import Owner, this_process

# how long a claimed row stays invisible to others when the caller names no lease;
# drain_outbox passes its transport's much shorter claim_lease
DEFAULT_LEASE = dt.timedelta(minutes=10)
RETRY, MAYBE = "retry", "maybe"  # an Outcome's kinds besides SENT and FAILED
KINDS = (SENT, RETRY, MAYBE, FAILED)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What came of one send, to be recorded: SENT (the server accepted it: `reply`),
    RETRY (a transient failure: due again after `delay`), MAYBE (the final reply never
    came: maybe delivered, due again after `delay`) or FAILED (never to be sent)."""

    digest_id: int
    kind: str
    reply: str
    delay: dt.timedelta = dt.timedelta(0)


@dataclass(frozen=True, slots=True)
class Settled:
    """What `settle` claimed, and which of the digests the caller holds it must not send
    (`gone`: cancelled, sent or failed meanwhile, or leased by another process now)."""

    claimed: list[OutboxItem]
    gone: frozenset[int] = frozenset()


_NO_LEASE = "lease_host = NULL, lease_pid = NULL, lease_started = NULL"
# The statements, in the driver's "?" style (PostgreSQL's "%s" swapped in), {ids} a list
# of placeholders filled per call. A retry, maybe or failure changes only a pending row
# (a digest cancelled meanwhile stays cancelled); a sent one is recorded as sent whatever
# happened meanwhile (it was sent); every outcome clears the row's lease.
_SENT_ROWS = "SELECT id, subscriber, paper_ids_json FROM digests WHERE id IN ({ids})"
_MARK = {
    SENT: f"UPDATE digests SET status = '{SENT}', sent_at = ?, last_reply = ?, "
    f"next_attempt_at = NULL, {_NO_LEASE} WHERE id = ?",
    RETRY: "UPDATE digests SET attempts = attempts + 1, last_reply = ?, next_attempt_at = ?, "
    f"{_NO_LEASE} WHERE id = ? AND status = '{PENDING}'",
    MAYBE: "UPDATE digests SET attempts = attempts + 1, last_reply = ?, next_attempt_at = ?, "
    f"maybe_sent_at = ?, {_NO_LEASE} WHERE id = ? AND status = '{PENDING}'",
    FAILED: f"UPDATE digests SET status = '{FAILED}', attempts = attempts + 1, last_reply = ?, "
    f"next_attempt_at = NULL, {_NO_LEASE} WHERE id = ? AND status = '{PENDING}'",
}
# keep the first delivery of a paper sent again (elsewhere a repeat is an error)
_DELIVER = (
    "INSERT INTO deliveries (subscriber, paper_id, digest_id, delivered_at) "
    "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_NOT_HELD = (
    "SELECT id FROM digests WHERE id IN ({ids}) AND (status <> 'pending' "
    "OR lease_pid IS NULL OR lease_host <> ? OR lease_pid <> ?)"
)
# OutboxItem's fields, in order; ix_digests_pending walks the pending rows in id order
# (SQLite's status index does too: equal keys in rowid order)
_DUE = (
    "SELECT d.id, d.recipient, d.sender, m.message, d.attempts, d.message_id, "
    "d.maybe_sent_at IS NOT NULL FROM digests d JOIN digest_messages m ON m.digest_id = d.id "
    f"WHERE d.status = '{PENDING}' AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= ?)"
    "{skip} ORDER BY d.id LIMIT ?"
)
_LOCK = {"postgresql": " FOR UPDATE OF d SKIP LOCKED"}  # others skip the rows being claimed
_LEASE = (
    "UPDATE digests SET next_attempt_at = ?, lease_host = ?, lease_pid = ?, lease_started = ? "
    "WHERE id = ?"
)


class Settler:
    """One drain's connection to the outbox, for its group commits (`settle`). Opened on
    first use and kept until `close`: use it from one thread at a time."""

    def __init__(self, engine: Engine, owner: Owner | None = None) -> None:
        dialect = engine.dialect
        if dialect.name not in ("sqlite", "postgresql"):
            raise StoreError(f"outbox: cannot drain a {dialect.name} database")
        self.engine = engine
        self.owner = owner or this_process()
        self._begin = "BEGIN IMMEDIATE" if dialect.name == "sqlite" else None
        self._style = "?" if dialect.paramstyle == "qmark" else "%s"
        self._lock = _LOCK.get(dialect.name, "")
        # a time as the driver takes it for these columns (SQLite: SQLAlchemy's text form)
        column_type = DigestRow.__table__.c.sent_at.type  # type: ignore[attr-defined]  # SQLModel types no __table__
        self._time: Callable[[Any], Any] = (
            column_type.dialect_impl(dialect).bind_processor(dialect) or (lambda value: value)
        )
        self._raw: Any = None  # the pool's DBAPI connection, while open

    def close(self) -> None:
        """Give the connection back to the pool."""
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.close()

    def settle(
        self,
        outcomes: Sequence[Outcome],
        now: dt.datetime,
        *,
        claim: int = 0,
        lease: dt.timedelta = DEFAULT_LEASE,
        skip: Collection[int] = (),
        held: Collection[int] = (),
    ) -> Settled:
        """ONE transaction: record every outcome, tell which of the digests the caller
        `held` (claimed, not started) it must drop, then claim up to `claim` due digests
        (oldest first, with their messages; never one in `skip` or `held`), each leased to
        this settler's owner until ``now + lease``.

        After the lease, or at once when the owner on this host is gone (leases.py), a
        claimed row is due again."""
        unknown = {o.kind for o in outcomes} - set(KINDS)
        if unknown:
            raise ValueError(f"outbox: no such outcome {sorted(unknown)}")
        now = as_utc(now)
        what = _describe(outcomes)
        try:
            if self._raw is None:
                self._raw = self.engine.raw_connection()
            if self._begin is None:  # PostgreSQL: two round trips (pgsettle.py)
                return self._settle_pg(outcomes, now, claim, lease, skip, held)
            cursor = self._raw.cursor()
            try:
                if self._begin:
                    cursor.execute(self._begin)  # SQLite: the write lock at BEGIN
                self._record(cursor, outcomes, now)
                gone: frozenset[int] = frozenset()
                if held:
                    what = "check the claimed digests"
                    gone = self._not_held(cursor, held)
                claimed: list[OutboxItem] = []
                if claim > 0:
                    what = "claim due digests"
                    claimed = self._claim(cursor, now, claim, lease, {*skip, *held})
                self._raw.commit()
                return Settled(claimed, gone)
            finally:
                cursor.close()
        except StoreError:
            self._abandon()
            raise
        except (self.engine.dialect.loaded_dbapi.Error, SQLAlchemyError) as e:
            self._abandon()
            where = mask_url(self.engine.url)
            raise StoreError(f"outbox: cannot {what} on {where}: {describe_error(e)}") from e

    def _settle_pg(
        self,
        outcomes: Sequence[Outcome],
        now: dt.datetime,
        claim: int,
        lease: dt.timedelta,
        skip: Collection[int],
        held: Collection[int],
    ) -> Settled:
        claimed, gone = pgsettle.settle(
            self._raw.driver_connection, self.owner, outcomes, now, claim=claim, lease=lease,
            skip=skip, held=held,
        )  # fmt: skip
        return Settled(claimed, gone)

    def _abandon(self) -> None:
        """Roll back and drop the connection (it may be broken): the next settle opens
        another."""
        raw, self._raw = self._raw, None
        if raw is None:
            return
        try:
            raw.rollback()
        except self.engine.dialect.loaded_dbapi.Error:
            raw.invalidate()  # unusable: the pool must not hand it out again
        raw.close()

    def _sql(self, text: str, **lists: int) -> str:
        """`text` in the driver's placeholder style, each {name} a list of n of them."""
        filled = text.format(**{name: ", ".join("?" * n) for name, n in lists.items()})
        return filled if self._style == "?" else filled.replace("?", self._style)

    def _record(self, cursor: Any, outcomes: Sequence[Outcome], now: dt.datetime) -> None:
        when = self._time(now)
        by_kind: dict[str, list[Outcome]] = {}
        for outcome in outcomes:
            by_kind.setdefault(outcome.kind, []).append(outcome)
        if sent := by_kind.get(SENT):
            self._deliver(cursor, sent, when)
        rows: dict[str, Callable[[Outcome], tuple[Any, ...]]] = {
            SENT: lambda o: (when, o.reply, o.digest_id),
            RETRY: lambda o: (o.reply, self._time(now + o.delay), o.digest_id),
            MAYBE: lambda o: (o.reply, self._time(now + o.delay), when, o.digest_id),
            FAILED: lambda o: (o.reply, o.digest_id),
        }
        for kind, group in by_kind.items():
            cursor.executemany(self._sql(_MARK[kind]), [rows[kind](o) for o in group])

    def _deliver(self, cursor: Any, sent: Sequence[Outcome], when: Any) -> None:
        """The DeliveryRows of the sent digests: each paper, to its subscriber."""
        ids = sorted({o.digest_id for o in sent})
        cursor.execute(self._sql(_SENT_ROWS, ids=len(ids)), ids)
        found = {digest_id: (subscriber, papers) for digest_id, subscriber, papers in cursor}
        deliveries = []
        for o in sent:
            if o.digest_id not in found:
                raise StoreError(f"outbox: digest {o.digest_id} does not exist")
            subscriber, paper_ids_json = found[o.digest_id]
            deliveries += [
                (subscriber, paper_id, o.digest_id, when) for paper_id in json.loads(paper_ids_json)
            ]
        if deliveries:
            cursor.executemany(self._sql(_DELIVER), deliveries)

    def _not_held(self, cursor: Any, held: Collection[int]) -> frozenset[int]:
        ids = sorted(held)
        cursor.execute(self._sql(_NOT_HELD, ids=len(ids)), [*ids, self.owner.host, self.owner.pid])
        return frozenset(int(digest_id) for (digest_id,) in cursor)

    def _claim(
        self, cursor: Any, now: dt.datetime, limit: int, lease: dt.timedelta, skip: Collection[int]
    ) -> list[OutboxItem]:
        excluded = sorted(skip)
        where = " AND d.id NOT IN ({ids})" if excluded else ""
        due = self._sql(_DUE.replace("{skip}", where), ids=len(excluded)) + self._lock
        cursor.execute(due, [self._time(now), *excluded, limit])
        items = [
            OutboxItem(int(i), r, s, bytes(m), int(a), mid, bool(maybe))
            for i, r, s, m, a, mid, maybe in cursor.fetchall()
        ]
        if items:
            me, until = self.owner, self._time(now + lease)
            cursor.executemany(
                self._sql(_LEASE), [(until, me.host, me.pid, me.started, i.id) for i in items]
            )
        return items


def settle(
    engine: Engine,
    outcomes: Sequence[Outcome],
    now: dt.datetime,
    *,
    claim: int = 0,
    lease: dt.timedelta = DEFAULT_LEASE,
    skip: Collection[int] = (),
    owner: Owner | None = None,
    held: Collection[int] = (),
) -> Settled:
    """Settler.settle on a connection of its own, for one call."""
    settler = Settler(engine, owner)
    try:
        return settler.settle(outcomes, now, claim=claim, lease=lease, skip=skip, held=held)
    finally:
        settler.close()


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
    return settle(engine, [], now, claim=limit, lease=lease, skip=skip, owner=owner).claimed


def mark_sent(engine: Engine, digest_id: int, reply: str, now: dt.datetime) -> None:
    """The server accepted the digest: mark it sent and record its papers as delivered,
    all in one transaction."""
    settle(engine, [Outcome(digest_id, SENT, reply)], now)


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
    owner), in one transaction. Returns the claimed digests."""
    outcomes = [Outcome(digest_id, SENT, reply) for digest_id, reply in sent]
    return settle(engine, outcomes, now, claim=limit, lease=lease, skip=skip, owner=owner).claimed


def mark_retry(
    engine: Engine, digest_id: int, reply: str, now: dt.datetime, delay: dt.timedelta
) -> None:
    """A transient failure: count the attempt, keep it pending, due again after `delay`."""
    settle(engine, [Outcome(digest_id, RETRY, reply, delay)], now)


def mark_maybe_sent(
    engine: Engine, digest_id: int, reply: str, now: dt.datetime, delay: dt.timedelta
) -> None:
    """The message went out whole but its final reply never came: it may have been
    delivered. Record when (``maybe_sent_at``), count the attempt, keep it pending and
    due again only after `delay`; delivery.py resends such a digest at most once."""
    settle(engine, [Outcome(digest_id, MAYBE, reply, delay)], now)


def mark_failed(engine: Engine, digest_id: int, reply: str, now: dt.datetime) -> None:
    """A permanent failure: the digest will never be sent; `reply` says why.

    `now` is part of the contract (a failed_at column may come); nothing stores it yet."""
    settle(engine, [Outcome(digest_id, FAILED, reply)], now)


def _describe(outcomes: Sequence[Outcome]) -> str:
    """What recording `outcomes` is, for an error message."""
    if len(outcomes) != 1:
        return f"record {len(outcomes)} outcomes" if outcomes else "claim due digests"
    o = outcomes[0]
    doing = {SENT: "sent", RETRY: "for retry", MAYBE: "maybe delivered", FAILED: "failed"}
    return f"mark digest {o.digest_id} {doing[o.kind]}"
