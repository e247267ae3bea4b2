"""`digest run` as a real subprocess, against HFServer and a real aiosmtpd server.

Every test drives time with short "every Ns" schedules and a 1-second poll, never by
sleeping through real hours; every wait is bounded. The subprocess's stderr (its log)
is read in a thread so a test can wait for a line.
"""

from __future__ import annotations

import datetime as dt
import re
import signal
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import inspect
from sqlmodel import Session, col, select

from digest import store
from digest.models import DigestRow
from digest.records import as_utc
from digest.schedule import latest_slot, parse_schedule
from tests.backends import Backend
from tests.daemons import (
    WAIT,
    Daemon,
    digests_in,
    received_by,
    start,
    subscriber,
    utcnow,
    write_config,
)
from tests.hfserver import Fault, HFServer
from tests.smtpd_helpers import RecordingHandler, SmtpServer

pytestmark = pytest.mark.slow


def tables_in(url: str) -> list[str]:
    """The tables of the database at `url` (none: SQLite's file was never created)."""
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return []
    engine = store.open_engine(url)
    try:
        return inspect(engine).get_table_names()
    finally:
        engine.dispose()


def digest_rows(url: str) -> list[tuple[str, str]]:
    engine = store.open_engine(url)
    try:
        with Session(engine) as session:
            query = select(DigestRow.subscriber, DigestRow.status).order_by(col(DigestRow.id))
            return [tuple(row) for row in session.exec(query).all()]
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- tests


def test_a_slot_a_few_seconds_ahead_gets_exactly_one_digest(
    tmp_path: Path, backend: Backend, hf: HFServer, smtp: SmtpServer, run_daemon: list[Daemon]
) -> None:
    db = backend.url(migrated=False)
    config = write_config(tmp_path / "digest.toml", hf, smtp, [
        subscriber("ada@example.org", "every 2s"),
        subscriber("bob@example.org", "daily 03:00"),  # new: waits for its next slot
    ], db=db)
    daemon = start(run_daemon, config)
    sent = daemon.wait_for(r"drain: 1 sent")
    later = daemon.wait_for(r"planned 0 digests \(1 due", after=sent)  # later slots: nothing new
    daemon.wait_for(r"planned 0 digests \(1 due", after=later + 1)
    assert daemon.stop() == 0
    assert received_by(smtp) == {"ada@example.org": 1}
    (message,) = [r.parsed() for r in smtp.handler.received]
    assert message["To"].addresses[0].addr_spec == "ada@example.org"
    assert message["Message-ID"].startswith("<digest-")
    assert message.get_body(("plain",)) is not None
    summary = [line for line in daemon.lines if "stopped after" in line]
    assert len(summary) == 1
    assert re.search(r"\d+ polls \(0 failed\), 1 digest planned, 1 sent, 0 failed, 0 pending",
                     summary[0])


def test_sigterm_while_sending_exits_0_and_loses_nothing(
    tmp_path: Path, backend: Backend, hf: HFServer, run_daemon: list[Daemon]
) -> None:
    db = backend.url(migrated=False)
    people = [f"reader{i:02d}@example.org" for i in range(12)]
    handler = RecordingHandler(data_delay=0.25)  # 12 messages, 2 at a time: ~1.5 s of sending
    with SmtpServer(handler) as smtp:
        config = write_config(tmp_path / "digest.toml", hf, smtp,
                              [subscriber(p, "every 2s") for p in people], db=db)
        daemon = start(run_daemon, config)
        deadline = time.monotonic() + WAIT
        while not handler.received and time.monotonic() < deadline:
            time.sleep(0.02)
        assert handler.received, "nothing was sent:\n" + "\n".join(daemon.lines)
        assert daemon.stop() == 0
        first_run = len(handler.received)
        rows = digest_rows(db)
        assert len(rows) == len(people)
        sent = sum(status == "sent" for _, status in rows)
        assert sent == first_run  # every accepted message is marked sent, no more
        assert sent < len(people), "the stop came too late to test anything"
        assert {status for _, status in rows} <= {"sent", "pending"}
        assert sum("stopped after" in line for line in daemon.lines) == 1

        again = start(run_daemon, config)  # the rest goes out after a restart, once
        again.wait_for(r"drain: \d+ sent, 0 failed, 0 retried, 0 pending")
        assert again.stop() == 0
    assert received_by(smtp) == dict.fromkeys(people, 1)
    assert {status for _, status in digest_rows(db)} == {"sent"}


def test_a_bad_config_at_start_exits_2_naming_file_and_field(
    tmp_path: Path, backend: Backend, hf: HFServer, smtp: SmtpServer
) -> None:
    db = backend.url(migrated=False)
    config = write_config(tmp_path / "digest.toml", hf, smtp, [
        subscriber("ada@example.org", "every 2s").replace('"UTC"', '"Europe/Berln"')], db=db)
    daemon = Daemon(config)
    try:
        assert daemon.proc.wait(30) == 2
    finally:
        daemon.kill()
    assert daemon.count(r"digest\.toml:\d+: .*timezone.*Europe/Berln") == 1
    assert daemon.count(r"daemon started") == 0
    assert not tables_in(db)  # nothing created, not even the schema


