"""Digests: matches -> Jinja templates -> text and HTML bodies -> an EmailMessage. Pure.

Owns: the Jinja environment (`Renderer`, built once: shipped templates, overridable
by `MailConfig.templates`, CSS inlined at load by `render_css.py`), the per-paper
view of a `Match`, and the 100 KB cap on the HTML. The words (summaries, authors,
highlighting, subject) come from `render_text.py`; `render_message.py` turns the
bodies into the message (headers, MIME).

Speed: the matches of one paper (each with its own topics and leaves: every
subscriber has their own, so two equal Matches are rare, under 1% in a 10k cycle)
fill in that paper's skeleton, rendered once per batch (`fragments.py`), so a
digest's own work is a few joins per paper and the pages around them (HTML and
text), each rendered once per shape of page and filled per digest (`pages.py`). A
Match's highlights depend only on (text, its explaining leaves that apply to that
text): `text.highlight` memoises the marking per spans, and `topics.spans` memoises
each text's words (sorted too: a prefix is a bisection), so a paper shown with
different leaves costs a few lookups, a merge and a join, not a tokenisation.
`render_digest_bytes` is the outbox's path (bytes, no EmailMessage); `render_digest`
gives the same message as an object.

Does not own: choosing or ranking the papers (`match.py`: matches are shown in the
order given), storing the message (the outbox) or sending it (`delivery.py`). No
clock, no database, no network: `now` and `slot` are passed in.

Paper text never reaches the HTML unescaped (Jinja autoescaping, and `hl` escapes
before it marks words) and never reaches a header (only topic names, the
subscriber's name and config values do, each through `clean_header`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import itertools
from collections.abc import Iterator, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from markupsafe import Markup

from digest.config import MailConfig, Subscriber
from digest.config.schema import Thumbnails
from digest.errors import ConfigError
from digest.records import Match, Paper
from digest.render import message as message_module
from digest.render import text as text_module
from digest.render.css import Stylesheet, inline_template, parse_stylesheet
from digest.render.fragments import Skeletons, as_ascii, is_recorder, placeholder
from digest.render.message import (
    DigestBodies,
    RecipientLinks,
    build_digest_bytes,
    build_digest_message,
    clean_text,
    message_id_for,
    render_plain_message,
    shorten,
    unsubscribe_url,
)
from digest.render.pages import PageSkeletons, page_shape, wrap_filter
from digest.render.text import (
    SUMMARY_CAP_CHARS,
    authors_rest,
    first_sentences,
    format_authors,
    format_day,
    format_subject,
    highlight,
    leaves_by_where,
    link_entry,
    numbered_entries,
    safe_url,
    shown_authors,
)
from digest.topics import spans
from digest.topics.query import Leaf

__all__ = [
    "DigestBodies",
    "PaperView",
    "RenderedPaper",
    "Renderer",
    "build_digest_bytes",
    "build_digest_message",
    "message_id_for",
    "pack_html",
    "render_digest",
    "render_digest_bodies",
    "render_digest_bytes",
    "render_plain_message",
]

HTML_CAP_BYTES = 100_000  # Gmail clips a message's HTML at about 102 KB
LISTING_URL = "https://huggingface.co/papers"


def shipped_templates_dir() -> Path:
    """The templates that come with the program: inside the wheel, else in the checkout."""
    package = Path(__file__).resolve().parent.parent  # digest/
    for candidate in (package / "templates", package.parent / "templates"):
        if (candidate / "digest.html.j2").is_file():
            return candidate
    raise ConfigError(f"the shipped templates are missing: looked in {package / 'templates'}")


# ---------------------------------------------------------------------------
# What the templates see


class PaperView(NamedTuple):
    """A matched paper, ready to show: cleaned text, checked URLs, the leaves to mark
    (`leaves`, for the `hl` filter), and how to show its thumbnail. Immutable (a
    NamedTuple: one is built per match shown, and a frozen dataclass costs ~8 us)."""

    id: str
    title: str
    url: str
    arxiv_url: str
    pdf_url: str
    authors_line: str  # "A, B, C et al. (12 authors)": authors + authors_rest
    authors: tuple[str, ...]  # the names shown (each marked on its own)
    authors_rest: str  # " et al. (12 authors)", "12 authors" or ""
    organization: str | None
    upvotes: int
    comments: int
    thumbnail: str | None
    summary: str
    summary_is_ai: bool
    github: str | None
    project_page: str | None
    topics: tuple[str, ...]
    leaves: frozenset[Leaf]
    thumbnails: Thumbnails  # the subscriber's choice: "small", "large" or "none"


class RenderedPaper(NamedTuple):
    """One match as the digest shows it: its view, its HTML (ASCII, lines packed by
    `pack_html`) and its text entry (without the number)."""

    view: PaperView
    html: Markup
    text: str


def view_match(match: Match, thumbnails: Thumbnails = "small") -> PaperView:
    """The view of one match: what `_paper.html.j2` and `digest.txt.j2` show."""
    hits = match.hits
    topics: tuple[str, ...]
    if len(hits) == 1:  # the usual case: Match.topics and .leaves, without building them
        topics, leaves = (hits[0].topic,), hits[0].leaves
    else:
        topics, leaves = match.topics, match.leaves
    return PaperView._make((*_paper_values(match.paper), _clean_topics(topics), leaves, thumbnails))


_PAPER_FIELDS = PaperView._fields[:-3]  # all but the match's


class _CacheInfo(NamedTuple):
    currsize: int


class _ValuesByPaper:
    """`_paper_fields` in PaperView's field order, memoised per paper by identity, not
    by a Paper's hash (a frozen dataclass hashes all its fields on every lookup). The
    paper is kept with its values so that its id is not reused while the entry lives.
    `cache_info` and `cache_clear` as an lru_cache's (Renderer.forget clears it)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._entries: dict[int, tuple[Paper, tuple[Any, ...]]] = {}

    def __call__(self, paper: Paper) -> tuple[Any, ...]:
        entry = self._entries.get(id(paper))
        if entry is not None and entry[0] is paper:
            return entry[1]
        if len(self._entries) >= self.maxsize:
            self._entries.clear()
        fields = _paper_fields(paper)
        values = tuple(fields[name] for name in _PAPER_FIELDS)
        self._entries[id(paper)] = (paper, values)
        return values

    def cache_info(self) -> _CacheInfo:
        return _CacheInfo(currsize=len(self._entries))

    def cache_clear(self) -> None:
        self._entries.clear()


