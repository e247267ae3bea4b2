"""The database tables, as SQLModel classes. No I/O here.

The records the pipeline passes around (`Paper`, `Match`, `as_utc`) are `records.py`'s:
they need no SQLAlchemy. `store` owns the engine, the migrations and the queries over
these tables, `outbox.py` and `claims.py` the digest rows' state machine.

All datetimes are timezone-aware UTC (sqlmodel's UTCDateTime refuses naive ones and
hands back aware UTC, SQLite included); `records.as_utc()` normalises anything else.
"""

from __future__ import annotations

import datetime as dt

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