def test_sigterm_during_a_slow_poll_stops_at_once_without_errors(
    tmp_path: Path, backend: Backend, hf: HFServer, smtp: SmtpServer, run_daemon: list[Daemon]
) -> None:
    db = backend.url(migrated=False)
    hf.add_fault("/api/", *[Fault(status=200, real_body=True, delay=20) for _ in range(4)])
    config = write_config(tmp_path / "digest.toml", hf, smtp,
                          [subscriber("ada@example.org", "daily 03:00")], lookback=0, db=db)
    daemon = start(run_daemon, config)
    deadline = time.monotonic() + WAIT
    while not hf.requests and time.monotonic() < deadline:
        time.sleep(0.02)
    assert hf.requests, "the daemon never polled"
    time.sleep(1.5)  # the scheduler's poll job fires meanwhile and waits for the same poll
    began = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - began < 10  # the poll is cancelled, not waited for
    assert daemon.count(r" ERROR |Traceback|raised an exception") == 0, "\n".join(daemon.lines)
    assert daemon.count(r"stopped after .*: 0 polls \(0 failed\)") == 1


def test_sighup_with_a_broken_file_keeps_the_old_config(
    tmp_path: Path, backend: Backend, hf: HFServer, smtp: SmtpServer, run_daemon: list[Daemon]
) -> None:
    db = backend.url(migrated=False)
    good = [subscriber("ada@example.org", "every 2s")]
    config = write_config(tmp_path / "digest.toml", hf, smtp, good, db=db)
    daemon = start(run_daemon, config)
    daemon.wait_for(r"drain: 1 sent")
    broken = config.read_text().replace('timezone = "UTC"', 'timezone = "Europe/Berln"')
    config.write_text(broken + subscriber("bob@example.org", "every 2s"))
    mark = len(daemon.lines)
    daemon.send(signal.SIGHUP)
    refused = daemon.lines[daemon.wait_for(r"reload .* refused", after=mark)]
    assert "Europe/Berln" in refused
    assert "digest.toml" in refused
    daemon.wait_for(r"poll: ", after=mark + 1)  # still running: polls go on
    daemon.wait_for(r"planned 0 digests", after=mark + 1)  # ... and so do ada's slots
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0
    assert received_by(smtp) == {"ada@example.org": 1}  # bob was never taken on


def test_sighup_adding_a_subscriber_schedules_them(
    tmp_path: Path, backend: Backend, hf: HFServer, smtp: SmtpServer, run_daemon: list[Daemon]
) -> None:
    db = backend.url(migrated=False)
    ada = subscriber("ada@example.org", "every 2s")
    config = write_config(tmp_path / "digest.toml", hf, smtp, [ada], db=db)
    daemon = start(run_daemon, config)
    daemon.wait_for(r"drain: 1 sent")
    write_config(config, hf, smtp, [ada, subscriber("bob@example.org", "every 3s")], db=db)
    mark = len(daemon.lines)
    daemon.send(signal.SIGHUP)
    daemon.wait_for(r"reloaded .*: 2 subscribers \(1 added, 0 removed, 0 changed\) in 2 slot",
                    after=mark)
    daemon.wait_for(r"drain: 1 sent", after=mark)
    assert daemon.stop() == 0
    assert received_by(smtp) == {"ada@example.org": 1, "bob@example.org": 1}


def test_missed_slot_two_days_ago_gets_one_catch_up_digest_and_restarts_send_nothing(
    tmp_path: Path, backend: Backend, hf: HFServer, smtp: SmtpServer, run_daemon: list[Daemon]
) -> None:
    db = backend.url(migrated=False)
    now = utcnow()
    hour_ago = now - dt.timedelta(hours=1)
    schedule = f"daily {hour_ago:%H:%M}"
    slot = latest_slot(parse_schedule(schedule), ZoneInfo("UTC"), now)
    assert slot is not None
    config = write_config(tmp_path / "digest.toml", hf, smtp,
                          [subscriber("ada@example.org", schedule)], poll="1h", db=db)
    engine = store.open_engine(db)
    store.migrate(engine)
    with Session(engine) as session:  # the daemon knew ada, and last ran two days ago
        store.save_subscriber_state(session, "ada@example.org",
                                    first_seen_at=now - dt.timedelta(days=10),
                                    last_slot=slot - dt.timedelta(days=2))
    engine.dispose()

    daemon = start(run_daemon, config)
    daemon.wait_for(r"catch-up: 1 digest due at start")
    daemon.wait_for(r"drain: 1 sent")
    assert daemon.stop() == 0
    for sig in (signal.SIGTERM, signal.SIGINT):  # Ctrl-C stops as cleanly as SIGTERM
        again = start(run_daemon, config)
        again.wait_for(r"catch-up: 0 digests due at start")
        assert again.stop(sig) == 0
        assert again.count(r"stopped after .* 0 digests planned, 0 sent") == 1
    assert received_by(smtp) == {"ada@example.org": 1}
    assert [as_utc(row.slot) for row in digests_in(db)] == [slot]


