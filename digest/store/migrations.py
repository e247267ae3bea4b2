"""Schema migrations: a `schema_version` table and an ordered list of migration functions.

Owns: the schema as each version left it, and `migrate`, which brings any older
database to the current version in one transaction. Does not own the table
classes the rest of the program uses (`digest/models.py`); a test checks that a
migrated database matches them.

Why not Alembic: we ship one package and run one command; an ordered list of
plain functions needs no extra tool, no `alembic.ini` and no script folder.

Rules for a new migration: append a function taking a Connection; use plain
`ALTER TABLE` / `CREATE TABLE` / `CREATE INDEX` (never drop and recreate a live
table); update `digest/models.py` to match. Migration 1 creates the v1 tables
from the frozen snapshot below, never from the live models, so that a fresh
database still gets exactly v1 before migration 2's ALTERs run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Date,
    DateTime,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    text,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.types import TypeEngine

from digest.errors import StoreError
from digest.store.engine import mask_url, wrap_db_errors, write_bind

Migration = Callable[[Connection], None]
UTC_DATETIME = DateTime(timezone=True)  # what SQLModel's UTCDateTime creates

# The v1 schema, frozen: identical to digest/models.py as of v1. Do not edit; add a migration.
_V1 = MetaData()
Table(
    "papers", _V1,
    Column("id", String, primary_key=True),
    Column("title", String, nullable=False),
    Column("abstract", String, nullable=False),
    Column("authors_json", String, nullable=False),
    Column("author_count", Integer, nullable=False),
    Column("organization", String),
    Column("organization_fullname", String),
    Column("upvotes", Integer, nullable=False),
    Column("num_comments", Integer, nullable=False),
    Column("thumbnail", String),
    Column("media_urls_json", String, nullable=False),
    Column("github_repo", String),
    Column("github_stars", Integer),
    Column("project_page", String),
    Column("ai_summary", String),
    Column("ai_keywords_json", String, nullable=False),
    Column("published_at", UTC_DATETIME),
    Column("first_seen_at", UTC_DATETIME, nullable=False),
    Column("updated_at", UTC_DATETIME, nullable=False),
)  # fmt: skip
Table(
    "listings", _V1,
    Column("paper_id", String, ForeignKey("papers.id"), primary_key=True),
    Column("listed_on", Date, primary_key=True),
    Column("upvotes", Integer, nullable=False),
    Column("num_comments", Integer, nullable=False),
    Column("submitter", String),
    Column("first_seen_at", UTC_DATETIME, nullable=False),
    Column("last_seen_at", UTC_DATETIME, nullable=False),
    Index("ix_listings_listed_on", "listed_on"),
)  # fmt: skip
Table(
    "days", _V1,
    Column("day", Date, primary_key=True),
    Column("source", String, nullable=False),
    Column("etag", String),
    Column("last_modified", String),
    Column("paper_count", Integer, nullable=False),
    Column("fetched_at", UTC_DATETIME, nullable=False),
)  # fmt: skip
Table(
    "polls", _V1,
    Column("id", Integer, primary_key=True),
    Column("started_at", UTC_DATETIME, nullable=False),
    Column("finished_at", UTC_DATETIME),
    Column("days", Integer, nullable=False),
    Column("new", Integer, nullable=False),
    Column("updated", Integer, nullable=False),
    Column("source", String),
    Column("ok", Boolean, nullable=False),
    Column("error", String),
)  # fmt: skip
Table(
    "digests", _V1,
    Column("id", Integer, primary_key=True),
    Column("subscriber", String, nullable=False),
    Column("slot", UTC_DATETIME, nullable=False),
    Column("status", String, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTC_DATETIME),
    Column("last_reply", String),
    Column("message_id", String, nullable=False),
    Column("recipient", String, nullable=False),
    Column("sender", String, nullable=False),
    Column("subject", String, nullable=False),
    Column("paper_ids_json", String, nullable=False),
    Column("created_at", UTC_DATETIME, nullable=False),
    Column("sent_at", UTC_DATETIME),
    UniqueConstraint("subscriber", "slot"),
    Index("ix_digests_subscriber", "subscriber"),
    Index("ix_digests_status", "status"),
)  # fmt: skip
Table(
    "digest_messages", _V1,
    Column("digest_id", Integer, ForeignKey("digests.id"), primary_key=True,
           autoincrement=False),
    Column("message", LargeBinary, nullable=False),
)  # fmt: skip
Table(
    "deliveries", _V1,
    Column("subscriber", String, primary_key=True),
    Column("paper_id", String, primary_key=True),
    Column("digest_id", Integer, ForeignKey("digests.id"), nullable=False),
    Column("delivered_at", UTC_DATETIME, nullable=False),
    Index("ix_deliveries_digest_id", "digest_id"),
)  # fmt: skip
Table(
    "subscribers", _V1,
    Column("email", String, primary_key=True),
    Column("first_seen_at", UTC_DATETIME, nullable=False),
    Column("last_slot", UTC_DATETIME),
)  # fmt: skip
Table(
    "meta", _V1,
    Column("key", String, primary_key=True),
    Column("value", String, nullable=False),
)  # fmt: skip


def _v1_create_tables(conn: Connection) -> None:
    # checkfirst=False: tables that exist without a schema_version are an unknown schema.
    _V1.create_all(conn, checkfirst=False)


def _add_column(conn: Connection, table: str, column: str, kind: TypeEngine[Any]) -> None:
    """ALTER TABLE ... ADD COLUMN, nullable, with the type as this dialect spells it."""
    spelled = kind.compile(dialect=conn.dialect)
    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {spelled}"))


def _v2_leases_coverage(conn: Connection) -> None:
    """Issue 9 (nothing lost, nothing twice): a lease names its owner process (host, pid,
    start time) so a restart takes over the leases of a dead one at once; a digest whose
    final reply timed out records when it was "maybe delivered"; each subscriber keeps the
    last listing day their previous digest covered (the coverage watermark)."""
    _add_column(conn, "digests", "lease_host", String())
    _add_column(conn, "digests", "lease_pid", Integer())
    _add_column(conn, "digests", "lease_started", String())
    _add_column(conn, "digests", "maybe_sent_at", UTC_DATETIME)
    _add_column(conn, "subscribers", "covered_until", Date())



# Counts from the source that can grow past 2^31 (a record with upvotes 3e9 must not fail
# a whole day with "integer out of range" on PostgreSQL).
_BIGINT_COUNTS = {
    "papers": ("author_count", "upvotes", "num_comments", "github_stars"),
    "listings": ("upvotes", "num_comments"),
}


def _v3_counts_bigint(conn: Connection) -> None:
    """Counts become BIGINT. SQLite's INTEGER already holds 64 bits (and SQLite cannot
    ALTER a column's type), so only other databases change."""
    if conn.dialect.name == "sqlite":
        return
    for table, columns in _BIGINT_COUNTS.items():
        changes = ", ".join(f"ALTER COLUMN {column} TYPE BIGINT" for column in columns)
        conn.execute(text(f"ALTER TABLE {table} {changes}"))


