"""Listening: the endpoint in the daemon's event loop, or alone as `digest serve`.

Owns: `WebServer` (aiohttp's AppRunner and TCPSite: started and stopped by whoever owns
the loop; aiohttp installs no signal handlers of its own here, so the daemon's SIGTERM
and SIGHUP handling stays as it is), building the app from a config (`endpoint_for`),
and `serve`, the loop of `digest serve` (SIGTERM/SIGINT stop, SIGHUP re-reads the file
for the subscribers' topics). Does not own any route (`app.py` and the route modules).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from aiohttp import web
from sqlalchemy import Engine

from digest import store
from digest.config import Config, load_config
from digest.errors import ConfigError, DigestError
from digest.web.app import make_app
from digest.web.context import WebContext
from digest.web.pages import Pages
from digest.web.tokens import Tokens

log = logging.getLogger("digest.web")

SHUTDOWN_TIMEOUT = 5.0  # seconds a stop waits for requests in flight (each is milliseconds)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class WebServer:
    """The endpoint on `host:port` (port 0: any free port, see `.port` once started)."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        runner = web.AppRunner(
            self.app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True, backlog=1024)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise DigestError(
                f"web: cannot listen on {self.host}:{self.port}: {e.strerror or e}"
            ) from e
        self._runner = runner
        server = site._server  # aiohttp exposes the bound port only here
        sockets = getattr(server, "sockets", None) or ()
        if sockets:
            self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def endpoint_for(
    config: Callable[[], Config], engine: Engine, *, clock: Callable[[], dt.datetime] = utcnow
) -> WebServer:
    """The endpoint of `config()` (which must have [web]), serving from `engine`."""
    web_config = config().web
    if web_config is None:
        raise ConfigError(f"{config().path}: no [web] table; the endpoint needs one")
    context = WebContext(
        config=config,
        engine=engine,
        tokens=Tokens.from_config(web_config),
        clock=clock,
        pages=Pages(config().mail.templates),
    )
    return WebServer(make_app(context), web_config.host, web_config.port)


def started_line(server: WebServer, config: Config) -> str:
    base = config.web.base_url if config.web else "?"
    return f"web: listening on {server.host}:{server.port}, links point to {base}"


async def serve(config_path: Path, env: Mapping[str, str]) -> int:
    """`digest serve`: only the endpoint, until SIGTERM or SIGINT; SIGHUP re-reads the
    file (a bad one is refused and the previous stays; [web] changes need a restart)."""
    current = load_config(config_path, env)
    if current.web is None:
        raise ConfigError(f"{config_path}: no [web] table; `digest serve` has nothing to serve")
    engine = store.open_engine(current.storage.url)
    store.migrate(engine)
    state = {"config": current}
    server = endpoint_for(lambda: state["config"], engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def reload() -> None:
        try:
            new = load_config(config_path, env)
        except DigestError as e:
            log.error("reload of %s refused, still running the previous config: %s",
                      config_path, " ".join(str(e).split()))
            return
        if new.web != state["config"].web:
            log.warning("reload: [web] changes take effect after a restart")
        state["config"] = replace(new, web=state["config"].web)
        log.info("reloaded %s: %d subscribers", config_path, len(new.subscribers))

    await server.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    log.info(started_line(server, current))
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await server.stop()
        engine.dispose()
    log.info("web: stopped")
    return 0
