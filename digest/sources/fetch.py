"""The HTTP edge for Daily Papers: one day's listing from the API or the HTML page.

Owns: the shared `httpx.AsyncClient` settings, URLs, paging, retries with exponential
backoff and jitter (timeouts, connection errors, 5xx, 429 with `Retry-After` or HF's
`RateLimit: "api";r=0;t=42`), conditional GET (ETag / Last-Modified), the body size
cap, the `auto` fallback from API to page, the deadlines, and wrapping every httpx
exception once into `FetchError`. Does not own: parsing (`hf_api`, `hf_html`), storing, or deciding
which days to fetch (the pipeline).

Deadlines: httpx's timeout is per read, so a body that trickles in (a byte a second)
never times out. Each request therefore has an overall deadline (`source.deadline`,
connect to last byte; a miss is retried like a timeout), and a poll can hand every
fetch one shared `Deadline` (`source.poll_deadline`): past it nothing is retried or
started and each fetch still waiting fails, so a poll always ends and counts as failed.

A host that cannot be reached at all (the name does not resolve, the connection is
refused) raises `UnreachableError` at once, without retries: the same request a second
later, or for another day, would only fail the same way.

The clock reads here are the deadlines' monotonic clock and a `Retry-After` given as an
HTTP-date, which is relative to the current time by definition.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import random
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import httpx

from digest import __version__
from digest.config import SourceConfig
from digest.errors import FetchError, ParseError, SourceError, UnreachableError
from digest.records import Paper
from digest.sources.hf_api import load_api_items, parse_records
from digest.sources.hf_html import parse_html

USER_AGENT = f"papers-digest/{__version__} (+https://github.com/papers-digest/papers-digest)"
PAGE_SIZE = 100  # the API's `limit`; a full page means there may be another
MAX_PAGES = 50  # 5,000 papers on one day would be a broken server, not a busy day
BACKOFF_BASE = 0.5  # seconds before the first retry; doubles each time
BACKOFF_JITTER = 0.25  # up to +25% random, so parallel fetches do not retry in lockstep

Sleep = Callable[[float], Awaitable[object]]
SourceName = Literal["api", "html"]
_RATELIMIT_RESET = re.compile(r"(?:^|;)\s*t\s*=\s*(\d+)")


@dataclass(frozen=True)
class Deadline:
    """An instant on the monotonic clock that a group of requests (one poll) must meet."""

    at: float
    seconds: float  # how long it was set for, for messages

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds, seconds)

    def left(self) -> float:
        return self.at - time.monotonic()


@dataclass(frozen=True)
class Validators:
    """What the last successful fetch of a day returned, for a conditional GET."""

    etag: str | None = None
    last_modified: str | None = None
    source: str = "api"  # "api" | "html": only sent back to the same source


@dataclass(frozen=True)
class DayFetch:
    """One day's listing. `not_modified`: the server answered 304, `papers` is empty."""

    day: dt.date
    source: SourceName
    papers: list[Paper] = field(default_factory=list)
    not_modified: bool = False
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    etag: str | None
    last_modified: str | None


def make_client(source: SourceConfig) -> httpx.AsyncClient:
    """The one client every fetch shares: project User-Agent, timeouts, redirects followed."""
    return httpx.AsyncClient(
        headers={"User-Agent": USER_AGENT},
        timeout=httpx.Timeout(source.timeout, connect=source.timeout),
        follow_redirects=True,
    )


def api_url(source: SourceConfig, day: dt.date, page: int = 0) -> str:
    url = f"{source.base_url.rstrip('/')}/api/daily_papers?date={day.isoformat()}&limit={PAGE_SIZE}"
    return f"{url}&p={page}" if page else url


def html_url(source: SourceConfig, day: dt.date) -> str:
    return f"{source.base_url.rstrip('/')}/papers?date={day.isoformat()}"


async def fetch_day(
    client: httpx.AsyncClient,
    source: SourceConfig,
    day: dt.date,
    *,
    validators: Validators | None = None,
    sleep: Sleep = asyncio.sleep,
    deadline: Deadline | None = None,
) -> DayFetch:
    """The listing of `day` from `source.mode`: "api", "html", or "auto" (API, then page).

    Raises FetchError / ParseError for one source, SourceError naming both in auto mode,
    UnreachableError (never falling back: the page is on the same host) when the host
    cannot be reached. `deadline`: the poll's, shared by every request of the poll.
    """

    async def from_(fetch: Callable[..., Awaitable[DayFetch]]) -> DayFetch:
        return await fetch(
            client, source, day, validators=validators, sleep=sleep, deadline=deadline
        )

    if source.mode == "api":
        return await from_(fetch_api_day)
    if source.mode == "html":
        return await from_(fetch_html_day)
    try:
        return await from_(fetch_api_day)
    except UnreachableError:
        raise
    except (FetchError, ParseError) as api_error:
        try:
            return await from_(fetch_html_day)
        except UnreachableError:
            raise
        except (FetchError, ParseError) as html_error:
            raise SourceError(
                f"{day}: both sources failed: API: {api_error}; HTML page: {html_error}"
            ) from html_error


