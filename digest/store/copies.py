"""Reads for a digest's web copy: the stored digest of a (subscriber, slot), and papers by id.

Owns: `web_copy` (one read: the digest's row, its paper ids in the order planning gave
them, and its stored message bytes) and `papers_by_id` (papers as of their latest
listing, for the matches a web copy or a feed shows beyond what the message holds).
Read-only: the outbox's writes stay in `outbox.py`, the feed's in `feeds.py`.

Does not own: what the page shows (`digest/web/copies.py`), the link that names a
digest (`digest/web/tokens.py`), or the message itself (rendered once by planning).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, Table, and_, bindparam, func, select

from digest.models import DigestMessageRow, DigestRow
from digest.records import Paper, as_utc
from digest.store.engine import wrap_db_errors
from digest.store.listings import LISTINGS, PAPERS, paper_from_columns

_DIGESTS: Table = DigestRow.__table__  # type: ignore[attr-defined]  # SQLModel types no __table__
_MESSAGES: Table = DigestMessageRow.__table__  # type: ignore[attr-defined]  # as above
CHUNK = 500  # ids per IN (...) list


@dataclass(frozen=True, slots=True)
class StoredDigest:
    """A digest as the outbox keeps it."""

    id: int
    subscriber: str
    slot: dt.datetime
    status: str
    paper_ids: tuple[str, ...]  # shown in full first, then the matches past max_papers
    message: bytes | None  # None: no message kept (a digest for a feed only)


# built once: every web copy view runs it
_COPY = (
    select(
        _DIGESTS.c.id, _DIGESTS.c.subscriber, _DIGESTS.c.slot, _DIGESTS.c.status,
        _DIGESTS.c.paper_ids_json, _MESSAGES.c.message,
    )
    .select_from(_DIGESTS.outerjoin(_MESSAGES, _MESSAGES.c.digest_id == _DIGESTS.c.id))
    .where(_DIGESTS.c.subscriber == bindparam("subscriber"), _DIGESTS.c.slot == bindparam("slot"))
)  # fmt: skip


def web_copy(engine: Engine, subscriber: str, slot: dt.datetime) -> StoredDigest | None:
    """The digest of `subscriber` at `slot` with its message, or None (one read)."""
    with wrap_db_errors("reading a digest's web copy", engine.url), engine.connect() as conn:
        row = conn.execute(_COPY, {"subscriber": subscriber, "slot": as_utc(slot)}).first()
    if row is None:
        return None
    return StoredDigest(
        id=row.id, subscriber=row.subscriber, slot=as_utc(row.slot), status=row.status,
        paper_ids=tuple(json.loads(row.paper_ids_json)),
        message=bytes(row.message) if row.message is not None else None,
    )  # fmt: skip


def papers_by_id(engine: Engine, ids: Sequence[str]) -> dict[str, Paper]:
    """The papers `ids` names that are stored, each as of its latest listing."""
    wanted = sorted(set(ids))
    out: dict[str, Paper] = {}
    with wrap_db_errors("reading papers", engine.url), engine.connect() as conn:
        for start in range(0, len(wanted), CHUNK):
            chunk = wanted[start : start + CHUNK]
            latest = (
                select(LISTINGS.c.paper_id, func.max(LISTINGS.c.listed_on).label("latest_day"))
                .where(LISTINGS.c.paper_id.in_(chunk))
                .group_by(LISTINGS.c.paper_id)
                .subquery()
            )
            query = (
                select(PAPERS, latest.c.latest_day, LISTINGS.c.submitter.label("latest_submitter"))
                .join(latest, PAPERS.c.id == latest.c.paper_id)
                .join(LISTINGS, and_(LISTINGS.c.paper_id == latest.c.paper_id,
                                     LISTINGS.c.listed_on == latest.c.latest_day))
            )  # fmt: skip
            for row in conn.execute(query):
                paper = paper_from_columns(row._mapping, row.latest_day, row.latest_submitter)
                out[paper.id] = paper
    return out
