"""The web endpoint for tests: a config with [web], the real server in its own thread.

`Endpoint` loads a real config file, opens its SQLite file, and serves the real aiohttp
application (`digest.web.server.endpoint_for`) on 127.0.0.1 in a background thread with
its own event loop, so tests talk to it over real HTTP (httpx) and read the real
database. `web_table` writes the [web] table, `SECRET` is what signs the links.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from pathlib import Path

from digest import store
from digest.config import Config, load_config
from digest.store import recipients
from digest.web.server import WebServer, endpoint_for
from digest.web.tokens import Links, Tokens

SECRET = "test-secret-0123456789abcdef"
OLD_SECRET = "old-secret-0123456789abcdef"
ENV = {"DIGEST_WEB_SECRET": SECRET, "DIGEST_WEB_OLD_SECRETS": OLD_SECRET}


def web_table(port: int, *, old: bool = True) -> str:
    old_line = 'old_secrets_env = "DIGEST_WEB_OLD_SECRETS"' if old else ""
    return f"""
[web]
listen = "127.0.0.1:{port}"
base_url = "http://127.0.0.1:{port}"
secret_env = "DIGEST_WEB_SECRET"
{old_line}
"""


class Endpoint:
    """The real endpoint of `config_path` on 127.0.0.1 (port from its [web] table, 0 for any)."""

    def __init__(
        self,
        config_path: Path,
        env: dict[str, str] | None = None,
        *,
        clock: object = None,
    ) -> None:
        self.config: Config = load_config(config_path, env or ENV)
        assert self.config.web is not None
        self.engine = store.open_engine(self.config.storage.url)
        store.migrate(self.engine)
        self._clock = clock
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.server: WebServer | None = None

    @property
    def base(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def links(self) -> Links:
        assert self.config.web is not None
        return Links(self.config.web)

    def tokens(self) -> Tokens:
        assert self.config.web is not None
        return Tokens.from_config(self.config.web)

    def key(self, email: str, now: dt.datetime | None = None) -> str:
        now = now or dt.datetime.now(dt.UTC)
        return recipients.ensure_recipients(self.engine, [email], now)[email]

    async def _start(self) -> None:
        kwargs = {"clock": self._clock} if self._clock is not None else {}
        self.server = endpoint_for(lambda: self.config, self.engine, **kwargs)  # type: ignore[arg-type]
        await self.server.start()

    def __enter__(self) -> Endpoint:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self.engine.dispose()
