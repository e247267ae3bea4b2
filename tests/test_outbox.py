"""The outbox state machine on a real SQLite file (migrated by store.migrate)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import time

import pytest
from sqlalchemy import text
from sqlmodel import Session, select

from digest.errors import StoreError
from digest.models import DeliveryRow, DigestRow
from digest.store import claims, leases, outbox, owner
from digest.store.engine import mask_url
from tests.backends import Backend, refuse_inserts
from tests.smtpd_helpers import SENDER, T0, add_digests, build_message, new_outbox, recipients

MINUTE = dt.timedelta(minutes=1)
SECOND = dt.timedelta(seconds=1)


def add(engine: object, subscriber: str, slot: dt.datetime, papers: list[str]) -> int | None:
    return outbox.add_digest(
        engine,
        subscriber=subscriber,
        slot=slot,
        recipient=subscriber,
        sender=SENDER,
        message_id=f"<{slot:%Y%m%d}.{subscriber}>",
        subject="Papers digest",
        paper_ids=papers,
        message=build_message(subscriber, slot),
        now=slot,
    )


def get(engine: object, digest_id: int) -> DigestRow:
    with Session(engine) as session:
        row = session.get(DigestRow, digest_id)
        assert row is not None
        return row


def deliveries(engine: object) -> list[tuple[str, str, int]]:
    with Session(engine) as session:
        found = session.exec(select(DeliveryRow)).all()
        return sorted((d.subscriber, d.paper_id, d.digest_id) for d in found)


def test_add_digest_is_idempotent_on_subscriber_and_slot(backend: Backend) -> None:
    engine = new_outbox(backend)
    first = add(engine, "ada@example.org", T0, ["2401.00001"])
    assert first is not None
    assert add(engine, "ada@example.org", T0, ["2401.99999"]) is None
    # the same slot given in another timezone is the same instant: still a duplicate
    berlin = T0.astimezone(dt.timezone(dt.timedelta(hours=1)))
    assert add(engine, "ada@example.org", berlin, ["2401.99999"]) is None
    other_slot = add(engine, "ada@example.org", T0 + dt.timedelta(days=1), [])
    other_person = add(engine, "bob@example.org", T0, [])
    assert other_slot not in (None, first) and other_person not in (None, first, other_slot)
    assert outbox.outbox_counts(engine) == {"pending": 3, "sent": 0, "failed": 0, "cancelled": 0}
    row = get(engine, first)
    assert json.loads(row.paper_ids_json) == ["2401.00001"]  # the first one stays


def test_stored_message_bytes_come_back_exactly(backend: Backend) -> None:
    engine = new_outbox(backend)
    message = build_message("ada@example.org") + b"\r\n\x00\xff binary tail"
    digest_id = outbox.add_digest(
        engine,
        subscriber="ada@example.org",
        slot=T0,
        recipient="ada@example.org",
        sender=SENDER,
        message_id="<x@y>",
        subject="s",
        paper_ids=[],
        message=message,
        now=T0,
    )
    assert digest_id is not None
    (item,) = claims.claim_due(engine, T0, 10)
    assert item.message == message and item.id == digest_id and item.message_id == "<x@y>"


def test_claim_due_takes_due_rows_and_leases_them(backend: Backend) -> None:
    engine = new_outbox(backend)
    ids = add_digests(engine, recipients(5))
    later = list(ids.values())[4]
    claims.mark_retry(engine, later, "451 later", T0, 10 * MINUTE)  # due at T0 + 10 min
    claimed = claims.claim_due(engine, T0, 3, lease=5 * MINUTE)
    assert [c.id for c in claimed] == list(ids.values())[:3]
    assert all(c.attempts == 0 and c.sender == SENDER for c in claimed)
    # leased: a second claim (another process) does not see them
    again = claims.claim_due(engine, T0, 10, lease=5 * MINUTE)
    assert [c.id for c in again] == [list(ids.values())[3]]
    assert claims.claim_due(engine, T0 + 4 * MINUTE, 10) == []
    # after the lease the first three are due again; the retried one after its delay
    expired = claims.claim_due(engine, T0 + 6 * MINUTE, 10)
    assert sorted(c.id for c in expired) == sorted(list(ids.values())[:4])
    (retry,) = claims.claim_due(engine, T0 + 10 * MINUTE, 10)
    assert retry.id == later and retry.attempts == 1


def test_release_makes_claimed_rows_due_at_once(backend: Backend) -> None:
    engine = new_outbox(backend)
    ids = add_digests(engine, recipients(3))
    claimed = claims.claim_due(engine, T0, 10)
    assert claims.claim_due(engine, T0, 10) == []
    leases.release(engine, [c.id for c in claimed[:2]])
    assert sorted(c.id for c in claims.claim_due(engine, T0, 10)) == sorted(list(ids.values())[:2])


def test_sent_and_failed_rows_are_never_claimed(backend: Backend) -> None:
    engine = new_outbox(backend)
    ids = list(add_digests(engine, recipients(3)).values())
    claims.mark_sent(engine, ids[0], "250 ok", T0)
    claims.mark_failed(engine, ids[1], "550 no such user", T0)
    assert [c.id for c in claims.claim_due(engine, T0 + dt.timedelta(days=9), 10)] == [ids[2]]
    # a late retry or failure does not resurrect a sent digest
    claims.mark_retry(engine, ids[0], "451", T0, MINUTE)
    claims.mark_failed(engine, ids[0], "554", T0)
    assert get(engine, ids[0]).status == "sent"
    failed = get(engine, ids[1])
    assert failed.status == "failed" and failed.last_reply == "550 no such user"
    assert outbox.outbox_counts(engine) == {"pending": 1, "sent": 1, "failed": 1, "cancelled": 0}


def test_mark_sent_records_every_paper_as_delivered(backend: Backend) -> None:
    engine = new_outbox(backend)
    digest_id = add(engine, "ada@example.org", T0, ["2401.00001", "2401.00002"])
    assert digest_id is not None
    assert deliveries(engine) == []
    claims.mark_sent(engine, digest_id, "250 2.0.0 queued", T0 + MINUTE)
    row = get(engine, digest_id)
    assert row.status == "sent" and row.last_reply == "250 2.0.0 queued"
    assert row.sent_at is not None and row.sent_at.replace(tzinfo=dt.UTC) == T0 + MINUTE
    assert deliveries(engine) == [
        ("ada@example.org", "2401.00001", digest_id),
        ("ada@example.org", "2401.00002", digest_id),
    ]


def test_mark_sent_is_atomic_when_a_delivery_cannot_be_written(backend: Backend) -> None:
    engine = new_outbox(backend)
    digest_id = add(engine, "ada@example.org", T0, ["2401.00001", "2401.00002", "2401.00003"])
    assert digest_id is not None
    # the database refuses the second paper's delivery row
    refuse_inserts(engine, "deliveries", "disk says no", when="NEW.paper_id = '2401.00002'")
    shown = re.escape(mask_url(engine.url))
    # SQLite: "IntegrityError: disk says no"; PostgreSQL: "RaiseException: disk says no"
    expected = rf"cannot mark digest {digest_id} sent on {shown}: \w+: disk says no"
    with pytest.raises(StoreError, match=expected):
        claims.mark_sent(engine, digest_id, "250 ok", T0)
    row = get(engine, digest_id)
    assert row.status == "pending" and row.sent_at is None  # nothing half-done
    assert deliveries(engine) == []


def test_mark_retry_counts_attempts_and_delays(backend: Backend) -> None:
    engine = new_outbox(backend)
    (digest_id,) = add_digests(engine, ["ada@example.org"]).values()
    claims.mark_retry(engine, digest_id, "451 greylisted", T0, 5 * MINUTE)
    claims.mark_retry(engine, digest_id, "421 busy", T0 + 5 * MINUTE, 30 * MINUTE)
    row = get(engine, digest_id)
    assert row.status == "pending" and row.attempts == 2 and row.last_reply == "421 busy"
    assert row.next_attempt_at is not None
    assert row.next_attempt_at.replace(tzinfo=dt.UTC) == T0 + 35 * MINUTE


def test_unknown_digest_and_broken_database_are_store_errors(backend: Backend) -> None:
    engine = new_outbox(backend)
    with pytest.raises(StoreError, match="digest 42 does not exist"):
        claims.mark_sent(engine, 42, "250", T0)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE deliveries"))
        conn.execute(text("DROP TABLE digest_messages"))  # PostgreSQL enforces its foreign key
        conn.execute(text("DROP TABLE digests"))
    with pytest.raises(StoreError, match="outbox: cannot claim due digests"):
        claims.claim_due(engine, T0, 10)
    with pytest.raises(StoreError, match="outbox: cannot count digests"):
        outbox.outbox_counts(engine)


def test_a_paper_delivered_twice_keeps_its_first_delivery(backend: Backend) -> None:
    engine = new_outbox(backend)
    first = add(engine, "ada@example.org", T0, ["2401.00001"])
    second = add(engine, "ada@example.org", T0 + dt.timedelta(days=1), ["2401.00001", "2401.7"])
    assert first is not None and second is not None
    claims.mark_sent(engine, first, "250 ok", T0)
    claims.mark_sent(engine, second, "250 ok", T0 + dt.timedelta(days=1))
    assert deliveries(engine) == [
        ("ada@example.org", "2401.00001", first),
        ("ada@example.org", "2401.7", second),
    ]
    assert outbox.outbox_counts(engine) == {"pending": 0, "sent": 2, "failed": 0, "cancelled": 0}


def test_mark_sent_and_claim_is_one_transaction(backend: Backend) -> None:
    engine = new_outbox(backend)
    ids = list(add_digests(engine, recipients(6)).values())
    first = claims.claim_due(engine, T0, 2)
    assert [c.id for c in first] == ids[:2]
    following = claims.mark_sent_and_claim(
        engine, [(ids[0], "250 a"), (ids[1], "250 b")], T0, 2, 5 * MINUTE, skip=[ids[2]]
    )
    assert [c.id for c in following] == ids[3:5]  # skipped the one the caller is sending
    assert [get(engine, i).status for i in ids[:2]] == ["sent", "sent"]
    assert get(engine, ids[1]).last_reply == "250 b"
    assert {d[2] for d in deliveries(engine)} == set(ids[:2])
    assert following[0].recipient == recipients(6)[3]
    assert b"Hello " + recipients(6)[3].encode() in following[0].message  # its own bytes

    # the next sent digest cannot record its papers
    refuse_inserts(engine, "deliveries", "disk says no")
    with pytest.raises(StoreError, match=r"cannot mark digest \d+ sent.*disk says no"):
        claims.mark_sent_and_claim(engine, [(ids[3], "250")], T0, 5, 5 * MINUTE)
    assert get(engine, ids[3]).status == "pending"
    # nothing was claimed either: the rows never leased are still due at once
    assert [c.id for c in claims.claim_due(engine, T0, 10)] == [ids[2], ids[5]]


def test_add_digests_writes_digests_and_handled_slots_in_one_transaction(backend: Backend) -> None:
    from digest.models import SubscriberRow

    engine = new_outbox(backend)
    slot = T0.replace(hour=8)
    assert add(engine, "ada@example.org", slot, ["p0"]) is not None

    messages = {who: build_message(who, slot) for who in ("ada@example.org", "bob@example.org")}

    def digest(subscriber: str) -> outbox.NewDigest:
        return outbox.NewDigest(
            subscriber,
            slot,
            subscriber,
            SENDER,
            f"<{subscriber}>",
            "s",
            ("p1",),
            messages.get(subscriber, b"x"),
        )

    handled: list[tuple[str, dt.datetime | None]] = [
        ("ada@example.org", slot),
        ("bob@example.org", slot),
        ("eve@example.org", None),
    ]
    ids = outbox.add_digests(
        engine, [digest("ada@example.org"), digest("bob@example.org")], now=T0, handled=handled
    )
    assert ids[0] is None and ids[1] is not None  # ada's slot already had its digest
    with Session(engine) as session:
        states = {row.email: row for row in session.exec(select(SubscriberRow))}
        bob = session.get(DigestRow, ids[1])
        assert bob is not None and bob.message == messages["bob@example.org"]
    assert states["bob@example.org"].last_slot == slot
    assert states["eve@example.org"].last_slot is None
    assert states["eve@example.org"].first_seen_at == T0

    # a failure in the middle writes nothing: neither digests nor slots
    broken = outbox.NewDigest(
        "carl@example.org",
        slot,
        "carl@example.org",
        None,  # type: ignore[arg-type]  # no envelope sender: NOT NULL refuses it
        "<c>",
        "s",
        ("p1",),
        b"x",
    )
    with pytest.raises(StoreError):
        outbox.add_digests(
            engine,
            [digest("dan@example.org"), broken],
            now=T0,
            handled=[("dan@example.org", slot), ("carl@example.org", slot)],
        )
    with Session(engine) as session:
        assert session.get(SubscriberRow, "dan@example.org") is None
        subscribers = set(session.exec(select(DigestRow.subscriber)))
    assert subscribers == {"ada@example.org", "bob@example.org"}


def test_cancel_pending_cancels_only_the_pending_digests_of_those_people(backend: Backend) -> None:
    engine = new_outbox(backend)
    people = recipients(4)
    ids = add_digests(engine, people)
    later = add_digests(engine, people[:1], slot=T0 + dt.timedelta(days=1))
    claims.mark_sent(engine, ids[people[0]], "250 ok", T0)  # already sent: stays sent
    cancelled = outbox.cancel_pending(engine, [people[0], people[1]], "unsubscribed", T0)
    assert cancelled == 2  # people[0]'s later digest and people[1]'s
    assert get(engine, ids[people[0]]).status == "sent"
    for digest_id in (later[people[0]], ids[people[1]]):
        row = get(engine, digest_id)
        assert row.status == "cancelled"  # kept for the record, with when and why
        assert row.last_reply == "cancelled 2026-03-02 07:00:00 UTC: unsubscribed"
    # never claimed, whenever the drain comes
    claimed = claims.claim_due(engine, T0 + dt.timedelta(days=30), 10)
    assert sorted(c.recipient for c in claimed) == people[2:]
    assert outbox.outbox_counts(engine) == {"pending": 2, "sent": 1, "failed": 0, "cancelled": 2}
    assert outbox.cancel_pending(engine, [people[1]], "again", T0) == 0  # nothing pending left


def test_cancel_pending_except_spares_the_file_and_the_alerts(backend: Backend) -> None:
    engine = new_outbox(backend)
    people = recipients(700)  # more than one IN (...) chunk
    add_digests(engine, people, papers=0)
    add_digests(engine, ["alert:admin@example.org"], papers=0)
    cancelled = outbox.cancel_pending_except(engine, set(people[:100]), "left the file", T0)
    assert cancelled == 600
    assert outbox.outbox_counts(engine)["pending"] == 101  # the 100 kept and the alert
    still = {c.recipient for c in claims.claim_due(engine, T0, 1000)}
    assert still == {*people[:100], "alert:admin@example.org"}


def test_a_dead_owners_leases_are_taken_over_at_once_and_only_those(backend: Backend) -> None:
    engine = new_outbox(backend)
    ids = list(add_digests(engine, recipients(5)).values())
    here = owner.this_process()
    sleeper = subprocess.Popen(["sleep", "60"])  # a live process of this host
    try:
        alive = owner.Owner(here.host, sleeper.pid, owner.start_time(sleeper.pid) or "")
        doomed = subprocess.Popen(["sleep", "60"])
        dead = owner.Owner(here.host, doomed.pid, owner.start_time(doomed.pid) or "")
        reused = owner.Owner(here.host, sleeper.pid, "1:1")  # its pid, an older process
        elsewhere = owner.Owner("another-host", 1, "")
        for who in (here, alive, dead, reused, elsewhere):
            assert len(claims.claim_due(engine, T0, 1, lease=10 * MINUTE, owner=who)) == 1
        # the pid now runs a younger process than the one that took the lease: gone
        assert leases.take_over_dead_leases(engine, T0) == 1
        assert [c.id for c in claims.claim_due(engine, T0, 10)] == [ids[3]]
        doomed.kill()
        doomed.wait()
        assert leases.take_over_dead_leases(engine, T0 + MINUTE) == 1  # the killed one
        assert [c.id for c in claims.claim_due(engine, T0 + MINUTE, 10)] == [ids[2]]
        assert leases.take_over_dead_leases(engine, T0 + MINUTE) == 0  # ours now, and alive
        # the other host's lease and the live ones run out as leases do
        later = claims.claim_due(engine, T0 + 11 * MINUTE, 10)
        assert sorted(c.id for c in later) == sorted(ids)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_zombie_owner_is_gone(backend: Backend) -> None:
    engine = new_outbox(backend)
    add_digests(engine, recipients(1))
    child = subprocess.Popen(["sleep", "60"])
    try:
        held = owner.Owner(owner.this_process().host, child.pid, owner.start_time(child.pid) or "")
        claims.claim_due(engine, T0, 1, lease=10 * MINUTE, owner=held)
        child.kill()  # killed but not reaped: a zombie until wait()
        deadline = time.monotonic() + 10
        while owner.start_time(child.pid) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert leases.take_over_dead_leases(engine, T0) == 1
    finally:
        child.wait()


def test_renewed_leases_stay_invisible_and_outcomes_clear_them(backend: Backend) -> None:
    engine = new_outbox(backend)
    ids = list(add_digests(engine, recipients(3)).values())
    claimed = claims.claim_due(engine, T0, 3, lease=MINUTE)
    assert leases.renew_leases(engine, [c.id for c in claimed], T0 + 50 * SECOND, MINUTE) == 3
    assert claims.claim_due(engine, T0 + 100 * SECOND, 10) == []  # renewed to T0 + 110 s
    someone = owner.Owner("another-host", 7, "")
    assert leases.renew_leases(engine, ids, T0, MINUTE, owner=someone) == 0  # not theirs
    claims.mark_sent(engine, ids[0], "250", T0)
    claims.mark_retry(engine, ids[1], "451", T0, 5 * MINUTE)
    for digest_id in ids[:2]:
        row = get(engine, digest_id)
        assert (row.lease_host, row.lease_pid, row.lease_started) == (None, None, None)
    row = get(engine, ids[2])
    assert (row.lease_host, row.lease_pid) == (owner.this_process().host, os.getpid())
    assert leases.renew_leases(engine, ids[:2], T0, MINUTE) == 0  # done: nothing to renew


def test_pending_says_how_many_and_when_they_are_due(backend: Backend) -> None:
    engine = new_outbox(backend)
    assert outbox.pending(engine, T0) == outbox.Pending(0, None, None)
    ids = list(add_digests(engine, recipients(3)).values())
    assert outbox.pending(engine, T0) == outbox.Pending(3, None, None)  # all due now
    claims.mark_retry(engine, ids[0], "451", T0, MINUTE)
    claims.mark_retry(engine, ids[1], "451", T0, 30 * MINUTE)
    assert outbox.pending(engine, T0) == outbox.Pending(3, None, T0 + 30 * MINUTE)
    claims.mark_sent(engine, ids[2], "250", T0)
    assert outbox.pending(engine, T0) == outbox.Pending(2, T0 + MINUTE, T0 + 30 * MINUTE)
