"""A digest's HTML page rendered once per shape, filled in per digest. Pure.

Owns: `PageSkeletons`, the shipped `digest.html.j2` (and the `_paper_link.html.j2` it
includes for the "more" list) rendered with a placeholder for every per-digest value
(every text and URL of the context, the topic list, each paper's fragment, each "more"
link's title and URL), cut at the placeholders and kept per shape; filling one is a
join of the digest's own values, escaped as the template's autoescaping escapes them.
The result is the very string `page.render(full=n, linked=n, omitted=0, **context)`
returns (the tests compare against plain Jinja), for a few joins instead of a render.

Why it is exact: in the shipped page template every `{% if %}` and `{% for %}` depends
only on how many papers are shown, how many matched past max_papers and how many of
those are listed, whether there are topics, and which texts are empty (no web copy, no
preferences link): the shape, which keys the skeleton. Every text reaches the output
only through its own `{{ }}` (escaped; Markup as is), the topics only joined by ", ".
Only the page as it fits under the size cap is made this way; a page past the cap,
and pages of overridden templates, are rendered by Jinja (`renderer.py`).

Does not own: the context (`renderer.py` builds it), the papers' own fragments
(`fragments.py`), packing the HTML.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from markupsafe import Markup, escape

from digest.render.fragments import MARK

PAGE_CACHE_SIZE = 512  # page shapes kept per Renderer

Getter = Callable[[dict[str, Any]], str]  # a slot's value from a digest's context
_Skeleton = tuple[tuple[str, ...], tuple[Getter, ...]]  # pieces, and the slots between


class PageSkeletons:
    """The page skeletons of one Renderer. `render` renders the page template with a
    context (the keyword arguments of `page.render`)."""

    def __init__(self, render: Callable[..., str]) -> None:
        self.render = render
        self._cache: dict[tuple[Any, ...], _Skeleton | None] = {}

    def page(self, context: dict[str, Any]) -> str | None:
        """`render(full=n, linked=n, omitted=0, **context)`, n the papers shown, or None
        when the context is not one a skeleton can hold (render it plainly then)."""
        key = _shape(context)
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
        getters: list[Getter] = []

        def slot(get: Getter) -> str:
            getters.append(get)
            return f"{MARK}{len(getters) - 1}{MARK}"

        fake = dict(context)
        for name, value in context.items():
            if isinstance(value, Markup):
                fake[name] = Markup(slot(partial(_raw, name)))
            elif isinstance(value, str) and value:
                fake[name] = slot(partial(_escaped, name))
        if context["topics"]:
            fake["topics"] = [slot(_topics)]
        fake["paper_html"] = [
            Markup(slot(partial(_paper, i))) for i in range(len(context["paper_html"]))
        ]
        fake["more"] = [
            view._replace(
                title=slot(partial(_more, "title", i)),
                url=slot(partial(_more, "url", i)),
            )
            for i, view in enumerate(context["more"])
        ]
        n = len(context["views"])
        parts = self.render(full=n, linked=n, omitted=0, **fake).split(MARK)
        if len(parts) % 2 == 0:
            return None
        order: list[Getter] = []
        for token in parts[1::2]:
            if not token.isdigit() or int(token) >= len(getters):
                return None
            order.append(getters[int(token)])
        return tuple(parts[0::2]), tuple(order)


def _raw(name: str, context: dict[str, Any]) -> str:
    return str(context[name])


def _escaped(name: str, context: dict[str, Any]) -> str:
    return str(escape(context[name]))


def _topics(context: dict[str, Any]) -> str:
    return str(escape(", ".join(context["topics"])))  # as Jinja's join, then autoescape


def _paper(i: int, context: dict[str, Any]) -> str:
    return str(context["paper_html"][i])


def _more(field: str, i: int, context: dict[str, Any]) -> str:
    return str(escape(getattr(context["more"][i], field)))


def _shape(context: dict[str, Any]) -> tuple[Any, ...] | None:
    """What the page template's conditions and loops see of `context`."""
    views, papers, more = context["views"], context["paper_html"], context["more"]
    if len(views) != len(papers):
        return None
    texts = tuple(
        (name, bool(value))
        for name, value in context.items()
        if isinstance(value, str) or value is None
    )
    return (len(views), context["more_total"], len(more), bool(context["topics"]), texts)