_paper_values = _ValuesByPaper(maxsize=2048)  # a view is built positionally, per match


@functools.lru_cache(maxsize=4096)
def _clean_topics(topics: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(clean_text(t) for t in topics)


def _paper_fields(paper: Paper) -> dict[str, Any]:
    """Every PaperView field but the match's own (topics, words)."""
    ai_summary = clean_text(paper.ai_summary or "")
    org = paper.organization_fullname or paper.organization
    return {
        "id": paper.id,
        "title": clean_text(paper.title) or paper.id,
        "url": paper.url,
        "arxiv_url": paper.arxiv_url,
        "pdf_url": paper.pdf_url,
        "authors_line": format_authors(paper.authors, paper.author_count),
        "authors": shown_authors(paper.authors),
        "authors_rest": authors_rest(paper.authors, paper.author_count),
        "organization": clean_text(org) if org else None,
        "upvotes": paper.upvotes,
        "comments": paper.num_comments,
        "thumbnail": safe_url(paper.thumbnail),
        "summary": shorten(ai_summary, SUMMARY_CAP_CHARS) or first_sentences(paper.abstract),
        "summary_is_ai": bool(ai_summary),
        "github": safe_url(paper.github_repo),
        "project_page": safe_url(paper.project_page),
    }


# ---------------------------------------------------------------------------
# The Jinja environment


class _InliningLoader(jinja2.BaseLoader):
    """Loads through `base` and inlines the stylesheet into every *.html.j2 source."""

    def __init__(self, base: jinja2.BaseLoader, sheet: Stylesheet | None) -> None:
        self.base = base
        self.sheet = sheet

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Any]:
        source, filename, uptodate = self.base.get_source(environment, template)
        if self.sheet is not None and template.endswith(".html.j2"):
            source = inline_template(source, self.sheet, where=filename or template)
        return source, filename, uptodate


