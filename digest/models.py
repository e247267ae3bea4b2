"""The records that flow through the pipeline, and the database tables. No I/O here.

`Paper` is what a parser produces and what matching and rendering consume: one
paper as listed on one day. The `*Row` classes are the SQLModel tables; `store.py`
owns the engine, the migrations and the queries over them, `outbox.py` and `claims.py` the
digest rows' state machine.

All datetimes are timezone-aware UTC (sqlmodel's UTCDateTime refuses naive ones and
hands back aware UTC, SQLite included); `as_utc()` normalises anything else.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import relationship
from sqlmodel import Field, Relationship, SQLModel

if TYPE_CHECKING:  # a Leaf is a plain tuple; only its type comes from the query language
    from digest.topics.query import Leaf


def as_utc(value: dt.datetime) -> dt.datetime:
    """A datetime as aware UTC (SQLite returns naive values that were stored as UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


@dataclass(frozen=True, slots=True)
class Paper:
    """One paper as listed on one day, from either source.

    Optional fields are None (or empty) when the source did not give them; the
    store treats a missing value as "unknown", never as "cleared".
    """

    id: str  # arXiv id, opaque ("2407.21783")
    title: str  # arXiv line-folds collapsed to single spaces
    listed_on: dt.date  # the Daily Papers day, never the shifted top-level publishedAt
    abstract: str = ""  # empty when the source had none (HTML cards)
    authors: tuple[str, ...] = ()  # full names, hidden authors dropped
    author_count: int = 0  # as HF shows it: every author, hidden included
    organization: str | None = None  # HF org name ("ByteDance-Seed")
    organization_fullname: str | None = None  # "ByteDance Seed"
    upvotes: int = 0
    num_comments: int = 0
    thumbnail: str | None = None
    media_urls: tuple[str, ...] = ()
    github_repo: str | None = None  # cleaned: stripped, no embedded whitespace
    github_stars: int | None = None
    project_page: str | None = None
    ai_summary: str | None = None
    ai_keywords: tuple[str, ...] = ()
    submitter: str | None = None  # HF user name of who listed it
    published_at: dt.datetime | None = None  # arXiv v1 time (paper.publishedAt), UTC

    # The parsers only let arXiv ids through; the quoting still keeps a row stored before
    # that check (or written by hand) from reaching out of the path of these links.
    @property
    def url(self) -> str:
        return f"https://huggingface.co/papers/{quote(self.id, safe='/')}"

    @property
    def arxiv_url(self) -> str:
        return f"https://arxiv.org/abs/{quote(self.id, safe='/')}"

    @property
    def pdf_url(self) -> str:
        return f"https://arxiv.org/pdf/{quote(self.id, safe='/')}"


@dataclass(frozen=True, slots=True)
class TopicHit:
    """One topic that matched a paper, and the query leaves that made it match: those
    not under a NOT that match the paper too (words, prefixes, phrases, each in its
    field). The renderer highlights where each occurs in the text it shows."""

    topic: str
    leaves: frozenset[Leaf] = field(default_factory=frozenset)


@dataclass(frozen=True, slots=True)
class Match:
    """A paper chosen for a subscriber, with its explanation."""

    paper: Paper
    hits: tuple[TopicHit, ...]

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(h.topic for h in self.hits)

    @property
    def leaves(self) -> frozenset[Leaf]:
        """Every topic's explaining leaves (what the digest highlights)."""
        if len(self.hits) == 1:
            return self.hits[0].leaves
        return frozenset().union(*(h.leaves for h in self.hits))

    @property
    def score(self) -> int:
        """The first ranking key: how many of the subscriber's topics matched."""
        return len(self.hits)


# ---------------------------------------------------------------------------
# Tables. Lists of strings are stored as JSON text.


class PaperRow(SQLModel, table=True):
    __tablename__ = "papers"

    id: str = Field(primary_key=True)
    title: str
    abstract: str = ""
    authors_json: str = "[]"
    # counts from the source are BIGINT (migration 3): one huge value must not fail a day
    author_count: int = Field(default=0, sa_type=BigInteger)
    organization: str | None = None
    organization_fullname: str | None = None
    upvotes: int = Field(default=0, sa_type=BigInteger)  # the highest seen across listings
    num_comments: int = Field(default=0, sa_type=BigInteger)
    thumbnail: str | None = None
    media_urls_json: str = "[]"
    github_repo: str | None = None
    github_stars: int | None = Field(default=None, sa_type=BigInteger)
    project_page: str | None = None
    ai_summary: str | None = None
    ai_keywords_json: str = "[]"
    published_at: dt.datetime | None = None
    first_seen_at: dt.datetime
    updated_at: dt.datetime


class ListingRow(SQLModel, table=True):
    """A paper listed on a day. A paper listed twice has two rows."""

    __tablename__ = "listings"

    paper_id: str = Field(primary_key=True, foreign_key="papers.id")
    listed_on: dt.date = Field(primary_key=True, index=True)
    upvotes: int = Field(default=0, sa_type=BigInteger)
    num_comments: int = Field(default=0, sa_type=BigInteger)
    submitter: str | None = None
    first_seen_at: dt.datetime
    last_seen_at: dt.datetime


class DayRow(SQLModel, table=True):
    """What we know about fetching one listing day (for conditional GET and status)."""

    __tablename__ = "days"

    day: dt.date = Field(primary_key=True)
    source: str  # "api" | "html"
    etag: str | None = None
    last_modified: str | None = None
    paper_count: int = 0
    fetched_at: dt.datetime


class PollRow(SQLModel, table=True):
    """One poll or `digest fetch` run and its outcome."""

    __tablename__ = "polls"

    id: int | None = Field(default=None, primary_key=True)
    started_at: dt.datetime
    finished_at: dt.datetime | None = None
    days: int = 0
    new: int = 0
    updated: int = 0
    source: str | None = None
    ok: bool = False
    error: str | None = None


class DigestRow(SQLModel, table=True):
    """The outbox: one digest per (subscriber, slot), rendered once, sent at most once.

    status: "pending" -> "sent" | "failed" (permanent, with the server's reply)
    | "cancelled" (the subscriber left the file or unsubscribed; never sent).
    The rendered bytes live in `DigestMessageRow`, written once: the UPDATEs of a row
    (lease, sent, retry) then never rewrite 20-60 KB of message.
    """

    __tablename__ = "digests"
    __table_args__ = (
        UniqueConstraint("subscriber", "slot"),
        # the pending ones in id order, what a claim walks (migration 5)
        Index(
            "ix_digests_pending", "id",
            postgresql_where=text("status = 'pending'"), sqlite_where=text("status = 'pending'"),
        ),
    )  # fmt: skip

    id: int | None = Field(default=None, primary_key=True)
    subscriber: str = Field(index=True)  # the email address, lower-cased
    slot: dt.datetime  # UTC instant of the schedule slot
    status: str = Field(default="pending", index=True)
    attempts: int = 0
    next_attempt_at: dt.datetime | None = None
    last_reply: str | None = None
    message_id: str
    recipient: str  # envelope recipient
    sender: str  # envelope sender
    subject: str = ""
    paper_ids_json: str = "[]"
    created_at: dt.datetime
    sent_at: dt.datetime | None = None
    # who holds the lease while next_attempt_at is a lease (set by a claim, cleared by
    # every outcome): a restart on the same host takes over a dead owner's at once
    lease_host: str | None = None
    lease_pid: int | None = None
    lease_started: str | None = None  # the owner's start time (pids are reused)
    # when the reply to the final dot timed out: maybe delivered, resent at most once
    maybe_sent_at: dt.datetime | None = None
    # loaded with the row (selectin) so `.message` works after its session is closed;
    # outbox.py and claims.py read and write the bytes with plain SQL and never loads this
    body: DigestMessageRow | None = Relationship(
        sa_relationship=relationship("DigestMessageRow", lazy="selectin", uselist=False)
    )

    @property
    def message(self) -> bytes:
        """The rendered message, as add_digest stored it (empty when it has none)."""
        return self.body.message if self.body is not None else b""


class DigestMessageRow(SQLModel, table=True):
    """A digest's rendered message (RFC 5322 bytes), one row per digest, never updated."""

    __tablename__ = "digest_messages"

    digest_id: int = Field(
        sa_column=Column(Integer, ForeignKey("digests.id"), primary_key=True, autoincrement=False)
    )
    message: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class DeliveryRow(SQLModel, table=True):
    """A paper delivered to a subscriber: written in the same transaction as `sent`."""

    __tablename__ = "deliveries"

    subscriber: str = Field(primary_key=True)
    paper_id: str = Field(primary_key=True)
    digest_id: int = Field(foreign_key="digests.id", index=True)
    delivered_at: dt.datetime


class SubscriberRow(SQLModel, table=True):
    """Per-subscriber scheduling state the daemon keeps across restarts."""

    __tablename__ = "subscribers"

    email: str = Field(primary_key=True)
    first_seen_at: dt.datetime
    last_slot: dt.datetime | None = None  # the latest slot a digest was created for
    # the last listing day the previous digest covered: the next one starts there
    covered_until: dt.date | None = None


class RecipientRow(SQLModel, table=True):
    """What a recipient chose on the web, and the opaque key their links carry.

    `key` is random (never derived from the address): a signed link holds only the key,
    so no address is readable in a URL. Rows are made when a digest is first rendered
    with `[web]` set, or when an admin or a page changes a preference.
    """

    __tablename__ = "recipients"

    email: str = Field(primary_key=True)  # lower-cased
    key: str = Field(unique=True)
    created_at: dt.datetime
    paused_until: dt.datetime | None = None  # slots before this are skipped, never caught up
    muted_topics_json: str = "[]"  # topic names from the file this recipient muted
    updated_at: dt.datetime | None = None


class SuppressionRow(SQLModel, table=True):
    """An address that gets nothing, whatever the file says: it unsubscribed (or an admin
    did it for them). Resubscribing deletes the row."""

    __tablename__ = "suppressions"

    email: str = Field(primary_key=True)  # lower-cased
    suppressed_at: dt.datetime
    how: str  # "one-click" | "page" | "admin"


class MetaRow(SQLModel, table=True):
    """Small key/value state: consecutive failed polls, whether an alert is out, ..."""

    __tablename__ = "meta"

    key: str = Field(primary_key=True)
    value: str
