"""What every handler of the endpoint shares: `WebContext`, under `app[CONTEXT]`.

Owns: the current config (the daemon's, after a reload), the engine, the tokens, the
clock, the pages, the digests' renderer (for web copies), and the worker threads that
run the database calls (so the event loop the daemon shares never waits on SQL);
reading a token into the recipient it names (`recipient_for`, 400 when it names
nobody). Does not own any route (the route
modules) or the application (`app.py`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from sqlalchemy import Engine

from digest.config import Config, Subscriber
from digest.render import Renderer
from digest.store import recipients
from digest.web.pages import Pages
from digest.web.tokens import BadToken, Links, Purpose, Tokens

T = TypeVar("T")
DB_THREADS = 4  # database calls in flight at once (PostgreSQL)
SQLITE_DB_THREADS = 1  # SQLite has one writer: threads of one process would only take
# turns on its lock through the busy handler's sleeps (measured: 5x the p99)


@dataclass
class WebContext:
    """What every handler needs; `app[CONTEXT]`."""

    config: Callable[[], Config]  # the current config (the daemon's, after a reload)
    engine: Engine
    tokens: Tokens
    clock: Callable[[], dt.datetime]
    pages: Pages
    executor: ThreadPoolExecutor | None = None  # made for the engine: see __post_init__
    _subscribers: tuple[tuple[Subscriber, ...], dict[str, Subscriber]] | None = None
    _renderer: tuple[Path | None, Renderer] | None = None

    def __post_init__(self) -> None:
        if self.executor is None:
            threads = SQLITE_DB_THREADS if self.engine.dialect.name == "sqlite" else DB_THREADS
            self.executor = ThreadPoolExecutor(threads, thread_name_prefix="digest-web")

    @property
    def links(self) -> Links:
        web_config = self.config().web
        if web_config is None:
            raise RuntimeError("the endpoint runs only with [web]")
        return Links(web_config, self.tokens)

    @property
    def renderer(self) -> Renderer:
        """The digests' renderer (web copies show papers as the email does): loaded on
        first use, again when a reload changes `[mail] templates`."""
        templates = self.config().mail.templates
        if self._renderer is None or self._renderer[0] != templates:
            self._renderer = (templates, Renderer(templates))
        return self._renderer[1]

    async def db(self, call: Callable[..., T], *args: Any) -> T:
        """`call(*args)` in a worker thread (sync SQLAlchemy off the event loop)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(call, *args))

    def subscriber(self, email: str) -> Subscriber | None:
        """The file's subscriber with this address (a map built once per config)."""
        config = self.config()
        if self._subscribers is None or self._subscribers[0] is not config.subscribers:
            self._subscribers = (config.subscribers, {s.email: s for s in config.subscribers})
        return self._subscribers[1].get(email)

    async def recipient_for(self, purpose: Purpose, token: str) -> recipients.Recipient:
        """The recipient a token names; 400 when the token is bad or names nobody."""
        try:
            key = self.tokens.read(purpose, token)
        except BadToken:
            raise bad_link() from None
        recipient = await self.db(recipients.recipient_by_key, self.engine, key)
        if recipient is None:  # signed by us, for a key this database does not have
            raise bad_link()
        return recipient

    def page(self, name: str, *, status: int = 200, **context: Any) -> web.Response:
        return web.Response(
            text=self.pages.render(name, **context), status=status, content_type="text/html"
        )


CONTEXT = web.AppKey("context", WebContext)


def bad_link() -> web.HTTPBadRequest:
    return web.HTTPBadRequest(reason="bad link")
