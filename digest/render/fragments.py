"""A paper's HTML and text entry rendered once per batch, filled in per match. Pure.

Owns: `Skeleton` (one paper's `_paper.html.j2` or `_paper.txt.j2` output with a
placeholder wherever a match's own parts go: each `hl` call, each topic) and
`Skeletons` (the batch's skeletons, one per (paper, thumbnail choice, number of
topics), rendered once). Filling a skeleton puts that match's highlights
(`text.highlight`'s marking, memoised per (text, spans)) and topic names into the
places: the same string the template would render for that match, for a few joins
instead of a template render. A match marks only some places (usually the title and
the summary, rarely an author or the organisation): each skeleton keeps, per set of
places marked, its pieces with the unmarked places already joined in, so a fill visits
only the places its match marks and the topics.

Why it is exact: in the shipped paper templates, what a match changes (its leaves, its
topics) reaches the output only through `hl` and through each topic's own `{{ }}`;
every `{% if %}` and `{% for %}` depends on the paper, the thumbnail choice and how
many topics there are, which key the skeleton. A placeholder is ``\\x00N\\x00``: Jinja's
escaping leaves it alone and no shown text holds a NUL (`clean_text` drops controls);
a skeleton whose pieces do not parse back is not used (the caller renders plainly).
A template overridden by `mail.templates` may use the leaves or topics any other way,
so `renderer.py` renders those per match, plainly.

Does not own: the Jinja environment, packing the HTML (`renderer.py`, after filling:
packing depends on line lengths) or the highlighting itself (`text.py`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

from markupsafe import Markup, escape

from digest.records import Match, Paper
from digest.render.text import mark_spans, where_bits
from digest.topics.query import Leaf
from digest.topics.spans import merged_spans

MARK = "\x00"
SKELETON_CACHE_SIZE = 4096  # (paper, thumbnails, topic count) skeletons kept per Renderer


class _Recorder(frozenset[Leaf]):
    """The skeleton's `leaves`: `hl` given these records its (text, where) as a slot
    and returns the slot's placeholder instead of marking anything."""

    __slots__ = ("calls",)
    calls: list[tuple[str, str] | int]


def is_recorder(leaves: frozenset[Leaf]) -> bool:
    return type(leaves) is _Recorder


def placeholder(leaves: frozenset[Leaf], text: str, where: str) -> Markup:
    """What `hl` returns while a skeleton is rendered: the next slot's placeholder."""
    assert isinstance(leaves, _Recorder)
    leaves.calls.append((text, where))
    return Markup(f"{MARK}{len(leaves.calls) - 1}{MARK}")


Slot = tuple[str, str, str] | int  # (text, where, text unmarked) for `hl`; a topic's index
_Variant = tuple[tuple[str, ...], tuple[Slot, ...]]  # consts, and the slots between


class Skeleton(NamedTuple):
    """A rendered template cut at its placeholders: pieces[0], slot, pieces[1], slot, ...
    A slot is (text, where, the text escaped and unmarked) for an `hl` call, or the
    index of a topic. `variants` (filled as matches come): for each set of places that
    a match marks (a bit per `where`, `where_bits`), the skeleton with every other
    `hl` slot joined into the pieces around it, as it shows unmarked."""

    pieces: tuple[str, ...]
    slots: tuple[Slot, ...]
    html: bool  # HTML: pieces `as_ascii`, topics escaped, every value `as_ascii`
    variants: dict[int, _Variant]

    def fill(
        self, topics: tuple[str, ...], marks: dict[str, list[Leaf]], mask: int, open_tag: str
    ) -> str:
        """The template's output for a match with these (cleaned) topics and marks
        (`leaves_by_where` of its leaves: the leaves marked at each place, and the
        places as bits), as `text.highlight` marks them; for HTML with every
        non-ASCII character as an entity, as `pack_html` would write it."""
        variant = self.variants.get(mask)
        if variant is None:
            variant = self.variants[mask] = self._variant(mask)
        consts, slots = variant
        if not slots:
            return consts[0]
        html = self.html
        out = [consts[0]]
        shown: tuple[str, ...] | None = None  # the topics as this skeleton writes them
        for slot, const in zip(slots, consts[1:], strict=True):
            if type(slot) is int:
                if shown is None:
                    shown = _html_topics(topics) if html else topics
                out.append(shown[slot])
            else:
                text, where, plain = slot  # type: ignore[misc]  # not an int: an hl call
                spans = merged_spans(text, marks[where])
                if spans:
                    value = mark_spans(text, spans, open_tag)
                    out.append(as_ascii(value) if html else value)
                else:  # the usual case (6 in 7): this place's leaves occur elsewhere
                    out.append(plain)
            out.append(const)
        return "".join(out)

    def _variant(self, mask: int) -> _Variant:
        """The pieces and slots for matches that mark the places in `mask`: an `hl` slot
        of a place not marked shows its text unmarked, a constant."""
        consts = [self.pieces[0]]
        slots: list[Slot] = []
        for slot, piece in zip(self.slots, self.pieces[1:], strict=True):
            if type(slot) is int:
                slots.append(slot)
                consts.append(piece)
                continue
            _, where, plain = slot  # type: ignore[misc]  # not an int: an hl call
            if where_bits(where) & mask:
                slots.append(slot)
                consts.append(piece)
            else:
                consts[-1] += plain + piece
        return tuple(consts), tuple(slots)


