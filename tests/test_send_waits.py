"""What `digest send` waits for before it reports digests as staying pending, when other
processes share the outbox (PostgreSQL): their leases, and their claims not yet
committed. Real parts: PostgreSQL, aiosmtpd on 127.0.0.1, the drain itself; "the other
process" is a second connection doing what another drain's claim does, step by step.
"""

from __future__ import annotations

import asyncio
import datetime as dt

from sqlalchemy import text

from digest.mail.drain import DrainReport, drain_outbox
from digest.mail.smtp import SmtpTransport
from digest.store import claims, leases
from digest.store.owner import Owner
from tests.backends import Backend
from tests.smtpd_helpers import SmtpServer, add_digests, new_outbox, plain, recipients, rows

ELSEWHERE = Owner("another-host", 4242, "")  # the other process


def real_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def test_a_claim_in_flight_elsewhere_is_waited_for_not_reported_pending(
    postgresql_backend: Backend,
) -> None:
    """Was (CI, three `digest send` at once): another drain's claim had locked the rows
    (FOR UPDATE SKIP LOCKED) but not committed its leases, so this drain skipped them,
    saw no lease held elsewhere, and reported them "pending, due again in 15 min"
    (exit 1) while the other sent them. Now it waits for the claim, then the lease,
    sends nothing itself, and reports nothing pending."""
    engine = new_outbox(postgresql_backend)
    people = recipients(4)
    ids = add_digests(engine, people)

    async def go(port: int) -> tuple[DrainReport, list[bool]]:
        seen: list[bool] = []  # was the drain still waiting, at each step?
        with engine.connect() as other:
            other.begin()  # the other drain's claim, in flight
            other.execute(text("SELECT id FROM digests WHERE status = 'pending' FOR UPDATE"))
            async with SmtpTransport(plain(port, rate_per_second=0)) as transport:
                drained = asyncio.create_task(
                    drain_outbox(engine, transport, now=real_now,
                                 wait_for_others=dt.timedelta(seconds=60))
                )  # fmt: skip
                await asyncio.sleep(1.0)
                seen.append(not drained.done())
                other.execute(
                    text("UPDATE digests SET next_attempt_at = :until, lease_host = :host, "
                         "lease_pid = :pid, lease_started = :started WHERE status = 'pending'"),
                    {"until": real_now() + dt.timedelta(minutes=15), "host": ELSEWHERE.host,
                     "pid": ELSEWHERE.pid, "started": ELSEWHERE.started},
                )  # fmt: skip
                other.commit()  # its claim lands: leased to it for 15 minutes
                await asyncio.sleep(1.0)
                seen.append(not drained.done())
                outcomes = [claims.Outcome(i, claims.SENT, "250 ok") for i in ids.values()]
                await asyncio.to_thread(
                    claims.settle, engine, outcomes, real_now(), owner=ELSEWHERE
                )
                return await asyncio.wait_for(drained, 30), seen

    with SmtpServer() as server:
        report, seen = asyncio.run(go(server.port))
    assert seen == [True, True]  # waited through the claim in flight and the lease
    assert report == DrainReport(sent=0, pending=0)
    assert server.handler.received == []  # the other one sent them
    assert {r.status for r in rows(engine).values()} == {"sent"}


def test_digests_handed_back_elsewhere_are_sent_here(postgresql_backend: Backend) -> None:
    """The other process stops and hands back what it had claimed (due at once): this
    drain, waiting for it, sends them."""
    engine = new_outbox(postgresql_backend)
    people = recipients(3)
    add_digests(engine, people)
    claimed = claims.claim_due(engine, real_now(), 10, owner=ELSEWHERE)
    assert len(claimed) == 3

    async def go(port: int) -> DrainReport:
        async with SmtpTransport(plain(port, rate_per_second=0)) as transport:
            drained = asyncio.create_task(
                drain_outbox(engine, transport, now=real_now,
                             wait_for_others=dt.timedelta(seconds=60))
            )  # fmt: skip
            await asyncio.sleep(0.5)
            assert not drained.done()
            await asyncio.to_thread(leases.release, engine, [c.id for c in claimed], ELSEWHERE)
            return await asyncio.wait_for(drained, 30)

    with SmtpServer() as server:
        report = asyncio.run(go(server.port))
    assert report == DrainReport(sent=3, pending=0)
    assert sorted(m.rcpt_tos[0] for m in server.handler.received) == people
