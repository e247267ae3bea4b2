"""Delivering the outbox: the Transport contract, the Maildir transport, and the worker
that drains due digests through a transport.

Owns: what happens to a digest after a send (sent / retry later / failed), the retry
schedule across runs, stopping cleanly, and choosing a transport from the config.
Does not own: SMTP itself (smtp.py), the outbox table's transactions (outbox.py,
claims.py),
rendering (render.py). The caller owns the transport's lifetime (``async with``).

Claiming: each of `concurrency` workers claims one due digest just before sending it and
the next one as soon as it is done, with a lease as long as one message can take (the
transport says how long; renewed while a send goes on). A lease names this process, so
a drain killed with SIGKILL leaves at most `concurrency` digests leased, and the next
drain on this host takes those over at once (their owner is gone) and sends them again
(the "messages in flight"); everything else is due at once anyway.

Maybe delivered: when the reply to the final dot of DATA never comes (the transport's
`data_timeout`), the server may have the message. Such a digest is recorded, kept
pending, and resent at most once, no sooner than MAYBE_RESEND_AFTER later, with the same
bytes and Message-ID; a second such timeout marks it failed instead of sending a third.

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

from digest.config import MailConfig
from digest.errors import (
    ConfigError,
    MailServerUnavailableError,
    MaybeDeliveredError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from digest.humanize import count, duration
from digest.mail.smtp import SmtpTransport
from digest.store import claims, outbox
from digest.store.owner import this_process

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
MAYBE_RESEND_AFTER = dt.timedelta(hours=1)  # a digest that may have arrived: resent once


class Transport(Protocol):
    """Where messages go. ``send`` returns the server's reply text, or raises
    PermanentDeliveryError / TransientDeliveryError (MailServerUnavailableError: none
    can go now)."""

    @property
    def pool_size(self) -> int: ...

    @property
    def claim_lease(self) -> dt.timedelta:
        """How long a claimed digest stays invisible to other drains: longer than one
        `send` can take, short enough that a crash delays the in-flight ones by seconds."""
        ...

    async def __aenter__(self) -> Transport: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def send(self, sender: str, recipient: str, message: bytes) -> str: ...


class MaildirTransport:
    """Every message into one Maildir folder (``mutt -f DIR``), with the local line
    ending: the outbox holds SMTP's CRLF, but a Maildir file is a local file, and mail
    clients and Python's `mailbox` expect LF there (mutt shows a stray ``^M`` otherwise).
    Nothing else of the bytes changes."""

    pool_size = 1
    claim_lease = dt.timedelta(seconds=5)  # a local file write

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
            key = box.add(message.replace(b"\r\n", b"\n"))
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
    """What one drain did; `pending` is the outbox's pending count when it returned, due
    again from `first_due` to `last_due` (None: due now), and `error` why it stopped
    early (the server takes no mail), else None. `maybe` counts digests whose final reply
    never came (left pending, resent once an hour later); `taken_over` the leases of a
    dead process handed back at the start."""

    sent: int = 0
    failed: int = 0
    retried: int = 0
    pending: int = 0
    error: str | None = None
    maybe: int = 0
    taken_over: int = 0
    first_due: dt.datetime | None = None
    last_due: dt.datetime | None = None


def retry_delay(attempts: int) -> dt.timedelta:
    """How long a digest waits after its `attempts`-th failed attempt (1-based)."""
    return RETRY_DELAYS[min(max(attempts, 1), len(RETRY_DELAYS)) - 1]


async def drain_outbox(
    engine: Engine,
    transport: Transport,
    *,
    now: Callable[[], dt.datetime],
    concurrency: int | None = None,
    stop: asyncio.Event | None = None,
    lease: dt.timedelta | None = None,
    wait_for_others: dt.timedelta | None = None,
) -> DrainReport:
    """Send every due digest with `concurrency` workers (default: the transport's pool
    size); each claims one digest just before sending it (leased for `lease`, default
    the transport's `claim_lease`) and records its outcome in its own transaction as soon
    as it is known. Returns when nothing is due, when `stop` is set (after the messages in
    flight), or when the server takes no mail (digests stay pending).

    `wait_for_others`: at the end, wait up to this long while other processes hold leases
    on pending digests (several `digest send` at once: what the others are sending is
    not "staying pending"), then send whatever they handed back. None: do not wait."""
    with ThreadPoolExecutor(1, thread_name_prefix="outbox") as executor:
        db_thread = None if _in_memory(engine) else executor
        drain = _Drain(
            engine,
            transport,
            now,
            stop if stop is not None else asyncio.Event(),
            db_thread,
            lease if lease is not None else transport.claim_lease,
        )
        drain.wait_for_others = wait_for_others
        return await drain.run(max(1, concurrency or transport.pool_size))


def _in_memory(engine: Engine) -> bool:
    """An in-memory SQLite database exists per thread: it cannot use the database thread."""
    url = engine.url
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


Sent = tuple[int, str]  # (digest id, the server's reply): accepted, not yet recorded


class _Drain:
    """One drain_outbox call. The outbox's transactions run one at a time on one worker
    thread, so SQLite's writes overlap the SMTP conversations instead of pausing them.

    Group commit: a worker that has sent a digest hands (id, reply) to `settle`, which
    marks it sent and claims the worker's next digest in one transaction, together with
    whatever the other workers queued meanwhile. Each worker holds at most one digest,
    so at most `concurrency` are claimed or accepted-but-unrecorded at any moment."""

    def __init__(
        self,
        engine: Engine,
        transport: Transport,
        now: Callable[[], dt.datetime],
        stop: asyncio.Event,
        db_thread: ThreadPoolExecutor | None,
        lease: dt.timedelta,
    ) -> None:
        self.engine = engine
        self.transport = transport
        self.now = now
        self.stop = stop
        self.db_thread = db_thread
        self.lease = lease
        self.in_flight: set[int] = set()  # claimed by this drain and being sent
        self.queue: list[tuple[Sent | None, asyncio.Future[outbox.OutboxItem | None]]] = []
        self.settling = False  # a worker is running the queue's transactions
        self.sent = self.failed = self.retried = self.maybe = 0
        self.owner = this_process()
        self.wait_for_others: dt.timedelta | None = None  # see drain_outbox
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

    def done(self) -> bool:
        return self.stop.is_set() or self.error is not None or self.broken

    async def run(self, workers: int) -> DrainReport:
        taken = await self.db(claims.take_over_dead_leases, self.engine, self.now())
        if taken:
            log.info(
                "took over %s leased by a process of this host that is gone",
                count(taken, "digest"),
            )
        renewer = asyncio.create_task(self.renew_leases())
        try:
            await self.work_all(workers)
            if self.wait_for_others is not None and await self.others_settle():
                await self.work_all(workers)  # what they handed back (a stop, a crash)
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
        left = await self.db(outbox.pending, self.engine, self.now())
        return DrainReport(
            self.sent, self.failed, self.retried, left.count, self.error, self.maybe, taken,
            left.first_due, left.last_due,
        )  # fmt: skip

    async def work_all(self, workers: int) -> None:
        tasks = [asyncio.create_task(self.work()) for _ in range(workers)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:  # a StoreError, or cancellation: stop the rest, raise as is
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def others_settle(self) -> bool:
        """Wait (up to wait_for_others) until no other process holds a lease on a pending
        digest; False when there was nothing to wait for or this drain is done."""
        assert self.wait_for_others is not None
        deadline = asyncio.get_running_loop().time() + self.wait_for_others.total_seconds()
        waited = False
        while not self.done() and asyncio.get_running_loop().time() < deadline:
            held = await self.db(claims.leased_by_others, self.engine, self.now(), self.owner)
            if not held:
                return waited
            waited = True
            await asyncio.sleep(0.2)
        return False

    async def renew_leases(self) -> None:
        """Keep the leases of the digests being sent ahead of the clock: a send that goes
        on (the transport's retries) keeps its digest; one that is done lets go."""
        period = max(self.lease.total_seconds() / 2, 0.5)
        while True:
            await asyncio.sleep(period)
            if self.in_flight:
                await self.db(claims.renew_leases, self.engine, tuple(self.in_flight),
                              self.now(), self.lease, self.owner)  # fmt: skip

    async def work(self) -> None:
        """Claim a due digest, send it, record it; again until nothing is due."""
        finished: Sent | None = None
        while (item := await self.settle(finished)) is not None:
            if self.done():  # stopped while claiming: hand it back untouched, due at once
                self.in_flight.discard(item.id)
                await self.db(claims.release, self.engine, [item.id])
                return
            finished = await self.deliver(item)
            self.in_flight.discard(item.id)

    async def settle(self, finished: Sent | None) -> outbox.OutboxItem | None:
        """Record `finished` as sent and claim this worker's next digest (None: nothing
        due, or stopping); batched with the other workers' requests queued meanwhile."""
        future: asyncio.Future[outbox.OutboxItem | None] = (
            asyncio.get_running_loop().create_future()
        )
        self.queue.append((finished, future))
        if not self.settling:  # this worker runs the transactions until the queue is empty
            self.settling = True
            try:
                while self.queue:
                    batch, self.queue = self.queue, []
                    await self.settle_batch(batch)
            finally:
                self.settling = False
        return await future

    async def settle_batch(
        self, batch: list[tuple[Sent | None, asyncio.Future[outbox.OutboxItem | None]]]
    ) -> None:
        sent = [done for done, _ in batch if done is not None]
        wanted = 0 if self.done() else len(batch)
        try:
            items = await self.db(
                claims.mark_sent_and_claim, self.engine, sent, self.now(),
                wanted, self.lease, tuple(self.in_flight), self.owner,
            )  # fmt: skip
        except BaseException as e:
            for _, future in batch:
                if isinstance(e, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(e)
            if isinstance(e, Exception):
                return  # each worker raises it from its own future
            raise
        self.sent += len(sent)
        self.in_flight.update(item.id for item in items)
        for n, (_, future) in enumerate(batch):
            future.set_result(items[n] if n < len(items) else None)

    async def deliver(self, item: outbox.OutboxItem) -> Sent | None:
        """Send one claimed digest; a failure is recorded here, a success returned for
        `settle` to record."""
        try:
            reply = await self.transport.send(item.sender, item.recipient, item.message)
        except PermanentDeliveryError as e:
            log.warning("digest %s to %s failed: %s", item.id, item.recipient, e)
            await self.db(claims.mark_failed, self.engine, item.id, str(e), self.now())
            self.failed += 1
            return None
        except MaybeDeliveredError as e:
            await self.record_maybe(item, str(e))
            return None
        except TransientDeliveryError as e:
            if isinstance(e, MailServerUnavailableError):
                self.error = str(e)  # the others wait, each with its attempts
            await self.record_transient(item, str(e))
            return None
        return item.id, reply

    async def record_maybe(self, item: outbox.OutboxItem, reply: str) -> None:
        """The final reply never came: resend once, an hour later at least; never twice."""
        if item.maybe_sent:
            log.warning("digest %s to %s: no final reply a second time, not sent again: %s",
                        item.id, item.recipient, reply)  # fmt: skip
            why = f"maybe delivered: no reply to the end of the message, twice: {reply}"
            await self.db(claims.mark_failed, self.engine, item.id, why, self.now())
            self.failed += 1
            return
        log.warning("digest %s to %s maybe delivered (%s); resent once, in %s at the earliest",
                    item.id, item.recipient, reply, MAYBE_RESEND_AFTER)  # fmt: skip
        await self.db(claims.mark_maybe_sent, self.engine, item.id,
                      f"maybe delivered: {reply}", self.now(), MAYBE_RESEND_AFTER)  # fmt: skip
        self.maybe += 1

    async def record_transient(self, item: outbox.OutboxItem, reply: str) -> None:
        attempts = item.attempts + 1
        if attempts >= MAX_ATTEMPTS:
            log.warning("digest %s to %s failed after %d attempts: %s",
                        item.id, item.recipient, attempts, reply)  # fmt: skip
            why = f"gave up after {attempts} attempts: {reply}"
            await self.db(claims.mark_failed, self.engine, item.id, why, self.now())
            self.failed += 1
            return
        delay = retry_delay(attempts)
        wait = duration(delay)
        log.info("digest %s to %s: %s; retry in %s", item.id, item.recipient, reply, wait)
        await self.db(claims.mark_retry, self.engine, item.id, reply, self.now(), delay)
        self.retried += 1