async def fetch_api_day(
    client: httpx.AsyncClient,
    source: SourceConfig,
    day: dt.date,
    *,
    validators: Validators | None = None,
    sleep: Sleep = asyncio.sleep,
    deadline: Deadline | None = None,
) -> DayFetch:
    """All pages of the API listing for `day` (`&p=1,2,...` while a page is full)."""
    first = await _get(
        client, source, api_url(source, day), _conditional(validators, "api"), sleep, deadline
    )
    if first.status == 304:
        return DayFetch(day, "api", [], True, first.etag, first.last_modified)
    items = load_api_items(first.body, day)
    all_items = list(items)
    page = 0
    while len(items) == PAGE_SIZE:
        page += 1
        if page >= MAX_PAGES:
            raise FetchError(f"{api_url(source, day, page)}: more than {MAX_PAGES} full pages")
        response = await _get(client, source, api_url(source, day, page), {}, sleep, deadline)
        items = load_api_items(response.body, day)
        all_items.extend(items)
    papers = parse_records(all_items, day, where=f"API body for {day}")
    return DayFetch(day, "api", papers, False, first.etag, first.last_modified)


async def fetch_html_day(
    client: httpx.AsyncClient,
    source: SourceConfig,
    day: dt.date,
    *,
    validators: Validators | None = None,
    sleep: Sleep = asyncio.sleep,
    deadline: Deadline | None = None,
) -> DayFetch:
    """The listing page for `day`, parsed (data-props first, cards second)."""
    response = await _get(
        client, source, html_url(source, day), _conditional(validators, "html"), sleep, deadline
    )
    if response.status == 304:
        return DayFetch(day, "html", [], True, response.etag, response.last_modified)
    papers = parse_html(response.body, day)
    return DayFetch(day, "html", papers, False, response.etag, response.last_modified)


async def fetch_days(
    client: httpx.AsyncClient,
    source: SourceConfig,
    days: Iterable[dt.date],
    *,
    validators_for: Callable[[dt.date], Validators | None] = lambda day: None,
    concurrency: int | None = None,
    sleep: Sleep = asyncio.sleep,
    deadline: Deadline | None = None,
) -> AsyncIterator[tuple[dt.date, DayFetch | SourceError]]:
    """Fetch several days, at most `concurrency` (default `source.concurrency`) at once.

    Yields `(day, result)` as each completes; a day that fails yields its SourceError
    instead of raising, so one bad day does not stop the others.
    """
    gate = asyncio.Semaphore(max(1, concurrency or source.concurrency))

    async def one(day: dt.date) -> tuple[dt.date, DayFetch | SourceError]:
        async with gate:
            try:
                return day, await fetch_day(
                    client,
                    source,
                    day,
                    validators=validators_for(day),
                    sleep=sleep,
                    deadline=deadline,
                )
            except SourceError as e:
                return day, e

    tasks = [asyncio.create_task(one(day)) for day in days]
    try:
        for next_done in asyncio.as_completed(tasks):
            yield await next_done
    finally:
        for task in tasks:
            task.cancel()


# --------------------------------------------------------------------------- one GET


def _conditional(validators: Validators | None, source: str) -> dict[str, str]:
    if validators is None or validators.source != source:
        return {}
    headers = {}
    if validators.etag:
        headers["If-None-Match"] = validators.etag
    if validators.last_modified:
        headers["If-Modified-Since"] = validators.last_modified
    return headers


async def _get(
    client: httpx.AsyncClient,
    source: SourceConfig,
    url: str,
    headers: dict[str, str],
    sleep: Sleep,
    deadline: Deadline | None = None,
) -> _Response:
    """GET with retries; returns a 200 or 304, raises FetchError for anything else.

    Each attempt must be done within `source.deadline` seconds and before `deadline`."""
    attempts = 1 + max(0, source.retries)
    last_problem = ""
    last_cause: BaseException | None = None  # the httpx exception behind the last failure
    for attempt in range(attempts):
        budget = source.deadline
        if deadline is not None:
            budget = min(budget, deadline.left())
            if budget <= 0:
                raise _poll_deadline_passed(url, deadline, last_problem) from last_cause
        try:
            async with asyncio.timeout(budget):
                return await _get_once(client, source, url, headers)
        except _Retryable as e:
            last_problem = e.problem
            last_cause = e.__cause__
            asked = e.wait
        except TimeoutError as e:  # asyncio.timeout's: the body is too slow as a whole
            if deadline is not None and deadline.left() <= 0:
                raise _poll_deadline_passed(url, deadline, "still receiving") from e
            last_problem = (
                f"no complete response within the {source.deadline:g}s deadline "
                "(the server is stalling or trickling)"
            )
            last_cause = e
            asked = None
        if asked is None:
            wait = min(backoff_delay(attempt), source.max_retry_wait)
        elif asked > source.max_retry_wait:
            raise FetchError(
                f"GET {url}: {last_problem}; the server asks to wait {asked:.0f}s, "
                f"more than max_retry_wait {source.max_retry_wait:.0f}s"
            ) from last_cause
        else:
            wait = asked
        if attempt + 1 < attempts:
            if deadline is not None and wait >= deadline.left():
                raise _poll_deadline_passed(url, deadline, last_problem) from last_cause
            await sleep(wait)
    raise FetchError(f"GET {url} failed after {attempts} attempts: {last_problem}") from last_cause


