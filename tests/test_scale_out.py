"""Several instances on one database, as real processes: `digest send` started three times
at once on an empty database, two `digest run` with slots due, one of two daemons killed
(SIGKILL) in the middle of a drain. Real parts: HFServer with real captures, aiosmtpd
recording every message, the CLI and daemon as subprocesses, PostgreSQL (and SQLite for
the three sends, where its writers take turns).

Every subscriber gets exactly one digest; only a message in flight at a kill may come
twice, and then with the same Message-ID. Every process that was not killed exits 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from digest.store import outbox
from tests.backends import Backend
from tests.configs import write_config
from tests.daemons import MATCH_ALL, Daemon, digests_in, subscriber
from tests.daemons import write_config as write_daemon_config
from tests.hfserver import HFServer
from tests.race_child import run_together
from tests.smtpd_helpers import RecordingHandler, SmtpServer
from tests.store_helpers import NOW

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
WAIT = 90.0  # seconds a whole run may take on a loaded machine


def people(n: int) -> list[str]:
    return [f"reader{i:02d}@example.org" for i in range(n)]


def env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def all_sent(url: str, readers: list[str]) -> bool:
    rows = digests_in(url)
    return sorted(r.subscriber for r in rows) == readers and {r.status for r in rows} == {"sent"}


def message_ids(handler: RecordingHandler) -> dict[str, list[str]]:
    """Each recipient's received Message-IDs, in arrival order."""
    found: dict[str, list[str]] = {}
    for received in handler.received:
        message = received.parsed()
        found.setdefault(message["To"].addresses[0].addr_spec, []).append(message["Message-ID"])
    return found


def test_three_sends_at_once_on_an_empty_database(
    tmp_path: Path, backend: Backend, hf: HFServer
) -> None:
    """Was (PostgreSQL): one exits 1 migrating, one exits 1 saving the listings."""
    readers = people(12)
    subscribers = "".join(
        f'\n[[subscribers]]\nemail = "{who}"\nschedule = "daily 00:00"\n'
        f"topics = [{{ name = \"All\", query = '{MATCH_ALL}' }}]\n"
        for who in readers
    )
    with SmtpServer(RecordingHandler(data_delay=0.01)) as smtp:
        mail = (
            f'transport = "smtp"\nsmtp = {{ host = "127.0.0.1", port = {smtp.port}, '
            f'security = "none", max_connections = 2, rate_per_second = 1000, retries = 0 }}'
        )
        config = write_config(
            tmp_path, hf.base_url, subscribers=subscribers, mail=mail,
            db=backend.url(migrated=False),
        )  # fmt: skip
        sends = [  # the real CLI, each released by one `go` line once its imports are done
            subprocess.Popen(
                [sys.executable, "-m", "tests.race_child", "cli", "send", "-c", str(config)],
                cwd=REPO,
                env=env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(3)
        ]
        outcomes = run_together(sends, WAIT)
        received = message_ids(smtp.handler)
    for code, out, err in outcomes:
        assert code == 0, f"exit {code}\nstdout: {out}\nstderr: {err}"
        assert "Traceback" not in err
    assert {who: len(ids) for who, ids in received.items()} == dict.fromkeys(readers, 1)
    rows = digests_in(backend.url(migrated=False))
    assert sorted(r.subscriber for r in rows) == readers  # one digest each, all three runs
    assert {r.status for r in rows} == {"sent"}


def test_two_drainers_share_a_large_outbox_and_send_each_digest_once(
    postgresql_backend: Backend,
) -> None:
    """Two processes running the daemon's drainer at once on 300 pending digests (many
    claim batches each: the claims walk ix_digests_pending, FOR UPDATE SKIP LOCKED):
    every digest sent exactly once, by one of them, its papers delivered once."""
    readers = [f"reader{i:03d}@example.org" for i in range(300)]
    url = postgresql_backend.url()
    engine = postgresql_backend.engine()
    papers = ("2401.00001", "2401.00002", "2401.00003")
    outbox.add_digests(engine, [
        outbox.NewDigest(who, NOW, who, "digest@example.org", f"<{i}.{who}>", "Digest", papers,
                         f"To: {who}\r\nMessage-ID: <{i}.{who}>\r\n\r\nPapers\r\n".encode())
        for i, who in enumerate(readers)
    ], now=NOW, handled=[(who, NOW) for who in readers])  # fmt: skip
    with SmtpServer(RecordingHandler(data_delay=0.005)) as smtp:
        drainers = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.race_child", url, "drain", str(smtp.port)],
                cwd=REPO, env=env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True,
            )
            for _ in range(2)
        ]  # fmt: skip
        outcomes = run_together(drainers, WAIT)
        received = message_ids(smtp.handler)
    for code, out, err in outcomes:
        assert code == 0, f"exit {code}\nstdout: {out}\nstderr: {err}"
    sent = [json.loads(out.splitlines()[-1])["sent"] for _, out, _ in outcomes]
    assert sum(sent) == len(readers) and min(sent) > 0, sent  # shared, none twice
    assert received == {who: [f"<{i}.{who}>"] for i, who in enumerate(readers)}
    assert {r.status for r in digests_in(url)} == {"sent"}
    with engine.connect() as conn:
        delivered = conn.execute(text("SELECT subscriber, paper_id FROM deliveries")).all()
    assert sorted(delivered) == sorted((who, p) for who in readers for p in papers)


