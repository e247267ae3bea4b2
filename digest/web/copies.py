"""/d/TOKEN: a digest's web copy, the same HTML the email has, with every match.

The token signs (the recipient's link key, the digest's slot), so planning puts the link
in the email before the digest's row exists. The page is the HTML part of the message
stored in the outbox, served as it was mailed, except:

- the "View in browser" line at the top (between `<!--view-->` and `<!--/view-->`) is
  left out: this is the browser;
- where the email only counted the matches past max_papers (`<!--more N-->` ...
  `<!--/more-->`, N the papers shown in full), the web copy shows each of them in full:
  their ids are the stored digest's paper ids after the first N, their text comes from
  the papers table and their topics from matching them again (`explain.py`).

A bad, changed or outdated token is the 400 page; a good one for a digest the outbox
does not have (or a digest that was never mailed, kept for a feed only) is a 404 page.

Owns this handler. Does not own the message (planning renders it once), the reads
(`digest/store/copies.py`) or the tokens (`tokens.py`).
"""

from __future__ import annotations

import email
import email.policy
import re

from aiohttp import web
from markupsafe import Markup

from digest.config import Subscriber
from digest.records import Paper
from digest.store import copies, recipients
from digest.web.context import CONTEXT, WebContext, bad_link
from digest.web.explain import explain
from digest.web.tokens import BadToken, Purpose, read_copy

VIEW = re.compile(r"<!--view-->.*?<!--/view-->", re.DOTALL)
MORE = re.compile(r"<!--more (\d+)-->.*?<!--/more-->", re.DOTALL)
# the web copy shows the paper thumbnails the email shows: https images, nothing else
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src https:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/d/{token}", show, allow_head=False)


async def show(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    try:
        key, slot = read_copy(context.tokens.read(Purpose.DIGEST, request.match_info["token"]))
    except BadToken:
        raise bad_link() from None
    recipient = await context.db(recipients.recipient_by_key, context.engine, key)
    if recipient is None:  # signed by us, for a key this database does not have
        raise bad_link()
    stored = await context.db(copies.web_copy, context.engine, recipient.email, slot)
    html = html_part(stored.message) if stored is not None and stored.message else None
    if stored is None or html is None:
        return context.page(
            "error.html.j2", status=404, title="This digest is not here",
            message="There is no web copy of this digest (it may have been removed). "
            "Your latest digest email has a link to its own.",
        )  # fmt: skip
    html = VIEW.sub("", html, count=1)
    more = MORE.search(html)
    if more is not None:
        extra = stored.paper_ids[int(more.group(1)) :]
        found = await context.db(copies.papers_by_id, context.engine, extra)
        papers = [found[i] for i in extra if i in found]
        # rendered in a worker thread: a long list must not hold up the daemon's loop
        subscriber = context.subscriber(recipient.email)
        rendered = await context.db(all_matches, context, subscriber, papers, int(more.group(1)))
        html = html[: more.start()] + rendered + html[more.end() :]
    response = web.Response(text=html, content_type="text/html")
    response.headers["Content-Security-Policy"] = CSP
    return response


def html_part(message: bytes) -> str | None:
    """The text/html part of a stored message (None when it has none)."""
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    body = parsed.get_body(preferencelist=("html",))
    if body is None:
        return None
    content = body.get_content()
    return content if isinstance(content, str) else None


def all_matches(
    context: WebContext, subscriber: Subscriber | None, papers: list[Paper], shown: int
) -> str:
    """The matches past max_papers in full, as the email's cards (highlights, topics)."""
    renderer = context.renderer
    thumbnails = subscriber.thumbnails if subscriber is not None else "small"
    cards = [renderer.render_paper(m, thumbnails).html for m in explain(subscriber, papers)]
    template = renderer.env.get_template("_web_more.html.j2")
    return str(Markup(template.render(shown=shown, paper_html=cards)))