# module-level caches keyed by a paper's text or fields (see Renderer.forget)
_PAPER_CACHES: tuple[Any, ...] = (
    _paper_values, text_module._applicable, text_module._escaped, text_module._marked,
    text_module.wrap, text_module.text_entry, spans._words_of, message_module._qp_line,
)  # fmt: skip


class Renderer:
    """The Jinja environment and the loaded templates. Build once, render many.

    `templates_dir` (MailConfig.templates) holds files that override the shipped ones
    by name: digest.html.j2, _paper.html.j2, _paper_link.html.j2, digest.txt.j2,
    _paper.txt.j2, digest.css. The page templates get each paper's view (`views`)
    and its rendered _paper.html.j2 and _paper.txt.j2 (`paper_html`, `paper_text`),
    which `render_paper` renders for each Match. `inline_css=False` keeps
    the classes and puts the whole stylesheet in <head> (the benchmark's baseline,
    which then inlines per message). `skeletons=False` renders the paper templates for
    every new match and the page for every digest (the fast paths' reference in the
    tests; see `fragments.py` and `pages.py`).
    """

    def __init__(
        self, templates_dir: Path | None = None, *, inline_css: bool = True, skeletons: bool = True
    ) -> None:
        loaders: list[jinja2.BaseLoader] = []
        if templates_dir is not None:
            if not templates_dir.is_dir():
                raise ConfigError(f"mail.templates: {templates_dir} is not a folder")
            loaders.append(jinja2.FileSystemLoader(templates_dir))
        loaders.append(jinja2.FileSystemLoader(shipped_templates_dir()))
        base = jinja2.ChoiceLoader(loaders)
        self.env = jinja2.Environment(
            autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
        )
        with _template_errors():
            css_source, css_file, _ = base.get_source(self.env, "digest.css")
            sheet = parse_stylesheet(css_source, where=css_file or "digest.css")
            self.env.loader = _InliningLoader(base, sheet if inline_css else None)
            self.head_css = Markup(sheet.residue if inline_css else css_source)
            mark_attrs = sheet.attrs_for("hl") if inline_css else ' class="hl"'
            self._mark_open = f"<mark{mark_attrs}>"
            self.env.filters["hl"] = self._highlight
            self.env.filters["wrap"] = wrap_filter
            self.page = self.env.get_template("digest.html.j2")
            self.paper = self.env.get_template("_paper.html.j2")
            self.paper_link = self.env.get_template("_paper_link.html.j2")
            self.paper_text = self.env.get_template("_paper.txt.j2")
            self.text = self.env.get_template("digest.txt.j2")
        # Distinct matches of the same paper (other topics, other leaves) share its
        # skeletons (`fragments.py`), for the shipped paper templates: an overridden
        # one may use a match's leaves or topics in ways a skeleton cannot hold.
        plain = not skeletons or (templates_dir is not None and any(
            (templates_dir / name).exists() for name in ("_paper.html.j2", "_paper.txt.j2")
        ))  # fmt: skip
        self._skeletons = None if plain else Skeletons(
            lambda view: self.paper.render(p=view), lambda view: self.paper_text.render(p=view)
        )  # fmt: skip
        # The page around the papers, likewise, for the shipped page and link templates
        # (`pages.py`): one render per shape of page, filled per digest.
        plain_page = not skeletons or (templates_dir is not None and any(
            (templates_dir / name).exists() for name in ("digest.html.j2", "_paper_link.html.j2")
        ))  # fmt: skip
        self._pages = None if plain_page else PageSkeletons(self.page.render)
        plain_text = not skeletons or (
            templates_dir is not None and (templates_dir / "digest.txt.j2").exists()
        )
        self._text_pages = None if plain_text else PageSkeletons(self.text.render, text=True)

    def forget(self) -> None:
        """Drop everything cached for the papers rendered so far: the skeletons and
        the module-level caches keyed by a paper's text.

        Those caches pay off inside one planning run, where thousands of digests share a
        few dozen papers; across runs the papers change, so a long-running daemon would
        otherwise fill every cache to its bound with papers long gone (the soak's RSS
        grew for 25 minutes that way). The daemon calls this after each planning run."""
        if self._skeletons is not None:
            self._skeletons.clear()
        for cache in _PAPER_CACHES:
            cache.cache_clear()
        link_entry.cache_clear()  # only a digest with a "more" list fills it

    def _highlight(self, text: str, leaves: frozenset[Leaf], where: str) -> Markup:
        if is_recorder(leaves):  # rendering a skeleton
            return placeholder(leaves, text, where)
        return highlight(text, leaves, where, self._mark_open)

    def render_paper(self, match: Match, thumbnails: Thumbnails = "small") -> RenderedPaper:
        """One match's view, packed HTML and text entry: its paper's skeletons filled
        in, or the paper templates rendered (overridden ones, `skeletons=False`)."""
        view = view_match(match, thumbnails)
        skeletons = self._skeletons.get(match, view) if self._skeletons is not None else None
        if skeletons is None:
            html, text = self.paper.render(p=view), self.paper_text.render(p=view)
        else:
            marks, mask = leaves_by_where(view.leaves)
            html = skeletons[0].fill(view.topics, marks, mask, self._mark_open)
            text = skeletons[1].fill(view.topics, marks, mask, self._mark_open)
        return RenderedPaper(view=view, html=Markup(pack_html(html)), text=text)


