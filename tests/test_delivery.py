"""Delivery against real servers: aiosmtpd on 127.0.0.1, a real SQLite outbox, a real Maildir."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import mailbox
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from digest import store
from digest.config import MailConfig
from digest.errors import (
    StoreError,
)
from digest.mail.delivery import MaildirTransport, make_transport
from digest.mail.drain import MAX_ATTEMPTS, DrainReport, drain_outbox, retry_delay
from digest.mail.smtp import SmtpTransport
from digest.models import DeliveryRow, DigestRow
from digest.store import claims, outbox
from tests.backends import Backend, refuse_inserts
from tests.smtpd_helpers import (
    SENDER,
    T0,
    RecordingHandler,
    Sleeps,
    SmtpServer,
    add_digests,
    clock,
    drain,
    free_port,
    message_id_for,
    new_outbox,
    plain,
    recipients,
    rows,
)


def test_happy_path_sends_each_digest_once_and_records_deliveries(backend: Backend) -> None:
    engine = new_outbox(backend)
    people = recipients(5)
    add_digests(engine, people)
    with SmtpServer() as server:
        report = drain(engine, SmtpTransport(plain(server.port)))
    assert report == DrainReport(sent=5, failed=0, retried=0, pending=0)
    got = server.handler.by_recipient()
    assert sorted(got) == people
    for person in people:
        (item,) = got[person]
        assert item.mail_from == SENDER
        message = item.parsed()
        assert message["To"] == person
        assert message["Message-ID"] == message_id_for(person, T0)
        assert message["Subject"] == f"Papers digest for {person}"
        assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
        assert f"Hello {person}" in message.get_body(("plain",)).get_content()
    stored = rows(engine)
    assert {r.status for r in stored.values()} == {"sent"}
    assert all(r.last_reply and "queued" in r.last_reply for r in stored.values())
    with Session(engine) as session:
        deliveries = session.exec(select(DeliveryRow)).all()
    assert len(deliveries) == 10  # two papers per digest
    assert outbox.outbox_counts(engine) == {"pending": 0, "sent": 5, "failed": 0, "cancelled": 0}


def test_451_once_then_success(backend: Backend) -> None:
    engine = new_outbox(backend)
    add_digests(engine, ["ada@example.org"])
    handler = RecordingHandler(rcpt_script={"ada@example.org": ["451 4.7.1 greylisted"]})
    sleeps = Sleeps()
    with SmtpServer(handler) as server:
        report = drain(engine, SmtpTransport(plain(server.port, rate_per_second=0), sleep=sleeps))
    assert report == DrainReport(sent=1, pending=0)
    assert len(server.handler.received) == 1
    assert sleeps.waits == [1.0]  # one backoff before the second try


def test_550_for_one_recipient_fails_that_digest_and_the_batch_goes_on(backend: Backend) -> None:
    engine = new_outbox(backend)
    people = recipients(6)
    add_digests(engine, people)
    bad = people[2]
    handler = RecordingHandler(refuse={bad: "550 5.1.1 no such user"})
    with SmtpServer(handler) as server:
        report = drain(engine, SmtpTransport(plain(server.port, max_connections=2)))
    assert report == DrainReport(sent=5, failed=1, retried=0, pending=0)
    stored = rows(engine)
    assert stored[bad].status == "failed"
    assert "550 5.1.1 no such user" in str(stored[bad].last_reply)
    assert sorted(server.handler.by_recipient()) == sorted(set(people) - {bad})
    with Session(engine) as session:
        delivered = {d.subscriber for d in session.exec(select(DeliveryRow)).all()}
    assert delivered == set(people) - {bad}


def test_connection_dropped_mid_data_is_retried_and_delivered_once(backend: Backend) -> None:
    engine = new_outbox(backend)
    people = recipients(3)
    add_digests(engine, people)
    handler = RecordingHandler(drop_data=1)
    with SmtpServer(handler) as server:
        transport = SmtpTransport(plain(server.port, max_connections=1), sleep=Sleeps())
        report = drain(engine, transport)
        assert server.connections == 2  # the dropped connection was replaced, then reused
    assert handler.dropped == 1
    assert report.sent == 3
    assert {p: len(v) for p, v in handler.by_recipient().items()} == dict.fromkeys(people, 1)


def test_server_down_leaves_every_digest_pending(backend: Backend) -> None:
    engine = new_outbox(backend)
    add_digests(engine, recipients(10))
    sleeps = Sleeps()
    transport = SmtpTransport(plain(free_port(), max_connections=2, retries=2), sleep=sleeps)
    report = drain(engine, transport)
    assert report.sent == 0 and report.failed == 0
    assert report.pending == 10
    assert report.error is not None and "cannot connect to 127.0.0.1" in report.error
    assert report.retried <= 2  # only the messages in flight counted an attempt
    stored = rows(engine).values()
    assert {r.status for r in stored} == {"pending"}
    tried = [r for r in stored if r.attempts]
    assert all(r.next_attempt_at is not None for r in tried)
    # the untried ones are due again at once, not held by the lease
    assert len(claims.claim_due(engine, T0, 100)) == 10 - len(tried)


def test_transient_failures_give_up_after_max_attempts(backend: Backend) -> None:
    engine = new_outbox(backend)
    ids = add_digests(engine, ["ada@example.org"])
    with Session(engine) as session:
        row = session.get(DigestRow, ids["ada@example.org"])
        assert row is not None
        row.attempts = MAX_ATTEMPTS - 2
        session.add(row)
        session.commit()
    handler = RecordingHandler(refuse={"ada@example.org": "452 4.2.2 mailbox full"})
    with SmtpServer(handler) as server:
        config = plain(server.port, retries=0)
        first = drain(engine, SmtpTransport(config))
        later = T0 + retry_delay(MAX_ATTEMPTS - 1)
        assert first == DrainReport(retried=1, pending=1, first_due=later, last_due=later)
        row2 = rows(engine)["ada@example.org"]
        assert row2.next_attempt_at is not None
        assert row2.next_attempt_at.replace(tzinfo=dt.UTC) == later

        async def again() -> DrainReport:
            transport = SmtpTransport(config)
            async with transport:
                return await drain_outbox(engine, transport, now=lambda: later)

        second = asyncio.run(again())
    assert second == DrainReport(failed=1, pending=0)
    final = rows(engine)["ada@example.org"]
    assert final.status == "failed" and final.attempts == MAX_ATTEMPTS
    assert final.last_reply is not None and "452 4.2.2 mailbox full" in final.last_reply


def test_stop_finishes_in_flight_and_leaves_the_rest_due(backend: Backend) -> None:
    engine = new_outbox(backend)
    add_digests(engine, recipients(20))
    handler = RecordingHandler(data_delay=0.02)

    async def go(port: int) -> DrainReport:
        stop = asyncio.Event()
        transport = SmtpTransport(plain(port, max_connections=2, rate_per_second=0))

        async def stop_soon() -> None:
            while len(handler.received) < 4:
                await asyncio.sleep(0.005)
            stop.set()

        async with transport:
            stopper = asyncio.create_task(stop_soon())
            report = await drain_outbox(engine, transport, now=clock, stop=stop)
            await stopper
            return report

    with SmtpServer(handler) as server:
        report = asyncio.run(go(server.port))
    assert 4 <= report.sent <= 4 + 2
    assert report.sent == len(handler.received)  # everything accepted was marked sent
    assert report.pending == 20 - report.sent
    assert len(claims.claim_due(engine, T0, 100)) == report.pending  # released, due at once


def test_maildir_messages_land_as_files_a_maildir_reads_back(
    tmp_path: Path, backend: Backend
) -> None:
    engine = new_outbox(backend)
    people = recipients(3)
    add_digests(engine, people, linesep="\r\n")
    folder = tmp_path / "mail"
    transport = make_transport(MailConfig(maildir=folder))
    assert isinstance(transport, MaildirTransport)
    report = drain(engine, transport)
    assert report == DrainReport(sent=3, pending=0)
    files = sorted((folder / "new").iterdir())
    assert len(files) == 3
    stored = rows(engine)
    # the outbox keeps SMTP's CRLF; a Maildir file has the local line end, LF, and
    # nothing else of the bytes changes
    assert all(b"\r\n" in r.message for r in stored.values())
    on_disk = sorted(f.read_bytes() for f in files)
    assert all(b"\r" not in data for data in on_disk)
    assert on_disk == sorted(r.message.replace(b"\r\n", b"\n") for r in stored.values())
    box = mailbox.Maildir(folder, create=False)
    assert sorted(str(m["To"]) for m in box) == people
    assert all("\r" not in str(m["Subject"]) for m in box)
    assert all(
        json.loads(r.paper_ids_json) and r.last_reply and "maildir" in r.last_reply
        for r in stored.values()
    )


def test_a_stop_set_before_draining_sends_nothing(tmp_path: Path, backend: Backend) -> None:
    engine = new_outbox(backend)
    add_digests(engine, recipients(3))
    folder = tmp_path / "mail"

    async def go() -> DrainReport:
        stop = asyncio.Event()
        stop.set()
        async with MaildirTransport(folder) as transport:
            return await drain_outbox(engine, transport, now=clock, stop=stop)

    assert asyncio.run(go()) == DrainReport(pending=3)
    assert not folder.exists()  # not even the folder: nothing was sent


def test_a_database_failure_after_the_accept_raises_store_error_and_keeps_it_pending(
    backend: Backend,
) -> None:
    engine = new_outbox(backend)
    add_digests(engine, recipients(3))
    # the deliveries write fails: mark_sent cannot commit
    refuse_inserts(engine, "deliveries", "disk full")
    with SmtpServer() as server:
        config = plain(server.port, max_connections=1, rate_per_second=0)
        with pytest.raises(StoreError, match="disk full"):
            drain(engine, SmtpTransport(config))
    # the first accept failed to commit and nothing else was started: it stays pending and
    # repeats (at most the messages in flight)
    assert len(server.handler.received) == 1
    assert {r.status for r in rows(engine).values()} == {"pending"}  # so it will repeat


def test_maildir_in_an_existing_empty_folder_and_an_unwritable_one(
    tmp_path: Path, backend: Backend
) -> None:
    engine = new_outbox(backend)
    add_digests(engine, recipients(2))
    folder = tmp_path / "mail"
    folder.mkdir()  # made by hand, without tmp/ new/ cur/
    assert drain(engine, MaildirTransport(folder)) == DrainReport(sent=2, pending=0)
    assert len(mailbox.Maildir(folder, create=False)) == 2

    add_digests(engine, recipients(1), slot=T0 + dt.timedelta(days=1))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    report = drain(engine, MaildirTransport(blocker / "mail"))
    assert report.sent == 0 and report.pending == 1
    assert report.error is not None and f"maildir {blocker / 'mail'}: cannot create" in report.error


def test_claim_lease_is_one_message_not_a_retry_ladder(tmp_path: Path) -> None:
    fast = SmtpTransport(plain(2525, timeout=0.2, data_timeout=1, rate_per_second=100))
    assert fast.claim_lease == dt.timedelta(seconds=5)  # the floor
    # 30 s per step before the final dot (9 of them), 600 s for the final reply, and the
    # rate cap's wait for a pool of 4 at 10/s; the 3 retries are not in it (renewed)
    default = SmtpTransport(plain(2525))
    assert default.claim_lease == dt.timedelta(seconds=4 / 10 + 30 * 9 + 600)
    more_retries = SmtpTransport(plain(2525, retries=10))
    assert more_retries.claim_lease == default.claim_lease
    assert MaildirTransport(tmp_path).claim_lease == dt.timedelta(seconds=5)


def test_claim_batch_is_a_few_per_connection_and_a_second_at_the_rate_cap(tmp_path: Path) -> None:
    assert SmtpTransport(plain(2525, rate_per_second=0)).claim_batch == 4 * 8  # no cap
    assert SmtpTransport(plain(2525, max_connections=20, rate_per_second=0)).claim_batch == 64
    assert SmtpTransport(plain(2525, rate_per_second=10)).claim_batch == 10  # a second's worth
    assert SmtpTransport(plain(2525, rate_per_second=1)).claim_batch == 8  # 2 per connection
    assert MaildirTransport(tmp_path).claim_batch == 32


def test_a_drain_holds_at_most_one_claim_batch_of_leases(backend: Backend) -> None:
    engine = new_outbox(backend)
    add_digests(engine, recipients(30))
    handler = RecordingHandler(data_delay=0.03)
    leased: list[int] = []

    def count_leased() -> int:
        with Session(engine) as session:
            return len(
                session.exec(
                    select(DigestRow.id).where(
                        DigestRow.status == "pending", col(DigestRow.next_attempt_at) > T0
                    )
                ).all()
            )

    async def go(port: int) -> DrainReport:
        async def watch() -> None:
            while True:
                leased.append(count_leased())
                await asyncio.sleep(0.005)

        transport = SmtpTransport(plain(port, max_connections=3, rate_per_second=0))
        async with transport:
            watcher = asyncio.create_task(watch())
            try:
                return await drain_outbox(engine, transport, now=clock, batch=8)
            finally:
                watcher.cancel()

    with SmtpServer(handler) as server:
        report = asyncio.run(go(server.port))
    assert report == DrainReport(sent=30, pending=0)
    # claimed 8 at a time (not one per message), never more held than that: the rest
    # stays due for another process
    assert max(leased) == 8
    assert len(leased) > 20  # sampled all along the drain


def test_a_digest_cancelled_while_it_waits_in_a_claimed_batch_is_never_sent(
    backend: Backend,
) -> None:
    engine = new_outbox(backend)
    people = recipients(12)
    add_digests(engine, people)
    # claimed with the rest in one batch, cancelled while the first is being sent: their
    # turn comes some 0.9 s later (two connections, 0.3 s a message)
    later = people[8:]
    handler = RecordingHandler(data_delay=0.3)

    async def go(port: int) -> DrainReport:
        async def cancel_soon() -> int:
            while not handler.received:
                await asyncio.sleep(0.002)
            # from another connection and thread, as an unsubscribe or a reload does
            return await asyncio.to_thread(
                outbox.cancel_pending, engine, later, "unsubscribed", T0
            )

        transport = SmtpTransport(plain(port, max_connections=2, rate_per_second=0))
        async with transport:
            canceller = asyncio.create_task(cancel_soon())
            report = await drain_outbox(engine, transport, now=clock, batch=12)
            assert await canceller == len(later)
            return report

    with SmtpServer(handler) as server:
        report = asyncio.run(go(server.port))
    assert sorted(handler.by_recipient()) == people[:8]  # none of the cancelled ones
    assert report == DrainReport(sent=8, pending=0)
    stored = rows(engine)
    assert {stored[p].status for p in later} == {"cancelled"}
    assert {stored[p].status for p in people[:8]} == {"sent"}


def test_the_leases_of_claimed_digests_are_renewed_until_each_is_sent(backend: Backend) -> None:
    """One connection, six slow messages, all claimed at once with a 3 s lease: the last
    ones wait longer than the lease for their turn, and stay leased all along (renewed),
    so no other process could claim one of them meanwhile."""
    engine = new_outbox(backend)
    add_digests(engine, recipients(6))
    handler = RecordingHandler(data_delay=0.6)  # ~3.6 s in all

    def real_now() -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    samples: list[outbox.Pending] = []

    async def go(port: int) -> DrainReport:
        async def watch() -> None:
            while True:
                samples.append(await asyncio.to_thread(outbox.pending, engine, real_now()))
                await asyncio.sleep(0.05)

        transport = SmtpTransport(plain(port, max_connections=1, rate_per_second=0))
        async with transport:
            watcher = asyncio.create_task(watch())
            try:
                return await drain_outbox(
                    engine, transport, now=real_now, lease=dt.timedelta(seconds=3), batch=6
                )
            finally:
                watcher.cancel()

    with SmtpServer(handler) as server:
        report = asyncio.run(go(server.port))
    assert report == DrainReport(sent=6, pending=0)
    assert len({r.rcpt_tos[0] for r in handler.received}) == len(handler.received) == 6
    claimed = next(n for n, s in enumerate(samples) if s.first_due is not None)
    waiting = [s for s in samples[claimed:] if s.count]  # from the claim to the last sent
    assert len(waiting) > 20  # sampled all along the drain
    assert all(s.first_due is not None for s in waiting)  # never one due for another process


def test_a_group_commit_that_must_wait_for_another_writer_waits_off_the_event_loop(
    tmp_path: Path,
) -> None:
    """Group commits run inline only when SQLite's write lock is free: while another
    connection (a planner, a second `digest send`) holds it, the commit waits on the
    database thread and the loop goes on; then every digest is sent, once."""
    engine = store.open_engine(f"sqlite:///{tmp_path / 'outbox.db'}")
    store.migrate(engine)
    people = recipients(20)
    add_digests(engine, people)
    other = engine.raw_connection()

    async def go(server: SmtpServer) -> tuple[DrainReport, float]:
        loop = asyncio.get_running_loop()
        async with SmtpTransport(plain(server.port, max_connections=1, rate_per_second=0)) as t:
            drained = asyncio.create_task(drain_outbox(engine, t, now=clock))
            while not server.handler.received:  # the drain claimed and is sending
                await asyncio.sleep(0.001)
            other.cursor().execute("BEGIN IMMEDIATE")  # between two of its commits
            assert not drained.done() and len(server.handler.received) < len(people)
            try:
                last, gap = loop.time(), 0.0
                until = last + 1.0
                while loop.time() < until and not drained.done():
                    await asyncio.sleep(0.01)
                    gap, last = max(gap, loop.time() - last), loop.time()
            finally:
                other.rollback()
            return await drained, gap

    try:
        with SmtpServer() as server:
            report, gap = asyncio.run(go(server))
    finally:
        other.close()
    assert report.sent == len(people) and report.pending == 0
    assert sorted(m.rcpt_tos[0] for m in server.handler.received) == people
    assert gap < 0.5  # the loop was never stopped for the second the lock was held
