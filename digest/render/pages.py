"""A digest's pages (the HTML part, the text part) rendered once per shape, filled in
per digest. Pure.

Owns: `PageSkeletons`, the shipped `digest.html.j2` (and the `_paper_link.html.j2` it
includes for the "more" list) or the shipped `digest.txt.j2` rendered with a
placeholder for every per-digest value (every text and URL of the context, the topic
list, each paper's fragment or text entry, each "more" link's title and URL or text
entry, and in the text part each `wrap` of a line holding such values), cut at the
placeholders and kept per shape; filling one is a join of the digest's own values,
escaped as the HTML template's autoescaping escapes them (the text part: as they are;
a wrapped line: its values put in, then wrapped). The result is the very string
`page.render(full=n, linked=n, omitted=0, **context)` (or `text.render(context)`)
returns (the tests compare against plain Jinja), for a few joins instead of a render.

Why it is exact: in the shipped page templates every `{% if %}` and `{% for %}`
depends only on how many papers are shown, how many matched past max_papers and how
many of those are listed, whether there are topics, and which texts are empty (no web
copy, no preferences link): the shape, which keys the skeleton. Every text reaches the
output only through its own `{{ }}` (escaped; Markup as is) or, in the text part, in a
line given to `wrap` (`wrap_filter` records that line while a skeleton is made), the
topics only joined by ", ". Only the HTML page as it fits under the size cap is made
this way; a page past the cap, and pages of overridden templates, are rendered by
Jinja (`renderer.py`).

Does not own: the context (`renderer.py` builds it), the papers' own fragments
(`fragments.py`), packing the HTML, wrapping a line (`text.wrap`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jinja2
from markupsafe import Markup, escape

from digest.render.fragments import MARK
from digest.render.text import TEXT_WIDTH, wrap

PAGE_CACHE_SIZE = 512  # page shapes kept per Renderer
SLOTS_VAR = "_skeleton_slots"  # the context variable `wrap_filter` records into

Getter = Callable[[dict[str, Any]], str]  # a slot's value from a digest's context
_Skeleton = tuple[tuple[str, ...], tuple[Getter, ...]]  # pieces, and the slots between


class _Slots:
    """The slots of a skeleton being made: each placeholder's getter, in order."""

    def __init__(self) -> None:
        self.getters: list[Getter] = []
        self.failed = False  # a `wrap` whose line did not parse back

    def slot(self, get: Getter) -> str:
        self.getters.append(get)
        return f"{MARK}{len(self.getters) - 1}{MARK}"

    def cut(self, rendered: str) -> _Skeleton | None:
        """`rendered` cut at its placeholders, or None if they do not parse back."""
        parts = rendered.split(MARK)
        if len(parts) % 2 == 0:
            return None
        order: list[Getter] = []
        for token in parts[1::2]:
            if not token.isdigit() or int(token) >= len(self.getters):
                return None
            order.append(self.getters[int(token)])
        return tuple(parts[0::2]), tuple(order)

    def wrap(self, line: str, width: int, indent: int) -> str:
        """What `wrap` returns while a skeleton is made: a slot that wraps the line
        with the digest's own values put in."""
        cut = self.cut(line)
        if cut is None:
            self.failed = True
            return line
        if len(cut[0]) == 1:  # no per-digest value in it: the same for every digest
            return wrap(line, width, indent)
        return self.slot(partial(_wrapped, cut, width, indent))


@jinja2.pass_context
def wrap_filter(
    context: jinja2.runtime.Context, line: Any, width: int = TEXT_WIDTH, indent: int = 0
) -> str:
    """The templates' `wrap` filter: `text.wrap`, or while a text skeleton is made,
    the slot of a wrapped line."""
    slots = context.get(SLOTS_VAR)
    if isinstance(slots, _Slots):
        return slots.wrap(str(line), width, indent)
    return wrap(line, width, indent)


