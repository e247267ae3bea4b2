"""/f/TOKEN.atom: a recipient's Atom feed, one entry per paper delivered to them.

Every paper a digest delivered (mailed and sent, or kept for the feed of a subscriber
with ``delivery = "feed"``), newest digest first and, within one, best first, at most
FEED_ENTRIES of them. An entry has the paper's title, its Hugging Face link, the summary
the email shows, the subscriber's topics it matches as categories (matched again:
`explain.py`), and the digest's slot as its date. Built with feedgen.

Conditional GET: the ETag is a hash of the document, which depends only on what is
stored (the feed's `updated` is its newest digest's slot, never the clock), so a reader
that sends it back in If-None-Match gets a 304 until a new digest delivers something.
`Cache-Control: private, no-cache`: keep it, but ask again.

A bad token is the 400 page. Owns this handler and the document. Does not own the
deliveries (`digest/store/feeds.py`) or the tokens (`tokens.py`).
"""

from __future__ import annotations

import datetime as dt
import hashlib

from aiohttp import web
from feedgen.feed import FeedGenerator
from sqlalchemy import Engine

from digest.config import Subscriber
from digest.render.renderer import LISTING_URL, view_match
from digest.store import copies, feeds
from digest.web.context import CONTEXT
from digest.web.explain import explain
from digest.web.tokens import Purpose

FEED_ENTRIES = 200  # the newest papers a feed holds (readers keep what they have seen)
EMPTY_UPDATED = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)  # a feed with no entry yet
CONTENT_TYPE = "application/atom+xml"


def add_routes(app: web.Application) -> None:
    app.router.add_get("/f/{token}.atom", show)


async def show(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    recipient = await context.recipient_for(Purpose.FEED, request.match_info["token"])
    url = context.links.feed(recipient.key)
    subscriber = context.subscriber(recipient.email)
    body = await context.db(feed_document, context.engine, recipient.email, subscriber, url)
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if _matches(request.headers.get("If-None-Match", ""), etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type=CONTENT_TYPE, charset="utf-8", headers=headers)


def _matches(if_none_match: str, etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (weak comparison, RFC 9110 13.1.2)."""
    tags = [t.strip() for t in if_none_match.split(",")]
    return "*" in tags or etag in (t.removeprefix("W/") for t in tags)


def feed_document(engine: Engine, email: str, subscriber: Subscriber | None, url: str) -> bytes:
    """The Atom document of `email`'s feed: two reads (the deliveries, their papers),
    then feedgen. Blocking: the handler runs it in a worker thread."""
    entries = feeds.feed_entries(engine, email, FEED_ENTRIES)
    found = copies.papers_by_id(engine, [e.paper_id for e in entries])
    entries = [e for e in entries if e.paper_id in found]
    matches = explain(subscriber, [found[e.paper_id] for e in entries])
    fg = FeedGenerator()
    fg.id(url)
    fg.title("Papers Digest")
    fg.subtitle("The Hugging Face Daily Papers your digests brought, newest first")
    fg.author({"name": "Papers Digest"})
    fg.link(href=url, rel="self", type=CONTENT_TYPE)
    fg.link(href=LISTING_URL, rel="alternate", type="text/html")
    fg.language("en")
    fg.updated(entries[0].slot if entries else EMPTY_UPDATED)
    for entry, m in zip(entries, matches, strict=True):
        view = view_match(m, "none")
        fe = fg.add_entry(order="append")
        fe.id(view.url)
        fe.title(view.title)
        fe.link(href=view.url, rel="alternate", type="text/html")
        if view.summary:
            fe.summary(view.summary)
        if view.authors_line:
            fe.author({"name": view.authors_line})
        for topic in view.topics:
            fe.category(term=topic)
        fe.published(entry.slot)
        fe.updated(entry.slot)
    document: bytes = fg.atom_str(pretty=False)
    return document
