"""Draining the outbox: the worker that sends due digests through a transport.

Owns: what happens to a digest after a send (sent / retry later / maybe / failed), the
retry schedule across runs, claiming in batches and group-committing the outcomes, and
stopping cleanly. Does not own: the transports (delivery.py, smtp.py), the outbox
table's transactions (outbox.py, claims.py, leases.py), rendering (render/).

Claiming: a drain claims due digests a batch at a time (the transport's `claim_batch`: a
few per connection, about a second's worth under a rate cap) and holds at most one batch:
each is leased to this process (as long as one message can take, the transport says)
and the lease renewed until its outcome is recorded. `concurrency` workers send from the
batch. Outcomes are group-committed: one transaction records every outcome gathered
meanwhile, checks that the claimed digests are still pending and ours (a digest
cancelled meanwhile is dropped, never sent), and claims the next batch when it runs low.
On SQLite a group commit runs inline on the event loop when the write lock is free (a
fraction of a millisecond of CPU and WAL writes: a hop to a thread and back cost more
than the commit, and every final dot waiting on it waited for both), and on the
database thread when another connection holds the lock (so the loop never waits for a
lock) or on PostgreSQL (every statement waits for the server).

In flight: a worker starts its next message while its last outcome waits for the group
commit, but holds back that message's final dot (the point where the server takes it)
until the commit is done (already done: the dot leaves with the message, one write).
So at any moment at most `concurrency` digests are accepted by the server and not
recorded. A drain killed with SIGKILL leaves its batch leased: the
next drain on this host takes the leases over at once (their owner is gone; from another
host they run out), sends the digests it never got to, and sends again those accepted
but not recorded (at most `concurrency`, the "messages in flight", with the same
Message-ID). A commit that fails closes the connection before the final dot, so the
message waiting on it is not delivered.

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
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from sqlalchemy import Engine

from digest.errors import (
    MailServerUnavailableError,
    MaybeDeliveredError,
    PermanentDeliveryError,
    StoreError,
    TransientDeliveryError,
)
from digest.humanize import count, duration
from digest.mail.delivery import Transport
from digest.store import claims, leases, outbox
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
    batch: int | None = None,
) -> DrainReport:
    """Send every due digest with `concurrency` workers (default: the transport's pool
    size), from digests claimed `batch` at a time (default: the transport's
    `claim_batch`), each leased for `lease` (default: the transport's `claim_lease`) and
    renewed until its outcome is recorded. Outcomes are group-committed: each worker waits
    for its own before it starts another send. Returns when nothing is due, when `stop`
    is set (after the messages in flight; the claimed rest handed back, due at once), or
    when the server takes no mail (digests stay pending).

    `wait_for_others`: at the end, wait up to this long while other processes hold leases
    on pending digests or are claiming them (several `digest send` at once: what the
    others are sending is not "staying pending"), sending whatever comes back due
    meanwhile. None: do not wait."""
    workers = max(1, concurrency or transport.pool_size)
    with ThreadPoolExecutor(1, thread_name_prefix="outbox") as executor:
        db_thread = None if _in_memory(engine) else executor
        drain = _Drain(
            engine,
            transport,
            now,
            stop if stop is not None else asyncio.Event(),
            db_thread,
            lease if lease is not None else transport.claim_lease,
            max(2 * workers, batch or transport.claim_batch),
        )
        drain.wait_for_others = wait_for_others
        return await drain.run(workers)


def _in_memory(engine: Engine) -> bool:
    """An in-memory SQLite database exists per thread: it cannot use the database thread."""
    url = engine.url
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


class _Drain:
    """One drain_outbox call. The outbox's transactions run one at a time: the group
    commits inline when they need not wait (`settle`), the rest and the commits that
    must wait for a lock on one worker thread, so the loop never stops for a lock.

    Claims: `ready` holds up to `batch` digests claimed and not started; when it runs
    low, the next group commit claims more. Every digest this drain holds (`ready` and
    being sent) is leased to this process and renewed until its outcome is recorded;
    each group commit also drops from `ready` the digests no longer pending (cancelled
    meanwhile) or no longer leased to this process, so they are never sent.

    Group commit: a worker hands its outcome to `settle`, which records it together with
    whatever the other workers queued meanwhile (and the next claims) in one
    transaction, and waits for that commit before its next send. So at most
    `concurrency` digests are being sent or accepted-but-unrecorded at any moment: a
    crash repeats at most those (their leases are taken over, the same Message-ID)."""

    def __init__(
        self,
        engine: Engine,
        transport: Transport,
        now: Callable[[], dt.datetime],
        stop: asyncio.Event,
        db_thread: ThreadPoolExecutor | None,
        lease: dt.timedelta,
        batch: int,
    ) -> None:
        self.engine = engine
        self.transport = transport
        self.now = now
        self.stop = stop
        self.db_thread = db_thread
        self.lease = lease
        self.batch = batch
        self.ready: deque[outbox.OutboxItem] = deque()  # claimed, not started
        self.sending: set[int] = set()  # started, outcome not recorded yet
        self.queue: list[tuple[claims.Outcome | None, asyncio.Future[None]]] = []
        self.wake = asyncio.Event()  # something was queued, or is needed, or a worker left
        self.workers = 1  # how many send at once (run sets it)
        self.active = 0  # workers running
        self.needed = 0  # workers waiting for a group commit
        self.exhausted = False  # a claim found fewer due than it asked for
        self.sent = self.failed = self.retried = self.maybe = 0
        self.owner = this_process()
        self.settler = claims.Settler(engine, self.owner)  # the group commits' connection
        self.wait_for_others: dt.timedelta | None = None  # see drain_outbox
        self.error: str | None = None  # set when the server takes no mail: stop claiming
        self.broken = False  # an outcome could not be recorded: start nothing more

    async def db(self, call: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Run one outbox transaction on the database thread (inline without one)."""
        try:
            if self.db_thread is None:
                return call(*args, **kwargs)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.db_thread, partial(call, *args, **kwargs))
        except BaseException:
            self.broken = True
            raise

    def done(self) -> bool:
        return self.stop.is_set() or self.error is not None or self.broken

    def held(self) -> set[int]:
        """The digests this drain holds a lease on: claimed and not recorded."""
        return {item.id for item in self.ready} | self.sending

    async def run(self, workers: int) -> DrainReport:
        taken = await self.db(leases.take_over_dead_leases, self.engine, self.now())
        if taken:
            log.info(
                "took over %s leased by a process of this host that is gone",
                count(taken, "digest"),
            )
        self.workers = workers
        helpers = [asyncio.create_task(self.renew_leases()), asyncio.create_task(self.commit_all())]
        try:
            await self.work_all(workers)
            if self.wait_for_others is not None:
                until = asyncio.get_running_loop().time() + self.wait_for_others.total_seconds()
                while await self.others_settle(until):
                    self.exhausted = False
                    await self.work_all(workers)  # what came back due: a stop, a crash
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            try:
                await self.hand_back()
            finally:
                await self.db(self.settler.close)
        left = await self.db(outbox.pending, self.engine, self.now())
        return DrainReport(
            self.sent, self.failed, self.retried, left.count, self.error, self.maybe, taken,
            left.first_due, left.last_due,
        )  # fmt: skip

    async def hand_back(self) -> None:
        """Release the claimed digests no worker started (a stop, the server down, an
        error): due again at once, not when their lease ends."""
        ids = [item.id for item in self.ready]
        self.ready.clear()
        if not ids:
            return
        if not self.broken:
            await self.db(leases.release, self.engine, ids, self.owner)
            return
        try:  # already failing: that error is the one to raise
            await self.db(leases.release, self.engine, ids, self.owner)
        except StoreError as e:  # logged: the first error is the one that propagates
            log.warning("could not hand back %s: %s", count(len(ids), "claimed digest"), e)

    async def work_all(self, workers: int) -> None:
        tasks = [asyncio.create_task(self.work()) for _ in range(workers)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:  # a StoreError, or cancellation: stop the rest, raise as is
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def others_settle(self, until: float) -> bool:
        """Wait (until the loop's clock reads `until`) while other processes hold pending
        digests: leased there, or being claimed there (rows a claim has locked and not
        committed yet, which this drain's claim skipped: due, and not ours). True when
        some are due now, to claim here (handed back, a lease run out, or that claim
        in flight: tried again); False when nothing is held elsewhere or it is too late."""
        loop = asyncio.get_running_loop()
        while not self.done() and loop.time() < until:
            leased, due = await self.db(leases.held_elsewhere, self.engine, self.now(), self.owner)
            if not leased and not due:
                return False
            await asyncio.sleep(0.2)
            if due:
                return True
        return False

    async def renew_leases(self) -> None:
        """Keep the leases of the digests this drain holds ahead of the clock: a send
        that goes on (the transport's retries) keeps its digest, and so do the claimed
        ones waiting their turn; one whose outcome is recorded lets go."""
        period = max(self.lease.total_seconds() / 2, 0.5)
        while True:
            await asyncio.sleep(period)
            if held := self.held():
                await self.db(leases.renew_leases, self.engine, tuple(held),
                              self.now(), self.lease, self.owner)  # fmt: skip

    async def work(self) -> None:
        """Take a claimed digest, send it, record its outcome; again until none is due.

        The next send starts while the previous outcome waits for its group commit, but
        its final dot (where the server takes it) waits for that commit: one digest per
        worker at most is accepted and not recorded."""
        self.active += 1
        recorded: asyncio.Future[None] | None = None  # the commit of the last outcome
        try:
            while (item := await self.next_item()) is not None:
                self.sending.add(item.id)
                outcome = await self.deliver(item, recorded)
                if recorded is not None:
                    await self.wait_for(recorded)  # an early failure did not wait for it
                recorded = self.record(outcome)
            if recorded is not None:
                await self.wait_for(recorded)
        finally:
            self.active -= 1
            self.wake.set()  # one fewer to wait for

    async def next_item(self) -> outbox.OutboxItem | None:
        """The next claimed digest to send; None when nothing is due or stopping."""
        while not self.done():
            if self.ready:
                return self.ready.popleft()
            if self.exhausted:
                return None
            await self.wait_for(self.record(None))  # nothing to record: a claim
        return None

    def record(self, outcome: claims.Outcome | None) -> asyncio.Future[None]:
        """Queue `outcome` (None: only claim) for a group commit; the future is done when
        it committed, and carries the error when it could not."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.append((outcome, future))
        self.wake.set()
        return future

    async def wait_for(self, recorded: asyncio.Future[None]) -> None:
        """Wait until `recorded` committed: a group commit starts now if none runs."""
        if not recorded.done():
            self.needed += 1
            self.wake.set()
            try:
                await recorded
            finally:
                self.needed -= 1
        recorded.result()  # raises what the commit raised

    async def commit_all(self) -> None:
        """The group commits, one after the other. One starts when a worker needs it (at
        its final dot, or out of claimed digests) or when every worker has queued an
        outcome; it records every outcome queued by then, claims more when `ready` runs
        low, and checks that the claimed ones are still this drain's to send."""
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.queue and (self.needed or len(self.queue) >= self.active):
                    batch, self.queue = self.queue, []
                    await self.settle_batch(batch)
        finally:  # cancelled, or a BaseException: nobody may wait for these forever
            for _, future in self.queue:
                future.cancel()
            self.queue = []

    async def settle_batch(
        self, batch: list[tuple[claims.Outcome | None, asyncio.Future[None]]]
    ) -> None:
        outcomes = [outcome for outcome, _ in batch if outcome is not None]
        want = 0  # never more held (claimed, not recorded) than `batch`
        if not (self.done() or self.exhausted) and len(self.ready) < self.workers:
            want = self.batch - len(self.ready) - (len(self.sending) - len(outcomes))
        try:
            settled = await self.settle(outcomes, want)
        except BaseException as e:
            for _, future in batch:
                if isinstance(e, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(e)
            if isinstance(e, Exception):
                return  # each worker raises it from its own future
            raise
        for outcome in outcomes:
            self.count(outcome)
            self.sending.discard(outcome.digest_id)  # its lease is cleared
        if settled.gone:
            self.drop(settled.gone)
        self.ready.extend(settled.claimed)
        if len(settled.claimed) < want:
            self.exhausted = True
        for _, future in batch:
            future.set_result(None)

    async def settle(self, outcomes: list[claims.Outcome], want: int) -> claims.Settled:
        """One group commit: inline when it need not wait (SQLite, the write lock free:
        no thread hop on the path of the messages held at their final dot), else on the
        database thread (another connection writes, or PostgreSQL)."""
        now = self.now()
        ask = claims.Ask(want, self.lease, tuple(self.sending), tuple(i.id for i in self.ready))
        try:
            settled = self.settler.try_settle(outcomes, now, ask)
        except BaseException:
            self.broken = True
            raise
        if settled is None:
            settled = await self.db(self.settler.settle, outcomes, now, ask)
        return settled

    def count(self, outcome: claims.Outcome) -> None:
        if outcome.kind == outbox.SENT:
            self.sent += 1
        elif outcome.kind == outbox.FAILED:
            self.failed += 1
        elif outcome.kind == claims.MAYBE:
            self.maybe += 1
        else:
            self.retried += 1

    def drop(self, gone: frozenset[int]) -> None:
        """Forget the claimed digests that must not be sent (cancelled, taken over)."""
        for item in [i for i in self.ready if i.id in gone]:
            log.info("digest %s to %s is no longer pending here (cancelled?): not sent",
                     item.id, item.recipient)  # fmt: skip
        self.ready = deque(item for item in self.ready if item.id not in gone)

    async def deliver(
        self, item: outbox.OutboxItem, previous: asyncio.Future[None] | None
    ) -> claims.Outcome:
        """Send one claimed digest, handed over for good only once `previous` (the
        worker's last outcome) committed: what came of it, to be recorded."""
        hold = None if previous is None else partial(self.hold, previous)
        try:
            reply = await self.transport.send(item.sender, item.recipient, item.message, hold)
        except PermanentDeliveryError as e:
            log.warning("digest %s to %s failed: %s", item.id, item.recipient, e)
            return claims.Outcome(item.id, outbox.FAILED, str(e))
        except MaybeDeliveredError as e:
            return self.maybe_outcome(item, str(e))
        except TransientDeliveryError as e:
            if isinstance(e, MailServerUnavailableError):
                self.error = str(e)  # the others wait, each with its attempts
            return self.transient_outcome(item, str(e))
        return claims.Outcome(item.id, outbox.SENT, reply)

    def hold(self, previous: asyncio.Future[None]) -> Awaitable[None] | None:
        """What a final dot waits for: the commit of the worker's previous outcome; None
        when it is committed already (the message then goes in one write)."""
        if previous.done() and not previous.cancelled() and previous.exception() is None:
            return None
        return self.wait_for(previous)

    def maybe_outcome(self, item: outbox.OutboxItem, reply: str) -> claims.Outcome:
        """The final reply never came: resend once, an hour later at least; never twice."""
        if item.maybe_sent:
            log.warning("digest %s to %s: no final reply a second time, not sent again: %s",
                        item.id, item.recipient, reply)  # fmt: skip
            why = f"maybe delivered: no reply to the end of the message, twice: {reply}"
            return claims.Outcome(item.id, outbox.FAILED, why)
        log.warning("digest %s to %s maybe delivered (%s); resent once, in %s at the earliest",
                    item.id, item.recipient, reply, MAYBE_RESEND_AFTER)  # fmt: skip
        return claims.Outcome(item.id, claims.MAYBE, f"maybe delivered: {reply}",
                              MAYBE_RESEND_AFTER)  # fmt: skip

    def transient_outcome(self, item: outbox.OutboxItem, reply: str) -> claims.Outcome:
        attempts = item.attempts + 1
        if attempts >= MAX_ATTEMPTS:
            log.warning("digest %s to %s failed after %d attempts: %s",
                        item.id, item.recipient, attempts, reply)  # fmt: skip
            why = f"gave up after {attempts} attempts: {reply}"
            return claims.Outcome(item.id, outbox.FAILED, why)
        delay = retry_delay(attempts)
        log.info("digest %s to %s: %s; retry in %s", item.id, item.recipient, reply,
                 duration(delay))  # fmt: skip
        return claims.Outcome(item.id, claims.RETRY, reply, delay)
