"""Shared pytest fixtures.

`hf_server`: a started `tests.hfserver.HFServer` on 127.0.0.1.
`hf`, `smtp`, `run_daemon`: the fixture server with 10 real papers around today, a
recording aiosmtpd server, and `digest run` processes killed after the test (see
tests/daemons.py); a module that needs other data defines its own `hf`.
Every test: no config copy kept or read (`_nothing_remembered`).
`backend`: a `tests.backends.Backend`, once on SQLite and once on PostgreSQL; each
test gets fresh databases from it (see tests/backends.py for the server it needs).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from digest.config import remembered
from tests.backends import BACKENDS, Backend, PgServer, make_backend, pg_server
from tests.daemons import hf, run_daemon, smtp  # noqa: F401  (fixtures: pytest finds them by name)
from tests.hfserver import HFServer


@pytest.fixture(autouse=True)
def _nothing_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads a checked config that another test (or a run on this machine)
    kept: the copies of digest/config/remembered.py are tested in their own module."""
    monkeypatch.setenv("DIGEST_CACHE_DIR", "")
    monkeypatch.setattr(remembered, "CACHE_FROM", 1 << 60)


@pytest.fixture
def hf_server() -> Iterator[HFServer]:
    """A real HTTP server playing huggingface.co from the captures in tests/data."""
    with HFServer() as server:
        yield server


@pytest.fixture(scope="session")
def _pg_server() -> Iterator[PgServer | str]:
    """The PostgreSQL test server of the whole run, or why there is none."""
    with pg_server() as server:
        yield server


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Fresh databases on SQLite, then on PostgreSQL (skipped, or failed under CI=true,
    without a server)."""
    yield from make_backend(request, tmp_path)


@pytest.fixture(params=["postgresql"])
def postgresql_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """PostgreSQL alone: for several processes sharing one outbox (the scale-out setup
    the README describes), which SQLite does not claim to serve."""
    yield from make_backend(request, tmp_path)
