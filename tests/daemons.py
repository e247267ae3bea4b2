"""Running `digest run` as a real subprocess in tests, and what those tests share.

`Daemon` starts `python -m digest.cli run -c CONFIG` and collects its log lines as they
come (read in a thread, so a test can wait for a line with a bounded wait). The fixtures
`hf` (the fixture server with 10 real papers on each day around today), `smtp` (a
recording aiosmtpd server) and `run_daemon` (daemons killed at the end of the test) are
registered for every test by conftest.py; a module that needs other data defines its own.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, col, select

from digest import store
from digest.models import DigestRow
from tests.hfserver import HFServer
from tests.smtpd_helpers import RecordingHandler, SmtpServer
from tests.testdata import corpus_dir

REPO = Path(__file__).resolve().parent.parent
CORPUS_DAY = corpus_dir() / "2025-12-30.json"  # 10 real papers
WAIT = 15.0  # seconds any single expected event may take
MATCH_ALL = "model* OR learn* OR language OR diffusion OR video OR agent*"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Daemon:
    """`python -m digest.cli run -c CONFIG` with its log lines collected as they come."""

    def __init__(self, config: Path) -> None:
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
        env.pop("DIGEST_CONFIG", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "digest.cli", "run", "-c", str(config)],
            cwd=config.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._seen:
                self.lines.append(line.rstrip("\n"))
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_for(self, pattern: str, *, after: int = 0, timeout: float = WAIT) -> int:
        """The index of the first log line from `after` on matching `pattern`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._seen:
            while True:
                for i in range(after, len(self.lines)):
                    if regex.search(self.lines[i]):
                        return i
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no log line matching {pattern!r} within {timeout}s; "
                        f"exit {self.proc.poll()}; log:\n" + "\n".join(self.lines)
                    )
                self._seen.wait(min(left, 0.2))

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        with self._seen:
            return sum(bool(regex.search(line)) for line in self.lines)

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 40.0) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)


@pytest.fixture
def hf() -> Iterator[HFServer]:
    """HFServer serving 10 real papers on every day around today (yesterday to 4 days ago
    and tomorrow)."""
    with HFServer() as server:
        body = CORPUS_DAY.read_bytes()
        today = utcnow().date()
        for n in range(-1, 5):
            server.set_api_body(today - dt.timedelta(days=n), body)
        yield server


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer(RecordingHandler()) as server:
        yield server


def subscriber(email: str, schedule: str, query: str = MATCH_ALL) -> str:
    return (f'[[subscribers]]\nemail = "{email}"\ntimezone = "UTC"\nschedule = "{schedule}"\n'
            f"topics = [{{ name = \"Everything\", query = '{query}' }}]\n")


def write_config(
    path: Path,
    hf: HFServer,
    smtp: SmtpServer,
    subscribers: list[str],
    *,
    extra: str = "",
    poll: str = "1s",
    lookback: int = 1,
    max_connections: int = 2,
    db: str = "sqlite:///digest.db",
) -> Path:
    path.write_text(
        f'[source]\nbase_url = "{hf.base_url}"\nmode = "api"\npoll_interval = "{poll}"\n'
        f"lookback_days = {lookback}\nretries = 0\ntimeout = 5\n\n"
        f'[storage]\nurl = "{db}"\n\n'
        f'[mail]\nfrom = "Papers Digest <digest@example.org>"\ntransport = "smtp"\n'
        f'smtp = {{ host = "127.0.0.1", port = {smtp.port}, security = "none", '
        f"max_connections = {max_connections}, rate_per_second = 1000 }}\n\n"
        f"{extra}\n" + "\n".join(subscribers),
        encoding="utf-8",
    )
    return path


@pytest.fixture
def run_daemon() -> Iterator[list[Daemon]]:
    """Started daemons, killed at the end of the test if still running."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.kill()


def start(started: list[Daemon], config: Path) -> Daemon:
    daemon = Daemon(config)
    started.append(daemon)
    daemon.wait_for(r"daemon started")
    return daemon


def received_by(smtp: SmtpServer) -> dict[str, int]:
    return {rcpt: len(items) for rcpt, items in smtp.handler.by_recipient().items()}


def digests_in(url: str) -> list[DigestRow]:
    engine = store.open_engine(url)
    try:
        with Session(engine) as session:
            return list(session.exec(select(DigestRow).order_by(col(DigestRow.id))).all())
    finally:
        engine.dispose()