@contextlib.contextmanager
def _template_errors() -> Iterator[None]:
    """Turn a Jinja error into a ConfigError naming the template file and line."""
    try:
        yield
    except jinja2.TemplateError as e:
        where, line = getattr(e, "filename", None) or getattr(e, "name", None), None
        line = getattr(e, "lineno", None)
        tb = e.__traceback__
        while tb is not None:  # runtime errors: the innermost template frame has the line
            code = tb.tb_frame.f_code
            if code.co_filename.endswith(".j2"):
                where, line = code.co_filename, tb.tb_lineno
            tb = tb.tb_next
        message = e.message or type(e).__name__
        raise ConfigError(f"template {where or '?'}, line {line or '?'}: {message}") from e


# ---------------------------------------------------------------------------
# Rendering


def render_digest(
    renderer: Renderer,
    *,
    subscriber: Subscriber,
    slot: dt.datetime,
    matches: Sequence[Match],
    mail: MailConfig,
    now: dt.datetime,
    total_matches: int | None = None,
    more: Sequence[Match] = (),
    links: RecipientLinks | None = None,
) -> EmailMessage:
    """The digest for `subscriber` at `slot` as a multipart/alternative EmailMessage."""
    bodies = render_digest_bodies(
        renderer, subscriber=subscriber, slot=slot, matches=matches, mail=mail,
        total_matches=total_matches, more=more, links=links,
    )  # fmt: skip
    return build_digest_message(
        bodies, subscriber=subscriber, slot=slot, mail=mail, now=now, links=links
    )


