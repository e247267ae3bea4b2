"""Bad input that reaches `digest run`, the daemon as a real subprocess (the harness of
tests/test_daemon_process.py): a sparse schedule, a trickling source."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemons import Daemon, start, subscriber, write_config
from tests.hfserver import Fault, HFServer
from tests.smtpd_helpers import SmtpServer

pytestmark = pytest.mark.slow


def test_the_daemon_runs_a_schedule_whose_next_slot_is_years_away(
    tmp_path: Path, hf: HFServer, smtp: SmtpServer, run_daemon: list[Daemon]
) -> None:
    config = write_config(
        tmp_path / "digest.toml", hf, smtp, [subscriber("ada@example.org", "0 8 1 3 */7")]
    )
    daemon = start(run_daemon, config)
    # counts of one are singular, durations read as the file writes them (not 0:00:01)
    daemon.wait_for(r"daemon started: 1 subscriber in 1 slot job, poll every 1s, config ")
    daemon.wait_for(r"poll: 2 days, ")
    assert daemon.stop() == 0
    assert not [line for line in daemon.lines if "Traceback" in line]


def test_a_trickling_source_is_a_failed_poll_and_alerts_fire(
    tmp_path: Path, hf: HFServer, smtp: SmtpServer, run_daemon: list[Daemon]
) -> None:
    """Headers at once, then a byte a second: before, each poll hung on it for hours,
    with no failed poll counted and no alert. Now each is a failed poll after the
    request deadline; two in a row mail the alert, a clean poll mails the recovery."""
    trickle = Fault(status=200, real_body=True, trickle=1.0)
    hf.add_fault("/api/", *[trickle] * 3)  # 3 polls of 1 day, no retries
    config = write_config(
        tmp_path / "digest.toml", hf, smtp, [], lookback=0,
        extra='[alerts]\nemail = "admin@example.org"\nafter_failed_polls = 2\n',
    )  # fmt: skip
    config.write_text(config.read_text().replace("timeout = 5\n", "timeout = 5\ndeadline = 1.5\n"))
    daemon = start(run_daemon, config)
    failed = daemon.wait_for(r"poll: .* 1 failed", timeout=60)
    alerted = daemon.wait_for(r"alert after 2 failed polls", after=failed, timeout=60)
    daemon.wait_for(r"drain: 1 sent", after=alerted, timeout=60)
    recovered = daemon.wait_for(r"recovery after \d+ failed polls", after=alerted, timeout=60)
    daemon.wait_for(r"drain: 1 sent", after=recovered, timeout=60)
    assert daemon.stop() == 0
    assert any("1.5s deadline" in line for line in daemon.lines)
    messages = [r.parsed() for r in smtp.handler.received]
    assert [m["To"].addresses[0].addr_spec for m in messages] == ["admin@example.org"] * 2
    alert, recovery = messages
    assert "deadline" in alert.get_body(("plain",)).get_content()
    assert "works again" in str(recovery["Subject"])
