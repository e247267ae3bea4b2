"""The subscription file (TOML) and the environment, turned into validated, frozen models.

Owns: reading the file, defaults, validation, and error messages that name the
file, the line, the subscriber and the field. Does not own: what a schedule
means (`schedule.py`) or what a query means (`query.py`); it calls their parsers
only to validate.

Secrets come from the environment, never from the file.

NOTE(skeleton): the types below are the contract other modules code against.
`load_config` is filled in by the config work.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from digest.schedule import Schedule

DEFAULT_BASE_URL = "https://huggingface.co"


@dataclass(frozen=True)
class SourceConfig:
    base_url: str = DEFAULT_BASE_URL
    mode: Literal["api", "html", "auto"] = "auto"
    poll_interval: dt.timedelta = dt.timedelta(minutes=30)
    lookback_days: int = 3
    timeout: float = 20.0  # seconds, connect and read
    retries: int = 4  # attempts after the first, on timeouts, connection errors, 5xx, 429
    max_retry_wait: float = 120.0  # seconds: a longer Retry-After is an error, not a sleep
    concurrency: int = 3  # days fetched at once in a backfill
    max_body_bytes: int = 20 * 1024 * 1024


@dataclass(frozen=True)
class StorageConfig:
    url: str = "sqlite:///digest.db"  # relative sqlite paths resolve against the config's folder


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int = 587
    security: Literal["tls", "starttls", "none"] = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # from password_env
    ca_file: Path | None = None  # extra CA to trust (a private relay, tests)
    timeout: float = 30.0
    max_connections: int = 4
    rate_per_second: float = 10.0
    retries: int = 3


@dataclass(frozen=True)
class MailConfig:
    from_addr: str = "Papers Digest <digest@localhost>"
    transport: Literal["maildir", "smtp"] = "maildir"
    maildir: Path = Path("mail")  # relative paths resolve against the config's folder
    smtp: SmtpConfig | None = None
    templates: Path | None = None  # a folder whose templates override the shipped ones
    unsubscribe: str | None = None  # mailto: or https: for List-Unsubscribe; default mailto:from


@dataclass(frozen=True)
class Topic:
    name: str
    query: str


@dataclass(frozen=True)
class Subscriber:
    email: str  # lower-cased
    schedule: Schedule
    timezone: str = "UTC"  # IANA name, validated
    topics: tuple[Topic, ...] = ()
    name: str | None = None
    max_papers: int = 25
    min_upvotes: int = 0
    send_empty: bool = False
    window_days: int | None = None  # None: 2 for daily, 8 for weekly (see schedule.py)


@dataclass(frozen=True)
class AlertsConfig:
    email: str | None = None
    after_failed_polls: int = 3


@dataclass(frozen=True)
class DaemonConfig:
    catch_up: dt.timedelta = dt.timedelta(hours=24)


@dataclass(frozen=True)
class Config:
    path: Path  # the file it was read from (or would be)
    source: SourceConfig = SourceConfig()
    storage: StorageConfig = StorageConfig()
    mail: MailConfig = MailConfig()
    subscribers: tuple[Subscriber, ...] = ()
    alerts: AlertsConfig = AlertsConfig()
    daemon: DaemonConfig = DaemonConfig()


def load_config(path: Path, env: Mapping[str, str]) -> Config:
    """Read and validate `path`; raise ConfigError listing every problem found."""
    raise NotImplementedError("skeleton: filled in by the config work")
