"""/u/TOKEN: RFC 8058 one-click unsubscribe, and the page a person sees first.

- POST with the body `List-Unsubscribe=One-Click` (application/x-www-form-urlencoded or
  multipart/form-data; anything else is read as urlencoded text) unsubscribes at once and
  answers 200 with a short page: never a redirect, no cookie, no CSRF token (RFC 8058
  section 3: the mail client posts on its own). The page's button posts the same body
  plus `via=page`, recorded as "page" instead of "one-click".
- GET never unsubscribes (mail scanners and link previews open links): it shows the
  page with that button.
- A token that is tampered with, truncated, signed by a dropped secret or made for
  another purpose answers 400 and changes nothing; so does a POST without the body.

Owns these two handlers. Does not own the suppression itself (`store/recipients.py`,
which cancels the pending digests in the same transaction) or tokens (`tokens.py`).
"""

from __future__ import annotations

import logging
import urllib.parse

from aiohttp import web

from digest.store import recipients
from digest.web.context import CONTEXT
from digest.web.tokens import Purpose

log = logging.getLogger("digest.web")

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/u/{token}", show, allow_head=False)
    app.router.add_post("/u/{token}", one_click)


async def show(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    recipient = await context.recipient_for(Purpose.UNSUBSCRIBE, request.match_info["token"])
    preferences_url = context.links.for_key(recipient.key).preferences
    if recipient.suppressed:
        return context.page(
            "unsubscribed.html.j2", title="You are unsubscribed", email=recipient.email,
            already=True, preferences_url=preferences_url,
        )  # fmt: skip
    return context.page(
        "unsubscribe.html.j2", title="Unsubscribe", email=recipient.email,
        preferences_url=preferences_url,
    )  # fmt: skip


async def one_click(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    recipient = await context.recipient_for(Purpose.UNSUBSCRIBE, request.match_info["token"])
    form = await read_form(request)
    if form.get("List-Unsubscribe") != "One-Click":
        raise web.HTTPBadRequest(reason="not a one-click unsubscribe")
    how: recipients.How = "page" if form.get("via") == "page" else "one-click"
    new = await context.db(
        recipients.suppress, context.engine, recipient.email, how, context.clock()
    )
    if new:
        log.info("web: %s unsubscribed (%s)", recipient.email, how)
    return context.page(
        "unsubscribed.html.j2", title="You are unsubscribed", email=recipient.email,
        already=not new, preferences_url=context.links.for_key(recipient.key).preferences,
    )  # fmt: skip


async def read_form(request: web.Request) -> dict[str, str]:
    """The POSTed fields (text only); the body cap answers 413 past `client_max_size`."""
    if request.content_type in FORM_TYPES:
        posted = await request.post()
        return {k: v for k, v in posted.items() if isinstance(v, str)}
    body = await request.text()
    return dict(urllib.parse.parse_qsl(body.strip(), keep_blank_values=True))
