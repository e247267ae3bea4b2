"""The aiohttp application: the route modules, the body cap, refusals as pages.

Owns: `make_app` (the body-size cap, the route modules in `ROUTES`, the headers every
answer carries) and turning a refusal (400, 404, 405, 413) or a store failure (503)
into a short page. Does not own the handlers' shared state (`context.py`), any route's
behaviour (the route modules) or listening (`server.py`).

Every answer says `Cache-Control: no-store` (the feed: `no-cache`, revalidated by its
ETag) and `Referrer-Policy: no-referrer` (a link's
token never leaks to another site), sets no cookie, and allows no script.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from digest.errors import DigestError
from digest.web import copies, feeds, preferences, unsubscribe
from digest.web.context import CONTEXT, WebContext

log = logging.getLogger("digest.web")

MAX_BODY_BYTES = 8 * 1024  # a one-click body is 26 bytes; the largest form well under 1 KB

# The route modules: each has `add_routes(app)`. Add yours here.
ROUTES: tuple[Callable[[web.Application], None], ...] = (
    unsubscribe.add_routes,
    preferences.add_routes,
    copies.add_routes,
    feeds.add_routes,
)


REFUSALS = {
    400: ("This link does not work", "The link is incomplete, changed, or no longer valid. "
          "Use the link in your latest digest email."),
    404: ("Page not found", "There is no page at this address."),
    405: ("Not allowed", "This page does not take that kind of request."),
    413: ("Too large", "The request is larger than this page accepts."),
}  # fmt: skip


@web.middleware
async def refusals_as_pages(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """A refusal is a short page with its status; a store failure is a 503 page and a
    log line; never a traceback to the visitor."""
    context = request.app[CONTEXT]
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        title, message = REFUSALS.get(e.status, ("Refused", e.reason))
        return context.page("error.html.j2", status=e.status, title=title, message=message)
    except DigestError as e:
        log.error("web: %s %s failed: %s", request.method, request.path, e)
        return context.page(
            "error.html.j2",
            status=503,
            title="Try again later",
            message="Your request could not be saved just now. Please try again in a minute.",
        )


async def _safe_headers(request: web.Request, response: web.StreamResponse) -> None:
    # a route may say otherwise: the feed is revalidated (ETag), the web copy shows images
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'",
    )


def make_app(context: WebContext) -> web.Application:
    """The endpoint: every route module's routes, with the body cap and the headers."""
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[refusals_as_pages])
    app[CONTEXT] = context
    for add_routes in ROUTES:
        add_routes(app)
    app.on_response_prepare.append(_safe_headers)

    async def close_threads(_: web.Application) -> None:
        if context.executor is not None:
            context.executor.shutdown(wait=True)

    app.on_cleanup.append(close_threads)
    return app
