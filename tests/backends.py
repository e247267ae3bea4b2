"""The database backends the store tests run on: SQLite files and a real PostgreSQL server.

The `backend` fixture (tests/conftest.py) is parametrized by `sqlite` and `postgresql`.
Each test gets its own databases, empty or migrated, never shared with another test or
another test run (several people may run the suite against one server at once):

- SQLite: a file in the test's tmp_path.
- PostgreSQL: a database with a unique name on the server `DIGEST_TEST_PG_URL` names
  (`postgresql+psycopg://user@127.0.0.1:PORT/postgres`; `.ci/pg-cluster start` prints
  one), owned by this run and dropped at its end. An empty one is created for the
  test; a migrated one is a copy of a template migrated once per run, emptied and
  reused by the next test while its schema is unchanged (see `PgServer`).

Without `DIGEST_TEST_PG_URL` the PostgreSQL cases skip, saying how to start a server;
with `CI=true` a missing or unreachable server fails them instead.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from digest import store

BACKENDS = ("sqlite", "postgresql")
PG_URL_VARIABLE = "DIGEST_TEST_PG_URL"
_HOW = "start one with `.ci/pg-cluster start` and export the DIGEST_TEST_PG_URL it prints"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_FINGERPRINT = (
    "SELECT table_name, column_name, data_type, is_nullable, column_default"
    " FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2",
    "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
    "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
    " WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
    "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2",
    "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1",
    "SELECT version FROM schema_version",
)
_FOREIGN_KEYS = (
    "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint"
    " WHERE contype = 'f' AND connamespace = 'public'::regnamespace"
)
_TABLES = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
_SEQUENCES = "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'"


class _Pooled:
    """A migrated database between tests, and the connection that empties it."""

    def __init__(self, name: str, conn: Any) -> None:
        self.name = name
        self.conn = conn


class PgServer:
    """The test server: an admin connection (autocommit), the run's template database,
    and a pool of migrated databases.

    CREATE DATABASE costs 0.2-1.5 s here (a checkpoint, file copies; more on a busy
    machine), so a migrated database is reused: after its test, other sessions on it are
    ended and, when its schema still equals the template's, every row is deleted and the
    sequences restart (a few ms). A database whose schema a test changed is dropped.
    """

    def __init__(self, url: str) -> None:
        import psycopg  # only the PostgreSQL cases need the driver

        self.url = make_url(url)
        if self.url.drivername != "postgresql+psycopg":
            self.url = self.url.set(drivername="postgresql+psycopg")
        self._psycopg = psycopg
        self.admin = psycopg.connect(self._dsn(self.url.database or "postgres"), autocommit=True)
        self.prefix = f"digest_test_{os.getpid()}_{secrets.token_hex(3)}"
        self._count = 0
        self._template: str | None = None
        self._fingerprint: Any = None
        self._free: list[_Pooled] = []
        self._busy: dict[str, _Pooled] = {}

    def _dsn(self, database: str) -> str:
        url = self.url.set(drivername="postgresql", database=database)
        return url.render_as_string(hide_password=False)

    def db_url(self, database: str) -> str:
        return self.url.set(database=database).render_as_string(hide_password=False)

    def _template_name(self) -> str:
        """The run's migrated template, made on first use."""
        if self._template is None:
            name = f"{self.prefix}_template"
            self.admin.execute(f"CREATE DATABASE {_quote(name)}")
            engine = store.open_engine(self.db_url(name))
            try:
                store.migrate(engine)
            finally:
                engine.dispose()
            self._template = name
        return self._template

    def _new_name(self) -> str:
        self._count += 1
        return f"{self.prefix}_{self._count}"

    def create(self, *, migrated: bool) -> str:
        """A database for one test: migrated (from the pool or the template), or empty."""
        if not migrated:
            name = self._new_name()
            self.admin.execute(f"CREATE DATABASE {_quote(name)} TEMPLATE template0")
            return name
        if self._free:
            pooled = self._free.pop()
        else:
            name, template = self._new_name(), _quote(self._template_name())
            self.admin.execute(f"CREATE DATABASE {_quote(name)} TEMPLATE {template}")
            pooled = _Pooled(name, self._psycopg.connect(self._dsn(name), autocommit=True))
            if self._fingerprint is None:
                self._fingerprint = self._fingerprint_of(pooled.conn)
        self._busy[pooled.name] = pooled
        return pooled.name

    def _fingerprint_of(self, conn: Any) -> Any:
        return tuple(tuple(conn.execute(query).fetchall()) for query in _FINGERPRINT)

    def release(self, name: str) -> None:
        """The test that had `name` is over: empty it for the next test, or drop it."""
        pooled = self._busy.pop(name, None)
        if pooled is None:
            self.drop(name)
            return
        try:
            self._end_other_sessions(pooled)
            if self._fingerprint_of(pooled.conn) != self._fingerprint:
                raise LookupError("schema changed")
            self._empty(pooled.conn)
        except Exception:  # anything odd about the database: it is not reused
            pooled.conn.close()
            self.drop(name)
            return
        self._free.append(pooled)

    def _end_other_sessions(self, pooled: _Pooled) -> None:
        self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> %s",
            (pooled.name, pooled.conn.info.backend_pid),
        )

    def _empty(self, conn: Any) -> None:
        """Delete every row but the schema version, children before parents."""
        tables = {t for (t,) in conn.execute(_TABLES)} - {"schema_version"}
        parents: dict[str, set[str]] = {t: set() for t in tables}
        for child, parent in conn.execute(_FOREIGN_KEYS):
            if child != parent and child in parents:
                parents[child].add(parent)
        order: list[str] = []
        while parents:
            leaves = sorted(t for t in parents if not any(t in p for p in parents.values()))
            if not leaves:
                raise LookupError("foreign keys form a cycle")
            order += leaves
            for t in leaves:
                del parents[t]
        with conn.transaction():
            for table in order:
                conn.execute(f"DELETE FROM {_quote(table)}")
            for (sequence,) in conn.execute(_SEQUENCES).fetchall():
                conn.execute("SELECT setval(%s, 1, false)", (_quote(sequence),))

    def drop(self, name: str) -> None:
        self.admin.execute(f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)")

    def close(self) -> None:
        for pooled in self._free + list(self._busy.values()):
            pooled.conn.close()
            self.drop(pooled.name)
        if self._template is not None:
            self.drop(self._template)
        self.admin.close()