@functools.lru_cache(maxsize=4096)
def _html_topics(topics: tuple[str, ...]) -> tuple[str, ...]:
    """A match's (cleaned) topic names as the HTML skeleton writes them: escaped, ASCII
    (memoised: a subscriber's few topics, in every paper of their digest)."""
    return tuple(as_ascii(str(escape(t))) for t in topics)


def as_ascii(html: str) -> str:
    """HTML with every non-ASCII character as an entity (character by character: the
    pieces of a string can be converted on their own)."""
    if html.isascii():
        return html
    return html.encode("ascii", "xmlcharrefreplace").decode("ascii")


def _cut(rendered: str, calls: list[tuple[str, str] | int], *, html: bool) -> Skeleton | None:
    """`rendered` cut at its placeholders, or None if they do not parse back."""
    parts = rendered.split(MARK)
    if len(parts) % 2 == 0:
        return None
    order: list[Slot] = []
    for token in parts[1::2]:
        if not token.isdigit() or int(token) >= len(calls):
            return None
        call = calls[int(token)]
        if isinstance(call, int):
            order.append(call)
        else:
            text, where = call
            plain = str(escape(text))
            order.append((text, where, as_ascii(plain) if html else plain))
    pieces = parts[0::2]
    return Skeleton(tuple(map(as_ascii, pieces) if html else pieces), tuple(order), html, {})


class Skeletons:
    """The skeletons of one Renderer's batch. `render_html` and `render_text` render the
    paper templates for a view (unpacked HTML, text entry)."""

    def __init__(
        self, render_html: Callable[[Any], str], render_text: Callable[[Any], str]
    ) -> None:
        self.render_html = render_html
        self.render_text = render_text
        # (id(paper), thumbnails, topic count) -> (the paper, its skeletons); the paper
        # is kept so that its id is not reused while the entry lives
        self._cache: dict[tuple[int, str, int], tuple[Paper, tuple[Skeleton, Skeleton] | None]]
        self._cache = {}

    def clear(self) -> None:
        """Forget every skeleton (the daemon, between planning runs)."""
        self._cache.clear()

    def get(self, match: Match, view: Any) -> tuple[Skeleton, Skeleton] | None:
        """The (HTML, text) skeletons for `match` shown as `view` (a PaperView), or
        None when they cannot be used (render plainly then)."""
        key = (id(match.paper), view.thumbnails, len(view.topics))
        entry = self._cache.get(key)
        if entry is not None and entry[0] is match.paper:
            return entry[1]
        if len(self._cache) >= SKELETON_CACHE_SIZE:
            self._cache.clear()
        made = self._make(view)
        self._cache[key] = (match.paper, made)
        return made

    def _make(self, view: Any) -> tuple[Skeleton, Skeleton] | None:
        topics = tuple(f"{MARK}{i}{MARK}" for i in range(len(view.topics)))
        recorder = _Recorder()
        recorder.calls = list(range(len(topics)))
        skeleton_view = view._replace(topics=topics, leaves=recorder)
        html = _cut(self.render_html(skeleton_view), recorder.calls, html=True)
        text = _cut(self.render_text(skeleton_view), recorder.calls, html=False)
        if html is None or text is None:
            return None
        return html, text