def _v4_recipients_and_suppressions(conn: Connection) -> None:
    """Recipients in control: the opaque key of each one's links and their preferences
    (pause, muted topics), and the addresses that unsubscribed."""
    v4 = MetaData()
    Table(
        "recipients", v4,
        Column("email", String, primary_key=True),
        Column("key", String, nullable=False, unique=True),
        Column("created_at", UTC_DATETIME, nullable=False),
        Column("paused_until", UTC_DATETIME),
        Column("muted_topics_json", String, nullable=False),
        Column("updated_at", UTC_DATETIME),
    )  # fmt: skip
    Table(
        "suppressions", v4,
        Column("email", String, primary_key=True),
        Column("suppressed_at", UTC_DATETIME, nullable=False),
        Column("how", String, nullable=False),
    )  # fmt: skip
    v4.create_all(conn, checkfirst=False)


_LZ4_MESSAGES = "ALTER TABLE digest_messages ALTER COLUMN message SET COMPRESSION lz4"


def _v5_outbox_at_scale(conn: Connection) -> None:
    """Issue 12 (100k on PostgreSQL): an index of the pending digests alone, in id order,
    and the rendered messages compressed with lz4 where the server has it.

    A claim takes the oldest due digests (ORDER BY id LIMIT n); on PostgreSQL the only
    index in id order was the primary key, so every claim walked past every digest
    already sent: a drain of 100k cost O(n^2) (a claim took ~5 ms with 40k sent, 0.1 ms
    with this index). SQLite orders equal keys of ix_digests_status by rowid and needs
    none, but gets the same index: one schema for both.

    A message (~27 KB) is compressed when written and decompressed when claimed;
    PostgreSQL's default pglz wrote 28k messages in 7.7 s of server CPU (~100 MB/s),
    lz4 in 1.4 s. lz4 needs PostgreSQL 14 built with it: elsewhere (an error, in a
    savepoint of its own) the column keeps pglz. Rows written before keep theirs."""
    conn.execute(text("CREATE INDEX ix_digests_pending ON digests (id) WHERE status = 'pending'"))
    if conn.dialect.name != "postgresql":
        return
    try:
        with conn.begin_nested():
            conn.execute(text(_LZ4_MESSAGES))
    except DBAPIError:
        pass  # before PostgreSQL 14, or built without lz4: pglz, as before


