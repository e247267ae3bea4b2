"""One-click unsubscribe end to end: `digest run` with [web] as a real subprocess, a real
aiosmtpd relay, the URL read from what arrived, a real HTTP POST; then the next slots.
Also: the load of 500 one-click POSTs from a second process while the daemon sends.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from digest import store
from digest.store import recipients
from digest.web.tokens import Links
from tests.daemons import WAIT, Daemon, utcnow
from tests.hfserver import HFServer
from tests.smtpd_helpers import SmtpServer
from tests.web_daemon_helpers import (
    SECRET_ENV,
    messages_to,
    one_click_url,
    person,
    web_daemon_config,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
ADA, BOB = "ada@example.org", "bob@example.org"


@pytest.fixture
def daemons(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Daemon]]:
    for name, value in SECRET_ENV.items():  # the secret reaches the daemon as in production
        monkeypatch.setenv(name, value)
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.kill()


def wait_until(what: str, check: object, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def digests_of(db: Path, who: str) -> list[tuple[str, str, str]]:
    """(message_id, status, created_at) of each digest for `who`."""
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT message_id, status, created_at FROM digests WHERE subscriber = ? ORDER BY id",
            (who,),
        ).fetchall()


def suppressions(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT email, how FROM suppressions ORDER BY email").fetchall()


def test_one_click_from_the_received_header_stops_the_next_slots_for_that_person_only(
    tmp_path: Path, hf: HFServer, smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    config, _ = web_daemon_config(tmp_path, hf, smtp, [person(ADA), person(BOB)])
    daemon = Daemon(config)
    daemons.append(daemon)
    daemon.wait_for(r"web: listening on 127\.0\.0\.1:\d+")
    wait_until("both got a digest", lambda: messages_to(smtp, ADA) and messages_to(smtp, BOB))
    url = one_click_url(messages_to(smtp, ADA)[-1])
    db = tmp_path / "digest.db"

    # a GET first (a scanner, a preview): nothing changes, Ada's digests keep coming
    with httpx.Client(timeout=10, follow_redirects=False) as client:
        page = client.get(url)
        assert page.status_code == 200 and 'value="One-Click"' in page.text
        seen = len(messages_to(smtp, ADA))
        wait_until("Ada's next digest after the GET", lambda: len(messages_to(smtp, ADA)) > seen)
        assert suppressions(db) == []

        answer = client.post(url, data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200 and "location" not in answer.headers
    assert suppressions(db) == [(ADA, "one-click")]
    with sqlite3.connect(db) as conn:
        (suppressed_at,) = conn.execute("SELECT suppressed_at FROM suppressions").fetchone()
    ada_at_post = len(messages_to(smtp, ADA))
    bob_at_post = len(messages_to(smtp, BOB))

    # the next slots: Bob keeps getting his, Ada gets nothing planned after her click
    wait_until("three more for Bob", lambda: len(messages_to(smtp, BOB)) >= bob_at_post + 3)
    assert daemon.stop() == 0
    later = [d for d in digests_of(db, ADA) if d[2] > suppressed_at]
    assert later == []  # planning wrote nothing for her after the click
    arrived_after = messages_to(smtp, ADA)[ada_at_post:]
    assert len(arrived_after) <= 1  # at most the one that was on the wire at the click
    ids = {d[0]: d[2] for d in digests_of(db, ADA)}
    for message in arrived_after:
        assert ids[str(message["Message-ID"])] <= suppressed_at
    # what was still pending for her is cancelled, kept for the record, never sent
    assert {d[1] for d in digests_of(db, ADA)} <= {"sent", "cancelled"}
    assert any("ada@example.org unsubscribed (one-click)" in line for line in daemon.lines)


LOAD = 500
CLIENT = """
import asyncio, json, sys, time
import aiohttp

async def main(urls):
    results = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def one(url):
            async with session.post(url, data={"List-Unsubscribe": "One-Click"}) as r:
                await r.read()
                return r.status
        started = time.monotonic()
        results = await asyncio.gather(*(one(u) for u in urls), return_exceptions=True)
        seconds = time.monotonic() - started
    print(json.dumps({"statuses": [r if isinstance(r, int) else repr(r) for r in results],
                      "seconds": seconds}))

asyncio.run(main(json.load(sys.stdin)))
"""


def test_500_parallel_one_click_posts_from_another_process_while_the_daemon_sends(
    tmp_path: Path, hf: HFServer, smtp: SmtpServer, daemons: list[Daemon]
) -> None:
    crowd = [f"reader{i:03d}@example.org" for i in range(LOAD)]
    people = [person(ADA), person(BOB)] + [person(e, "weekly mon 06:00") for e in crowd]
    config, port = web_daemon_config(tmp_path, hf, smtp, people)
    # the crowd's link keys exist already (as after their first digest)
    engine = store.open_engine(f"sqlite:///{tmp_path / 'digest.db'}")
    store.migrate(engine)
    keys = recipients.ensure_recipients(engine, crowd, utcnow())
    engine.dispose()
    from digest.config import load_config

    links = Links(load_config(config, SECRET_ENV).web)  # type: ignore[arg-type]
    urls = [links.for_key(keys[e]).unsubscribe for e in crowd]
    assert all(u.startswith(f"http://127.0.0.1:{port}/u/") for u in urls)

    daemon = Daemon(config)
    daemons.append(daemon)
    daemon.wait_for(r"web: listening")
    wait_until("both got a digest", lambda: messages_to(smtp, ADA) and messages_to(smtp, BOB))
    before = {who: len(messages_to(smtp, who)) for who in (ADA, BOB)}

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    client = subprocess.run(
        [sys.executable, "-c", CLIENT], input=json.dumps(urls), capture_output=True,
        text=True, timeout=180, env=env,
    )  # fmt: skip
    assert client.returncode == 0, client.stderr
    result = json.loads(client.stdout)
    assert result["statuses"] == [200] * LOAD

    db = tmp_path / "digest.db"
    assert suppressions(db) == [(e, "one-click") for e in crowd]  # each exactly once
    for who in (ADA, BOB):  # the daemon kept sending to the others
        wait_until(f"{who} gets more", lambda w=who: len(messages_to(smtp, w)) >= before[w] + 2)
    assert daemon.stop() == 0
    logged = [line for line in daemon.lines if "unsubscribed (one-click)" in line]
    assert len(logged) == LOAD and len({line.split()[-3] for line in logged}) == LOAD
    assert suppressions(db) == [(e, "one-click") for e in crowd]
