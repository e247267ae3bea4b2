"""Claims: taking due digests to send and recording what came of each (the drain's hot path).

Owns the sending side of the outbox's state machine (outbox.py): claiming due rows
(``FOR UPDATE SKIP LOCKED`` plus a lease on PostgreSQL, so several processes can drain
one outbox; on SQLite, whose writers take turns, no row locks) and
recording each outcome: sent (with the DeliveryRows, in the same transaction, so a paper
counts as delivered only when its digest is sent), retry, maybe sent, failed.

A drain does it in group commits: a `Settler` holds one connection for the whole drain
and each `settle` is ONE transaction that records every outcome the drain's workers
gathered meanwhile, tells which claimed digests it must not send any more (cancelled
meanwhile, or leased by another process now), and claims the next batch. On SQLite its
few statements are plain SQL written here and run through the driver, each ONCE per
transaction with all its rows in one JSON array (json_each): no ORM, no statement
compiled per message, no Python loop over rows. `try_settle` is the same transaction
when it need not wait for SQLite's write lock (None otherwise, and on PostgreSQL): what
a drain can run on its event loop.
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
from digest.models import DigestRow
from digest.records import as_utc
from digest.store import pgsettle
from digest.store.engine import SQLITE_BUSY_TIMEOUT_MS, describe_error, mask_url
from digest.store.outbox import FAILED, PENDING, SENT, OutboxItem
from digest.store.owner import Owner, this_process

# how long a claimed row stays invisible to others when the caller names no lease;
# drain_outbox passes its transport's much shorter claim_lease
DEFAULT_LEASE = dt.timedelta(minutes=10)
RETRY, MAYBE = "retry", "maybe"  # an Outcome's kinds besides SENT and FAILED
KINDS = (SENT, RETRY, MAYBE, FAILED)
_SQLITE_BUSY = 5  # the primary result code under SQLITE_BUSY_RECOVERY, _SNAPSHOT, ...


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
class Ask:
    """What a settle does after recording the outcomes: tell which of the digests the
    caller `held` (claimed, not started) it must drop, then claim up to `claim` due
    digests (never one in `skip` or `held`), each leased until ``now + lease``."""

    claim: int = 0
    lease: dt.timedelta = DEFAULT_LEASE
    skip: Collection[int] = ()
    held: Collection[int] = ()


@dataclass(frozen=True, slots=True)
class Settled:
    """What `settle` claimed, and which of the digests the caller holds it must not send
    (`gone`: cancelled, sent or failed meanwhile, or leased by another process now)."""

    claimed: list[OutboxItem]
    gone: frozenset[int] = frozenset()


_NO_LEASE = "lease_host = NULL, lease_pid = NULL, lease_started = NULL"
# The SQLite statements, each run ONCE per settle with all its rows: the ids and rows
# travel as one JSON array (json_each), so the text never changes with the number of
# rows (one prepared statement each) and SQLite does the loop, not Python. A retry,
# maybe or failure changes only a pending row (a digest cancelled meanwhile stays
# cancelled); a sent one is recorded as sent whatever happened meanwhile (it was sent);
# every outcome clears the row's lease. `o` is one [id, reply, due] of the JSON array.
_IDS = "(SELECT value FROM json_each(?))"
_REPLY, _DUE_AGAIN = "json_extract(o.value, '$[1]')", "json_extract(o.value, '$[2]')"
_ROW = "FROM json_each(?) AS o WHERE digests.id = json_extract(o.value, '$[0]')"
# (the unary + keeps SQLite from walking every pending row of the status index for it)
_ONLY_PENDING = f"AND +status = '{PENDING}'"
_MARK = {
    SENT: f"UPDATE digests SET status = '{SENT}', sent_at = ?, last_reply = {_REPLY}, "
    f"next_attempt_at = NULL, {_NO_LEASE} {_ROW}",
    RETRY: f"UPDATE digests SET attempts = attempts + 1, last_reply = {_REPLY}, "
    f"next_attempt_at = {_DUE_AGAIN}, {_NO_LEASE} {_ROW} {_ONLY_PENDING}",
    MAYBE: f"UPDATE digests SET attempts = attempts + 1, last_reply = {_REPLY}, "
    f"next_attempt_at = {_DUE_AGAIN}, maybe_sent_at = ?, {_NO_LEASE} {_ROW} {_ONLY_PENDING}",
    FAILED: f"UPDATE digests SET status = '{FAILED}', attempts = attempts + 1, "
    f"last_reply = {_REPLY}, next_attempt_at = NULL, {_NO_LEASE} {_ROW} {_ONLY_PENDING}",
}
# the sent digests' papers, delivered to their subscribers, from the rows themselves
# (keep the first delivery of a paper sent again: elsewhere a repeat is an error)
_DELIVER = (
    "INSERT INTO deliveries (subscriber, paper_id, digest_id, delivered_at) "
    "SELECT d.subscriber, p.value, d.id, ? FROM digests d, json_each(d.paper_ids_json) p "
    f"WHERE d.id IN {_IDS} ON CONFLICT DO NOTHING"
)
_MISSING = "SELECT value FROM json_each(?) WHERE value NOT IN (SELECT id FROM digests)"
_NOT_HELD = (
    f"SELECT id FROM digests WHERE id IN {_IDS} AND (status <> '{PENDING}' "
    "OR lease_pid IS NULL OR lease_host <> ? OR lease_pid <> ?)"
)
# OutboxItem's fields, in order; ix_digests_pending walks the pending rows in id order
# (SQLite's status index does too: equal keys in rowid order)
_DUE = (
    "SELECT d.id, d.recipient, d.sender, m.message, d.attempts, d.message_id, "
    "d.maybe_sent_at IS NOT NULL FROM digests d JOIN digest_messages m ON m.digest_id = d.id "
    f"WHERE d.status = '{PENDING}' AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= ?) "
    f"AND d.id NOT IN {_IDS} ORDER BY d.id LIMIT ?"
)
_LEASE = (
    "UPDATE digests SET next_attempt_at = ?, lease_host = ?, lease_pid = ?, lease_started = ? "
    f"WHERE id IN {_IDS}"
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
        # a time as the driver takes it for these columns (SQLite: SQLAlchemy's text form)
        column_type = DigestRow.__table__.c.sent_at.type  # type: ignore[attr-defined]  # SQLModel types no __table__
        self._time: Callable[[Any], Any] = column_type.dialect_impl(dialect).bind_processor(
            dialect
        ) or (lambda value: value)
        self._raw: Any = None  # the pool's DBAPI connection, while open
        self._waits = True  # SQLite: its busy timeout is the engine's (else 0: try_settle)
        # SQLite's data_version at this connection's last settle: while no other connection
        # commits it stays the same, and what the caller holds is still pending and its own
        # (checked then, or claimed then): the check (`_not_held`) is skipped
        self._version: int | None = None

    def close(self) -> None:
        """Give the connection back to the pool (as it came: waiting for locks)."""
        raw, self._raw = self._raw, None
        if raw is not None:
            try:
                self._wait_for_locks(raw, True)
            finally:
                raw.close()

    def settle(self, outcomes: Sequence[Outcome], now: dt.datetime, ask: Ask = Ask()) -> Settled:
        """ONE transaction: record every outcome, tell which of the digests the caller
        holds (``ask.held``: claimed, not started) it must drop, then claim up to
        ``ask.claim`` due digests (oldest first, with their messages; never one in
        ``ask.skip`` or ``ask.held``), each leased to this settler's owner until
        ``now + ask.lease``.

        After the lease, or at once when the owner on this host is gone (leases.py), a
        claimed row is due again."""
        settled = self._settle(outcomes, now, ask, wait=True)
        assert settled is not None  # only a settle that does not wait gives up
        return settled

    def try_settle(
        self, outcomes: Sequence[Outcome], now: dt.datetime, ask: Ask = Ask()
    ) -> Settled | None:
        """`settle` if it never has to wait: on SQLite when no other connection holds the
        write lock (the lock is asked for without a busy timeout: what is left to do
        is CPU work and the WAL's writes, a fraction of a millisecond), so an event
        loop can run it inline. None, with nothing done, when another connection holds
        the lock, and always on PostgreSQL (every statement waits for the server): then
        `settle`, on a thread."""
        if self._begin is None:
            return None
        return self._settle(outcomes, now, ask, wait=False)

    def _settle(
        self, outcomes: Sequence[Outcome], now: dt.datetime, ask: Ask, *, wait: bool
    ) -> Settled | None:
        unknown = {o.kind for o in outcomes} - set(KINDS)
        if unknown:
            raise ValueError(f"outbox: no such outcome {sorted(unknown)}")
        now = as_utc(now)
        what = _describe(outcomes)
        try:
            if self._raw is None:  # data_version is per connection: check the first time
                self._raw, self._waits, self._version = self.engine.raw_connection(), True, None
            if self._begin is None:  # PostgreSQL: two round trips (pgsettle.py)
                connection = self._raw.driver_connection
                return Settled(*pgsettle.settle(connection, self.owner, outcomes, now, ask))
            self._wait_for_locks(self._raw, wait)
            cursor = self._raw.cursor()
            try:
                try:
                    cursor.execute(self._begin)  # SQLite: the write lock at BEGIN
                except self.engine.dialect.loaded_dbapi.OperationalError as e:
                    if not wait and _busy(e):
                        return None  # another connection writes: nothing began
                    raise
                self._record(cursor, outcomes, now)
                gone: frozenset[int] = frozenset()
                version = cursor.execute("PRAGMA data_version").fetchone()[0]
                if ask.held and version != self._version:
                    what = "check the claimed digests"
                    gone = self._not_held(cursor, ask.held)
                claimed: list[OutboxItem] = []
                if ask.claim > 0:
                    what = "claim due digests"
                    claimed = self._claim(cursor, now, ask)
                self._raw.commit()
                self._version = version
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

    def _wait_for_locks(self, raw: Any, wait: bool) -> None:
        """SQLite: the connection's busy timeout, the engine's (wait) or none."""
        if self._begin is not None and wait != self._waits:
            timeout = SQLITE_BUSY_TIMEOUT_MS if wait else 0
            raw.cursor().execute(f"PRAGMA busy_timeout = {timeout}")
            self._waits = wait

    def _abandon(self) -> None:
        """Roll back and drop the connection (it may be broken): the next settle opens
        another."""
        raw, self._raw = self._raw, None
        self._version = None
        if raw is None:
            return
        try:
            raw.rollback()
            self._wait_for_locks(raw, True)  # back to the pool as it came
        except self.engine.dialect.loaded_dbapi.Error:
            raw.invalidate()  # unusable: the pool must not hand it out again
        raw.close()

    def _record(self, cursor: Any, outcomes: Sequence[Outcome], now: dt.datetime) -> None:
        """Each kind of outcome in ONE statement; a sent digest's papers in another."""
        when = self._time(now)
        by_kind: dict[str, list[Outcome]] = {}
        for outcome in outcomes:
            by_kind.setdefault(outcome.kind, []).append(outcome)
        for kind, group in by_kind.items():
            if kind in (RETRY, MAYBE):
                rows = [[o.digest_id, o.reply, self._time(now + o.delay)] for o in group]
            else:
                rows = [[o.digest_id, o.reply] for o in group]
            head = [when] if kind in (SENT, MAYBE) else []
            cursor.execute(_MARK[kind], [*head, json.dumps(rows)])
            if kind == SENT:
                ids = json.dumps(sorted({o.digest_id for o in group}))
                if cursor.rowcount < len({o.digest_id for o in group}):
                    missing = cursor.execute(_MISSING, [ids]).fetchone()
                    raise StoreError(f"outbox: digest {missing[0]} does not exist")
                cursor.execute(_DELIVER, [when, ids])

    def _not_held(self, cursor: Any, held: Collection[int]) -> frozenset[int]:
        ids = json.dumps(sorted(held))
        cursor.execute(_NOT_HELD, [ids, self.owner.host, self.owner.pid])
        return frozenset(int(digest_id) for (digest_id,) in cursor)

    def _claim(self, cursor: Any, now: dt.datetime, ask: Ask) -> list[OutboxItem]:
        """Up to ``ask.claim`` due digests, none in ``ask.skip`` or ``ask.held``, leased."""
        skip = json.dumps(sorted({*ask.skip, *ask.held}))
        cursor.execute(_DUE, [self._time(now), skip, ask.claim])
        items = [
            OutboxItem(int(i), r, s, bytes(m), int(a), mid, bool(maybe))
            for i, r, s, m, a, mid, maybe in cursor.fetchall()
        ]
        if items:
            me, until = self.owner, self._time(now + ask.lease)
            ids = json.dumps([i.id for i in items])
            cursor.execute(_LEASE, [until, me.host, me.pid, me.started, ids])
        return items


def settle(
    engine: Engine,
    outcomes: Sequence[Outcome],
    now: dt.datetime,
    ask: Ask = Ask(),
    owner: Owner | None = None,
) -> Settled:
    """Settler.settle on a connection of its own, for one call."""
    settler = Settler(engine, owner)
    try:
        return settler.settle(outcomes, now, ask)
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
    return settle(engine, [], now, Ask(claim=limit, lease=lease, skip=skip), owner).claimed


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
    return settle(engine, outcomes, now, Ask(claim=limit, lease=lease, skip=skip), owner).claimed


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


def _busy(error: Exception) -> bool:
    """SQLite's SQLITE_BUSY (any of its extended codes): another connection has the lock."""
    code = getattr(error, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == _SQLITE_BUSY


def _describe(outcomes: Sequence[Outcome]) -> str:
    """What recording `outcomes` is, for an error message."""
    if len(outcomes) != 1:
        return f"record {len(outcomes)} outcomes" if outcomes else "claim due digests"
    o = outcomes[0]
    doing = {SENT: "sent", RETRY: "for retry", MAYBE: "maybe delivered", FAILED: "failed"}
    return f"mark digest {o.digest_id} {doing[o.kind]}"