def render_digest_bytes(
    renderer: Renderer,
    *,
    subscriber: Subscriber,
    slot: dt.datetime,
    matches: Sequence[Match],
    mail: MailConfig,
    now: dt.datetime,
    total_matches: int | None = None,
    more: Sequence[Match] = (),
    links: RecipientLinks | None = None,
) -> tuple[str, bytes]:
    """(Subject, message bytes) of the digest: exactly `render_digest(...)` then
    `str(msg["Subject"])` and `msg.as_bytes()`, at a fraction of the cost. For the
    outbox, which stores bytes."""
    bodies = render_digest_bodies(
        renderer, subscriber=subscriber, slot=slot, matches=matches, mail=mail,
        total_matches=total_matches, more=more, links=links,
    )  # fmt: skip
    return build_digest_bytes(
        bodies, subscriber=subscriber, slot=slot, mail=mail, now=now, links=links
    )


def render_digest_bodies(
    renderer: Renderer,
    *,
    subscriber: Subscriber,
    slot: dt.datetime,
    matches: Sequence[Match],
    mail: MailConfig,
    total_matches: int | None = None,
    more: Sequence[Match] = (),
    links: RecipientLinks | None = None,
) -> DigestBodies:
    """Subject, text and HTML of a digest (HTML under HTML_CAP_BYTES).

    `matches` are shown in full; `more` are the matches past the subscriber's
    max_papers (the next best, in order), listed at the end as title links, so every
    match of the digest can be seen; `total_matches` counts them all (the ones past
    `more` are only counted). With `links`, the footer's "Unsubscribe" and "Manage
    preferences" are the recipient's signed links; without, "Unsubscribe" is the
    mailto: (or mail.unsubscribe) and there is no preferences link. With a web copy
    (`links.web_copy`) the top links to it and the matches past max_papers are only
    counted and linked to it (it shows them all), not listed."""
    local_day = _local(slot, subscriber).date()
    with _template_errors():
        papers = [renderer.render_paper(m, subscriber.thumbnails) for m in matches]
    views = [p.view for p in papers]
    n = len(views)
    subject = format_subject(matches, local_day)
    shown = f"{n} new paper{'' if n == 1 else 's'}" if n else "No new papers"
    intro = format_day(local_day)
    total = max(total_matches or 0, n + len(more))
    if total > n:
        intro += f" - the best {n} of {total} matches"
    web_copy = links.web_copy if links else None
    # with a web copy the matches past max_papers are only counted here (it lists them)
    more_views = [] if web_copy else [view_match(m, "none") for m in more]
    context = {
        "subject": subject,
        "heading": f"{shown} for your topics",
        "intro": intro,
        "topics": [clean_text(t.name) for t in subscriber.topics],
        "unsubscribe_url": links.unsubscribe if links else unsubscribe_url(mail),
        "preferences_url": links.preferences if links else None,
        "web_copy_url": web_copy,
        "recipient": subscriber.email,
        "listing_url": LISTING_URL,
        "preheader": shorten(" · ".join(v.title for v in views[:3]) or shown, 200),
        "head_css": renderer.head_css,
        "views": views,
        "paper_html": [p.html for p in papers],
        "paper_text": numbered_entries([p.text for p in papers]),
        "more": more_views,  # the matches past max_papers: title links
        "more_total": total - n,  # how many matched past max_papers (more, and uncounted)
        "more_text": [link_entry(v.title, v.url) for v in more_views],
    }
    with _template_errors():
        shape = page_shape(context)
        html, longest = _render_capped_html(renderer, papers, context, shape)
        text_pages = renderer._text_pages
        filled = text_pages.page(context, shape) if text_pages is not None else None
        if filled is None:
            filled = renderer.text.render(context)
        text = filled.rstrip("\n") + "\n"  # ends with a line end
    return DigestBodies(subject=subject, text=text, html=html, html_longest_line=longest)


