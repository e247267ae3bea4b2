"""The subscription file (TOML) and the environment, turned into validated, frozen models.

Owns: reading the file, defaults, validation, and error messages that name the
file, the line, the subscriber and the field. Does not own: what a schedule
means (`schedule.py`) or what a query means (`query.py`); it calls their parsers
only to validate.

Secrets come from the environment, never from the file.

The types below are the contract other modules code against. `load_config`
reads the file and reports TOML syntax errors; the checks of every key live in
`config_build.py`, the key -> line scanner in `config_lines.py`.

Paths in the file (storage.url for SQLite, mail.maildir, mail.templates,
mail.smtp.ca_file) are relative to the folder of the config file, not to the
directory the program was started from, so `digest -c /etc/digest/digest.toml`
finds the same database from anywhere. Absolute paths stay as written.
"""

from __future__ import annotations

import datetime as dt
import importlib.resources
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

from sqlalchemy.engine import make_url

from digest.errors import ConfigError
from digest.schedule import Schedule, default_window_days

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

    @property
    def zone(self) -> ZoneInfo:
        """The subscriber's time zone (validated when the config was loaded)."""
        return ZoneInfo(self.timezone)

    @property
    def effective_window_days(self) -> int:
        """window_days, or the schedule's default when the file does not set it."""
        return self.window_days or default_window_days(self.schedule)


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
    """Read and validate `path`; raise ConfigError listing every problem found.

    `env` is where secrets come from (mail.smtp.password_env names a variable in it).
    """
    from digest.config_build import build_config  # it imports the dataclasses above

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such config file; run `digest init` to write an example"
        ) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror}") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: the config file is not UTF-8 text") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(_toml_error(path, text, e)) from e
    return build_config(data, path=path, text=text, env=env)


def _toml_error(path: Path, text: str, e: tomllib.TOMLDecodeError) -> str:
    """tomllib's "Invalid value (at line 3, column 8)" as "file:3: invalid TOML: ..."."""
    message = str(e)
    m = re.match(r"^(.*) \(at line (\d+), column (\d+)\)$", message)
    if m:
        return f"{path}:{m.group(2)}: invalid TOML: {m.group(1)} (column {m.group(3)})"
    m = re.match(r"^(.*) \(at end of document\)$", message)
    if m:
        last = text.count("\n") + (0 if text.endswith("\n") else 1)
        return f"{path}:{max(last, 1)}: invalid TOML: {m.group(1)} (at the end of the file)"
    return f"{path}: invalid TOML: {message}"


def summarize_config(config: Config) -> list[str]:
    """The lines `digest check` prints when the config is valid."""
    s, mail = config.source, config.mail
    lines = [
        f"config: {config.path}",
        f"source: {s.base_url} (mode {s.mode}), poll every {_duration(s.poll_interval)}, "
        f"lookback {s.lookback_days} days",
        f"storage: {make_url(config.storage.url).render_as_string(hide_password=True)}",
    ]
    if mail.transport == "smtp" and mail.smtp is not None:
        smtp = mail.smtp
        auth = f", user {smtp.username}" if smtp.username else ", no AUTH"
        lines.append(
            f"mail: smtp {smtp.host}:{smtp.port} ({smtp.security}{auth}), "
            f"{smtp.max_connections} connections, {smtp.rate_per_second:g}/s, from {mail.from_addr}"
        )
    else:
        lines.append(f"mail: maildir {mail.maildir}, from {mail.from_addr}")
    if mail.templates is not None:
        lines.append(f"templates: {mail.templates}")
    alerts = config.alerts
    lines.append(
        f"alerts: to {alerts.email} after {alerts.after_failed_polls} failed polls"
        if alerts.email
        else "alerts: off (no [alerts] email)"
    )
    count = len(config.subscribers)
    lines.append(f"{count} subscriber{'' if count == 1 else 's'}:")
    for sub in config.subscribers:
        topics = len(sub.topics)
        lines.append(
            f"  {sub.email}: {sub.timezone}, {sub.schedule.text}, "
            f"{topics} topic{'' if topics == 1 else 's'}, window {sub.effective_window_days} days"
        )
    return lines


def example_config() -> str:
    """The commented example config `digest init` writes (digest/example.toml)."""
    return importlib.resources.files("digest").joinpath("example.toml").read_text("utf-8")


def _duration(value: dt.timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
