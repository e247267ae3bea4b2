"""Tests of digest.store's engine and migrations, on SQLite and PostgreSQL (tests/backends.py).

The SQLite pragmas and write lock are tested on SQLite files alone."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import BigInteger, Connection, Engine, UniqueConstraint, inspect, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.schema import CreateIndex
from sqlalchemy.types import TypeEngine
from sqlmodel import Session, SQLModel

from digest import store
from digest.errors import StoreError
from digest.store import outbox
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


_LATER_INDEXES = {"ix_digests_pending"}  # migration 5


def test_the_frozen_v1_snapshot_is_what_models_py_declared_at_v1() -> None:
    """Migration 1 builds from the snapshot, never from the live models: every v1 column
    is as models.py has it now, except the counts migration 3 made BIGINT, and every v1
    index (migration 5 added ix_digests_pending)."""
    for dialect in (sqlite.dialect(), postgresql.dialect()):
        for table in SQLModel.metadata.sorted_tables:
            if table.name not in _V1.tables:  # made by a later migration
                continue
            frozen = _V1.tables[table.name]
            for column in frozen.columns:
                now = table.c[column.name]
                expected = (
                    "INTEGER"
                    if isinstance(now.type, BigInteger)
                    else str(now.type.compile(dialect=dialect))
                )
                assert str(column.type.compile(dialect=dialect)) == expected, column
                assert (column.nullable, column.primary_key) == (now.nullable, now.primary_key)
            assert sorted(str(CreateIndex(i).compile(dialect=dialect)) for i in frozen.indexes) == (
                sorted(
                    str(CreateIndex(i).compile(dialect=dialect))
                    for i in table.indexes
                    if i.name not in _LATER_INDEXES
                )
            )


def _type_name(engine: Engine, type_: TypeEngine[object]) -> str:
    """A column type as `engine` spells it, SQLite's integers as the one 64-bit INTEGER
    they all are (its column affinity; SQLite cannot ALTER a column's type)."""
    name = str(type_.compile(dialect=engine.dialect)).upper()
    if engine.dialect.name == "sqlite" and name in ("INTEGER", "BIGINT", "SMALLINT"):
        return "INTEGER"
    return name


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    """Every migration applied, the database is what models.py declares: columns, types,
    nullability, keys and indexes (add a migration with every change to the models)."""
    inspector = inspect(engine)
    for table in SQLModel.metadata.sorted_tables:
        reflected = {
            c["name"]: (_type_name(engine, c["type"]), c["nullable"])
            for c in inspector.get_columns(table.name)
        }
        declared = {c.name: (_type_name(engine, c.type), c.nullable) for c in table.columns}
        assert reflected == declared, table.name
        primary = inspector.get_pk_constraint(table.name)["constrained_columns"]
        assert sorted(primary) == sorted(c.name for c in table.primary_key.columns)
        indexes = {  # PostgreSQL lists a unique constraint's own index too: not an Index
            tuple(i["column_names"])
            for i in inspector.get_indexes(table.name)
            if "duplicates_constraint" not in i
        }
        assert indexes == {tuple(c.name for c in i.columns) for i in table.indexes}, table.name
        uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(table.name)}
        declared_uniques = {
            tuple(c.name for c in u.columns)
            for u in table.constraints
            if isinstance(u, UniqueConstraint)
        }
        assert uniques == declared_uniques, table.name
        foreign = {
            (tuple(f["constrained_columns"]), f["referred_table"])
            for f in inspector.get_foreign_keys(table.name)
        }
        assert foreign == {((f.parent.name,), f.column.table.name) for f in table.foreign_keys}, (
            table.name
        )


def test_the_pending_index_holds_only_the_pending_digests(engine: Engine) -> None:
    """Migration 5: a claim walks ix_digests_pending, the pending digests alone in id order
    (a partial index), not past every digest sent before (O(n^2) over a drain)."""
    (index,) = [
        i for i in inspect(engine).get_indexes("digests") if i["name"] == "ix_digests_pending"
    ]
    assert index["column_names"] == ["id"]
    where = str(index["dialect_options"][f"{engine.dialect.name}_where"])
    assert re.sub(r"[()\s]|::text", "", where) == "status='pending'"


def test_messages_are_compressed_with_lz4_where_the_server_has_it(
    postgresql_backend: Backend,
) -> None:
    """Migration 5: a rendered message is stored lz4-compressed on a PostgreSQL that has
    lz4 (pglz compressed at ~100 MB/s), pglz elsewhere; either way it reads back whole."""
    engine = postgresql_backend.engine()
    with engine.begin() as conn:
        conn.execute(text("CREATE TEMPORARY TABLE probe (b bytea)"))
        with conn.begin_nested() as probing:
            try:
                conn.execute(text("ALTER TABLE probe ALTER COLUMN b SET COMPRESSION lz4"))
                method = "lz4"
            except DBAPIError:
                probing.rollback()
                method = "pglz"
    message = b"".join(b"<p>paper %d, a line of a digest</p>\r\n" % i for i in range(900))
    (digest_id,) = outbox.add_digests(engine, [outbox.NewDigest(
        "a@example.org", NOW, "a@example.org", "d@example.org", "<1@x>", "Digest", ("p1",), message,
    )], now=NOW)  # fmt: skip
    with engine.connect() as conn:
        stored, how = conn.execute(
            text("SELECT message, pg_column_compression(message) FROM digest_messages "
                 "WHERE digest_id = :id"), {"id": digest_id}).one()  # fmt: skip
    assert (bytes(stored), how) == (message, method)


def test_a_count_past_2_to_the_31_is_stored(engine: Engine) -> None:
    """PostgreSQL's INTEGER stops at 2^31 - 1 ("integer out of range" failed a whole
    day); the counts are BIGINT since migration 3."""
    big = 3 * 2**31
    store.upsert_listings(
        engine,
        D1,
        [paper("2510.00001", upvotes=big, num_comments=big, author_count=big, github_stars=big)],
        NOW,
    )
    with Session(engine) as session:
        (stored,) = store.candidate_papers(session, D1, D1)
    assert (stored.upvotes, stored.num_comments, stored.author_count, stored.github_stars) == (
        big, big, big, big,
    )  # fmt: skip


def test_a_v1_paper_takes_a_count_past_2_to_the_31_after_the_upgrade(backend: Backend) -> None:
    engine = backend.engine("v1", migrated=False)
    assert store.migrate(engine, store.MIGRATIONS[:1]) == 1
    store.upsert_listings(engine, D1, [paper("2510.00001", upvotes=41)], NOW)  # as v1 stored it
    assert store.migrate(engine) == store.SCHEMA_VERSION
    report = store.upsert_listings(engine, D1, [paper("2510.00001", upvotes=3 * 2**31)], NOW)
    assert [p.upvotes for p in report.updated] == [3 * 2**31]


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