def _render_capped_html(
    renderer: Renderer,
    papers: list[RenderedPaper],
    context: dict[str, Any],
    shape: tuple[Any, ...] | None,
) -> tuple[str, int | None]:
    """The HTML part, and its longest line when packing it told (None: not known).
    Past HTML_CAP_BYTES the last papers become title links, and past that a count: one
    render when it fits, measured blocks and a few more when not."""

    def page(full: int, linked: int) -> str:
        omitted = len(papers) - linked
        html = renderer.page.render(full=full, linked=linked, omitted=omitted, **context)
        return pack_html(html)

    n = len(papers)
    filled = renderer._pages.page(context, shape) if renderer._pages is not None else None
    if filled is None:
        filled = renderer.page.render(full=n, linked=n, omitted=0, **context)
    html, line_ends, longest = _pack(filled)
    if len(html) + line_ends < HTML_CAP_BYTES:  # _wire_size, without counting again
        return html, longest
    # sizes[i]: bytes of paper i in full, links[i]: as a title link (+ line ends around it)
    sizes = [_wire_size(p.html) + 2 for p in papers]
    links = [_wire_size(_ascii(renderer.paper_link.render(p=p.view))) + 2 for p in papers]
    budget = HTML_CAP_BYTES - (_wire_size(html) - sum(sizes)) - 600  # 600: the "more" heading
    full_upto = [0, *itertools.accumulate(sizes)]
    link_upto = [0, *itertools.accumulate(links)]
    full = 0  # the most papers in full such that every other one still fits as a link
    while full < n and full_upto[full + 1] + link_upto[n] - link_upto[full + 1] <= budget:
        full += 1
    linked = n  # and if even the links do not all fit, as many as do
    while linked > full and full_upto[full] + link_upto[linked] - link_upto[full] > budget:
        linked -= 1
    html = page(full, linked)
    while _wire_size(html) >= HTML_CAP_BYTES and linked > 0:  # the estimate was short
        full, linked = (full - 1, linked) if full > 0 else (0, linked - 1)
        html = page(full, linked)
    return html, None


def _wire_size(html: str) -> int:
    """Bytes of ASCII HTML as sent: every line end becomes CRLF."""
    return len(html) + html.count("\n")


def _ascii(html: str) -> str:
    """HTML with every non-ASCII character as an entity: the part then travels as 7bit."""
    return as_ascii(html)


def pack_html(html: str, width: int = 800) -> str:
    """HTML ready for the message: ASCII only, and short lines joined with a space, up
    to `width` characters a line.

    To HTML a line end and a space are the same whitespace (the templates have no
    <pre>); to the email serialiser every line costs a couple of writes, so a digest
    with a quarter of the lines is noticeably cheaper to turn into bytes.
    """
    return _pack(html, width)[0]


def _pack(html: str, width: int = 800) -> tuple[str, int, int | None]:
    """`pack_html`, how many line ends it left, and its longest line as the message
    counts lines (None if it holds a CR: a CR ends a line there too). Each line is made
    ASCII on its own (the same characters): a page's few non-ASCII characters sit on a
    few lines, and a pass over all of a 25 KB page costs more than the rest of packing."""
    lines = html.split("\n")
    if not html.isascii():  # O(1) on a str: CPython knows whether it is ASCII
        lines = [line if line.isascii() else as_ascii(line) for line in lines]
    out: list[str] = []
    start = length = 0  # the current output line is lines[start:i], `length` long
    for i, size in enumerate(map(len, lines)):
        if i > start and length + size >= width:
            out.append(" ".join(lines[start:i]))
            start, length = i, 0
        length += size + 1
    out.append(" ".join(lines[start:]))
    longest = None if "\r" in html else max(map(len, out))
    return "\n".join(out), len(out) - 1, longest


def _local(instant: dt.datetime, subscriber: Subscriber) -> dt.datetime:
    if instant.tzinfo is None:
        raise ValueError(f"slot {instant.isoformat()} must be timezone-aware (UTC)")
    try:
        zone = ZoneInfo(subscriber.timezone)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ConfigError(
            f"subscriber {subscriber.email}: unknown timezone {subscriber.timezone!r}"
        ) from e
    return instant.astimezone(zone)
