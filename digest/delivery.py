"""Delivering the outbox: the Transport contract, the Maildir transport, and the worker
that drains due digests through a transport.

Owns: what happens to a digest after a send (sent / retry later / failed), the retry
schedule across runs, stopping cleanly, and choosing a transport from the config.
Does not own: SMTP itself (smtp.py), the outbox table's transactions (outbox.py),
rendering (render.py). The caller owns the transport's lifetime (``async with``).

Retry policy across runs (a transient failure: 4xx, dropped connections, server down):
the digest stays pending and is due again after 1 min, 5 min, 30 min, 2 h, then every
6 h; the 12th failed attempt (about 45 hours after the first) marks it failed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import mailbox
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeVar

from sqlalchemy import Engine

from digest import outbox
from digest.config import MailConfig
from digest.errors import (
    ConfigError,
    MailServerUnavailableError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from digest.smtp import SmtpTransport

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_DELAYS = (
    dt.timedelta(minutes=1),
    dt.timedelta(minutes=5),
    dt.timedelta(minutes=30),
    dt.timedelta(hours=2),
    dt.timedelta(hours=6),  # and every 6 hours after that
)
MAX_ATTEMPTS = 12  # 1m+5m+30m+2h+7*6h: ~45 h of trying, then failed


class Transport(Protocol):
    """Where messages go. ``send`` returns the server's reply text, or raises
    PermanentDeliveryError / TransientDeliveryError (MailServerUnavailableError: none
    can go now)."""

    @property
    def pool_size(self) -> int: ...

    async def __aenter__(self) -> Transport: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def send(self, sender: str, recipient: str, message: bytes) -> str: ...


class MaildirTransport:
    """Every message into one Maildir folder, bytes exactly as given (``mutt -f DIR``)."""

    pool_size = 1

    def __init__(self, path: Path) -> None:
        self.path = path
        self._box: mailbox.Maildir | None = None

    async def __aenter__(self) -> MaildirTransport:
        return self  # the folder is made on the first send, whose error the drain reports

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._box = None

    async def send(self, sender: str, recipient: str, message: bytes) -> str:
        box = self._open()
        try:
            key = box.add(message)
        except OSError as e:
            raise MailServerUnavailableError(f"maildir {self.path}: cannot write: {e}") from e
        return f"250 delivered to maildir {self.path} as {key}"

    def _open(self) -> mailbox.Maildir:
        if self._box is None:
            try:
                for sub in ("tmp", "new", "cur"):  # also inside an existing, empty folder
                    (self.path / sub).mkdir(parents=True, exist_ok=True)
                self._box = mailbox.Maildir(self.path, factory=None, create=True)
            except OSError as e:
                raise MailServerUnavailableError(f"maildir {self.path}: cannot create: {e}") from e
        return self._box


def make_transport(mail: MailConfig) -> Transport:
    """The transport the config asks for: SMTP when configured, else the Maildir folder."""
    if mail.transport == "smtp":
        if mail.smtp is None:
            raise ConfigError('mail.transport = "smtp" but there is no [mail.smtp] host')
        return SmtpTransport(mail.smtp)
    return MaildirTransport(mail.maildir)


@dataclass(frozen=True)
class DrainReport:
    """What one drain did; `pending` is the outbox's pending count when it returned and
    `error` why it stopped early (the server takes no mail), else None."""

    sent: int = 0
    failed: int = 0
    retried: int = 0
    pending: int = 0
    error: str | None = None


def retry_delay(attempts: int) -> dt.timedelta:
    """How long a digest waits after its `attempts`-th failed attempt (1-based)."""
    return RETRY_DELAYS[min(max(attempts, 1), len(RETRY_DELAYS)) - 1]


async def drain_outbox(
    engine: Engine,
    transport: Transport,
    *,
    now: Callable[[], dt.datetime],
    batch: int = 100,
    concurrency: int | None = None,
    stop: asyncio.Event | None = None,
    lease: dt.timedelta = outbox.DEFAULT_LEASE,
) -> DrainReport:
    """Send every due digest: claim `batch` rows at a time, send up to `concurrency` at
    once (default: the transport's pool size), record each outcome in its own transaction
    as soon as it is known. Returns when nothing is due, when `stop` is set (after the
    messages in flight), or when the server takes no mail (digests stay pending)."""
    with ThreadPoolExecutor(1, thread_name_prefix="outbox") as executor:
        db_thread = None if _in_memory(engine) else executor
        drain = _Drain(
            engine,
            transport,
            now,
            asyncio.Semaphore(concurrency or transport.pool_size),
            stop if stop is not None else asyncio.Event(),
            db_thread,
        )
        return await drain.run(batch, lease)


def _in_memory(engine: Engine) -> bool:
    """An in-memory SQLite database exists per thread: it cannot use the database thread."""
    url = engine.url
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


class _Drain:
    """One drain_outbox call. The outbox's transactions run one at a time on one worker
    thread, so SQLite's writes overlap the SMTP conversations instead of pausing them."""

    def __init__(
        self,
        engine: Engine,
        transport: Transport,
        now: Callable[[], dt.datetime],
        gate: asyncio.Semaphore,
        stop: asyncio.Event,
        db_thread: ThreadPoolExecutor | None,
    ) -> None:
        self.engine = engine
        self.transport = transport
        self.now = now
        self.gate = gate
        self.stop = stop
        self.db_thread = db_thread
        self.sent = self.failed = self.retried = 0
        self.error: str | None = None  # set when the server takes no mail: stop claiming
        self.broken = False  # an outcome could not be recorded: start nothing more

    async def db(self, call: Callable[..., T], *args: object) -> T:
        """Run one outbox transaction on the database thread (inline without one)."""
        try:
            if self.db_thread is None:
                return call(*args)
            return await asyncio.get_running_loop().run_in_executor(self.db_thread, call, *args)
        except BaseException:
            self.broken = True
            raise

    async def run(self, batch: int, lease: dt.timedelta) -> DrainReport:
        while not self.stop.is_set() and self.error is None:
            items = await self.db(outbox.claim_due, self.engine, self.now(), batch, lease)
            if not items:
                break
            unsent: list[int] = []
            tasks = [asyncio.create_task(self.deliver(item, unsent)) for item in items]
            try:
                await asyncio.gather(*tasks)
            except BaseException:  # a StoreError, or cancellation: stop the rest, raise as is
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
            await self.db(outbox.release, self.engine, unsent)
        counts = await self.db(outbox.outbox_counts, self.engine)
        return DrainReport(self.sent, self.failed, self.retried, counts[outbox.PENDING], self.error)

    async def deliver(self, item: outbox.OutboxItem, unsent: list[int]) -> None:
        """Send one claimed digest and record what happened."""
        async with self.gate:
            if self.stop.is_set() or self.error is not None or self.broken:
                unsent.append(item.id)  # never started: hand it back untouched
                return
            try:
                reply = await self.transport.send(item.sender, item.recipient, item.message)
            except PermanentDeliveryError as e:
                log.warning("digest %s to %s failed: %s", item.id, item.recipient, e)
                await self.db(outbox.mark_failed, self.engine, item.id, str(e), self.now())
                self.failed += 1
                return
            except TransientDeliveryError as e:
                if isinstance(e, MailServerUnavailableError):
                    self.error = str(e)  # the others wait, each with its attempts
                await self.record_transient(item, str(e))
                return
            await self.db(outbox.mark_sent, self.engine, item.id, reply, self.now())
            self.sent += 1

    async def record_transient(self, item: outbox.OutboxItem, reply: str) -> None:
        attempts = item.attempts + 1
        if attempts >= MAX_ATTEMPTS:
            log.warning("digest %s to %s failed after %d attempts: %s",
                        item.id, item.recipient, attempts, reply)  # fmt: skip
            why = f"gave up after {attempts} attempts: {reply}"
            await self.db(outbox.mark_failed, self.engine, item.id, why, self.now())
            self.failed += 1
            return
        delay = retry_delay(attempts)
        log.info("digest %s to %s: %s; retry in %s", item.id, item.recipient, reply, delay)
        await self.db(outbox.mark_retry, self.engine, item.id, reply, self.now(), delay)
        self.retried += 1
