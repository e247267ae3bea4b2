"""A trickling source (headers at once, then a byte a second: every read is quick, the
whole never ends) and an unreachable one, through the real httpx path against
tests/hfserver.py, the real poll and the real CLI in a subprocess. Generous bounds:
these assert that a poll ends and fails, not how fast."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from pathlib import Path

from sqlmodel import Session, select

from digest import polling, store
from digest.config import SourceConfig, load_config
from digest.errors import SourceError
from digest.models import PollRow
from digest.sources.fetch import Deadline, fetch_day, make_client
from tests.configs import write_config
from tests.hfserver import Fault, HFServer, closed_port
from tests.test_cli_input import cli

DAY = dt.date(2025, 10, 1)
TRICKLE = Fault(status=200, real_body=True, trickle=1.0)


def fetch(src: SourceConfig, deadline: Deadline | None = None) -> tuple[float, str]:
    async def no_sleep(seconds: float) -> None:
        return None

    async def go() -> None:
        async with make_client(src) as client:
            await fetch_day(client, src, DAY, sleep=no_sleep, deadline=deadline)

    started = time.monotonic()
    try:
        asyncio.run(go())
    except SourceError as e:
        return time.monotonic() - started, str(e)
    raise AssertionError("the trickle was fetched in full")


def test_a_trickle_misses_the_request_deadline_and_is_retried(hf_server: HFServer) -> None:
    hf_server.add_fault("/api/", TRICKLE, TRICKLE)
    src = SourceConfig(base_url=hf_server.base_url, mode="api", timeout=5, retries=1, deadline=1.5)
    seconds, message = fetch(src)
    assert message == (
        f"GET {hf_server.base_url}/api/daily_papers?date={DAY}&limit=100 failed after 2 "
        "attempts: no complete response within the 1.5s deadline (the server is stalling "
        "or trickling)"
    )
    assert len(hf_server.requests) == 2
    assert seconds < 30  # two deadlines of 1.5 s; never the hours a 1 byte/s body takes


def test_the_poll_deadline_stops_retries_and_fallback(hf_server: HFServer) -> None:
    hf_server.add_fault("/", *[TRICKLE] * 20)
    src = SourceConfig(base_url=hf_server.base_url, mode="auto", timeout=5, retries=5, deadline=60)
    seconds, message = fetch(src, Deadline.after(1.5))
    assert "the poll's 1.5s deadline passed" in message
    assert seconds < 30
    assert len(hf_server.requests) <= 2  # the API attempt, perhaps the page: no retry ladder


def test_a_trickling_poll_is_a_failed_poll_and_the_clean_days_are_stored(
    tmp_path: Path, hf_server: HFServer
) -> None:
    """Through polling.poll: the day that trickles fails, the others are stored, the
    poll ends and is recorded as failed (what the daemon's alerts count)."""
    config_path = write_config(tmp_path, hf_server.base_url)
    config = load_config(config_path, {})
    config = dataclasses.replace(
        config, source=dataclasses.replace(config.source, deadline=1.0, retries=0)
    )
    engine = store.open_engine(config.storage.url)
    store.migrate(engine)
    days = [DAY - dt.timedelta(days=1), DAY]
    hf_server.add_fault(f"/api/daily_papers?date={DAY}", TRICKLE)

    async def go() -> polling.PollReport:
        async with make_client(config.source) as client:
            now = lambda: dt.datetime.now(dt.UTC)  # noqa: E731 - the poll asks for a clock
            return await polling.poll(config, engine, client, days, now=now)

    report = asyncio.run(go())
    assert [d.day for d in report.days if d.error] == [DAY]
    assert "deadline" in report.errors[0]
    assert len(report.new) > 0  # the clean day
    with Session(engine) as session:
        (row,) = session.exec(select(PollRow)).all()
    assert row.ok is False and row.error and "deadline" in row.error
    engine.dispose()


def test_fetch_through_the_cli_ends_on_a_trickle_with_one_line(
    tmp_path: Path, hf_server: HFServer
) -> None:
    hf_server.add_fault("/api/", TRICKLE, TRICKLE)
    config = write_config(tmp_path, hf_server.base_url)
    config.write_text(config.read_text().replace("timeout = 5.0", "timeout = 5.0\ndeadline = 2"))
    started = time.monotonic()
    result = cli(config, "fetch", "--date", str(DAY), timeout=120)
    seconds = time.monotonic() - started
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("digest:")]
    assert len(errors) == 1 and "2s deadline" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert seconds < 60  # 2 attempts of 2 s plus start-up; unbounded before


def test_the_offline_first_run_is_one_line(tmp_path: Path) -> None:
    """The README's first command (`digest init`, `digest send`) with base_url on a name
    that does not resolve, then on a closed port: one line, exit 1, nothing on stdout."""
    config = tmp_path / "digest.toml"
    for base_url, why in [
        ("http://nonexistent.invalid", "name not resolved"),
        (f"http://127.0.0.1:{closed_port()}", "connection refused"),
    ]:
        config.unlink(missing_ok=True)
        assert cli(config, "init").returncode == 0
        text = config.read_text().replace(
            '# base_url = "https://huggingface.co"', f'base_url = "{base_url}"'
        )
        assert f'base_url = "{base_url}"' in text
        config.write_text(text)
        result = cli(config, "send")
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr.splitlines() == [
            f"digest: cannot reach {base_url}: {why} (check the network or [source] base_url)"
        ]
        engine = store.open_engine(f"sqlite:///{tmp_path / 'digest.db'}")
        with Session(engine) as session:  # nothing planned, no slot closed as empty
            assert store.store_stats(session).papers == 0
            assert not store.get_subscriber_states(session, ["ada@example.org"])
        engine.dispose()