MIGRATIONS: tuple[Migration, ...] = (
    _v1_create_tables,
    _v2_leases_coverage,
    _v3_counts_bigint,
    _v4_recipients_and_suppressions,
    _v5_outbox_at_scale,
)
SCHEMA_VERSION = len(MIGRATIONS)
# pg_advisory_xact_lock's key for migrate: any fixed 64-bit number, ours alone
_MIGRATE_LOCK_KEY = 0x5061_7065_7273_4D67  # "PapersMg"


def _lock_schema(conn: Connection) -> None:
    """Hold the schema for this transaction: a second migrate waits here, then finds the
    schema current. SQLite: the write lock taken at BEGIN (write_bind) already does it;
    PostgreSQL: a transaction-level advisory lock (CREATE TABLE IF NOT EXISTS alone races:
    two processes both find no table and one fails on the catalog's unique index)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATE_LOCK_KEY})


def _read_version(conn: Connection) -> int:
    conn.execute(text("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"))
    version = conn.execute(text("SELECT max(version) FROM schema_version")).scalar()
    if version is None:
        conn.execute(text("INSERT INTO schema_version (version) VALUES (0)"))
        return 0
    return int(version)


def migrate(engine: Engine, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the database to the latest version in one transaction; return that version.

    Processes migrating at once take turns (see `_lock_schema`): the first migrates,
    the others then find the schema current. A fresh database gets every migration; a
    current one gets none. A database newer than `migrations` is refused with
    StoreError; any failure rolls the whole upgrade back. `migrations` is a parameter so
    tests can add one more.
    """
    known = len(migrations)
    with (
        wrap_db_errors(f"migrating the database to schema v{known}", engine.url),
        write_bind(engine).begin() as conn,
    ):
        _lock_schema(conn)
        version = _read_version(conn)
        if version > known:
            raise StoreError(
                f"database schema v{version} is newer than this papers-digest (v{known}); "
                f"upgrade the program ({mask_url(engine.url)})"
            )
        for number in range(version + 1, known + 1):
            with wrap_db_errors(f"migration v{number}", engine.url):
                migrations[number - 1](conn)
            conn.execute(text("UPDATE schema_version SET version = :v"), {"v": number})
    return known