def test_failing_source_sends_one_alert_then_one_recovery_across_a_restart(
    tmp_path: Path, backend: Backend, hf: HFServer, smtp: SmtpServer, run_daemon: list[Daemon]
) -> None:
    db = backend.url(migrated=False)
    hf.add_fault("/api/", *[Fault(status=503) for _ in range(6)])  # 6 polls of 1 day fail
    config = write_config(tmp_path / "digest.toml", hf, smtp, [], lookback=0, extra=(
        '[alerts]\nemail = "admin@example.org"\nafter_failed_polls = 2\n'), db=db)
    daemon = start(run_daemon, config)
    alerted = daemon.wait_for(r"alert after 2 failed polls")
    daemon.wait_for(r"drain: 1 sent", after=alerted)
    assert daemon.stop() == 0
    # the counter and the "alert is out" flag are in the database: no second alert
    again = start(run_daemon, config)
    recovered = again.wait_for(r"recovery after \d+ failed polls")
    again.wait_for(r"poll: .* 0 failed", after=recovered + 1)  # polls go on working
    again.wait_for(r"drain: 1 sent", after=recovered)
    assert again.stop() == 0
    assert again.count(r"alert after") == 0 and again.count(r"recovery after") == 1
    messages = [r.parsed() for r in smtp.handler.received]
    assert [m["To"].addresses[0].addr_spec for m in messages] == ["admin@example.org"] * 2
    alert, recovery = messages
    assert "2 polls" in str(alert["Subject"])
    assert "503" in alert.get_body(("plain",)).get_content()
    assert "works again" in str(recovery["Subject"])


def test_sighup_removing_a_subscriber_cancels_their_pending_digest(
    tmp_path: Path, backend: Backend, hf: HFServer, run_daemon: list[Daemon]
) -> None:
    db = backend.url(migrated=False)
    handler = RecordingHandler(rcpt_script={"ada@example.org": ["451 4.7.1 try later"] * 9})
    with SmtpServer(handler) as smtp:
        ada, bob = (subscriber(f"{who}@example.org", "every 2s") for who in ("ada", "bob"))
        config = write_config(tmp_path / "digest.toml", hf, smtp, [ada, bob], poll="1h", db=db)
        daemon = start(run_daemon, config)
        daemon.wait_for(r"drain: 1 sent, 0 failed, 1 retried, 1 pending")  # ada waits a minute
        write_config(config, hf, smtp, [bob], poll="1h", db=db)
        mark = len(daemon.lines)
        daemon.send(signal.SIGHUP)
        daemon.wait_for(r"cancelled 1 pending digest of people no longer in .*digest.toml",
                        after=mark)
        daemon.wait_for(r"reloaded .*: 1 subscriber \(0 added, 1 removed", after=mark)
        assert daemon.stop() == 0
        assert daemon.count(r"stopped after .* 0 pending") == 1
    assert received_by(smtp) == {"bob@example.org": 1}
    assert sorted(digest_rows(db)) == [
        ("ada@example.org", "cancelled"),
        ("bob@example.org", "sent"),
    ]


def test_a_slot_that_passes_while_polls_fail_goes_out_once_they_recover(
    tmp_path: Path, backend: Backend, hf: HFServer, smtp: SmtpServer, run_daemon: list[Daemon]
) -> None:
    db = backend.url(migrated=False)
    hf.add_fault("/api/", *[Fault(status=503) for _ in range(10_000)])  # down until cleared
    config = write_config(tmp_path / "digest.toml", hf, smtp,
                          [subscriber("ada@example.org", "every 20s")], db=db)
    daemon = start(run_daemon, config)
    daemon.wait_for(r"poll: .* [1-9]\d* failed")
    held = daemon.wait_for(r"1 due slots wait for a poll that fetches their days", timeout=45)
    recovered_at = utcnow()
    hf.clear_faults()  # the source is back
    replanned = daemon.wait_for(r"planning 1 held slots again after a poll", after=held)
    daemon.wait_for(r"planned 1 digest \(", after=replanned)
    daemon.wait_for(r"drain: 1 sent", after=replanned)
    assert daemon.stop() == 0
    assert received_by(smtp) == {"ada@example.org": 1}
    assert daemon.count(r"planned 0 digests \(1 due, 1 empty") == 0  # never closed as empty
    (row,) = digests_in(db)
    # the slot that passed while the polls failed, not a later one
    assert as_utc(row.slot) <= recovered_at
    assert row.paper_ids_json != "[]"
