"""Tests of digest.store's engine and migrations, on SQLite and PostgreSQL (tests/backends.py).

The SQLite pragmas and write lock are tested on SQLite files alone."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.schema import CreateIndex
from sqlmodel import Session, SQLModel

from digest import store
from digest.errors import StoreError
from digest.store.engine import write_bind
from digest.store.migrations import _V1
from tests.backends import Backend
from tests.store_helpers import D1, NOW, migrated_engine, paper


@pytest.fixture
def engine(backend: Backend) -> Engine:
    return backend.engine()


# --------------------------------------------------------------------------- engine


def test_open_engine_sets_wal_foreign_keys_busy_timeout_and_creates_the_folder(
    tmp_path: Path,
) -> None:
    path = tmp_path / "deep" / "er" / "digest.db"
    engine = store.open_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        pragma = {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
        }
    assert pragma == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 10_000,
                      "synchronous": 1}  # fmt: skip
    # WAL is a property of the file: a plain sqlite3 connection sees it too
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_foreign_keys_are_enforced(engine: Engine) -> None:
    with (
        # SQLite: "FOREIGN KEY constraint failed"; PostgreSQL: "violates foreign key constraint"
        pytest.raises(IntegrityError, match=r"(?i)foreign key constraint"),
        engine.begin() as conn,
    ):
        conn.exec_driver_sql(
            "INSERT INTO listings VALUES ('nope', '2025-10-01', 0, 0, NULL, "
            "'2025-10-01 00:00:00', '2025-10-01 00:00:00')"
        )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+nosuchdriver://digest:s3cret@127.0.0.1/db", "digest:***@127.0.0.1"),
        ("not a url at all", "not a valid database URL"),
    ],
)
def test_open_engine_errors_are_one_line_and_mask_the_password(url: str, expected: str) -> None:
    with pytest.raises(StoreError) as info:
        store.open_engine(url)
    message = str(info.value)
    assert expected in message and "s3cret" not in message and "\n" not in message


def test_open_engine_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "digest.db"
    path.write_bytes(b"this is a text file, not SQLite " * 100)
    with pytest.raises(StoreError, match=rf"cannot open database sqlite:///{path}: .*not a data"):
        store.open_engine(f"sqlite:///{path}")


def test_a_second_writer_waits_for_the_first_instead_of_failing(tmp_path: Path) -> None:
    engine = migrated_engine(tmp_path)  # SQLite's one write lock and its busy timeout
    other = store.open_engine(str(engine.url))  # another process, as far as SQLite knows
    holding = threading.Event()
    errors: list[BaseException] = []

    def hold_the_write_lock() -> None:
        try:
            with write_bind(engine).begin() as conn:
                conn.execute(text("INSERT INTO meta VALUES ('held', 'yes')"))
                holding.set()
                time.sleep(0.3)
        except BaseException as e:  # reported to the test thread below
            errors.append(e)
            holding.set()

    thread = threading.Thread(target=hold_the_write_lock)
    thread.start()
    assert holding.wait(5)
    with Session(other) as session:
        store.set_meta(session, "second", "waited")  # blocks on the busy timeout, then works
        assert store.get_meta(session, "held") == "yes"
    thread.join()
    assert errors == []


# --------------------------------------------------------------------------- migrations


def versions(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(text("SELECT version FROM schema_version"))]


def test_migrate_fresh_database_is_current_and_idempotent(backend: Backend) -> None:
    engine = backend.engine("fresh", migrated=False)
    assert store.migrate(engine) == store.SCHEMA_VERSION == len(store.MIGRATIONS)
    assert set(inspect(engine).get_table_names()) == {*SQLModel.metadata.tables, "schema_version"}
    assert store.migrate(engine) == store.SCHEMA_VERSION  # nothing to do the second time
    assert versions(engine) == [store.SCHEMA_VERSION]


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    """The frozen v1 snapshot stays v1 (later migrations only add columns), and a migrated
    database has exactly the columns, types and nullability models.py declares."""
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        for table in SQLModel.metadata.sorted_tables:
            frozen = _V1.tables[table.name]
            for column in frozen.columns:  # every v1 column as models.py has it now
                now = table.c[column.name]
                assert str(column.type.compile(dialect=dialect)) == str(
                    now.type.compile(dialect=dialect)
                ), (table.name, column.name)
                assert (column.nullable, column.primary_key) == (now.nullable, now.primary_key)
            assert sorted(str(CreateIndex(i).compile(dialect=dialect)) for i in frozen.indexes) == (
                sorted(str(CreateIndex(i).compile(dialect=dialect)) for i in table.indexes)
            )
    inspector = inspect(engine)
    dialect = engine.dialect
    for table in SQLModel.metadata.sorted_tables:
        reflected = {
            c["name"]: (c["nullable"], str(c["type"].compile(dialect=dialect)))
            for c in inspector.get_columns(table.name)
        }
        declared = {
            c.name: (c.nullable, str(c.type.compile(dialect=dialect))) for c in table.columns
        }
        assert reflected == declared, table.name


def test_migrate_refuses_a_newer_database(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE schema_version SET version = 7"))
    with pytest.raises(StoreError) as info:
        store.migrate(engine)
    assert str(info.value).startswith(
        f"database schema v7 is newer than this papers-digest (v{store.SCHEMA_VERSION}); "
        "upgrade the program"
    )


def add_language_column(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE papers ADD COLUMN language VARCHAR"))
    conn.execute(text("UPDATE papers SET language = 'en'"))


def test_migrate_upgrades_a_v1_database_to_v2_keeping_its_data(backend: Backend) -> None:
    engine = backend.engine("v1", migrated=False)
    assert store.migrate(engine, store.MIGRATIONS[:1]) == 1
    with engine.begin() as conn:  # a v1 database in use: a subscriber and a leased digest
        conn.execute(text("INSERT INTO subscribers VALUES ('ada@x.org', '2026-01-01', NULL)"))
        conn.execute(text(
            "INSERT INTO digests (subscriber, slot, status, attempts, next_attempt_at, "
            "message_id, recipient, sender, subject, paper_ids_json, created_at) VALUES "
            "('ada@x.org', '2026-01-02', 'pending', 0, '2026-01-02 00:05', '<m>', 'ada@x.org', "
            "'d@x.org', 's', '[]', '2026-01-02')"))  # fmt: skip
    assert store.migrate(engine) == store.SCHEMA_VERSION
    with engine.connect() as conn:
        assert conn.execute(text(
            "SELECT subscriber, status, lease_host, lease_pid, maybe_sent_at FROM digests"
        )).all() == [("ada@x.org", "pending", None, None, None)]  # fmt: skip
        assert conn.execute(text("SELECT email, covered_until FROM subscribers")).all() == [
            ("ada@x.org", None)
        ]


def test_migrate_runs_a_further_migration_keeping_the_data(engine: Engine) -> None:
    store.upsert_listings(engine, D1, [paper("2510.00001")], NOW)
    later = store.SCHEMA_VERSION + 1
    assert store.migrate(engine, [*store.MIGRATIONS, add_language_column]) == later
    assert versions(engine) == [later]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, language FROM papers")).all() == [("2510.00001", "en")]
    assert store.migrate(engine, [*store.MIGRATIONS, add_language_column]) == later  # once


def test_a_failing_migration_rolls_back_entirely(engine: Engine) -> None:
    def half_done(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE scratch (x INTEGER)"))
        conn.execute(text("ALTER TABLE papers ADD COLUMN title VARCHAR"))  # duplicate: fails

    # SQLite: "duplicate column name: title"; PostgreSQL: 'column "title" ... already exists'
    shown = re.escape(store.mask_url(engine.url))
    failing = rf"migration v{store.SCHEMA_VERSION + 1} failed on {shown}: .*(duplicate|exists)"
    with pytest.raises(StoreError, match=failing):
        store.migrate(engine, [*store.MIGRATIONS, half_done])
    assert versions(engine) == [store.SCHEMA_VERSION]
    assert "scratch" not in inspect(engine).get_table_names()  # the DDL was rolled back too


def test_migrate_refuses_tables_made_without_migrations(backend: Backend) -> None:
    engine = backend.engine("create_all", migrated=False)
    SQLModel.metadata.create_all(engine)
    with pytest.raises(StoreError, match=r"migration v1 failed.*already exists"):
        store.migrate(engine)
