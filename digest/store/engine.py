"""The database edge: opening an engine, framing a transaction, wrapping SQLAlchemy errors.

Owns: `open_engine` (any SQLAlchemy URL; SQLite gets WAL, foreign keys, a busy
timeout, synchronous=NORMAL and real BEGIN handling), `write_bind`/`begin_write`
(transactions that take SQLite's write lock up front), `upsert` (INSERT ... ON
CONFLICT for whichever database it is: a write two processes can race on never reads
first), and `wrap_db_errors`, the one place a SQLAlchemy exception becomes a
`StoreError`. Does not own the schema (`migrations.py`) or any query (`listings.py`,
`state.py`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Insert, Table, create_engine, event
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlmodel import Session

from digest.errors import StoreError
from digest.records import as_utc

SQLITE_BUSY_TIMEOUT_MS = 10_000
# Execution option read by the SQLite "begin" hook: "IMMEDIATE" takes the write lock at
# BEGIN, so a read-then-write transaction never fails with SQLITE_BUSY_SNAPSHOT when
# another process (a cron `digest send` next to the daemon) commits in between.
_BEGIN_OPTION = "digest_sqlite_begin"


def mask_url(url: URL | str) -> str:
    """The URL as text with any password replaced by ***, safe for messages and logs."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def describe_error(error: BaseException) -> str:
    """One line naming the driver's exception: 'IntegrityError: NOT NULL constraint failed'."""
    inner = getattr(error, "orig", None) or error
    lines = str(inner).strip().splitlines()
    return f"{type(inner).__name__}: {lines[0]}" if lines else type(inner).__name__


@contextmanager
def wrap_db_errors(action: str, url: URL | str) -> Iterator[None]:
    """Turn a SQLAlchemy exception raised inside into one StoreError naming action and URL."""
    try:
        yield
    except SQLAlchemyError as e:
        raise StoreError(f"{action} failed on {mask_url(url)}: {describe_error(e)}") from e


def session_url(session: Session) -> URL:
    """The URL of the engine a session is bound to (for error messages)."""
    return session.get_bind().engine.url


def to_db_time(value: dt.datetime) -> dt.datetime:
    """A datetime as the tables take it: aware UTC (SQLModel's UTCDateTime refuses naive
    values; it stores UTC and hands back aware UTC)."""
    return as_utc(value)


def _sqlite_file(url: URL) -> Path | None:
    """The file a SQLite URL names; None for an in-memory database or a `file:` URI."""
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("uri") == "true":
        return None
    return Path(database)


def database_exists(url: str) -> bool:
    """False only for a SQLite file that is not there yet (opening it would create it);
    any other database is taken to exist (its server says otherwise when opened)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return True  # open_engine says what is wrong with it
    if parsed.get_backend_name() != "sqlite":
        return True
    path = _sqlite_file(parsed)
    return path is None or path.exists()


def _install_sqlite_hooks(engine: Engine) -> None:
    """Pragmas on every new connection, and our own BEGIN (pysqlite's is too lazy).

    pysqlite only opens a transaction before INSERT/UPDATE/DELETE, so DDL in a
    migration and SAVEPOINTs would otherwise run outside any transaction. This is
    the recipe from SQLAlchemy's SQLite dialect documentation.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        try:
            # the busy timeout first: switching a new file to WAL takes a lock, and
            # processes opening it at once otherwise fail with "database is locked"
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def open_engine(url: str) -> Engine:
    """An Engine for any SQLAlchemy URL, connected once so a bad URL fails here.

    SQLite files get their parent folder created, WAL journal mode, foreign keys,
    a busy timeout and synchronous=NORMAL. Raises StoreError naming the URL
    (password masked) when the URL, the driver or the database is unusable.
    """
    shown = mask_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise StoreError(f"cannot open database {shown}: not a valid database URL") from e
    try:
        if parsed.get_backend_name() == "sqlite":
            path = _sqlite_file(parsed)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(parsed)
            _install_sqlite_hooks(engine)
        else:
            engine = create_engine(parsed, pool_pre_ping=True)
        with engine.connect():
            pass
    except OSError as e:
        raise StoreError(f"cannot open database {shown}: {e}") from e
    except SQLAlchemyError as e:
        raise StoreError(f"cannot open database {shown}: {describe_error(e)}") from e
    return engine


def write_bind(engine: Engine) -> Engine:
    """The same engine, whose transactions take SQLite's write lock at BEGIN."""
    return engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})


def begin_write(session: Session) -> None:
    """Open the session's transaction with SQLite's write lock, unless one is already open."""
    if not session.in_transaction():
        session.connection(execution_options={_BEGIN_OPTION: "IMMEDIATE"})


def dialect_insert(dialect: str, table: Table) -> Any:
    """The INSERT of `dialect` that has `on_conflict_do_nothing/_do_update` and `excluded`
    (PostgreSQL's and SQLite's share that interface)."""
    if dialect == "postgresql":
        return postgresql_insert(table)
    if dialect == "sqlite":
        return sqlite_insert(table)
    raise StoreError(f"no INSERT ... ON CONFLICT for the {dialect} database")


def upsert(dialect: str, table: Table, keys: Sequence[str], update: Sequence[str]) -> Insert:
    """INSERT ... ON CONFLICT (keys) DO UPDATE SET each of `update` to the value given.

    Two processes writing the same new key both succeed (the later one updates), where
    a read-then-insert fails one of them on the primary key (PostgreSQL; SQLite's
    writers take turns). With `update` empty, an existing row is left alone.
    """
    statement = dialect_insert(dialect, table)
    result: Insert
    if update:
        excluded = statement.excluded
        set_ = {name: excluded[name] for name in update}
        result = statement.on_conflict_do_update(index_elements=list(keys), set_=set_)
    else:
        result = statement.on_conflict_do_nothing(index_elements=list(keys))
    return result
