"""Bad input that reaches `digest run`, the daemon as a real subprocess (the harness of
tests/test_daemon_process.py): a sparse schedule, a trickling source."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hfserver import HFServer
from tests.smtpd_helpers import SmtpServer
from tests.test_daemon_process import (  # the fixtures, used by name below
    Daemon,
    hf,
    run_daemon,
    smtp,
    start,
    subscriber,
    write_config,
)

pytestmark = pytest.mark.slow
__all__ = ["hf", "run_daemon", "smtp"]  # pytest finds fixtures by the names imported here


def test_the_daemon_runs_a_schedule_whose_next_slot_is_years_away(
    tmp_path: Path, hf: HFServer, smtp: SmtpServer, run_daemon: list[Daemon]
) -> None:
    config = write_config(
        tmp_path / "digest.toml", hf, smtp, [subscriber("ada@example.org", "0 8 1 3 */7")]
    )
    daemon = start(run_daemon, config)
    daemon.wait_for(r"poll: \d+ days?")
    assert daemon.stop() == 0
    assert not [line for line in daemon.lines if "Traceback" in line]
