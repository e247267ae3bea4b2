"""benchmarks/cycle.py's baseline for outbox writes on SQLite: a plain sqlite3 executemany.

Owns copying the rows add_digests wrote (digests, their message bytes, the subscribers'
slots) into an empty copy of their tables, timed. Does not own the cycle (cycle.py).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

TABLES = ("digests", "digest_messages", "subscribers")  # what add_digests writes


def plain_executemany(db: Path, batch: int) -> tuple[float, float, int]:
    """Wall and CPU seconds for sqlite3 executemany of the rows add_digests wrote, into an
    empty copy of their tables with the same pragmas, committing every `batch` digests
    (as planning does); reading them back is not timed."""
    src = sqlite3.connect(db)
    copy = db.with_name("executemany.db")
    dst = sqlite3.connect(copy, isolation_level=None)
    for pragma in ("journal_mode=WAL", "foreign_keys=ON", "synchronous=NORMAL"):
        dst.execute(f"PRAGMA {pragma}")
    for (sql,) in src.execute(
        f"SELECT sql FROM sqlite_master WHERE sql IS NOT NULL "
        f"AND tbl_name IN ({','.join('?' * len(TABLES))})",
        TABLES,
    ):
        dst.execute(sql)
    columns = {t: [r[1] for r in src.execute(f"PRAGMA table_info({t})")] for t in TABLES}
    inserts = {
        t: f"INSERT INTO {t} ({','.join(c)}) VALUES ({','.join('?' * len(c))})"
        for t, c in columns.items()
    }
    wall = cpu = 0.0
    rows = 0
    last = 0
    while True:
        ids = [r[0] for r in src.execute(
            "SELECT id FROM digests WHERE id > ? ORDER BY id LIMIT ?", (last, batch))]  # fmt: skip
        if not ids:
            break
        last = ids[-1]
        marks = ",".join("?" * len(ids))
        digests = src.execute(f"SELECT {','.join(columns['digests'])} FROM digests "
                              f"WHERE id IN ({marks})", ids).fetchall()  # fmt: skip
        messages = src.execute(
            f"SELECT {','.join(columns['digest_messages'])} FROM digest_messages "
            f"WHERE digest_id IN ({marks})", ids).fetchall()  # fmt: skip
        subs = src.execute(
            f"SELECT {','.join(columns['subscribers'])} FROM subscribers WHERE email IN "
            f"(SELECT subscriber FROM digests WHERE id IN ({marks}))", ids).fetchall()  # fmt: skip
        started, cpu0 = time.perf_counter(), time.process_time()
        dst.execute("BEGIN IMMEDIATE")
        dst.executemany(inserts["digests"], digests)
        dst.executemany(inserts["digest_messages"], messages)
        dst.executemany(inserts["subscribers"], subs)
        dst.execute("COMMIT")
        wall += time.perf_counter() - started
        cpu += time.process_time() - cpu0
        rows += len(digests)
    src.close()
    dst.close()
    return wall, cpu, rows
