"""The validated, frozen config: the types every other stage codes against.

Owns: the dataclasses and their defaults, and the compact classes a Config holds one
of per subscriber (`Subscriber`, `Topics`: two references and one string each, at
100k subscribers). Does not own reading the file (`load.py`),
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import FrozenInstanceError, dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Literal, NamedTuple, overload
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
    timeout: float = 30.0  # seconds: connecting, and silence in every reply but the last
    max_connections: int = 4
    rate_per_second: float = 10.0
    retries: int = 3
    # seconds of silence before the reply to the final dot of DATA (RFC 5321 4.5.3.2.6:
    # 10 minutes); a timeout there means "maybe delivered": resent once, an hour later at least
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


class _Settings(NamedTuple):
    """A subscriber's settings but its email, name and topics: at 100k subscribers a few
    dozen distinct ones, each kept once (`_shared_settings`)."""

    schedule: Schedule
    timezone: str
    max_papers: int
    min_upvotes: int
    send_empty: bool
    window_days: int | None
    thumbnails: Thumbnails
    delivery: Delivery
    named: bool  # False: name is None


_SETTINGS: dict[_Settings, _Settings] = {}
_MAX_SETTINGS = 4096  # distinct settings remembered for sharing; past that, forgotten


def _shared_settings(settings: _Settings) -> _Settings:
    """The one kept object equal to `settings` (a memo: sharing only saves memory)."""
    kept = _SETTINGS.get(settings)
    if kept is None:
        if len(_SETTINGS) >= _MAX_SETTINGS:
            _SETTINGS.clear()
        kept = _SETTINGS[settings] = settings
    return kept


class Subscriber:
    """One [[subscribers]] table, validated; frozen, equal and hashed by its values.

    A Config holds one per subscriber, so it is kept in two references: its email, name
    and topics as one string (email, name and `Topics`' own text joined by
    TOPIC_SEPARATOR, which an email, a name, a topic's name or query never holds:
    values.py refuses it), and its other settings as a `_Settings` shared by every
    subscriber with the same ones. At 100k subscribers that is ~210 bytes a subscriber
    less than a slotted dataclass of eleven fields with three strings and a Topics
    object. Each attribute is worked out when read (a slice of the string)."""

    __slots__ = ("_settings", "_text")
    FIELDS = ("email", "schedule", "timezone", "topics", "name", "max_papers",
              "min_upvotes", "send_empty", "window_days", "thumbnails", "delivery")  # fmt: skip
    _text: str
    _settings: _Settings

    def __init__(
        self,
        email: str,  # lower-cased
        schedule: Schedule,
        timezone: str = "UTC",  # IANA name, validated
        topics: Sequence[Topic] = NO_TOPICS,  # kept as a Topics whatever the sequence
        name: str | None = None,
        max_papers: int = 25,
        min_upvotes: int = 0,
        send_empty: bool = False,
        window_days: int | None = None,  # None: 2 for daily, 8 for weekly (schedule.py)
        thumbnails: Thumbnails = "small",  # preview images: beside the text, full width, none
        delivery: Delivery = "email",  # "feed": no mail at all, the digests only in their feed
    ) -> None:
        packed = (topics if type(topics) is Topics else Topics(topics))._packed
        for value in (email, name):
            if value is not None and TOPIC_SEPARATOR in value:
                raise ValueError(f"a subscriber's email or name holds U+001F: {value!r}")
        settings = _Settings(schedule, timezone, max_papers, min_upvotes, send_empty,
                             window_days, thumbnails, delivery, name is not None)  # fmt: skip
        self._restore(f"{email}{TOPIC_SEPARATOR}{name or ''}{TOPIC_SEPARATOR}{packed}", settings)

    def _restore(self, text: str, settings: _Settings) -> None:
        object.__setattr__(self, "_text", text)
        object.__setattr__(self, "_settings", _shared_settings(settings))

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")  # as a frozen dataclass

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[Callable[[str, _Settings], Subscriber], tuple[str, _Settings]]:
        # pickled (config/halves.py) as its two parts: pickle writes a shared _Settings once
        return (_unpickle_subscriber, (self._text, self._settings))

    @property
    def email(self) -> str:
        text = self._text
        return text[: text.index(TOPIC_SEPARATOR)]

    @property
    def name(self) -> str | None:
        if not self._settings.named:
            return None
        text = self._text
        start = text.index(TOPIC_SEPARATOR) + 1
        return text[start : text.index(TOPIC_SEPARATOR, start)]

    @property
    def topics(self) -> Topics:
        text = self._text
        topics = Topics.__new__(Topics)
        topics._packed = text[text.index(TOPIC_SEPARATOR, text.index(TOPIC_SEPARATOR) + 1) + 1 :]
        return topics

    @property
    def schedule(self) -> Schedule:
        return self._settings.schedule

    @property
    def timezone(self) -> str:
        return self._settings.timezone

    @property
    def max_papers(self) -> int:
        return self._settings.max_papers

    @property
    def min_upvotes(self) -> int:
        return self._settings.min_upvotes

    @property
    def send_empty(self) -> bool:
        return self._settings.send_empty

    @property
    def window_days(self) -> int | None:
        return self._settings.window_days

    @property
    def thumbnails(self) -> Thumbnails:
        return self._settings.thumbnails

    @property
    def delivery(self) -> Delivery:
        return self._settings.delivery

    def replace(self, **changes: Any) -> Subscriber:
        """A copy with `changes` (field names as the constructor takes them)."""
        values = {name: getattr(self, name) for name in self.FIELDS}
        unknown = changes.keys() - values.keys()
        if unknown:
            raise TypeError(f"Subscriber has no field {', '.join(sorted(unknown))}")
        return Subscriber(**{**values, **changes})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Subscriber):
            return NotImplemented
        return self._text == other._text and self._settings == other._settings

    def __hash__(self) -> int:
        return hash((self._text, self._settings))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.FIELDS)
        return f"Subscriber({fields})"

    @property
    def zone(self) -> ZoneInfo:
        """The subscriber's time zone (validated when the config was loaded)."""
        return ZoneInfo(self.timezone)

    @property
    def effective_window_days(self) -> int:
        """window_days, or the schedule's default when the file does not set it."""
        return self.window_days or default_window_days(self.schedule)


def _unpickle_subscriber(text: str, settings: _Settings) -> Subscriber:
    subscriber = Subscriber.__new__(Subscriber)
    subscriber._restore(text, settings)
    return subscriber


def parts_of(subscriber: Subscriber) -> tuple[str, _Settings]:
    """A Subscriber's two references; `from_parts` makes it again (`remembered.py`)."""
    return subscriber._text, subscriber._settings


from_parts = _unpickle_subscriber


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
