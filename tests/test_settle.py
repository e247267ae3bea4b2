"""One group commit (claims.Settler.settle) with every kind of outcome at once, on both
backends: PostgreSQL runs it as one pipelined transaction of array statements
(store/pgsettle.py), SQLite as the portable statements; both must record the same."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine
from sqlmodel import Session, select

from digest.models import DeliveryRow, DigestRow
from digest.store import claims, outbox
from digest.store.engine import SQLITE_BUSY_TIMEOUT_MS
from digest.store.owner import Owner
from tests.backends import Backend
from tests.smtpd_helpers import T0, add_digests, new_outbox, recipients

MINUTE = dt.timedelta(minutes=1)
ME = Owner("here", 101, "t0")
OTHER = Owner("here", 202, "t1")


def test_one_settle_records_all_four_outcomes_drops_the_gone_and_claims(backend: Backend) -> None:
    engine = new_outbox(backend)
    people = recipients(9)
    ids = list(add_digests(engine, people, papers=2).values())
    settler = claims.Settler(engine, ME)
    try:
        first = settler.settle([], T0, claims.Ask(claim=7, lease=5 * MINUTE))
        assert [i.id for i in first.claimed] == ids[:7]
        # held, not started: ids[4] is cancelled meanwhile, ids[5] taken by another
        # process (its lease ran out and it claimed it), ids[6] still ours
        outbox.cancel_pending(engine, [people[4]], "unsubscribed", T0)
        taken = claims.claim_due(engine, T0 + 6 * MINUTE, 1, owner=OTHER, skip=[ids[6]])
        assert [i.id for i in taken] == [ids[0]]  # oldest expired lease first
        taken = claims.claim_due(engine, T0 + 6 * MINUTE, 1, owner=OTHER, skip=[*ids[:5], ids[6]])
        assert [i.id for i in taken] == [ids[5]]
        outcomes = [
            claims.Outcome(ids[0], outbox.SENT, "250 a"),  # sent though another holds it now
            claims.Outcome(ids[1], claims.RETRY, "451 later", 5 * MINUTE),
            claims.Outcome(ids[2], claims.MAYBE, "timed out", 60 * MINUTE),
            claims.Outcome(ids[3], outbox.FAILED, "550 no such user"),
        ]
        now = T0 + 7 * MINUTE
        ask = claims.Ask(claim=5, lease=5 * MINUTE, held=ids[4:7])
        settled = settler.settle(outcomes, now, ask)
    finally:
        settler.close()
    assert settled.gone == frozenset({ids[4], ids[5]})
    assert [i.id for i in settled.claimed] == [ids[7], ids[8]]  # never a held one
    assert settled.claimed[0].recipient == people[7] and not settled.claimed[0].maybe_sent
    with Session(engine) as session:
        rows = {r.id: r for r in session.exec(select(DigestRow)).all()}
        delivered = sorted((d.subscriber, d.digest_id) for d in session.exec(select(DeliveryRow)))
    sent, retry, maybe, failed = (rows[i] for i in ids[:4])
    assert sent.status == "sent" and sent.last_reply == "250 a" and sent.lease_pid is None
    assert sent.sent_at is not None and sent.sent_at.replace(tzinfo=dt.UTC) == now
    assert delivered == [(people[0], ids[0])] * 2  # its two papers
    assert retry.status == "pending" and retry.attempts == 1 and retry.lease_pid is None
    assert retry.next_attempt_at is not None
    assert retry.next_attempt_at.replace(tzinfo=dt.UTC) == now + 5 * MINUTE
    assert maybe.status == "pending" and maybe.attempts == 1 and maybe.maybe_sent_at is not None
    assert maybe.maybe_sent_at.replace(tzinfo=dt.UTC) == now
    assert maybe.next_attempt_at is not None
    assert maybe.next_attempt_at.replace(tzinfo=dt.UTC) == now + 60 * MINUTE
    assert failed.status == "failed" and failed.last_reply == "550 no such user"
    assert rows[ids[4]].status == "cancelled"
    assert (rows[ids[5]].lease_pid, rows[ids[6]].lease_pid) == (OTHER.pid, ME.pid)
    assert rows[ids[7]].lease_pid == ME.pid and rows[ids[7]].next_attempt_at is not None
    assert rows[ids[7]].next_attempt_at.replace(tzinfo=dt.UTC) == now + 5 * MINUTE


def test_try_settle_gives_up_with_nothing_done_while_another_connection_writes(
    backend: Backend,
) -> None:
    """What the drain runs inline: it never waits for a lock (nor for PostgreSQL at all);
    `settle` then waits, and the pooled connection goes back with its busy timeout."""
    engine = new_outbox(backend)
    ids = list(add_digests(engine, recipients(3)).values())
    settler = claims.Settler(engine, ME)
    sent = [claims.Outcome(ids[0], outbox.SENT, "250 a")]
    try:
        first = settler.try_settle([], T0, claims.Ask(claim=2, lease=5 * MINUTE))
        if not backend.is_sqlite:
            assert first is None  # every statement would wait for the server
            first = settler.settle([], T0, claims.Ask(claim=2, lease=5 * MINUTE))
        assert [i.id for i in first.claimed] == ids[:2]
        if backend.is_sqlite:
            other = engine.raw_connection()  # another writer holds SQLite's one write lock
            try:
                other.cursor().execute("BEGIN IMMEDIATE")
                assert settler.try_settle(sent, T0, claims.Ask(claim=1, held=[ids[1]])) is None
            finally:
                other.rollback()
                other.close()
            assert rows_by_id(engine)[ids[0]].status == "pending"  # nothing was done
        settled = settler.settle(sent, T0, claims.Ask(claim=1, held=[ids[1]]))
    finally:
        settler.close()
    assert [i.id for i in settled.claimed] == [ids[2]]
    assert rows_by_id(engine)[ids[0]].status == "sent"
    if backend.is_sqlite:  # a settler that last tried goes back waiting for locks again
        settler = claims.Settler(engine, ME)
        assert settler.try_settle([], T0) is not None
        settler.close()
        pooled = [engine.raw_connection() for _ in range(3)]  # every idle one, and then some
        try:
            timeouts = {raw.cursor().execute("PRAGMA busy_timeout").fetchone()[0] for raw in pooled}
        finally:
            for raw in pooled:
                raw.close()
        assert timeouts == {SQLITE_BUSY_TIMEOUT_MS}


def rows_by_id(engine: Engine) -> dict[int, DigestRow]:
    with Session(engine) as session:
        return {r.id: r for r in session.exec(select(DigestRow)).all() if r.id is not None}
