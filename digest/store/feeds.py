"""The Atom feeds' side of the store: digests that go to a feed only, and a feed's entries.

A subscriber with ``delivery = "feed"`` gets no mail. Their digests are still planned,
and stored as rows of status ``feed`` ("delivered to the feed"): no message is kept, no
drain ever claims them (claims take ``pending`` rows only), and their papers are
recorded as delivered in the same transaction as the row, so the feed has them at once
and the next digest does not repeat them. `digest status` counts them apart.

Owns: `add_fed_digests` (those rows and their deliveries, once per (subscriber, slot),
INSERT ... ON CONFLICT: two processes planning the same slot write one) and
`feed_entries` (one read: a subscriber's delivered papers, newest digest first, in the
order the digest ranked them). Does not own the outbox's state machine (`outbox.py`),
the feed document (`digest/web/feeds.py`) or planning (`digest/pipeline.py`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, Table, bindparam, select
from sqlalchemy.exc import SQLAlchemyError

from digest.errors import StoreError
from digest.models import DeliveryRow, DigestRow
from digest.records import as_utc
from digest.store.engine import describe_error, dialect_insert, mask_url, write_bind
from digest.store.outbox import NewDigest

FED = "feed"  # a digest's status: delivered to the subscriber's feed, never mailed
_DIGESTS: Table = DigestRow.__table__  # type: ignore[attr-defined]  # SQLModel types no __table__
_DELIVERIES: Table = DeliveryRow.__table__  # type: ignore[attr-defined]  # as above


def add_fed_digests(
    engine: Engine, digests: Sequence[NewDigest], now: dt.datetime
) -> list[int | None]:
    """Store digests of feed-only subscribers as delivered to their feed, with their
    papers' deliveries, in one transaction. Each one's id, None where (subscriber, slot)
    already had a digest."""
    if not digests:
        return []
    now = as_utc(now)
    rows = [
        {"subscriber": d.subscriber, "slot": as_utc(d.slot), "status": FED, "attempts": 0,
         "message_id": d.message_id, "recipient": d.recipient, "sender": d.sender,
         "subject": d.subject, "paper_ids_json": json.dumps(list(d.paper_ids)),
         "created_at": now, "sent_at": now, "last_reply": "delivered to the feed"}
        for d in digests
    ]  # fmt: skip
    try:
        with write_bind(engine).begin() as conn:
            dialect = conn.dialect.name
            statement = (
                dialect_insert(dialect, _DIGESTS)
                .on_conflict_do_nothing(index_elements=["subscriber", "slot"])
                .returning(_DIGESTS.c.id, _DIGESTS.c.subscriber, _DIGESTS.c.slot)
            )
            inserted = {
                (subscriber, as_utc(slot)): digest_id
                for digest_id, subscriber, slot in conn.execute(statement, rows)
            }
            ids = [inserted.get((d.subscriber, as_utc(d.slot))) for d in digests]
            deliveries = [
                {"subscriber": d.subscriber, "paper_id": paper_id, "digest_id": digest_id,
                 "delivered_at": now}
                for d, digest_id in zip(digests, ids, strict=True) if digest_id is not None
                for paper_id in d.paper_ids
            ]  # fmt: skip
            if deliveries:  # a paper delivered before keeps its first delivery
                conn.execute(dialect_insert(dialect, _DELIVERIES).on_conflict_do_nothing(),
                             deliveries)  # fmt: skip
            return ids
    except SQLAlchemyError as e:
        raise StoreError(
            f"feeds: cannot add {len(digests)} digests on {mask_url(engine.url)}: "
            f"{describe_error(e)}"
        ) from e


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """A paper delivered to a subscriber, and the digest it came with."""

    paper_id: str
    digest_id: int
    slot: dt.datetime  # the digest's slot (UTC): the entry's date


# built once: every feed request runs it
_ENTRIES = (
    select(_DELIVERIES.c.paper_id, _DIGESTS.c.id, _DIGESTS.c.slot, _DIGESTS.c.paper_ids_json)
    .join(_DIGESTS, _DIGESTS.c.id == _DELIVERIES.c.digest_id)
    .where(_DELIVERIES.c.subscriber == bindparam("subscriber"))
    .order_by(_DIGESTS.c.slot.desc(), _DIGESTS.c.id.desc(), _DELIVERIES.c.paper_id)
    .limit(bindparam("limit"))
)


def feed_entries(engine: Engine, subscriber: str, limit: int) -> list[FeedEntry]:
    """The `limit` latest papers delivered to `subscriber` (mailed or fed): newest digest
    first, within a digest in its ranking order (one read)."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(_ENTRIES, {"subscriber": subscriber, "limit": limit}).all()
    except SQLAlchemyError as e:
        raise StoreError(
            f"feeds: cannot read the feed of {subscriber} on {mask_url(engine.url)}: "
            f"{describe_error(e)}"
        ) from e
    ranks: dict[int, dict[str, int]] = {}
    entries = []
    for paper_id, digest_id, slot, paper_ids_json in rows:
        if digest_id not in ranks:
            ranks[digest_id] = {p: n for n, p in enumerate(json.loads(paper_ids_json))}
        entries.append((as_utc(slot), digest_id, ranks[digest_id].get(paper_id, 0), paper_id))
    entries.sort(key=lambda e: (-e[0].timestamp(), -e[1], e[2]))
    return [FeedEntry(paper_id, digest_id, slot) for slot, digest_id, _, paper_id in entries]
