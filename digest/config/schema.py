"""The validated, frozen config: the types every other stage codes against.

Owns: the dataclasses and their defaults. Does not own reading the file (`load.py`),
the rules of each key and their error lines (`build.py`), or the meaning of a
schedule or a query (their own modules).

Secrets come from the environment, never from the file.

Paths in the file (storage.url for SQLite, mail.maildir, mail.templates,
mail.smtp.ca_file) are relative to the folder of the config file, not to the
directory the program was started from, so `digest -c /etc/digest/digest.toml`
finds the same database from anywhere. Absolute paths stay as written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Literal, overload
from zoneinfo import ZoneInfo

from digest.schedule import Schedule, default_window_days

DEFAULT_BASE_URL = "https://huggingface.co"
Thumbnails = Literal["small", "large", "none"]
THUMBNAILS: tuple[Thumbnails, ...] = ("small", "large", "none")
Delivery = Literal["email", "feed"]
DELIVERIES: tuple[Delivery, ...] = ("email", "feed")


@dataclass(frozen=True)
class SourceConfig:
    base_url: str = DEFAULT_BASE_URL
    mode: Literal["api", "html", "auto"] = "auto"
    poll_interval: dt.timedelta = dt.timedelta(minutes=30)
    lookback_days: int = 3
    timeout: float = 20.0  # seconds, connect and each read
    deadline: float = 120.0  # seconds one request may take in all, connect to last byte
    poll_deadline: float = 900.0  # seconds one poll may take in all, every day and retry
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
    timeout: float = 30.0  # seconds: connecting, and every reply but the last
    max_connections: int = 4
    rate_per_second: float = 10.0
    retries: int = 3
    # seconds for the reply to the final dot of DATA (RFC 5321 4.5.3.2.6: 10 minutes); a
    # timeout there means "maybe delivered": resent at most once, an hour later at least
    data_timeout: float = 600.0


@dataclass(frozen=True)
class DkimConfig:
    domain: str
    selector: str
    key_file: Path
    private_key: bytes = field(default=b"", repr=False)  # the PEM, read when the file loads


@dataclass(frozen=True)
class MailConfig:
    from_addr: str = "Papers Digest <digest@localhost>"
    transport: Literal["maildir", "smtp"] = "maildir"
    maildir: Path = Path("mail")  # relative paths resolve against the config's folder
    smtp: SmtpConfig | None = None
    templates: Path | None = None  # a folder whose templates override the shipped ones
    unsubscribe: str | None = None  # mailto: or https: for List-Unsubscribe; default mailto:from
    dkim: DkimConfig | None = None  # sign every message (rsa-sha256, relaxed/relaxed)


@dataclass(frozen=True, slots=True)  # no __dict__: there are 3-10 per subscriber
class Topic:
    name: str
    query: str


TOPIC_SEPARATOR = "\x1f"  # U+001F, which a topic's name or query may not hold (values.py)


class Topics(Sequence[Topic]):
    """A subscriber's topics, in order, kept as one string: name, query, name, query, ...
    joined by TOPIC_SEPARATOR. Iterating makes each Topic as it is asked for. At 100k
    subscribers of three topics this is ~23 MB less than a tuple of Topics, each with
    its own query string (~230 bytes a subscriber)."""

    __slots__ = ("_packed",)

    def __init__(self, topics: Iterable[Topic] = ()) -> None:
        self._packed = TOPIC_SEPARATOR.join(part for t in topics for part in (t.name, t.query))

    @classmethod
    def of_pairs(cls, pairs: Iterable[tuple[str, str]]) -> Topics:
        """The topics of (name, query) pairs, without a Topic made for each."""
        topics = cls.__new__(cls)
        topics._packed = TOPIC_SEPARATOR.join(chain.from_iterable(pairs))
        return topics

    @property
    def names(self) -> list[str]:
        return self._packed.split(TOPIC_SEPARATOR)[0::2] if self._packed else []

    @property
    def queries(self) -> list[str]:
        return self._packed.split(TOPIC_SEPARATOR)[1::2] if self._packed else []

    def __iter__(self) -> Iterator[Topic]:
        parts = self._packed.split(TOPIC_SEPARATOR) if self._packed else []
        return map(Topic, parts[0::2], parts[1::2])

    def __len__(self) -> int:
        return (self._packed.count(TOPIC_SEPARATOR) + 1) // 2 if self._packed else 0

    @overload
    def __getitem__(self, index: int) -> Topic: ...
    @overload
    def __getitem__(self, index: slice) -> Topics: ...
    def __getitem__(self, index: int | slice) -> Topic | Topics:
        if isinstance(index, slice):
            return Topics(tuple(self)[index])
        return tuple(self)[index]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Topics):
            return NotImplemented
        return self._packed == other._packed

    def __hash__(self) -> int:
        return hash(self._packed)

    def __repr__(self) -> str:
        return f"Topics({tuple(self)!r})"


NO_TOPICS = Topics()


@dataclass(frozen=True, slots=True)  # no __dict__: ~100 bytes less each, at 100k subscribers
class Subscriber:
    email: str  # lower-cased
    schedule: Schedule
    timezone: str = "UTC"  # IANA name, validated
    topics: Topics = NO_TOPICS  # any other sequence of Topics given is made one
    name: str | None = None
    max_papers: int = 25
    min_upvotes: int = 0
    send_empty: bool = False
    window_days: int | None = None  # None: 2 for daily, 8 for weekly (see schedule.py)
    thumbnails: Thumbnails = "small"  # preview images: beside the text, full width, or none
    delivery: Delivery = "email"  # "feed": no mail at all, the digests only in their Atom feed

    def __post_init__(self) -> None:
        if type(self.topics) is not Topics:  # (tests and callers may give a tuple)
            object.__setattr__(self, "topics", Topics(self.topics))

    def __reduce__(self) -> tuple[type[Subscriber], tuple[object, ...]]:
        # pickled (config/halves.py) as its fields: loads in half the time of a
        # slotted dataclass's own __setstate__
        return (Subscriber, tuple(getattr(self, name) for name in self.__slots__))

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
class WebConfig:
    """The endpoint for one-click unsubscribe and preferences (`digest/web/`)."""

    secret: str = field(repr=False)  # from secret_env: signs every link
    host: str = "127.0.0.1"
    port: int = 8080
    base_url: str = "http://127.0.0.1:8080"  # what links point to; https unless loopback
    old_secrets: tuple[str, ...] = field(default=(), repr=False)  # from old_secrets_env
    secret_env: str = "DIGEST_WEB_SECRET"
    old_secrets_env: str | None = None


@dataclass(frozen=True)
class Config:
    path: Path  # the file it was read from (or would be)
    source: SourceConfig = SourceConfig()
    storage: StorageConfig = StorageConfig()
    mail: MailConfig = MailConfig()
    subscribers: tuple[Subscriber, ...] = ()
    alerts: AlertsConfig = AlertsConfig()
    daemon: DaemonConfig = DaemonConfig()
    warnings: tuple[str, ...] = ()  # "file:line: field: ..." for what works but likely not as meant
    web: WebConfig | None = None  # no [web]: no endpoint, mailto: unsubscribe only