@contextmanager
def pg_server() -> Iterator[PgServer | str]:
    """The server of DIGEST_TEST_PG_URL, or the reason there is none."""
    url = os.environ.get(PG_URL_VARIABLE)
    if not url:
        yield f"no PostgreSQL server: {PG_URL_VARIABLE} is not set ({_HOW})"
        return
    try:
        server = PgServer(url)
    except Exception as e:  # the reason is reported as the skip/failure text
        shown = store.mask_url(url)
        yield f"PostgreSQL server {shown} ({PG_URL_VARIABLE}) unusable: {type(e).__name__}: {e}"
        return
    try:
        yield server
    finally:
        server.close()


def unavailable(reason: str) -> None:
    """Skip, or fail under CI=true, where every backend must run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true requires the PostgreSQL tests to run", pytrace=False)
    pytest.skip(reason)


class Backend:
    """One test's databases on one backend. `url()`/`engine()` with one name give one
    database; another name gives another (two daemons' configs, a second store)."""

    def __init__(self, name: str, tmp_path: Path, server: PgServer | None) -> None:
        self.name = name
        self._tmp_path = tmp_path
        self._server = server
        self._urls: dict[str, str] = {}
        self._databases: list[str] = []
        self._engines: list[Engine] = []

    @property
    def is_sqlite(self) -> bool:
        return self.name == "sqlite"

    def url(self, name: str = "digest", *, migrated: bool = True) -> str:
        """The URL of this test's database `name`, made on first use (migrated or empty)."""
        if name in self._urls:
            return self._urls[name]
        if self._server is None:
            url = f"sqlite:///{self._tmp_path / name}.db"
            if migrated:
                engine = store.open_engine(url)
                store.migrate(engine)
                engine.dispose()
        else:
            database = self._server.create(migrated=migrated)
            self._databases.append(database)
            url = self._server.db_url(database)
        self._urls[name] = url
        return url

    def engine(self, name: str = "digest", *, migrated: bool = True) -> Engine:
        """An engine on `url(name)`, disposed after the test."""
        engine = store.open_engine(self.url(name, migrated=migrated))
        self._engines.append(engine)
        return engine

    def shown_url(self, name: str = "digest") -> str:
        """The URL as error messages show it (password masked)."""
        return store.mask_url(self.url(name))

    def close(self) -> None:
        for engine in self._engines:
            engine.dispose()
        if self._server is not None:
            for database in self._databases:
                self._server.release(database)


def refuse_inserts(engine: Engine, table: str, message: str, when: str | None = None) -> None:
    """Make the database refuse INSERTs into `table` (those matching `when`, a condition
    on NEW) with `message`: a failing disk or constraint, injected by a trigger."""
    name = f"refuse_{table}_{secrets.token_hex(3)}"
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            condition = f" WHEN {when}" if when else ""
            conn.exec_driver_sql(
                f"CREATE TRIGGER {name} BEFORE INSERT ON {table}{condition} "
                f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
            )
        else:
            condition = f" WHEN ({when})" if when else ""
            conn.exec_driver_sql(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql "
                f"AS $$ BEGIN RAISE EXCEPTION '{message}'; END $$"
            )
            conn.exec_driver_sql(
                f"CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW{condition} "
                f"EXECUTE FUNCTION {name}()"
            )


def make_backend(request: Any, tmp_path: Path) -> Iterator[Backend]:
    """The body of the `backend` fixture: request.param names the backend."""
    server: PgServer | None = None
    if request.param == "postgresql":
        found = request.getfixturevalue("_pg_server")
        if isinstance(found, str):
            unavailable(found)
        server = found
    backend = Backend(request.param, tmp_path, server)
    try:
        yield backend
    finally:
        backend.close()