def start_daemons(count: int, config: Path) -> list[Daemon]:
    daemons = [Daemon(config) for _ in range(count)]
    for daemon in daemons:
        daemon.wait_for(r"daemon started", timeout=WAIT)
    return daemons


def wait_until(check: Callable[[], bool], what: str, daemons: list[Daemon]) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    logs = "\n\n".join("\n".join(d.lines) for d in daemons)
    raise AssertionError(f"{what} not within {WAIT}s; logs:\n{logs}")


def describe(url: str) -> str:
    """The outbox, one digest a line, for a failure message."""
    return "\n".join(
        f"{r.id} {r.subscriber} {r.slot} {r.status} {r.attempts} {r.paper_ids_json}"
        for r in digests_in(url)
    )


def test_two_daemons_with_slots_due_send_each_digest_once(
    tmp_path: Path, postgresql_backend: Backend, hf: HFServer
) -> None:
    readers = people(16)
    url = postgresql_backend.url(migrated=False)
    with SmtpServer(RecordingHandler(data_delay=0.02)) as smtp:
        config = write_daemon_config(
            tmp_path / "digest.toml", hf, smtp, [subscriber(p, "every 2s") for p in readers],
            db=url,
        )  # fmt: skip
        daemons = start_daemons(2, config)
        try:
            wait_until(lambda: len(message_ids(smtp.handler)) == len(readers),
                       "a digest for every reader", daemons)  # fmt: skip
            # two more slots each: both daemons plan them and find nothing new
            for daemon in daemons:
                mark = len(daemon.lines)
                daemon.wait_for(r"planned 0 digests", after=mark, timeout=WAIT)
            codes = [daemon.stop() for daemon in daemons]
        finally:
            for daemon in daemons:
                daemon.kill()
        received = message_ids(smtp.handler)
    assert codes == [0, 0]
    assert {who: len(ids) for who, ids in received.items()} == dict.fromkeys(readers, 1)
    rows = digests_in(url)
    assert sorted(r.subscriber for r in rows) == readers
    assert {r.status for r in rows} == {"sent"}
    planned = [int(n) for d in daemons for n in _numbers(d, r"planned (\d+) digests?")]
    assert sum(planned) >= len(readers)  # planned by either: each written once all the same
    for daemon in daemons:
        assert daemon.count(r"Traceback| ERROR ") == 0, "\n".join(daemon.lines)


def _numbers(daemon: Daemon, pattern: str) -> list[str]:
    regex = re.compile(pattern)
    return [m.group(1) for line in daemon.lines if (m := regex.search(line))]


def test_one_of_two_daemons_killed_mid_drain_loses_nothing(
    tmp_path: Path, postgresql_backend: Backend, hf: HFServer
) -> None:
    readers = people(40)
    url = postgresql_backend.url(migrated=False)
    pool = 2  # max_connections: the most messages one daemon has in flight
    handler = RecordingHandler(data_delay=0.15)  # 40 messages, 2 + 2 at a time: ~1.5 s
    with SmtpServer(handler) as smtp:
        config = write_daemon_config(
            tmp_path / "digest.toml", hf, smtp, [subscriber(p, "every 2s") for p in readers],
            db=url, max_connections=pool,
        )  # fmt: skip
        daemons = start_daemons(2, config)
        victim, survivor = daemons
        try:
            wait_until(lambda: len(handler.received) >= 6, "the first messages", daemons)
            victim.proc.send_signal(signal.SIGKILL)  # no cleanup, no final commit
            victim.proc.wait(10)
            at_kill = len(handler.received)
            assert at_kill < len(readers), "the kill came too late to test anything"
            # the survivor sends the rest, and what the victim had leased once its lease ends
            try:
                wait_until(lambda: all_sent(url, readers), "every digest sent", daemons)
            except AssertionError as e:
                raise AssertionError(f"{e}\noutbox:\n{describe(url)}") from None
            assert survivor.stop() == 0
        finally:
            for daemon in daemons:
                daemon.kill()
        received = message_ids(handler)
    assert victim.proc.returncode == -signal.SIGKILL
    assert set(received) == set(readers)
    repeated = {who: ids for who, ids in received.items() if len(ids) > 1}
    assert len(repeated) <= pool, repeated  # only what the killed daemon had in flight
    for ids in repeated.values():
        assert len(set(ids)) == 1, ids  # a repeat is recognisable: the same Message-ID
    rows = digests_in(url)
    assert sorted(r.subscriber for r in rows) == readers
    assert {r.status for r in rows} == {"sent"}
    assert Counter(len(ids) for ids in received.values())[1] >= len(readers) - pool
