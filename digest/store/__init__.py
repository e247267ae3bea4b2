"""The database: engine, migrations, and every query and write over the tables in models.py.

Owns: `open_engine` (`engine.py`), `migrate` (`migrations.py`), the listing upsert
and the reads of papers (`listings.py`), polls, days and subscriber state
(`state.py`), the reads of web copies (`copies.py`), digests kept for a feed only and
a feed's entries (`feeds.py`), and the outbox state machine (`outbox.py`: digests
pending -> sent | failed | cancelled, added, cancelled and counted; `claims.py`:
claimed in batches, the outcomes group-committed; `leases.py`: leases renewed, handed
back, taken over). All SQL lives in this package. Does not own the table classes
(`digest/models.py`) or what a digest holds (`digest/pipeline.py` plans it,
`digest/mail/` delivers it).

Usage (every write is one short transaction, like `outbox.py`)::

    engine = store.open_engine(config.storage.url)
    store.migrate(engine)
    report = store.upsert_listings(engine, day, papers, now)   # its own transaction
    with Session(engine) as session:
        store.save_day(session, day, "api", etag, last_modified, len(papers), now)  # commits
        papers = store.candidate_papers(session, first_day, last_day)             # reads

Database failures surface as `StoreError` with one line naming what and where.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from digest.store.engine import database_exists, mask_url, open_engine
    from digest.store.listings import UpsertReport, candidate_papers, upsert_listings
    from digest.store.migrations import MIGRATIONS, SCHEMA_VERSION, Migration, migrate
    from digest.store.state import (
        StoreStats,
        delivered_ids,
        finish_poll,
        get_day,
        get_meta,
        get_subscriber_state,
        get_subscriber_states,
        health_problems,
        last_poll,
        papers_taken,
        save_day,
        save_subscriber_state,
        set_meta,
        start_poll,
        store_stats,
    )

# Loaded on first use (PEP 562): `digest status` reads through `digest.store.peek`
# without importing SQLAlchemy, which importing this package would otherwise do.
_WHERE = {
    "database_exists": "engine", "mask_url": "engine", "open_engine": "engine",
    "UpsertReport": "listings", "candidate_papers": "listings", "upsert_listings": "listings",
    "MIGRATIONS": "migrations", "SCHEMA_VERSION": "migrations", "Migration": "migrations",
    "migrate": "migrations",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'digest.store' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(f"digest.store.{_WHERE.get(name, 'state')}")
    value = getattr(module, name)
    globals()[name] = value
    return value


__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Migration",
    "StoreStats",
    "UpsertReport",
    "candidate_papers",
    "database_exists",
    "delivered_ids",
    "finish_poll",
    "get_day",
    "get_meta",
    "get_subscriber_state",
    "get_subscriber_states",
    "health_problems",
    "last_poll",
    "mask_url",
    "migrate",
    "open_engine",
    "papers_taken",
    "save_day",
    "save_subscriber_state",
    "set_meta",
    "start_poll",
    "store_stats",
    "upsert_listings",
]
