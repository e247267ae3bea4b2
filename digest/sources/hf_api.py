"""Parse the Daily Papers JSON API (`/api/daily_papers?date=D`) into `Paper` records. Pure.

Owns: decoding the body, the rules that turn one "DailyPaper" object into a `Paper`
(see tests/data/hf/STRUCTURE.md §2), skipping malformed records and
de-duplicating a day's list. `hf_html` reuses `parse_records` for the same objects
embedded in the listing page. Does not own: HTTP (`fetch.py`) or storage.

Policy for bad input:
- the body is not JSON, is truncated, or is not a list -> `ParseError` (one line);
- one record of the wrong shape (not an object, no usable `paper.id` / title) is
  skipped and the rest are kept: schema drift hits single records (STRUCTURE.md
  §2.4.8) and one odd paper must not cost the day's list. But if a non-empty list
  yields no paper at all, that is a layout change -> `ParseError`, so `auto` mode
  falls back to the HTML page;
- an optional field of the wrong type is treated as absent;
- a record whose paper id is not one of arXiv's forms (`is_arxiv_id`) is skipped with
  one log line: the id goes into links and file names, so nothing else may pass;
- a number that is not a plain integer in range (1e30, NaN, a string, a negative
  count, a count of 2^31 or more) is dropped, the record kept, one log line per
  record naming its fields.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from digest.errors import ParseError
from digest.records import Paper

log = logging.getLogger(__name__)

_WHITESPACE = re.compile(r"\s+")
# arXiv identifiers (https://info.arxiv.org/help/arxiv_identifier.html): YYMM.NNNNN since
# 2015, YYMM.NNNN from 2007 to 2014, archive(.SUBJECT-CLASS)/YYMMNNN before; each with an
# optional version. `fullmatch` only: no trailing newline, path or query may follow.
_ARXIV_ID = re.compile(
    r"\d{2}(?:0[1-9]|1[0-2])\.\d{4,5}(?:v[1-9]\d{0,3})?"
    r"|[a-z]+(?:-[a-z]+)*(?:\.[A-Z]{2})?/\d{2}(?:0[1-9]|1[0-2])\d{3}(?:v[1-9]\d{0,3})?"
)
MAX_COUNT = 2**31 - 1  # a count above this is a broken source, not a popular paper


def parse_api(body: bytes, day: dt.date) -> list[Paper]:
    """The papers listed on `day` in one API response body (first occurrence wins)."""
    return parse_records(load_api_items(body, day), day, where=f"API body for {day}")


def load_api_items(body: bytes, day: dt.date) -> list[Any]:
    """Decode an API body into its raw list of records; ParseError if it is not a JSON list."""
    try:
        data = load_json(body)
    except json.JSONDecodeError as e:
        raise ParseError(
            f"API body for {day} is not valid JSON (truncated?) at char {e.pos}: {e.msg}"
        ) from e
    except UnicodeDecodeError as e:
        raise ParseError(f"API body for {day} is not valid UTF-8 at byte {e.start}") from e
    except RecursionError as e:
        raise ParseError(f"API body for {day} is nested too deeply to be a paper list") from e
    if not isinstance(data, list):
        raise ParseError(
            f"API body for {day} is a JSON {type(data).__name__}, expected a list of papers"
        )
    return data


def load_json(text: str | bytes) -> Any:
    """`json.loads`, but an integer literal too long to be a count stays a `TooLong`
    marker (Python refuses to turn more than 4,300 digits into an int at all)."""
    return json.loads(text, parse_int=_parse_int)


class TooLong(str):
    """An integer literal of more digits than any count has: dropped by `Counts`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"{self[:12]}...({len(self)} digits)"


def _parse_int(literal: str) -> int | TooLong:
    return int(literal) if len(literal) <= 30 else TooLong(literal)


def parse_records(items: Iterable[Any], day: dt.date, *, where: str) -> list[Paper]:
    """Turn DailyPaper objects into Papers, skipping malformed ones and repeated ids.

    `where` names the body in the error raised when a non-empty list yields nothing.
    """
    papers: list[Paper] = []
    seen: set[str] = set()
    total = 0
    for item in items:
        total += 1
        paper = parse_record(item, day, where=where)
        if paper is None or paper.id in seen:
            continue
        seen.add(paper.id)
        papers.append(paper)
    if total and not papers:
        raise ParseError(f"{where}: none of its {total} records has a paper id and title")
    return papers


def parse_record(item: object, day: dt.date, *, where: str = "record") -> Paper | None:
    """One DailyPaper object as a Paper listed on `day`, or None if it has no id or title,
    or an id that is not arXiv's (logged)."""
    if not isinstance(item, dict):
        return None
    paper = _mapping(item.get("paper"))
    paper_id = _text(paper.get("id"))
    title = collapse(_text(paper.get("title")) or _text(item.get("title")) or "")
    if not paper_id or not title:
        return None
    if not is_arxiv_id(paper_id):
        log_bad_id(where, paper.get("id"))
        return None
    counts = Counts(where, paper_id)
    parsed = _paper(paper_id, title, day, item, paper, counts)
    counts.log()
    return parsed


