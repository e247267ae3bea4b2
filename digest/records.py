"""The records that flow through the pipeline: a paper as listed, a topic's hit, a match.
Pure dataclasses, no I/O and no SQLAlchemy: parsing, matching and rendering import
them without the database (`digest check` validates its templates without loading
SQLAlchemy). The tables they are stored in are `models.py`'s.

All datetimes are timezone-aware UTC; `as_utc()` normalises anything else.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote

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
