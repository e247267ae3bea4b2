"""The words of a digest: summaries, author lines, highlighting, the subject. Pure.

Owns: the small text decisions `render.py` and the templates rely on: the first
sentences of an abstract, "A, B, C et al. (12 authors)", marking where the
matching query leaves occur in escaped HTML (the spans come from
`digest/topics/spans.py`), which URLs may become links, the subject line and the
date as the subscriber reads it. Does not own: Jinja (`render.py`) or headers
(`render_message.py`, whose `clean_text`/`clean_header` this module uses).
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import textwrap
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

from markupsafe import Markup, escape

from digest.records import Match
from digest.render.message import clean_header, clean_text, shorten
from digest.topics.query import Leaf
from digest.topics.spans import merged_spans

SUMMARY_CAP_CHARS = 400
SHOWN_AUTHORS = 3
TEXT_WIDTH = 72  # columns of the text part; a URL longer than that keeps its own line

_URL_BAD_RE = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
_SENTENCE_END_RE = re.compile(r"[.!?]\s+(?=[A-Z0-9\"'(\[])")
# English names whatever the process locale (strftime's %b/%A follow LC_TIME).
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")  # fmt: skip
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_ABBREVIATIONS = frozenset({"e.g.", "i.e.", "al.", "vs.", "etc.", "fig.", "eq.", "cf.", "approx."})


def first_sentences(text: str, count: int = 2, *, limit: int = SUMMARY_CAP_CHARS) -> str:
    """The first `count` sentences of `text` (an abstract), at most `limit` characters."""
    text = clean_text(text[: limit * 4])
    end = len(text)
    found = 0
    for m in _SENTENCE_END_RE.finditer(text):
        last_word = text[: m.start() + 1].rsplit(" ", 1)[-1].lower()
        if last_word in _ABBREVIATIONS:
            continue
        found += 1
        if found == count:
            end = m.start() + 1
            break
    return shorten(text[:end], limit)


# Which query fields' leaves are marked in which shown text: a bare term (field None)
# searches title and abstract, so it is marked in the title and in the summary (the AI
# summary or the abstract's first sentences); `title:` only in the title, and so on.
# Keywords and ids are not shown, so their leaves mark nothing.
MARKED_FIELDS: dict[str, frozenset[str | None]] = {
    "title": frozenset({None, "title"}),
    "summary": frozenset({None, "abstract"}),
    "author": frozenset({"author"}),
    "org": frozenset({"org"}),
}


_WHERE_BIT = {where: 1 << i for i, where in enumerate(MARKED_FIELDS)}
# a leaf's field -> the places its leaves are marked in (the inverse of MARKED_FIELDS)
_WHERES_OF: dict[str | None, tuple[str, ...]] = {
    field: tuple(where for where, fields in MARKED_FIELDS.items() if field in fields)
    for fields in MARKED_FIELDS.values()
    for field in fields
}


def where_bits(where: str) -> int:
    """The bit of a place (a key of MARKED_FIELDS) in `leaves_by_where`'s mask."""
    return _WHERE_BIT[where]


def leaves_by_where(leaves: Iterable[Leaf]) -> tuple[dict[str, list[Leaf]], int]:
    """The leaves `highlight` marks at each place, for every place at once: the places
    where some leaf is marked, each with its leaves, and those places as bits
    (`where_bits`). One pass over a match's few leaves, nothing memoised."""
    marks: dict[str, list[Leaf]] = {}
    for leaf in leaves:
        for where in _WHERES_OF.get(leaf.field, ()):
            got = marks.get(where)
            if got is None:
                marks[where] = [leaf]
            else:
                got.append(leaf)
    mask = 0
    for where in marks:
        mask |= _WHERE_BIT[where]
    return marks, mask


def highlight(text: str, leaves: frozenset[Leaf], where: str, open_tag: str) -> Markup:
    """`text` HTML-escaped, with each occurrence of a leaf that applies to `where` (a
    key of MARKED_FIELDS) wrapped in `open_tag` ... `</mark>`: a phrase as one mark, a
    prefix on the words it matched, overlapping occurrences as one mark.

    A pure function of its arguments, memoised on the spans it marks: the same paper
    shown to many subscribers with the same marks is escaped and marked once.
    """
    return _highlight(text, _applicable(leaves, where), open_tag)


