"""The daemon's outbox worker: at most one drain at a time, kicks coalesce.

Owns: when `drain.drain_outbox` runs in the daemon (kicked after each plan, by the
periodic drain job, at start), that two never run at once, the transport's lifetime
(one per drain, so no SMTP connection idles between drains), and the per-drain log
line. Does not own: sending, retries or backoff (drain.py), the outbox table
(outbox.py, claims.py), or stopping (the daemon sets `stop`; a drain then finishes
the messages in flight and returns).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from sqlalchemy import Engine

from digest.config import MailConfig
from digest.errors import DigestError
from digest.mail.delivery import make_transport
from digest.mail.drain import drain_outbox

log = logging.getLogger("digest.daemon")

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[Any]"]


class Drainer:
    """`kick()` starts a drain, or, if one is running, makes it go round once more."""

    def __init__(
        self,
        engine: Engine,
        mail: Callable[[], MailConfig],  # read at each drain: a reload may change it
        *,
        clock: Callable[[], dt.datetime],
        stop: asyncio.Event,
        spawn: Spawn,  # the daemon's task factory, so a stop waits for the drain
    ) -> None:
        self.engine = engine
        self.mail = mail
        self.clock = clock
        self.stop = stop
        self.spawn = spawn
        self.sent = 0
        self.failed = 0
        self._task: asyncio.Task[Any] | None = None
        self._again = False

    def kick(self) -> None:
        if self.stop.is_set():
            return
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = self.spawn(self._run())

    async def _run(self) -> None:
        while True:
            self._again = False
            transport = make_transport(self.mail())
            try:
                async with transport:
                    report = await drain_outbox(
                        self.engine, transport, now=self.clock, stop=self.stop
                    )
            except DigestError as e:
                log.error("drain failed: %s", e)
                return
            self.sent += report.sent
            self.failed += report.failed
            if report.sent or report.failed or report.retried or report.maybe or report.error:
                why = f" ({report.error})" if report.error else ""
                maybe = f", {report.maybe} maybe delivered" if report.maybe else ""
                log.info(
                    "drain: %d sent, %d failed, %d retried, %d pending%s%s",
                    report.sent, report.failed, report.retried, report.pending, maybe, why,
                )
            if not self._again or self.stop.is_set():
                return