class PageSkeletons:
    """The page skeletons of one Renderer. `render` renders the page template with a
    context (the keyword arguments of `page.render`); `text`: it is the text part's."""

    def __init__(self, render: Callable[..., str], *, text: bool = False) -> None:
        self.render = render
        self.text = text
        self._cache: dict[tuple[Any, ...], _Skeleton | None] = {}

    def page(self, context: dict[str, Any], key: tuple[Any, ...] | None) -> str | None:
        """`render(full=n, linked=n, omitted=0, **context)`, n the papers shown, or None
        when the context is not one a skeleton can hold (render it plainly then). `key`:
        `page_shape(context)` (the HTML and the text page of a digest share it)."""
        if key is None:
            return None
        if key in self._cache:
            skeleton = self._cache[key]
        else:
            if len(self._cache) >= PAGE_CACHE_SIZE:
                self._cache.clear()
            skeleton = self._cache[key] = self._make(context)
        if skeleton is None:
            return None
        pieces, slots = skeleton
        out = [pieces[0]]
        for get, piece in zip(slots, pieces[1:], strict=True):
            out.append(get(context))
            out.append(piece)
        return "".join(out)

    def _make(self, context: dict[str, Any]) -> _Skeleton | None:
        slots = _Slots()
        slot = slots.slot
        fake = dict(context)
        if self.text:
            fake[SLOTS_VAR] = slots
            for name, value in context.items():
                if isinstance(value, str) and value:
                    fake[name] = slot(partial(_raw, name))
            if context["topics"]:
                fake["topics"] = [slot(_joined_topics)]
            for name in ("paper_text", "more_text"):
                fake[name] = [slot(partial(_item, name, i)) for i in range(len(context[name]))]
        else:
            for name, value in context.items():
                if isinstance(value, Markup):
                    fake[name] = Markup(slot(partial(_raw, name)))
                elif isinstance(value, str) and value:
                    fake[name] = slot(partial(_escaped, name))
            if context["topics"]:
                fake["topics"] = [slot(_topics)]
            fake["paper_html"] = [
                Markup(slot(partial(_item, "paper_html", i)))
                for i in range(len(context["paper_html"]))
            ]
            fake["more"] = [
                view._replace(
                    title=slot(partial(_more, "title", i)),
                    url=slot(partial(_more, "url", i)),
                )
                for i, view in enumerate(context["more"])
            ]
        n = len(context["views"])
        skeleton = slots.cut(self.render(full=n, linked=n, omitted=0, **fake))
        return None if slots.failed else skeleton


def _raw(name: str, context: dict[str, Any]) -> str:
    return str(context[name])


def _escaped(name: str, context: dict[str, Any]) -> str:
    return str(escape(context[name]))


def _topics(context: dict[str, Any]) -> str:
    return str(escape(", ".join(context["topics"])))  # as Jinja's join, then autoescape


def _joined_topics(context: dict[str, Any]) -> str:
    return ", ".join(context["topics"])  # as Jinja's join, no autoescaping (text)


def _item(name: str, i: int, context: dict[str, Any]) -> str:
    return str(context[name][i])


def _more(field: str, i: int, context: dict[str, Any]) -> str:
    return str(escape(getattr(context["more"][i], field)))


def _wrapped(line: _Skeleton, width: int, indent: int, context: dict[str, Any]) -> str:
    pieces, getters = line
    out = [pieces[0]]
    for get, piece in zip(getters, pieces[1:], strict=True):
        out.append(get(context))
        out.append(piece)
    return wrap("".join(out), width, indent)


def page_shape(context: dict[str, Any]) -> tuple[Any, ...] | None:
    """What the page templates' conditions and loops see of `context`."""
    views, papers, more = context["views"], context["paper_html"], context["more"]
    if not len(views) == len(papers) == len(context["paper_text"]):
        return None
    texts = tuple(
        (name, bool(value))
        for name, value in context.items()
        if isinstance(value, str) or value is None
    )
    return (len(views), context["more_total"], len(more), len(context["more_text"]),
            bool(context["topics"]), texts)  # fmt: skip