def _poll_deadline_passed(url: str, deadline: Deadline, last_problem: str) -> FetchError:
    why = f" (last: {last_problem})" if last_problem else ""
    return FetchError(f"GET {url}: the poll's {deadline.seconds:g}s deadline passed{why}")


class _Retryable(Exception):
    """Internal: this attempt failed in a way worth retrying (never escapes `_get`)."""

    def __init__(self, problem: str, wait: float | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.wait = wait


async def _get_once(
    client: httpx.AsyncClient, source: SourceConfig, url: str, headers: dict[str, str]
) -> _Response:
    try:
        async with client.stream("GET", url, headers=headers) as response:
            status = response.status_code
            if status == 429 or status >= 500:
                raise _Retryable(f"HTTP {status}", server_wait(response.headers))
            if status not in (200, 304):
                raise FetchError(f"GET {url}: HTTP {status} {response.reason_phrase}".rstrip())
            if status == 304:
                await response.aread()  # empty; reading it lets the connection be reused
                body = b""
            else:
                body = await _read_capped(response, url, source)
            return _Response(
                status=status,
                body=body,
                etag=response.headers.get("ETag"),
                last_modified=response.headers.get("Last-Modified"),
            )
    except httpx.UnsupportedProtocol as e:  # a bad base_url: retrying cannot help
        raise FetchError(f"GET {url}: {_one_line(e)}") from e
    except httpx.TimeoutException as e:
        raise _Retryable(f"timed out ({type(e).__name__})") from e
    except httpx.ConnectError as e:
        unreachable = _unreachable(e)
        if unreachable:
            raise UnreachableError(
                f"cannot reach {_origin(url)}: {unreachable} "
                "(check the network or [source] base_url)"
            ) from e
        raise _Retryable(f"{type(e).__name__}: {_one_line(e)}") from e
    except httpx.TransportError as e:
        raise _Retryable(f"{type(e).__name__}: {_one_line(e)}") from e
    except httpx.HTTPError as e:  # anything else httpx raises (invalid URL, decoding...)
        raise FetchError(f"GET {url}: {type(e).__name__}: {_one_line(e)}") from e
    except httpx.InvalidURL as e:
        raise FetchError(f"GET {url}: invalid URL: {_one_line(e)}") from e


async def _read_capped(response: httpx.Response, url: str, source: SourceConfig) -> bytes:
    cap = source.max_body_bytes
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > cap:
        raise FetchError(f"GET {url}: body of {declared} bytes is over the {cap}-byte cap")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > cap:
            raise FetchError(f"GET {url}: body is over the {cap}-byte cap")
        chunks.append(chunk)
    return b"".join(chunks)


def server_wait(headers: httpx.Headers, now: dt.datetime | None = None) -> float | None:
    """Seconds the server asks us to wait (`Retry-After` or `RateLimit` t=), or None.

    When both are given the longer wait wins. `now` is for HTTP-date values (default:
    the current time).
    """
    waits: list[float] = []
    retry_after = headers.get("Retry-After", "").strip()
    if retry_after.isdigit():
        waits.append(float(retry_after))
    elif retry_after:
        try:
            when = email.utils.parsedate_to_datetime(retry_after)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            now = now or dt.datetime.now(dt.UTC)
            waits.append(max(0.0, (when - now).total_seconds()))
    reset = _RATELIMIT_RESET.search(headers.get("RateLimit", ""))
    if reset:
        waits.append(float(reset.group(1)))
    return max(waits) if waits else None


def backoff_delay(attempt: int) -> float:
    """Exponential backoff with jitter: 0.5 s, 1 s, 2 s, ... each plus up to 25%."""
    base: float = BACKOFF_BASE * 2**attempt
    return base * (1 + BACKOFF_JITTER * random.random())  # jitter needs no crypto-grade RNG


def _unreachable(error: BaseException) -> str | None:
    """"name not resolved" / "connection refused" when that is why a connect failed."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, socket.gaierror):
            return "name not resolved"
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        seen = seen.__cause__ or seen.__context__
    text = str(error).lower()  # httpcore re-raises some of these with the text only
    if "name or service not known" in text or "name resolution" in text or "nodename" in text:
        return "name not resolved"
    if "connection refused" in text or "connect call failed" in text:
        return "connection refused"
    return None


def _origin(url: str) -> str:
    parts = httpx.URL(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.host}{port}"


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__
