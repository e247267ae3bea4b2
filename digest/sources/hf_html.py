"""Parse the Daily Papers listing page (`/papers?date=D`) into `Paper` records. Pure.

Owns: finding the data in the HTML with selectolax. First choice is the `data-props`
JSON of `.SVELTE_HYDRATER[data-target="DailyPapers"]`, whose `dailyPapers` are the
same objects as the JSON API, so they go through `hf_api.parse_records` (one record
parser for both sources). When that element is missing or its JSON unreadable, the
`<article>` cards are read instead (STRUCTURE.md §1.1); they carry less (no abstract,
no author names). Does not own: HTTP (`fetch.py`) or the record rules (`hf_api.py`).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from selectolax.lexbor import LexborHTMLParser, LexborNode

from digest.errors import ParseError
from digest.records import Paper
from digest.sources.hf_api import (
    Counts,
    clean_url,
    collapse,
    is_arxiv_id,
    load_json,
    log_bad_id,
    parse_records,
)

PROPS_SELECTOR = '.SVELTE_HYDRATER[data-target="DailyPapers"]'
_AUTHORS_COUNT = re.compile(r"(\d+)\s+authors?\b")
_DIGITS = re.compile(r"\d+")


def parse_html(body: bytes, day: dt.date | None = None) -> list[Paper]:
    """The papers on a listing page; `day` defaults to the page's own date.

    ParseError when the page has neither a readable `data-props` list nor cards.
    """
    tree = _parse_tree(body)
    try:
        return _parse_props(tree, day)
    except ParseError as props_error:
        try:
            return _parse_cards(tree, day)
        except ParseError as cards_error:
            raise ParseError(
                f"listing page has no readable papers: {props_error}; {cards_error}"
            ) from cards_error


def parse_props(body: bytes, day: dt.date | None = None) -> list[Paper]:
    """Only the `data-props` path (ParseError if it is missing or unreadable)."""
    return _parse_props(_parse_tree(body), day)


def parse_cards(body: bytes, day: dt.date | None = None) -> list[Paper]:
    """Only the `<article>` cards path (ParseError if the page has no readable card)."""
    return _parse_cards(_parse_tree(body), day)


# --------------------------------------------------------------------------- data-props


def _parse_props(tree: LexborHTMLParser, day: dt.date | None) -> list[Paper]:
    node = tree.css_first(PROPS_SELECTOR)
    if node is None:
        raise ParseError(f"no {PROPS_SELECTOR} element")
    raw = node.attributes.get("data-props")  # already HTML-unescaped, exactly once
    if not raw:
        raise ParseError("the DailyPapers element has no data-props")
    try:
        props = load_json(raw)
    except json.JSONDecodeError as e:
        raise ParseError(f"DailyPapers data-props is not valid JSON at char {e.pos}") from e
    except RecursionError as e:
        raise ParseError("DailyPapers data-props is nested too deeply") from e
    if not isinstance(props, dict) or not isinstance(props.get("dailyPapers"), list):
        raise ParseError("DailyPapers data-props has no dailyPapers list")
    listed_on = day or _day_from_props(props) or _day_from_page(tree)
    if listed_on is None:
        raise ParseError("DailyPapers data-props names no date and none was given")
    items: list[Any] = props["dailyPapers"]
    return parse_records(items, listed_on, where=f"listing page data-props for {listed_on}")


def _day_from_props(props: dict[str, Any]) -> dt.date | None:
    value = props.get("date")
    return _iso_day(value) if isinstance(value, str) else None


def _day_from_page(tree: LexborHTMLParser) -> dt.date | None:
    """The date switcher's `<time datetime="2024-08-01T00:00:00.000Z">`."""
    node = tree.css_first("time[datetime]")
    value = node.attributes.get("datetime") if node is not None else None
    return _iso_day(value) if value else None


def _iso_day(value: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value[:10])
    except ValueError:
        return None


# --------------------------------------------------------------------------- cards


def _parse_cards(tree: LexborHTMLParser, day: dt.date | None) -> list[Paper]:
    articles = tree.css("article")
    if not articles:
        raise ParseError("no <article> cards")
    listed_on = day or _day_from_page(tree)
    if listed_on is None:
        raise ParseError("listing page names no date (no <time datetime>) and none was given")
    papers: list[Paper] = []
    seen: set[str] = set()
    for article in articles:
        paper = _parse_card(article, listed_on, f"listing page card for {listed_on}")
        if paper is not None and paper.id not in seen:
            seen.add(paper.id)
            papers.append(paper)
    if not papers:
        raise ParseError(f"none of the {len(articles)} <article> cards has a paper id and title")
    return papers


def _parse_card(article: LexborNode, day: dt.date, where: str) -> Paper | None:
    link = article.css_first('a[href^="/papers/"]')
    if link is None:
        return None
    paper_id = (link.attributes.get("href") or "")[len("/papers/") :].split("#")[0].split("?")[0]
    title_node = article.css_first("h3 a") or article.css_first("h3")
    title = collapse(title_node.text()) if title_node is not None else ""
    if not paper_id or not title:
        return None
    if not is_arxiv_id(paper_id):
        log_bad_id(where, paper_id)
        return None
    counts = Counts(where, paper_id)
    image = link.css_first("img[src]")
    video = link.css_first("video[src]")
    upvotes = article.css_first('a[href^="/login?next=%2Fpapers%2F"] .leading-none')
    paper = Paper(
        id=paper_id,
        title=title,
        listed_on=day,
        author_count=_authors_count(article, counts),
        upvotes=_number(upvotes, "upvotes", counts),
        num_comments=_number(article.css_first('a[href$="#community"]'), "comments", counts),
        thumbnail=clean_url(image.attributes.get("src")) if image is not None else None,
        media_urls=_video_url(video),
        submitter=_submitter(article),
    )
    counts.log()
    return paper


def _authors_count(article: LexborNode, counts: Counts) -> int:
    node = article.css_first("li.order-first")
    found = _AUTHORS_COUNT.search(node.text()) if node is not None else None
    return _count(found.group(1), "authors", counts) if found else 0


def _number(node: LexborNode | None, name: str, counts: Counts) -> int:
    found = _DIGITS.search(node.text()) if node is not None else None
    return _count(found.group(), name, counts) if found else 0


def _count(digits: str, name: str, counts: Counts) -> int:
    """The digits as a count, 0 (and logged) when there are too many to be one."""
    if len(digits) > 10:  # past 2^31 for sure; int() of 4,301 digits would even raise
        counts.dropped.append(f"{name}={digits[:12]}...({len(digits)} digits)")
        return 0
    return counts.check(name, int(digits))


def _video_url(video: LexborNode | None) -> tuple[str, ...]:
    url = clean_url(video.attributes.get("src")) if video is not None else None
    return (url,) if url else ()


def _submitter(article: LexborNode) -> str | None:
    for node in article.css("div.pointer-events-none.absolute"):
        text = collapse(node.text())
        if text.startswith("Submitted by"):
            return text[len("Submitted by") :].strip() or None
    return None


def _parse_tree(body: bytes) -> LexborHTMLParser:
    # lexbor decodes bytes itself (UTF-8, replacing what is not); it never rejects input.
    return LexborHTMLParser(body)
