"""A database URL taken apart without importing SQLAlchemy (~0.3 s of start-up).

Owns: the split of `dialect+driver://user:password@host:port/database?query` by
SQLAlchemy's own grammar (the pattern of `sqlalchemy.engine.url._parse_url`, so a URL
this accepts is one `make_url` accepts, and the other way round; tests/test_dburl.py
checks both on the same URLs), the backend name, the database part, and the URL with
its password masked. Does not own opening anything (`digest/store/engine.py` hands the
URL to SQLAlchemy as it is).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

_PATTERN = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
    """,
    re.X,
)


class BadURL(ValueError):
    """Not a database URL; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class DbURL:
    text: str  # as given
    drivername: str  # "sqlite", "postgresql+psycopg"
    host: str | None
    port: int | None
    database: str | None  # unquoted, as SQLAlchemy's URL.database
    query: str | None  # the raw query string after "?"
    _database_span: tuple[int, int] | None
    _password_span: tuple[int, int] | None

    @property
    def backend(self) -> str:
        """The part of the driver name before "+", as `URL.get_backend_name()`."""
        return self.drivername.split("+", 1)[0]

    def with_database(self, database: str) -> str:
        """The URL's text with the database part replaced (quoted as SQLAlchemy renders it)."""
        quoted = quote(database, safe=" +/")
        if self._database_span is None:
            end = len(self.text) if self.query is None else self.text.index("?")
            return self.text[:end] + "/" + quoted + self.text[end:]
        start, end = self._database_span
        return self.text[:start] + quoted + self.text[end:]

    def masked(self) -> str:
        """The URL's text with any password replaced by ***, safe for messages and logs."""
        if self._password_span is None:
            return self.text
        start, end = self._password_span
        return self.text[:start] + "***" + self.text[end:]


def parse_db_url(text: str) -> DbURL:
    """Split `text` as SQLAlchemy's `make_url` would; BadURL if it would refuse it."""
    m = _PATTERN.match(text)
    if m is None:
        raise BadURL("Could not parse SQLAlchemy URL from given URL string")
    port_text = m.group("port")
    port = None
    if port_text:
        if not port_text.isdigit():
            raise BadURL(f"the port {port_text!r} is not a number")
        port = int(port_text)
    database = m.group("database")
    return DbURL(
        text=text,
        drivername=m.group("name"),
        host=m.group("ipv4host") or m.group("ipv6host"),
        port=port,
        database=None if database is None else unquote(database),
        query=m.group("query"),
        _database_span=None if database is None else m.span("database"),
        _password_span=None if m.group("password") is None else m.span("password"),
    )