def mark_spans(text: str, spans: Sequence[tuple[int, int]], open_tag: str) -> Markup:
    """`text` escaped with `spans` (from `merged_spans`) marked: what `highlight`
    gives for leaves that occur at those spans (memoised per spans)."""
    return _marked(text, tuple(spans), open_tag)


@functools.lru_cache(maxsize=16384)
def _applicable(leaves: frozenset[Leaf], where: str) -> frozenset[Leaf]:
    fields = MARKED_FIELDS[where]
    return frozenset(leaf for leaf in leaves if leaf.field in fields)


def _highlight(text: str, leaves: frozenset[Leaf], open_tag: str) -> Markup:
    # not memoised on the leaves: in a real batch four in five (text, leaves) are new,
    # while the spans they mark mostly are not
    if not leaves:
        return _escaped(text)
    return _marked(text, tuple(merged_spans(text, leaves)), open_tag)


@functools.lru_cache(maxsize=4096)
def _escaped(text: str) -> Markup:
    return escape(text)


@functools.lru_cache(maxsize=16384)
def _marked(text: str, spans: tuple[tuple[int, int], ...], open_tag: str) -> Markup:
    """`text` escaped with `spans` marked: many leaf sets mark the same spans (most of
    a subscriber's leaves occur in none of a paper's texts but one)."""
    if not spans:
        return _escaped(text)
    out: list[str] = []
    pos = 0
    for start, end in spans:
        out += [str(escape(text[pos:start])), open_tag, str(escape(text[start:end])), "</mark>"]
        pos = end
    out.append(str(escape(text[pos:])))
    return Markup("".join(out))


@functools.lru_cache(maxsize=4096)
def wrap(text: str, width: int = TEXT_WIDTH, indent: int = 0) -> str:
    """One paragraph wrapped at `width` columns, every line indented by `indent` spaces.
    Breaks only at spaces: a URL (or any long word) is never split, it gets a line of
    its own even when that is longer than `width`. Memoised: a batch's digests repeat
    the same intro and footer lines."""
    pad = " " * indent
    if text.strip() == text and _fits_one_line(text):
        if indent + len(text) <= width:
            return pad + text  # what textwrap gives a line that fits, without its machinery
        if "  " not in text and width > indent and text.isprintable():
            return _wrap_words(text.split(" "), width - indent, pad)
    lines = textwrap.wrap(
        text, width, initial_indent=pad, subsequent_indent=pad,
        break_long_words=False, break_on_hyphens=False,
    )  # fmt: skip
    return "\n".join(lines) if lines else pad


def _wrap_words(words: list[str], width: int, pad: str) -> str:
    """What textwrap makes of words separated by single spaces, printable (so no other
    whitespace, which textwrap would drop at a line's ends): each line takes words
    while they fit in `width` with a space between, and a word longer than `width`
    takes a line of its own. (A line that holds a signed URL is new in every digest:
    no memo helps it, and textwrap costs ~6 us a line.)"""
    lines: list[str] = []
    line: list[str] = []
    length = 0
    for word in words:
        if line and length + 1 + len(word) > width:
            lines.append(pad + " ".join(line))
            line, length = [], 0
        length += len(word) + (1 if line else 0)
        line.append(word)
    lines.append(pad + " ".join(line))
    return "\n".join(lines)


_TEXTWRAP_SPACE = frozenset("\t\n\x0b\x0c\r")  # what textwrap turns into spaces


def _fits_one_line(text: str) -> bool:
    """No tab or line end: textwrap keeps such a text as it is when it fits."""
    return _TEXTWRAP_SPACE.isdisjoint(text)


@functools.lru_cache(maxsize=8192)
def text_entry(text: str, indent: int) -> str:
    """A paper's text entry (one logical line per line, as `_paper.txt.j2` renders it)
    with each line wrapped at TEXT_WIDTH and indented by `indent` columns. Memoised:
    the same paper in many digests of a batch is wrapped once per indent."""
    return "\n".join(wrap(line, indent=indent) for line in text.splitlines() if line.strip())


