"""kill -9 in the middle of `digest send`, through the real CLI in a subprocess: a rerun
right after it delivers everything (the leases of the dead process are taken over at
once, not after they run out), nothing is lost and at most the messages in flight repeat,
recognisably (same Message-ID). Real parts only: the fixture HTTP server playing
huggingface.co, aiosmtpd on 127.0.0.1 in this process, a SQLite file in tmp_path, and
(the kill between the server's 250 and the group commit) PostgreSQL too."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlmodel import Session, col, func, select

from digest import store
from digest.config import SmtpConfig
from digest.mail.smtp import SmtpTransport
from digest.models import DeliveryRow, DigestRow
from digest.store import outbox
from tests.backends import Backend
from tests.configs import write_config
from tests.hfserver import HFServer
from tests.smtpd_helpers import SmtpServer
from tests.testdata import HF

REPO = Path(__file__).resolve().parent.parent
CAPTURE = HF / "api-daily_papers-2025-10-01.json"
PEOPLE = 200
POOL = 4  # max_connections: the most messages in flight at any moment
RATE = 100.0  # messages/s: 200 digests take ~2 s, so the kill lands mid-batch


def people() -> list[str]:
    return [f"user{n:03d}@example.org" for n in range(PEOPLE)]


def write_kill_config(
    tmp_path: Path, base_url: str, smtp_port: int, db: str = "sqlite:///digest.db"
) -> Path:
    subscribers = "".join(
        f'\n[[subscribers]]\nemail = "{who}"\nschedule = "daily 00:00"\n'
        f"topics = [{{ name = \"Models\", query = 'model*' }}]\n"
        for who in people()
    )
    smtp = (
        f'host = "127.0.0.1", port = {smtp_port}, security = "none", max_connections = {POOL}, '
        f"rate_per_second = {RATE:g}, timeout = 2, retries = 0"
    )
    mail = f'transport = "smtp"\nsmtp = {{ {smtp} }}'
    return write_config(tmp_path, base_url, subscribers=subscribers, mail=mail, db=db)


def digest_send(config: Path) -> list[str]:
    return [sys.executable, "-m", "digest.cli", "send", "-c", str(config)]


def run_send(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        digest_send(config), cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=25
    )


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def leased_now(config: Path) -> int:
    """Pending digests a claim holds right now (invisible to a rerun until the lease ends)."""
    engine = store.open_engine(f"sqlite:///{config.parent / 'digest.db'}")
    try:
        with Session(engine) as session:
            return session.exec(
                select(func.count())
                .select_from(DigestRow)
                .where(
                    DigestRow.status == outbox.PENDING,
                    col(DigestRow.next_attempt_at) > dt.datetime.now(dt.UTC),
                )
            ).one()
    finally:
        engine.dispose()


def test_sigkill_mid_batch_then_an_immediate_rerun_delivers_everything(
    tmp_path: Path, hf_server: HFServer
) -> None:
    body = CAPTURE.read_bytes()
    today = dt.datetime.now(dt.UTC).date()
    for day in (today, today - dt.timedelta(days=1)):  # today's and yesterday's list
        hf_server.set_api_body(day, body)
    with SmtpServer() as server:
        config = write_kill_config(tmp_path, hf_server.base_url, server.port)
        smtp = SmtpConfig(
            host="127.0.0.1",
            port=server.port,
            security="none",
            max_connections=POOL,
            rate_per_second=RATE,
            timeout=2,
            retries=0,
        )
        lease = SmtpTransport(smtp).claim_lease.total_seconds()
        assert lease > 60  # the lease alone would hold the in-flight ones for minutes
        batch = SmtpTransport(smtp).claim_batch  # what a drain holds claimed at most
        assert POOL < batch < PEOPLE

        received = server.handler.received
        first = subprocess.Popen(
            digest_send(config), cwd=REPO, env=cli_env(),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while len(received) < 30 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.002)
        first.send_signal(signal.SIGKILL)  # no cleanup, no final commit
        _, err = first.communicate(timeout=10)
        assert first.returncode == -signal.SIGKILL, err
        at_kill = len(received)
        assert 30 <= at_kill < PEOPLE  # killed mid-batch, after some were accepted

        # what it held claimed (at most one claim batch) is leased, by a process that is
        # gone: the rerun right away takes those over and sends them with all the rest,
        # and says so
        held = leased_now(config)
        assert 0 < held <= batch
        second = run_send(config)
        assert second.returncode == 0, second.stderr
        assert second.stdout.splitlines()[-1].endswith("0 failed, 0 pending")
        digests = "digest" if held == 1 else "digests"
        assert f"took over {held} {digests} leased by a process of this host" in second.stderr

    copies = server.handler.by_recipient()
    assert set(copies) == set(people())  # nobody got none
    repeated = {who: got for who, got in copies.items() if len(got) > 1}
    assert len(repeated) <= POOL  # at most the messages in flight at the kill
    assert all(len(got) == 2 for got in repeated.values())
    engine = store.open_engine(f"sqlite:///{tmp_path / 'digest.db'}")
    with Session(engine) as session:
        rows = {r.recipient: r for r in session.exec(select(DigestRow)).all()}
        delivered = session.exec(select(func.count()).select_from(DeliveryRow)).one()
        per_digest = session.exec(select(func.count()).select_from(DeliveryRow).where(
            DeliveryRow.digest_id == next(iter(rows.values())).id)).one()  # fmt: skip
    engine.dispose()
    assert len(rows) == PEOPLE and {r.status for r in rows.values()} == {"sent"}
    assert per_digest > 0 and delivered == PEOPLE * per_digest  # every paper, once each
    for who, got in copies.items():  # each copy carries the digest's own Message-ID
        assert {g.parsed()["Message-ID"] for g in got} == {rows[who].message_id}


@contextmanager
def commits_blocked(backend: Backend, url: str) -> Iterator[Callable[[], dict[str, str]]]:
    """While inside, a drain's group commit cannot finish: SQLite's write lock held
    (BEGIN IMMEDIATE waits), or on PostgreSQL the deliveries table locked (its INSERT
    waits). Yields a reader of every digest's status by recipient, as committed."""
    if backend.is_sqlite:
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=20, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield lambda: dict(conn.execute("SELECT recipient, status FROM digests").fetchall())
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    engine = store.open_engine(url)
    try:
        with engine.connect() as conn, conn.begin():
            conn.exec_driver_sql("LOCK TABLE deliveries IN EXCLUSIVE MODE")
            query = "SELECT recipient, status FROM digests"
            yield lambda: {r: s for r, s in conn.exec_driver_sql(query).all()}
    finally:
        engine.dispose()


