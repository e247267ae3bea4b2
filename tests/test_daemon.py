"""The daemon's pure parts and its alert state: slot trigger, grouping, alert state machine.

The daemon as a real subprocess is tests/test_daemon_process.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import json
import logging
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlmodel import Session, select

from digest import store
from digest.config import (
    AlertsConfig,
    Config,
    MailConfig,
    SourceConfig,
    Subscriber,
    load_config,
)
from digest.daemon import alerts
from digest.daemon.alerts import AlertAction, AlertState, step_alert
from digest.daemon.jobs import (
    QUIET_BUSY_SKIPS,
    SlotTrigger,
    Stats,
    diff_subscribers,
    format_uptime,
    group_subscribers,
    one_line,
    poll_jitter,
    slot_job_id,
)
from digest.errors import ConfigError, StoreError
from digest.models import DigestRow
from digest.records import as_utc
from digest.schedule import parse_schedule
from tests.backends import Backend

UTC = dt.UTC
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def at(*args: int, tz: dt.tzinfo = UTC) -> dt.datetime:
    return dt.datetime(*args, tzinfo=tz)


# --------------------------------------------------------------------------- SlotTrigger


def test_trigger_first_fire_is_the_next_slot_strictly_after_now() -> None:
    trigger = SlotTrigger(parse_schedule("daily 08:00"), BERLIN)
    now = at(2026, 6, 1, 5, 0)  # 07:00 Berlin (CEST)
    assert trigger.get_next_fire_time(None, now) == at(2026, 6, 1, 6, 0)
    exactly = at(2026, 6, 1, 6, 0)
    assert trigger.get_next_fire_time(None, exactly) == at(2026, 6, 2, 6, 0)


def test_trigger_follows_the_previous_fire() -> None:
    trigger = SlotTrigger(parse_schedule("weekly mon 08:00"), ZoneInfo("Asia/Tokyo"))
    previous = at(2026, 6, 7, 23, 0)  # Monday 08:00 in Tokyo is Sunday 23:00 UTC
    assert trigger.get_next_fire_time(previous, previous) == at(2026, 6, 14, 23, 0)


def test_trigger_keeps_our_dst_semantics_spring_forward() -> None:
    # 02:30 does not exist in Berlin on 2026-03-29: the slot is 03:30 CEST = 01:30 UTC
    trigger = SlotTrigger(parse_schedule("daily 02:30"), BERLIN)
    previous = at(2026, 3, 28, 1, 30)  # 02:30 CET
    fire = trigger.get_next_fire_time(previous, previous)
    assert fire == at(2026, 3, 29, 1, 30)
    assert fire.astimezone(BERLIN).hour == 3
    after = trigger.get_next_fire_time(fire, fire)
    assert after == at(2026, 3, 30, 0, 30)  # back to 02:30, now CEST


def test_trigger_keeps_our_dst_semantics_fall_back_fires_once() -> None:
    # 01:30 happens twice in New York on 2026-11-01: one slot, the first (EDT)
    trigger = SlotTrigger(parse_schedule("daily 01:30"), NEW_YORK)
    fires = []
    fire = trigger.get_next_fire_time(None, at(2026, 10, 31, 12, 0))
    for _ in range(3):
        assert fire is not None
        fires.append(fire)
        fire = trigger.get_next_fire_time(fire, fire)
    assert fires == [at(2026, 11, 1, 5, 30), at(2026, 11, 2, 6, 30), at(2026, 11, 3, 6, 30)]


def test_trigger_jumps_to_the_latest_missed_slot_after_a_sleep() -> None:
    trigger = SlotTrigger(parse_schedule("daily 08:00"), UTC)
    previous = at(2026, 6, 1, 8, 0)
    woke = at(2026, 6, 5, 9, 0)  # slept through four slots
    assert trigger.get_next_fire_time(previous, woke) == at(2026, 6, 5, 8, 0)
    # and from there the next one is in the future: APScheduler sees one missed run
    assert trigger.get_next_fire_time(at(2026, 6, 5, 8, 0), woke) == at(2026, 6, 6, 8, 0)


def test_trigger_with_an_every_schedule_fires_at_multiples_since_the_epoch() -> None:
    trigger = SlotTrigger(parse_schedule("every 5s"), BERLIN)
    now = at(2026, 6, 1, 5, 0, 3)
    first = trigger.get_next_fire_time(None, now)
    assert first == at(2026, 6, 1, 5, 0, 5)
    assert trigger.get_next_fire_time(first, first) == at(2026, 6, 1, 5, 0, 10)


def test_trigger_in_a_real_scheduler_sets_the_next_run_time() -> None:
    async def scenario() -> dt.datetime:
        scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone=UTC)
        scheduler.start()
        try:
            job = scheduler.add_job(_noop, SlotTrigger(parse_schedule("daily 08:00"), BERLIN))
            when: dt.datetime = job.next_run_time
            return when
        finally:
            scheduler.shutdown(wait=False)

    when = asyncio.run(scenario())
    local = when.astimezone(BERLIN)
    assert (local.hour, local.minute) == (8, 0)
    assert when > dt.datetime.now(UTC)
    assert when - dt.datetime.now(UTC) <= dt.timedelta(days=1)


async def _noop() -> None:
    return None


# --------------------------------------------------------------------------- grouping


def sub(email_addr: str, schedule: str = "daily 08:00", tz: str = "UTC") -> Subscriber:
    return Subscriber(email=email_addr, schedule=parse_schedule(schedule), timezone=tz)


def test_subscribers_sharing_schedule_and_zone_share_one_job() -> None:
    subscribers = [
        sub("a@x.org"),
        sub("b@x.org", tz="Europe/Berlin"),
        sub("c@x.org"),
        sub("d@x.org", schedule="weekly mon 08:00"),
        sub("e@x.org", tz="Europe/Berlin"),
    ]
    groups = group_subscribers(subscribers)
    assert {k: [s.email for s in v] for k, v in groups.items()} == {
        ("daily 08:00", "UTC"): ["a@x.org", "c@x.org"],
        ("daily 08:00", "Europe/Berlin"): ["b@x.org", "e@x.org"],
        ("weekly mon 08:00", "UTC"): ["d@x.org"],
    }
    assert slot_job_id(("daily 08:00", "UTC")) == "slot:UTC:daily 08:00"


def test_many_subscribers_few_jobs() -> None:
    zones = ["UTC", "Europe/Berlin", "Asia/Tokyo"]
    times = ["daily 07:00", "daily 08:00"]
    subscribers = [
        sub(f"u{i}@x.org", schedule=times[i % 2], tz=zones[i % 3]) for i in range(100_000)
    ]
    groups = group_subscribers(subscribers)
    assert len(groups) == 6
    assert sum(len(v) for v in groups.values()) == 100_000


def test_diff_subscribers() -> None:
    old = [sub("a@x.org"), sub("b@x.org"), sub("c@x.org")]
    new = [sub("a@x.org"), sub("b@x.org", tz="Asia/Tokyo"), sub("d@x.org")]
    change = diff_subscribers(old, new)
    assert change.added == ("d@x.org",)
    assert change.removed == ("c@x.org",)
    assert change.changed == ("b@x.org",)


def test_poll_jitter_is_a_tenth_capped_at_five_minutes() -> None:
    assert poll_jitter(dt.timedelta(seconds=1)) == pytest.approx(0.1)
    assert poll_jitter(dt.timedelta(minutes=30)) == 180
    assert poll_jitter(dt.timedelta(hours=6)) == 300


def test_summary_is_one_line() -> None:
    stats = Stats(polls=12, failed_polls=2, planned=3, sent=3, failed=0)
    line = stats.summary(3725.0, pending=0)
    assert "\n" not in line
    assert line == ("stopped after 1h02m05s: 12 polls (2 failed), 3 digests planned, "
                    "3 sent, 0 failed, 0 pending")
    assert format_uptime(4.25) == "4.2s"
    assert format_uptime(61) == "1m01s"


# --------------------------------------------------------------------------- alerts


def test_alert_once_after_n_failures_then_one_recovery() -> None:
    state = AlertState()
    t = at(2026, 6, 1, 8, 0)
    actions = []
    for i in range(6):
        state, action = step_alert(state, ok=False, errors=[f"e{i}"], threshold=3,
                                   now=t + dt.timedelta(minutes=i))
        actions.append(action)
    assert actions == [None, None, AlertAction.ALERT, None, None, None]
    assert state.failed_polls == 6
    assert state.alert_out
    assert state.first_failed_at == t
    assert state.last_errors == ("e0", "e1", "e2", "e3", "e4", "e5")
    state, action = step_alert(state, ok=True, errors=[], threshold=3, now=t)
    assert action is AlertAction.RECOVERY
    assert state == AlertState()
    state, action = step_alert(state, ok=True, errors=[], threshold=3, now=t)
    assert action is None


def test_a_success_in_between_resets_the_counter() -> None:
    state = AlertState()
    t = at(2026, 6, 1, 8, 0)
    for ok in (False, False, True, False, False):
        state, action = step_alert(state, ok=ok, errors=["x"], threshold=3, now=t)
        assert action is None
    assert state.failed_polls == 2


def test_threshold_zero_turns_alerts_off_and_errors_are_capped() -> None:
    state = AlertState()
    t = at(2026, 6, 1, 8, 0)
    for i in range(30):
        state, action = step_alert(state, ok=False, errors=[f"e{i}"], threshold=0, now=t)
        assert action is None
    assert len(state.last_errors) == alerts.KEEP_ERRORS
    assert state.last_errors[-1] == "e29"


def test_alert_text_names_the_source_and_the_errors() -> None:
    state = AlertState(failed_polls=3, alert_out=True, first_failed_at=at(2026, 6, 1, 8, 0),
                       last_errors=("2026-06-01: API: 500", "2026-06-01: HTML page: 503"))
    subject, body = alerts.alert_text(AlertAction.ALERT, state, source="http://hf.test",
                                      config_path="/etc/digest.toml", now=at(2026, 6, 1, 9, 0))
    assert subject == "papers-digest: 3 polls of http://hf.test failed in a row"
    assert "2026-06-01: HTML page: 503" in body
    assert "2026-06-01T08:00:00+00:00" in body
    subject, body = alerts.alert_text(AlertAction.RECOVERY, state, source="http://hf.test",
                                      config_path="/etc/digest.toml", now=at(2026, 6, 1, 10, 0))
    assert subject == "papers-digest: polling http://hf.test works again"
    assert "after 3 failed polls" in body


def alert_config(tmp_path: Path, email_addr: str | None = "admin@x.org") -> Config:
    return Config(
        path=tmp_path / "digest.toml",
        source=SourceConfig(base_url="http://127.0.0.1:9"),
        mail=MailConfig(from_addr="Digest <digest@x.org>"),
        alerts=AlertsConfig(email=email_addr, after_failed_polls=2),
    )


def test_record_poll_survives_restarts_and_queues_through_the_outbox(
    tmp_path: Path, backend: Backend
) -> None:
    url = backend.url("d", migrated=False)
    config = alert_config(tmp_path)
    t = at(2026, 6, 1, 8, 0)

    def poll(ok: bool, minute: int) -> AlertAction | None:
        engine = store.open_engine(url)  # a fresh engine each time: a restart in between
        store.migrate(engine)
        try:
            return alerts.record_poll(engine, config, ok=ok, errors=[f"boom {minute}"],
                                      now=t + dt.timedelta(minutes=minute))
        finally:
            engine.dispose()

    results = [poll(False, 0), poll(False, 1), poll(False, 2), poll(False, 3), poll(True, 4),
               poll(True, 5)]
    assert results == [None, AlertAction.ALERT, None, None, AlertAction.RECOVERY, None]

    engine = store.open_engine(url)
    with Session(engine) as session:
        rows = session.exec(select(DigestRow).order_by(DigestRow.id)).all()
    assert [(r.subscriber, r.recipient, r.sender, r.status) for r in rows] == [
        ("alert:admin@x.org", "admin@x.org", "digest@x.org", "pending"),
        ("alert:admin@x.org", "admin@x.org", "digest@x.org", "pending"),
    ]
    assert [as_utc(r.slot) for r in rows] == [t + dt.timedelta(minutes=1),
                                              t + dt.timedelta(minutes=4)]
    alert = email.message_from_bytes(rows[0].message, policy=email.policy.default)
    assert alert["To"] == "admin@x.org"
    assert "2 polls" in str(alert["Subject"])
    body = alert.get_content()
    assert "boom 0" in body and "boom 1" in body
    recovery = email.message_from_bytes(rows[1].message, policy=email.policy.default)
    assert "works again" in str(recovery["Subject"])
    assert rows[0].message_id != rows[1].message_id
    assert alerts.load_alert_state(engine) == AlertState()
    with Session(engine) as session:
        assert json.loads(store.get_meta(session, alerts.META_KEY) or "{}")["failed_polls"] == 0


def test_record_poll_without_an_address_queues_nothing(tmp_path: Path, backend: Backend) -> None:
    engine = backend.engine("d", migrated=False)
    store.migrate(engine)
    config = alert_config(tmp_path, email_addr=None)
    t = at(2026, 6, 1, 8, 0)
    actions = [alerts.record_poll(engine, config, ok=False, errors=["x"], now=t)
               for _ in range(3)]
    assert actions == [None, AlertAction.ALERT, None]
    with Session(engine) as session:
        assert session.exec(select(DigestRow)).all() == []
    assert alerts.load_alert_state(engine).alert_out


# --------------------------------------------------------------------------- deploy/

REPO = Path(__file__).resolve().parent.parent


def test_the_server_example_config_loads() -> None:
    config = load_config(REPO / "deploy" / "digest.example.toml",
                         {"DIGEST_SMTP_PASSWORD": "secret"})
    assert config.storage.url == "sqlite:////var/lib/papers-digest/digest.db"
    assert config.mail.transport == "smtp"
    assert config.mail.smtp is not None and config.mail.smtp.password == "secret"
    assert config.mail.smtp.security == "starttls"
    assert config.alerts.email
    assert len(config.subscribers) >= 2


def test_the_systemd_unit_has_the_sandbox_and_reload() -> None:
    lines = (REPO / "deploy" / "digest.service").read_text().splitlines()
    settings = {line.strip() for line in lines if "=" in line and not line.startswith("#")}
    for wanted in (
        "Type=simple", "Restart=on-failure", "DynamicUser=yes", "StateDirectory=papers-digest",
        "WorkingDirectory=/var/lib/papers-digest", "EnvironmentFile=-/etc/papers-digest/env",
        "ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes", "ProtectSystem=strict",
        "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX", "SystemCallFilter=@system-service",
    ):
        assert wanted in settings, wanted


def test_one_line_joins_every_problem_and_flattens_carets() -> None:
    error = ConfigError("2 problems", problems=[
        'digest.toml:3: subscribers[0] (a@x.org).timezone: unknown time zone "Europe/Berln"',
        "digest.toml:5: subscribers[0] (a@x.org).topics[0].query: unexpected ')'\n  a )\n    ^",
    ])
    line = one_line(error)
    assert "\n" not in line
    assert line == ('digest.toml:3: subscribers[0] (a@x.org).timezone: unknown time zone '
                    '"Europe/Berln" | digest.toml:5: subscribers[0] (a@x.org).topics[0].query: '
                    "unexpected ')' a ) ^")
    assert one_line(StoreError("database is locked")) == "database is locked"


def test_busy_skip_warnings_are_dropped_and_others_kept() -> None:
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("apscheduler.scheduler", logging.WARNING, __file__, 1,
                                 message, (), None)

    assert not QUIET_BUSY_SKIPS.filter(record(
        'Execution of job "poll" skipped: maximum number of running instances reached (1)'))
    assert QUIET_BUSY_SKIPS.filter(record('Run time of job "poll" was missed by 0:00:05'))