def numbered_entries(texts: Sequence[str]) -> list[str]:
    """The text entries numbered "1. ", with the numbers right-aligned and every
    entry's lines indented under its title, however many entries there are:
    `` 9. Title`` / ``10. Title``."""
    indent = len(f"{len(texts)}. ")
    return [
        f"{f'{i}.':>{indent - 1}} {text_entry(text, indent)[indent:]}"
        for i, text in enumerate(texts, 1)
    ]


@functools.lru_cache(maxsize=4096)
def link_entry(title: str, url: str) -> str:
    """A title and its link for the text part: '- Title' wrapped at TEXT_WIDTH (its
    continuation lines indented by 2), then the URL on its own line. Memoised: the
    "more" lists of a batch's digests name the same few dozen papers."""
    lines = textwrap.wrap(
        title, TEXT_WIDTH, initial_indent="- ", subsequent_indent="  ",
        break_long_words=False, break_on_hyphens=False,
    )  # fmt: skip
    return "\n".join([*lines, f"  {url}"])


def safe_url(value: str | None) -> str | None:
    """`value` if it is a plain http(s) URL with a host (no spaces or controls), else None."""
    if not value:
        return None
    url = value.strip()
    if not url.lower().startswith(("https://", "http://")) or _URL_BAD_RE.search(url):
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:  # an unbalanced "[" or a bad port
        return None
    return url if host else None


def format_authors(authors: Sequence[str], author_count: int) -> str:
    """The first three names, then how many in all: 'A, B, C et al. (12 authors)'."""
    return ", ".join(shown_authors(authors)) + authors_rest(authors, author_count)


def shown_authors(authors: Sequence[str]) -> tuple[str, ...]:
    """The names `format_authors` shows, cleaned."""
    return tuple(clean_text(a) for a in authors[:SHOWN_AUTHORS])


def authors_rest(authors: Sequence[str], author_count: int) -> str:
    """What follows the shown names: ' et al. (12 authors)', '12 authors' or ''."""
    total = max(author_count, len(authors))
    if total <= min(len(authors), SHOWN_AUTHORS):
        return ""
    if not authors:
        return f"{total} authors"
    return f" et al. ({total} authors)"


def format_subject(matches: Sequence[Match], local_day: dt.date) -> str:
    """Like '7 new papers: consistency models, reward models (Mar 6)'; header-safe."""
    day = f"{_MONTHS[local_day.month - 1][:3]} {local_day.day}"
    if not matches:
        return f"No new papers for your topics ({day})"
    counts: dict[str, int] = {}  # how many matches each topic explains, first seen first
    for m in matches:
        hits = m.hits
        for t in (hits[0].topic,) if len(hits) == 1 else dict.fromkeys(h.topic for h in hits):
            counts[t] = counts.get(t, 0) + 1
    # most first, ties in first-seen order (a stable sort, as Counter.most_common)
    names = [_subject_topic(t) for t in sorted(counts, key=counts.__getitem__, reverse=True)]
    names = [n for n in names if n]
    if len(names) > 3:
        names = [*names[:2], f"and {len(names) - 2} more"]
        topics = f"{names[0]}, {names[1]} {names[2]}"
    else:
        topics = ", ".join(names)
    plural = "" if len(matches) == 1 else "s"
    head = f"{len(matches)} new paper{plural}"
    return clean_header(f"{head}: {topics} ({day})" if topics else f"{head} ({day})", limit=250)


@functools.lru_cache(maxsize=4096)
def _subject_topic(name: str) -> str:
    """A topic name for the subject: "Consistency models" -> "consistency models", but
    acronyms ("LLM agents") stay as written."""
    text = clean_header(name, limit=40)
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        return text[0].lower() + text[1:]
    return text


def format_day(day: dt.date) -> str:
    """'Wednesday, 1 October 2025', in English whatever the process locale."""
    return f"{_WEEKDAYS[day.weekday()]}, {day.day} {_MONTHS[day.month - 1]} {day.year}"
