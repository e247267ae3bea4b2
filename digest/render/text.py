"""The words of a digest: summaries, author lines, highlighting, the subject. Pure.

Owns: the small text decisions `render.py` and the templates rely on: the first
sentences of an abstract, "A, B, C et al. (12 authors)", marking the matching
words in escaped HTML, which URLs may become links, the subject line and the
date as the subscriber reads it. Does not own: Jinja (`render.py`) or headers
(`render_message.py`, whose `clean_text`/`clean_header` this module uses).
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Sequence
from urllib.parse import urlsplit

from markupsafe import Markup, escape

from digest.models import Match
from digest.render.message import clean_header, clean_text, shorten

SUMMARY_CAP_CHARS = 400
SHOWN_AUTHORS = 3

# A word is a run of Unicode letters and digits (as in query.py); entities stay whole.
_HL_SPLIT_RE = re.compile(r"(&#?[A-Za-z0-9]+;|[^\W_]+)")
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


def highlight(text: str, words: frozenset[str], open_tag: str) -> Markup:
    """`text` HTML-escaped, with each whole word whose lower-case form is in `words` wrapped
    in `open_tag` ... `</mark>`.

    Escapes first and marks the escaped text: a word token never contains `&<>"'`, and
    the entities escaping made (`&amp;`, `&#39;`) are split off whole, never marked.
    """
    escaped = str(escape(text))
    lowered = escaped.lower()
    if not any(w in lowered for w in words):
        return Markup(escaped)
    parts = _HL_SPLIT_RE.split(escaped)  # odd indexes: a word or an entity
    for i in range(1, len(parts), 2):
        if parts[i].lower() in words:
            parts[i] = f"{open_tag}{parts[i]}</mark>"
    return Markup("".join(parts))


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
    shown = ", ".join(clean_text(a) for a in authors[:SHOWN_AUTHORS])
    total = max(author_count, len(authors))
    if total <= min(len(authors), SHOWN_AUTHORS):
        return shown
    if not shown:
        return f"{total} authors"
    return f"{shown} et al. ({total} authors)"


def format_subject(matches: Sequence[Match], local_day: dt.date) -> str:
    """Like '7 new papers: consistency models, reward models (Mar 6)'; header-safe."""
    day = f"{_MONTHS[local_day.month - 1][:3]} {local_day.day}"
    if not matches:
        return f"No new papers for your topics ({day})"
    counts = Counter(t for m in matches for t in dict.fromkeys(m.topics))
    names = [_subject_topic(t) for t, _ in counts.most_common()]  # ties keep first-seen order
    names = [n for n in names if n]
    if len(names) > 3:
        names = [*names[:2], f"and {len(names) - 2} more"]
        topics = f"{names[0]}, {names[1]} {names[2]}"
    else:
        topics = ", ".join(names)
    plural = "" if len(matches) == 1 else "s"
    head = f"{len(matches)} new paper{plural}"
    return clean_header(f"{head}: {topics} ({day})" if topics else f"{head} ({day})", limit=250)


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
