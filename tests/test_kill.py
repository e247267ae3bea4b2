"""kill -9 in the middle of a drain: on the next run nothing is lost and at most the
messages in flight repeat, recognisably (same Message-ID)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from sqlmodel import Session, func, select

from digest import outbox
from digest.models import DeliveryRow, DigestRow
from tests.smtpd_helpers import SmtpServer, add_digests, new_outbox, recipients

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = 4
PEOPLE = 200


def driver(db: Path, port: int, rate: float, shift: float) -> list[str]:
    return [
        sys.executable, "-m", "tests.drain_driver",
        f"sqlite:///{db}", str(port), str(rate), str(CONCURRENCY), str(shift),
    ]  # fmt: skip


def test_kill_mid_batch_then_resume_repeats_at_most_the_in_flight(tmp_path: Path) -> None:
    engine = new_outbox(tmp_path)
    people = recipients(PEOPLE)
    add_digests(engine, people)
    db = tmp_path / "outbox.db"
    with SmtpServer() as server:
        received = server.handler.received
        first = subprocess.Popen(driver(db, server.port, 100.0, 0), cwd=REPO)
        deadline = time.monotonic() + 20
        while len(received) < 40 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.005)
        first.kill()  # SIGKILL: no cleanup, no final commit
        first.wait(10)
        assert first.returncode == -9
        at_kill = len(received)
        assert 40 <= at_kill < PEOPLE  # killed mid-batch
        assert outbox.outbox_counts(engine)["pending"] > 0

        # the next run (its clock past the lease the killed run held) finishes the job
        second = subprocess.run(
            driver(db, server.port, 1000.0, outbox.DEFAULT_LEASE.total_seconds() + 60),
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 0, second.stderr
        report = json.loads(second.stdout)
        assert report["pending"] == 0 and report["failed"] == 0

    copies = server.handler.by_recipient()
    assert set(copies) == set(people)  # nobody got none
    repeated = {who: got for who, got in copies.items() if len(got) > 1}
    assert len(repeated) <= CONCURRENCY  # at most the messages in flight at the kill
    assert all(len(got) == 2 for got in repeated.values())
    assert report["sent"] == PEOPLE - (at_kill - len(repeated))
    with Session(engine) as session:
        rows = {r.recipient: r for r in session.exec(select(DigestRow)).all()}
        delivered = session.exec(select(func.count()).select_from(DeliveryRow)).one()
    assert {r.status for r in rows.values()} == {"sent"}
    assert delivered == PEOPLE * 2
    for who, got in repeated.items():  # a repeat carries the digest's own Message-ID
        assert {g.parsed()["Message-ID"] for g in got} == {rows[who].message_id}