def _paper(
    paper_id: str,
    title: str,
    day: dt.date,
    item: dict[str, Any],
    paper: dict[str, Any],
    counts: Counts,
) -> Paper:
    authors_raw = paper.get("authors")
    authors_list = authors_raw if isinstance(authors_raw, list) else []
    org = (
        _mapping(paper.get("organization"))
        or _mapping(item.get("organization"))
        or _mapping(item.get("submitterOrganization"))
    )
    return Paper(
        id=paper_id,
        title=title,
        listed_on=day,
        abstract=collapse(_text(paper.get("summary")) or _text(item.get("summary")) or ""),
        authors=tuple(_visible_author_names(authors_list)),
        author_count=len(authors_list),
        organization=_text(org.get("name")),
        organization_fullname=_text(org.get("fullname")),
        upvotes=counts.get("upvotes", paper) or 0,
        num_comments=counts.get("numComments", item) or 0,
        thumbnail=_text(item.get("thumbnail")) or _text(item.get("mediaUrl")),
        media_urls=_unique(_texts(item.get("mediaUrls")) + _texts(paper.get("mediaUrls"))),
        github_repo=clean_url(paper.get("githubRepo")),
        github_stars=counts.get("githubStars", paper),
        project_page=_text(paper.get("projectPage")),
        ai_summary=_text(paper.get("ai_summary")),
        ai_keywords=_texts(paper.get("ai_keywords")),
        submitter=(
            _text(_mapping(item.get("submittedBy")).get("name"))
            or _text(_mapping(paper.get("submittedOnDailyBy")).get("user"))
        ),
        published_at=parse_timestamp(paper.get("publishedAt")),
    )


def is_arxiv_id(value: str) -> bool:
    """True for an arXiv id: `2410.12345`, `1412.1234v2`, `hep-th/9901001`, `math.AG/0101001`."""
    return _ARXIV_ID.fullmatch(value) is not None


def log_bad_id(where: str, value: object) -> None:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    log.warning("%s: skipped a record whose paper id %s is not an arXiv id", where, shown)


class Counts:
    """Reads the counts of one record, range-checked; `log()` writes one line for all
    the values it dropped."""

    __slots__ = ("dropped", "paper_id", "where")

    def __init__(self, where: str, paper_id: str) -> None:
        self.where = where
        self.paper_id = paper_id
        self.dropped: list[str] = []

    def get(self, name: str, record: dict[str, Any]) -> int | None:
        value = record.get(name)
        if value is None:
            return None
        if type(value) is int and 0 <= value <= MAX_COUNT:
            return value
        shown = repr(value)
        self.dropped.append(f"{name}={shown if len(shown) <= 40 else shown[:37] + '...'}")
        return None

    def check(self, name: str, value: int) -> int:
        """`value` (already an int, e.g. parsed from page text) if in range, else 0."""
        if 0 <= value <= MAX_COUNT:
            return value
        self.dropped.append(f"{name}={str(value)[:37]}")
        return 0

    def log(self) -> None:
        if self.dropped:
            log.warning(
                "%s: paper %s: dropped out-of-range or non-integer %s (record kept)",
                self.where,
                self.paper_id,
                ", ".join(self.dropped),
            )


def collapse(text: str) -> str:
    """Every whitespace run (arXiv line folds included) as one space, ends stripped."""
    return " ".join(text.split())


def clean_url(value: object) -> str | None:
    """A URL with all whitespace removed, or None unless it is an http(s) URL with a host."""
    if not isinstance(value, str):
        return None
    url = _WHITESPACE.sub("", value)
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" in the host
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return url


def parse_timestamp(value: object) -> dt.datetime | None:
    """An ISO-8601 string ("2024-07-18T05:15:24.000Z") as aware UTC, else None."""
    if not isinstance(value, str):
        return None
    try:
        stamp = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        return stamp.replace(tzinfo=dt.UTC)
    return stamp.astimezone(dt.UTC)


# --------------------------------------------------------------------------- helpers


def _visible_author_names(authors: list[Any]) -> list[str]:
    # The hot loop of the parser (papers with 500+ authors): kept to plain dict/str checks.
    names = []
    for author in authors:
        if isinstance(author, dict) and author.get("hidden") is not True:
            name = author.get("name")
            if isinstance(name, str) and (name := " ".join(name.split())):
                names.append(name)
    return names


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: object) -> str | None:
    """A non-blank string, stripped; anything else is None."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _texts(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(t for t in (_text(v) for v in value) if t is not None)


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))