def test_a_kill_between_the_servers_250_and_the_group_commit_repeats_only_those(
    tmp_path: Path, hf_server: HFServer, backend: Backend
) -> None:
    """The group commit that records the accepted digests is held up (the database lock
    it waits for), the process killed with them accepted and not recorded: they stay
    pending, leased by a dead process; the rerun takes them over at once and sends them
    again, with the same Message-ID. Exactly those repeat, at most one per connection
    (a worker's next final dot waits for its last commit), and nothing is lost."""
    body = CAPTURE.read_bytes()
    today = dt.datetime.now(dt.UTC).date()
    for day in (today, today - dt.timedelta(days=1)):
        hf_server.set_api_body(day, body)
    url = backend.url(migrated=False)
    with SmtpServer() as server:
        config = write_kill_config(tmp_path, hf_server.base_url, server.port, db=url)
        received = server.handler.received
        first = subprocess.Popen(
            digest_send(config), cwd=REPO, env=cli_env(),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while len(received) < 20 and time.monotonic() < deadline and first.poll() is None:
                time.sleep(0.002)
            assert first.poll() is None and len(received) >= 20, "no drain to interrupt"
            with commits_blocked(backend, url) as statuses:
                settled_at, count = time.monotonic(), len(received)
                while time.monotonic() - settled_at < 1.0:  # until nothing more arrives
                    time.sleep(0.05)
                    if len(received) != count:
                        settled_at, count = time.monotonic(), len(received)
                assert first.poll() is None, "the send finished while its commits were held"
                first.send_signal(signal.SIGKILL)  # accepted, not recorded: no commit ever
                first.communicate(timeout=10)
                at_kill = statuses()
            got = {r.rcpt_tos[0] for r in received}
        finally:
            if first.poll() is None:
                first.kill()
                first.wait(10)
        assert first.returncode == -signal.SIGKILL
        accepted_not_recorded = {who for who in got if at_kill[who] == outbox.PENDING}
        assert 0 < len(accepted_not_recorded) <= POOL
        assert len(received) == len(got) < PEOPLE  # no repeat yet, and some left to send

        second = run_send(config)
        assert second.returncode == 0, second.stderr
        assert second.stdout.splitlines()[-1].endswith("0 failed, 0 pending")
        assert "took over" in second.stderr  # at once: the owner is gone from this host

    copies = server.handler.by_recipient()
    assert set(copies) == set(people())  # nothing lost
    repeated = {who for who, c in copies.items() if len(c) > 1}
    assert repeated == accepted_not_recorded  # exactly those, each twice
    assert all(len(copies[who]) == 2 for who in repeated)
    engine = store.open_engine(url)
    try:
        with Session(engine) as session:
            rows = {r.recipient: r for r in session.exec(select(DigestRow)).all()}
            delivered = session.exec(select(func.count()).select_from(DeliveryRow)).one()
            papers = sum(len(json.loads(r.paper_ids_json)) for r in rows.values())
    finally:
        engine.dispose()
    assert {r.status for r in rows.values()} == {"sent"} and len(rows) == PEOPLE
    assert delivered == papers  # every paper once, the repeats' included
    for who in repeated:
        assert {g.parsed()["Message-ID"] for g in copies[who]} == {rows[who].message_id}
