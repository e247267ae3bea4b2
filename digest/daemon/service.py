"""`digest run`: the daemon. APScheduler wiring, signals, catch-up, reload.

Owns: which jobs exist and when they fire (derived from the config, never stored in
APScheduler: MemoryJobStore only), running the pipeline recipes from them one at a time,
the signal handling (SIGTERM/SIGINT stop cleanly, SIGHUP reloads the config) and the
one summary line at exit. Does not own any step of the pipeline (pipeline.py), what a
slot is (schedule.py), sending (drain.py), the alert state machine (alerts.py) or the
pure pieces the jobs are built from (jobs.py: the slot trigger, grouping, stats).

The jobs, all in one asyncio process:

- poll: every `source.poll_interval` (with jitter), and once at start; fetches today and
  the last `lookback_days` days; then tells alerts.py whether it worked. The days it
  could not fetch hold every slot whose digest covers them (not planned, not closed);
  a later poll with another outcome plans those held slots again (within catch_up).
- slot:<tz>:<schedule>: one job per (schedule, timezone) shared by subscribers, fired by
  `SlotTrigger` (our `schedule.next_slot`, so DST semantics are ours); it plans the
  group's due digests (`pipeline.plan_due(..., daemon=True)`) and kicks the drain. A job
  whose slot was missed (the machine slept) runs once within `daemon.catch_up`.
- drain: every DRAIN_EVERY, and kicked after each plan; retries pending digests. At most
  one drain runs at a time (a kick during a drain makes it go round once more).

With `[web]`, the endpoint (digest/web/) is served from this same event loop: started
after the migrations, stopped first at a stop (no new unsubscribes while the last
messages go out). aiohttp installs no signal handlers here, so ours stay.

The state that matters lives in the database: each subscriber's last slot and first
sight (pipeline.py), the outbox, the alert counter. So on start the daemon plans
everyone once (catch-up), and restarting never repeats a digest.

Work that must not be cut off (a plan, a drain) runs in tasks the daemon owns, shielded
from APScheduler, which cancels running jobs when it shuts down. Planning runs in a
worker thread (sync SQLAlchemy) so signals and polls are served meanwhile; one plan at
a time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine

from digest import pipeline, polling, store
from digest.config import Config, SourceConfig, Subscriber, load_config
from digest.daemon import alerts
from digest.daemon.drainer import Drainer
from digest.daemon.jobs import (
    QUIET_BUSY_SKIPS,
    GroupKey,
    SlotTrigger,
    Stats,
    diff_subscribers,
    group_subscribers,
    one_line,
    poll_jitter,
    slot_job_id,
)
from digest.errors import DigestError
from digest.humanize import count, duration
from digest.render import Renderer
from digest.sources.fetch import make_client
from digest.store import outbox

if TYPE_CHECKING:
    from digest.web.server import WebServer

log = logging.getLogger("digest.daemon")

DRAIN_EVERY = dt.timedelta(seconds=30)  # how often pending digests are retried
STOP_TIMEOUT = 30.0  # seconds a stop waits for the messages and the plan in flight
FIRST_POLL_WAIT = 60.0  # seconds the start-up catch-up waits for the first poll
PLAN_CHUNK = 500  # subscribers planned per worker-thread call; a stop waits for one chunk


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --------------------------------------------------------------------------- the daemon


class Daemon:
    """One running `digest run`: call `await Daemon(config, env=...).run()` inside a loop."""

    def __init__(
        self,
        config: Config,
        *,
        env: Mapping[str, str],
        clock: Callable[[], dt.datetime] = utcnow,
        drain_every: dt.timedelta = DRAIN_EVERY,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self.config = config
        self.env = env
        self.clock = clock
        self.drain_every = drain_every
        self.stop_timeout = stop_timeout
        self.stats = Stats()
        self._engine: Engine | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._renderer: Renderer | None = None
        self._groups: dict[GroupKey, tuple[Subscriber, ...]] = {}
        self._stopping = asyncio.Event()  # set by SIGTERM/SIGINT: take no new work
        self._must_finish: set[asyncio.Task[Any]] = set()  # plans and drains: awaited at stop
        self._may_cancel: set[asyncio.Task[Any]] = set()  # polls, start-up, reloads
        self._poll_task: asyncio.Task[None] | None = None
        self._drainer: Drainer | None = None
        self._client: httpx.AsyncClient | None = None
        self._client_source: SourceConfig | None = None
        self._plan_lock = asyncio.Lock()
        # the listing days the latest poll did not fetch (None: no poll has finished yet):
        # a slot whose digest covers one is held, not closed, and planned again after a
        # poll whose outcome differs from the one the holding plan saw (`_held_for`)
        self._unfed: frozenset[dt.date] | None = None
        self._held: set[str] = set()  # subscribers with a held slot
        self._held_for: frozenset[dt.date] = frozenset()
        # one worker thread for every plan: plans run one at a time anyway, and one thread
        # keeps one malloc arena and one pooled SQLite connection warm (less RSS growth)
        self._planner_thread = ThreadPoolExecutor(1, thread_name_prefix="digest-plan")
        self._web: WebServer | None = None  # the endpoint, with [web]

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the daemon's database is opened by run()")
        return self._engine

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, stop cleanly; the exit code (0)."""
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        self._engine = store.open_engine(self.config.storage.url)
        store.migrate(self._engine)
        pipeline.cancel_removed(self.config, self._engine, self.clock())  # before any drain
        if self.config.web is not None:  # in this loop; aiohttp adds no signal handlers
            from digest.web.server import endpoint_for, started_line

            self._web = endpoint_for(lambda: self.config, self._engine, clock=self.clock)
            await self._web.start()
            log.info(started_line(self._web, self.config))
        self._drainer = Drainer(
            self._engine, lambda: self.config.mail, clock=self.clock, stop=self._stopping,
            spawn=lambda work: self._spawn(work, must_finish=True),
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        logging.getLogger("apscheduler.scheduler").addFilter(QUIET_BUSY_SKIPS)
        self._scheduler = AsyncIOScheduler(event_loop=loop, timezone=dt.UTC)
        self._scheduler.start()
        self._schedule_poll()
        self._schedule_drain()
        self._schedule_slots()
        log.info("daemon started: %s in %s, poll every %s, config %s",
                 count(len(self.config.subscribers), "subscriber"),
                 count(len(self._groups), "slot job"),
                 duration(self.config.source.poll_interval), self.config.path)
        self._spawn(self._start_up(), must_finish=False)
        try:
            await self._stopping.wait()
        finally:
            pending = await self._shut_down()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            logging.getLogger("apscheduler.scheduler").removeFilter(QUIET_BUSY_SKIPS)
        if self._drainer is not None:
            self.stats.sent, self.stats.failed = self._drainer.sent, self._drainer.failed
        log.info(self.stats.summary(time.monotonic() - started, pending))
        return 0

    def request_stop(self, why: str = "stop") -> None:
        if not self._stopping.is_set():
            log.info("%s: stopping (finishing the messages in flight)", why)
            self._stopping.set()

    def request_reload(self) -> None:
        if not self._stopping.is_set():
            self._spawn(self.reload(), must_finish=False)

    async def _start_up(self) -> None:
        """Poll once, then plan everyone once: missed slots within catch_up go out now,
        with what an earlier run left in the outbox."""
        try:
            await asyncio.wait_for(asyncio.shield(self._poll_once()), FIRST_POLL_WAIT)
        except TimeoutError:
            log.warning("the first poll takes over %.0fs; catching up without it", FIRST_POLL_WAIT)
        planned = await self._plan(self.config.subscribers)
        log.info("catch-up: %s due at start", count(planned, "digest"))
        self.kick_drain()  # and whatever a previous run left pending

    async def _shut_down(self) -> int | None:
        """Stop the timers, cancel polls, let plans and drains finish (bounded)."""
        self._stopping.set()
        if self._web is not None:  # no new unsubscribes; those in flight finish
            await self._web.stop()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)  # cancels job wrappers, not our tasks
        for task in self._may_cancel:
            task.cancel()
        busy = [t for t in (*self._must_finish, *self._may_cancel) if not t.done()]
        if busy:
            _, late = await asyncio.wait(busy, timeout=self.stop_timeout)
            if late:
                log.warning(
                    "stop: %d tasks still busy after %.0fs, abandoned", len(late), self.stop_timeout
                )
                for task in late:
                    task.cancel()
        if self._client is not None:
            await self._client.aclose()
        pending = None
        if self._engine is not None:
            try:
                pending = outbox.outbox_counts(self._engine)[outbox.PENDING]
            except DigestError as e:
                log.warning("stop: cannot count the outbox: %s", e)
            self._engine.dispose()
        self._planner_thread.shutdown(wait=False)
        return pending

    def _spawn(self, work: Coroutine[Any, Any, Any], *, must_finish: bool) -> asyncio.Task[Any]:
        tasks = self._must_finish if must_finish else self._may_cancel
        task = asyncio.get_running_loop().create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(_log_crash)
        return task

    # ------------------------------------------------------------------ jobs

    @property
    def scheduler(self) -> AsyncIOScheduler:
        if self._scheduler is None:
            raise RuntimeError("the scheduler starts in run()")
        return self._scheduler

    def _schedule_poll(self) -> None:
        interval = self.config.source.poll_interval
        trigger = IntervalTrigger(
            seconds=interval.total_seconds(), jitter=poll_jitter(interval), timezone=dt.UTC
        )
        grace = max(1, int(interval.total_seconds()))
        self.scheduler.add_job(self._poll_once, trigger, id="poll", name="poll",
                               replace_existing=True, max_instances=1, coalesce=True,
                               misfire_grace_time=grace)

    def _schedule_drain(self) -> None:
        trigger = IntervalTrigger(seconds=self.drain_every.total_seconds(), timezone=dt.UTC)
        self.scheduler.add_job(self._drain_job, trigger, id="drain", name="drain",
                               replace_existing=True, max_instances=1, coalesce=True)

    def _schedule_slots(self) -> None:
        """One job per (schedule, timezone) group; jobs of groups gone are removed. The
        members are looked up when a job fires, so membership changes need no new job."""
        wanted = group_subscribers(self.config.subscribers)
        grace = max(1, int(self.config.daemon.catch_up.total_seconds()))
        for key in self._groups.keys() - wanted.keys():
            self.scheduler.remove_job(slot_job_id(key))
        for key in wanted:
            job_id = slot_job_id(key)
            if key in self._groups:
                self.scheduler.modify_job(job_id, misfire_grace_time=grace)
                continue
            trigger = SlotTrigger(wanted[key][0].schedule, ZoneInfo(key[1]))
            self.scheduler.add_job(self._slot_job, trigger, args=[key], id=job_id, name=job_id,
                                   max_instances=1, coalesce=True, misfire_grace_time=grace)
        self._groups = wanted

    async def _poll_once(self) -> None:
        """The poll job: joins the poll in progress rather than starting a second one."""
        if self._stopping.is_set():
            return
        if self._poll_task is None or self._poll_task.done():
            self._poll_task = self._spawn(self._poll(), must_finish=False)
        await self._job_waits_for(self._poll_task)

    async def _poll(self) -> None:
        config = self.config
        days = polling.days_to_poll(self.clock(), config.source.lookback_days)
        try:
            client = await self._client_for(config.source)
            report = await polling.poll(config, self.engine, client, days, now=self.clock)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the job boundary: any failure is a failed poll, not a crash
            log.exception("poll failed: %s", e)
            ok, errors = False, [f"{type(e).__name__}: {e}"]
            unfed = frozenset(days)
        else:
            log.log(logging.INFO if report.ok else logging.WARNING, report.summary())
            ok, errors = report.ok, report.errors
            unfed = report.failed_days
        self.stats.polls += 1
        self.stats.failed_polls += not ok
        self._unfed = unfed
        if self._held and unfed != self._held_for:
            self._replan_held()  # this poll may have fetched the days they wait for
        try:
            action = alerts.record_poll(self.engine, config, ok=ok, errors=errors, now=self.clock())
        except DigestError as e:
            log.error("alerts: cannot record the poll: %s", e)
            return
        if action is not None:
            self.kick_drain()

    async def _client_for(self, source: SourceConfig) -> httpx.AsyncClient:
        """The HTTP client of the polls, kept between polls (building one loads the CA
        bundle); a reload that changes [source] gets a new one. Polls never overlap, so
        the old client is idle when it is closed here."""
        if self._client is None or self._client_source != source:
            if self._client is not None:
                await self._client.aclose()
            self._client, self._client_source = make_client(source), source
        return self._client

    async def _slot_job(self, key: GroupKey) -> None:
        members = self._groups.get(key)
        if members and not self._stopping.is_set():
            await self._job_waits_for(self._plan(members))

    async def _job_waits_for(self, work: Awaitable[Any]) -> None:
        """A job waits for its work, so max_instances=1 holds. At a stop, APScheduler
        cancels the job and we may cancel the work: that is no error to log."""
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            if not self._stopping.is_set():
                raise

    async def _plan(self, subscribers: Sequence[Subscriber]) -> int:
        """Plan the due digests of `subscribers` in a worker thread, then kick the drain.
        Shielded: a stop lets it finish. Returns how many digests were written."""
        if self._stopping.is_set() or not subscribers:
            return 0
        task = self._spawn(self._plan_locked(tuple(subscribers)), must_finish=True)
        written: int = await asyncio.shield(task)
        return written

    async def _plan_locked(self, subscribers: tuple[Subscriber, ...]) -> int:
        """Plan in chunks of PLAN_CHUNK subscribers, so a stop waits for one chunk at most."""
        planned = pipeline.PlanReport()
        held: list[str] = []
        used: frozenset[dt.date] = frozenset()  # the unfed days the plan went by
        async with self._plan_lock:
            config = self.config
            try:
                if self._renderer is None:
                    self._renderer = Renderer(config.mail.templates)
                # a fresh Planner per run: its candidate index must see the latest poll
                planner = pipeline.Planner(config, self.engine, renderer=self._renderer)
                for first in range(0, len(subscribers), PLAN_CHUNK):
                    if self._stopping.is_set():
                        break
                    chunk = subscribers[first : first + PLAN_CHUNK]
                    now = self.clock()
                    unfed = self._unfed
                    if unfed is None:  # no poll has finished: nothing is known to be fetched
                        unfed = frozenset(polling.days_to_poll(now, config.source.lookback_days))
                    used = unfed
                    done = await asyncio.get_running_loop().run_in_executor(
                        self._planner_thread,
                        functools.partial(
                            pipeline.plan_due, planner, chunk, now, daemon=True,
                            unfed=unfed, held=held,
                        ),
                    )  # fmt: skip
                    planned.due += done.due
                    planned.written += done.written
            except DigestError as e:  # the database or a template; the slot's papers fold
                # into the subscriber's next digest (its window reaches back to the last slot)
                log.error("planning %d subscribers failed: %s", len(subscribers), e)
            finally:  # a run's caches serve that run: the next one has other papers
                if self._renderer is not None:
                    self._renderer.forget()
        if held:
            self._held.update(held)
            self._held_for = used
            log.warning("%d due slots wait for a poll that fetches their days (%s)", len(held),
                        ", ".join(str(d) for d in sorted(used)))
            if self._unfed is not None and self._unfed != used:
                self._replan_held()  # a poll finished while this plan ran
        written = planned.written
        self.stats.planned += written
        if planned.due:
            log.info(
                "planned %s (%d due, %d empty or already queued)",
                count(written, "digest"),
                planned.due,
                planned.empty,
            )
        if written:
            self.kick_drain()
        return written

    def _replan_held(self) -> None:
        """Plan again the subscribers whose slot waited for days a poll failed to fetch."""
        if self._stopping.is_set():
            return
        wanted, self._held = self._held, set()
        again = [s for s in self.config.subscribers if s.email in wanted]
        log.info("planning %d held slots again after a poll", len(again))
        self._spawn(self._plan(again), must_finish=False)

    async def _drain_job(self) -> None:
        self.kick_drain()

    def kick_drain(self) -> None:
        if self._drainer is not None:
            self._drainer.kick()

    # ------------------------------------------------------------------ reload

    async def reload(self) -> bool:
        """SIGHUP: re-read the config file. A bad file is refused (one log line saying why)
        and the running config stays. Subscriber changes take effect at once."""
        path = self.config.path
        try:
            new = await asyncio.to_thread(load_config, path, self.env)
        except DigestError as e:
            log.error("reload of %s refused, still running the previous config: %s",
                      path, one_line(e))
            return False
        old = self.config
        if new.storage != old.storage:
            log.warning(
                "reload: [storage] changes take effect after a restart; still using %s",
                store.mask_url(old.storage.url),
            )
            new = replace(new, storage=old.storage)
        if new.web != old.web:
            log.warning("reload: [web] changes take effect after a restart")
            new = replace(new, web=old.web)
        change = diff_subscribers(old.subscribers, new.subscribers)
        self.config = new
        try:  # removed subscribers' pending digests are never sent
            pipeline.cancel_removed(new, self.engine, self.clock())
        except DigestError as e:
            log.error("reload: cannot cancel the digests of removed subscribers: %s", e)
        if new.mail.templates != old.mail.templates:
            self._renderer = None
        if new.source.poll_interval != old.source.poll_interval:
            self._schedule_poll()
        self._schedule_slots()
        log.info("reloaded %s: %s (%d added, %d removed, %d changed) in %s",
                 path, count(len(new.subscribers), "subscriber"), len(change.added),
                 len(change.removed), len(change.changed), count(len(self._groups), "slot job"))
        # new subscribers are first seen now (they start at their next slot); a changed
        # schedule whose latest slot is due goes out now
        fresh = set(change.added) | set(change.changed)
        await self._plan([s for s in new.subscribers if s.email in fresh])
        return True


def _log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("daemon task %s crashed", task.get_coro(), exc_info=task.exception())


def run_daemon(config_path: Path, env: Mapping[str, str]) -> int:
    """`digest run`: a bad config raises ConfigError (exit 2) before anything starts."""
    config = load_config(config_path, env)
    return asyncio.run(Daemon(config, env=env).run())
