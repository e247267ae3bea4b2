"""fetch.py through the real httpx path against the real HTTP server in tests/hfserver.py.

`sleep` is injected: it records the waits asked for and returns at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import email.utils
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from digest.config import SourceConfig
from digest.errors import FetchError, ParseError, SourceError, UnreachableError
from digest.sources.fetch import (
    USER_AGENT,
    DayFetch,
    Validators,
    fetch_day,
    fetch_days,
    make_client,
    server_wait,
)
from tests.hfserver import Fault, HFServer, closed_port

DAY = dt.date(2024, 8, 1)  # the one day with both an API capture (11) and a page (13)
API_DAY = dt.date(2025, 10, 1)  # an API-only day (37 papers)
API = "/api/daily_papers"


class Sleeps:
    """A stand-in for asyncio.sleep that records what was asked and does not wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def source(hf: HFServer, **changes: Any) -> SourceConfig:
    base = SourceConfig(base_url=hf.base_url, mode="api", timeout=5.0, retries=3)
    return dataclasses.replace(base, **changes)


def run(
    src: SourceConfig,
    day: dt.date,
    sleeps: Sleeps | None = None,
    validators: Validators | None = None,
) -> DayFetch:
    async def go() -> DayFetch:
        async with make_client(src) as client:
            return await fetch_day(
                client, src, day, validators=validators, sleep=sleeps or Sleeps()
            )

    return asyncio.run(go())


def fails(call: Callable[[], object], error: type[Exception]) -> str:
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- happy paths


def test_api_day_is_parsed_and_client_identifies_itself(hf_server: HFServer) -> None:
    result = run(source(hf_server), API_DAY)
    assert result.source == "api" and not result.not_modified
    assert len(result.papers) == 37
    assert all(p.listed_on == API_DAY for p in result.papers)
    assert result.etag and result.last_modified
    request = hf_server.requests[0]
    assert request.path == f"{API}?date=2025-10-01&limit=100"
    assert request.headers["User-Agent"] == USER_AGENT
    assert "papers-digest/" in USER_AGENT and "https://" in USER_AGENT


def test_day_with_no_capture_is_an_empty_list_not_an_error(hf_server: HFServer) -> None:
    result = run(source(hf_server, mode="auto"), dt.date(2024, 6, 1))  # a Saturday
    assert result.source == "api" and result.papers == []
    assert hf_server.paths() == [f"{API}?date=2024-06-01&limit=100"]


def test_html_mode_reads_the_page(hf_server: HFServer) -> None:
    result = run(source(hf_server, mode="html"), DAY)
    assert result.source == "html" and len(result.papers) == 13
    assert hf_server.paths() == ["/papers?date=2024-08-01"]


def test_second_fetch_with_validators_is_304(hf_server: HFServer) -> None:
    src = source(hf_server)
    first = run(src, API_DAY)
    validators = Validators(first.etag, first.last_modified, "api")
    second = run(src, API_DAY, validators=validators)
    assert second == DayFetch(API_DAY, "api", [], True, first.etag, first.last_modified)
    sent = hf_server.requests[1].headers
    assert sent["If-None-Match"] == first.etag
    assert sent["If-Modified-Since"] == first.last_modified


def test_validators_of_the_other_source_are_not_sent(hf_server: HFServer) -> None:
    src = source(hf_server)
    first = run(src, API_DAY)
    again = run(src, API_DAY, validators=Validators(first.etag, first.last_modified, "html"))
    assert not again.not_modified and len(again.papers) == 37
    assert "If-None-Match" not in hf_server.requests[1].headers


def test_pages_while_a_page_is_full(hf_server: HFServer) -> None:
    items = json.loads((hf_server.api_capture(API_DAY) or b"").decode())
    many = []
    for n in range(250):  # 250 distinct papers made from the day's 37 real records
        record = json.loads(json.dumps(items[n % len(items)]))
        record["paper"]["id"] = f"2510.{n:05d}"
        many.append(record)
    hf_server.set_api_body(API_DAY, json.dumps(many).encode())
    result = run(source(hf_server), API_DAY)
    assert [p.id for p in result.papers] == [f"2510.{n:05d}" for n in range(250)]
    assert hf_server.paths() == [
        f"{API}?date=2025-10-01&limit=100",
        f"{API}?date=2025-10-01&limit=100&p=1",
        f"{API}?date=2025-10-01&limit=100&p=2",
    ]


def test_exactly_one_full_page_asks_for_an_empty_second(hf_server: HFServer) -> None:
    items = json.loads((hf_server.api_capture(API_DAY) or b"").decode())
    records = []
    for n in range(100):
        record = json.loads(json.dumps(items[n % len(items)]))
        record["paper"]["id"] = f"2510.{n:05d}"
        records.append(record)
    hf_server.set_api_body(API_DAY, json.dumps(records).encode())
    assert len(run(source(hf_server), API_DAY).papers) == 100
    assert hf_server.paths()[-1].endswith("&p=1")


# --------------------------------------------------------------------------- retries


def test_500_then_200_retries_after_a_backoff(hf_server: HFServer) -> None:
    hf_server.add_fault(API, Fault(status=500), Fault(status=503))
    sleeps = Sleeps()
    result = run(source(hf_server), API_DAY, sleeps)
    assert len(result.papers) == 37
    assert len(hf_server.requests) == 3
    first, second = sleeps.waits
    assert 0.5 <= first <= 0.625 and 1.0 <= second <= 1.25  # exponential, with jitter


def test_429_retry_after_seconds_is_honoured(hf_server: HFServer) -> None:
    hf_server.add_fault(API, Fault(status=429, headers={"Retry-After": "7"}))
    sleeps = Sleeps()
    assert len(run(source(hf_server), API_DAY, sleeps).papers) == 37
    assert sleeps.waits == [7.0]


def test_429_ratelimit_header_t_is_honoured(hf_server: HFServer) -> None:
    hf_server.add_fault(
        API,
        Fault(status=429, headers={"RateLimit": '"api";r=0;t=42', "RateLimit-Policy": "x"}),
    )
    sleeps = Sleeps()
    assert len(run(source(hf_server), API_DAY, sleeps).papers) == 37
    assert sleeps.waits == [42.0]


def test_retry_after_http_date_is_relative_to_now() -> None:
    now = dt.datetime(2026, 8, 21, 12, 0, tzinfo=dt.UTC)
    later = email.utils.format_datetime(now + dt.timedelta(seconds=30), usegmt=True)
    assert server_wait(httpx.Headers({"Retry-After": later}), now) == 30.0
    assert server_wait(httpx.Headers({"Retry-After": "soon"}), now) is None
    assert server_wait(httpx.Headers({}), now) is None


def test_429_retry_after_http_date_through_the_server(hf_server: HFServer) -> None:
    soon = email.utils.format_datetime(
        dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5), usegmt=True
    )
    hf_server.add_fault(API, Fault(status=503, headers={"Retry-After": soon}))
    sleeps = Sleeps()
    assert len(run(source(hf_server), API_DAY, sleeps).papers) == 37
    (wait,) = sleeps.waits
    assert 2.0 <= wait <= 5.0  # whole seconds in the header, minus the time to get here


def test_429_asking_longer_than_max_retry_wait_gives_up(hf_server: HFServer) -> None:
    hf_server.add_fault(API, Fault(status=429, headers={"Retry-After": "3600"}))
    sleeps = Sleeps()
    message = fails(lambda: run(source(hf_server), API_DAY, sleeps), FetchError)
    assert "3600s" in message and "max_retry_wait" in message and "127.0.0.1" in message
    assert sleeps.waits == [] and len(hf_server.requests) == 1


def test_read_timeout_is_retried(hf_server: HFServer) -> None:
    hf_server.add_fault(API, Fault(delay=1.0, real_body=True, status=200))
    sleeps = Sleeps()
    result = run(source(hf_server, timeout=0.2), API_DAY, sleeps)
    assert len(result.papers) == 37 and len(sleeps.waits) == 1


def test_read_timeout_every_time_is_a_fetch_error(hf_server: HFServer) -> None:
    hf_server.add_fault(API, *[Fault(delay=0.6, real_body=True, status=200)] * 2)
    message = fails(lambda: run(source(hf_server, timeout=0.2, retries=1), API_DAY), FetchError)
    assert "timed out" in message and "after 2 attempts" in message
    assert f"{hf_server.base_url}{API}?date=2025-10-01" in message


def test_dropped_connection_and_cut_body_are_retried(hf_server: HFServer) -> None:
    hf_server.add_fault(
        API, Fault(drop=True), Fault(status=200, real_body=True, truncate_after=500)
    )
    sleeps = Sleeps()
    assert len(run(source(hf_server), API_DAY, sleeps).papers) == 37
    assert len(sleeps.waits) == 2 and len(hf_server.requests) == 3


def test_retries_exhausted_names_the_url_and_last_problem(hf_server: HFServer) -> None:
    hf_server.add_fault(API, *[Fault(status=502)] * 3)
    sleeps = Sleeps()
    message = fails(lambda: run(source(hf_server, retries=2), API_DAY, sleeps), FetchError)
    assert message == (
        f"GET {hf_server.base_url}{API}?date=2025-10-01&limit=100 failed after 3 attempts: HTTP 502"
    )
    assert len(sleeps.waits) == 2


def test_404_is_not_retried(hf_server: HFServer) -> None:
    sleeps = Sleeps()
    message = fails(lambda: run(source(hf_server, mode="html"), API_DAY, sleeps), FetchError)
    assert message == f"GET {hf_server.base_url}/papers?date=2025-10-01: HTTP 404 Not Found"
    assert sleeps.waits == [] and len(hf_server.requests) == 1


def test_unreachable_host_is_a_one_line_fetch_error_not_retried() -> None:
    """A refused connection is not worth a retry: the next one a second later would be
    refused too. One line naming the origin and what to check."""
    src = SourceConfig(base_url=f"http://127.0.0.1:{closed_port()}", mode="auto", retries=3)
    sleeps = Sleeps()
    message = fails(lambda: run(src, API_DAY, sleeps), UnreachableError)
    assert message == (
        f"cannot reach {src.base_url}: connection refused (check the network or [source] base_url)"
    )
    assert sleeps.waits == []  # no retry, and no fallback to the page on the same host
    assert isinstance(info_cause(lambda: run(src, API_DAY, Sleeps())), httpx.ConnectError)


def test_a_name_that_does_not_resolve_is_unreachable() -> None:
    src = SourceConfig(base_url="http://nonexistent.invalid", mode="auto", retries=3)
    sleeps = Sleeps()
    message = fails(lambda: run(src, API_DAY, sleeps), UnreachableError)
    assert message == (
        "cannot reach http://nonexistent.invalid: name not resolved "
        "(check the network or [source] base_url)"
    )
    assert sleeps.waits == []


def info_cause(call: Callable[[], object]) -> BaseException | None:
    with pytest.raises(FetchError) as info:
        call()
    return info.value.__cause__


def test_unsupported_scheme_is_not_retried() -> None:
    src = SourceConfig(base_url="ftp://127.0.0.1", mode="api")
    sleeps = Sleeps()
    message = fails(lambda: run(src, API_DAY, sleeps), FetchError)
    assert message.startswith("GET ftp://127.0.0.1/api/daily_papers?date=2025-10-01")
    assert sleeps.waits == []


def test_body_over_the_cap_is_refused(hf_server: HFServer) -> None:
    message = fails(lambda: run(source(hf_server, max_body_bytes=10_000), API_DAY), FetchError)
    assert "10000-byte cap" in message and "date=2025-10-01" in message


def test_body_over_the_cap_without_content_length_is_refused(hf_server: HFServer) -> None:
    """A chunked body (no Content-Length) is counted as it streams."""
    hf_server.add_fault(API, Fault(status=200, real_body=True, chunked=True))
    message = fails(lambda: run(source(hf_server, max_body_bytes=10_000), API_DAY), FetchError)
    assert message.endswith("body is over the 10000-byte cap")


def test_chunked_body_under_the_cap_is_read_whole(hf_server: HFServer) -> None:
    hf_server.add_fault(API, Fault(status=200, real_body=True, chunked=True))
    assert len(run(source(hf_server), API_DAY).papers) == 37


# --------------------------------------------------------------------------- bad bodies


def test_truncated_json_is_a_parse_error_in_api_mode(hf_server: HFServer) -> None:
    body = hf_server.api_capture(API_DAY) or b""
    hf_server.set_api_body(API_DAY, body[:5000])
    message = fails(lambda: run(source(hf_server), API_DAY), ParseError)
    assert message.startswith("API body for 2025-10-01 is not valid JSON (truncated?) at char")


def test_truncated_json_falls_back_to_the_page_in_auto_mode(hf_server: HFServer) -> None:
    hf_server.set_api_body(DAY, (hf_server.api_capture(DAY) or b"")[:3000])
    result = run(source(hf_server, mode="auto"), DAY)
    assert result.source == "html" and len(result.papers) == 13
    assert hf_server.paths() == [f"{API}?date=2024-08-01&limit=100", "/papers?date=2024-08-01"]


def test_json_that_is_not_a_list(hf_server: HFServer) -> None:
    hf_server.set_api_body(API_DAY, b'{"error": "Invalid date"}')
    message = fails(lambda: run(source(hf_server), API_DAY), ParseError)
    assert message == "API body for 2025-10-01 is a JSON dict, expected a list of papers"


def test_html_title_is_kept_verbatim(hf_server: HFServer) -> None:
    items = json.loads((hf_server.api_capture(API_DAY) or b"").decode())
    items[0]["paper"]["title"] = "<script>alert('x')</script> &amp; <b>Bold</b>\n  Models"
    hf_server.set_api_body(API_DAY, json.dumps(items).encode())
    paper = run(source(hf_server), API_DAY).papers[0]
    assert paper.title == "<script>alert('x')</script> &amp; <b>Bold</b> Models"


def test_page_without_data_props_uses_the_cards(hf_server: HFServer) -> None:
    page = hf_server.html_capture(DAY) or b""
    start = page.index(b'data-target="DailyPapers" data-props="')
    end = page.index(b'"', start + len(b'data-target="DailyPapers" data-props="'))
    hf_server.set_html_body(DAY, page[:start] + b'data-target="DailyPapers"' + page[end + 1 :])
    result = run(source(hf_server, mode="html"), DAY)
    assert len(result.papers) == 13
    assert result.papers[0].title == "The Llama 3 Herd of Models"
    assert result.papers[0].abstract == ""  # cards carry no abstract: proof of the path


def test_page_with_neither_in_html_mode_is_a_parse_error(hf_server: HFServer) -> None:
    hf_server.set_html_body(DAY, b"<html><body><h1>We moved things</h1></body></html>")
    message = fails(lambda: run(source(hf_server, mode="html"), DAY), ParseError)
    assert "no <article> cards" in message and "DailyPapers" in message


def test_page_with_neither_in_auto_mode_is_not_needed_when_api_works(
    hf_server: HFServer,
) -> None:
    hf_server.set_html_body(DAY, b"<html><body></body></html>")
    result = run(source(hf_server, mode="auto"), DAY)
    assert result.source == "api" and len(result.papers) == 11


def test_auto_mode_both_sources_failing_names_both(hf_server: HFServer) -> None:
    hf_server.set_api_body(DAY, b"<html>oops</html>")
    hf_server.set_html_body(DAY, b"<html><body></body></html>")
    message = fails(lambda: run(source(hf_server, mode="auto"), DAY), SourceError)
    assert message.startswith("2024-08-01: both sources failed: API: API body for 2024-08-01")
    assert "HTML page: listing page has no readable papers" in message
    assert len(hf_server.requests) == 2


def test_auto_mode_api_down_falls_back_to_page(hf_server: HFServer) -> None:
    hf_server.add_fault(API, *[Fault(status=500)] * 2)
    sleeps = Sleeps()
    result = run(source(hf_server, mode="auto", retries=1), DAY, sleeps)
    assert result.source == "html" and len(result.papers) == 13
    assert len(sleeps.waits) == 1


def test_page_at_papers_date_path_is_served(hf_server: HFServer) -> None:
    async def go() -> int:
        async with make_client(source(hf_server)) as client:
            response = await client.get(f"{hf_server.base_url}/papers/date/2024-08-01")
            return len(response.content)

    assert asyncio.run(go()) == len(hf_server.html_capture(DAY) or b"")


# --------------------------------------------------------------------------- several days


def test_fetch_days_returns_per_day_errors_and_bounds_concurrency(hf_server: HFServer) -> None:
    days = [dt.date(2025, 10, 1), dt.date(2025, 10, 2), dt.date(2025, 10, 3), DAY]
    hf_server.set_api_body(dt.date(2025, 10, 2), b"not json")
    hf_server.add_fault(API, *[Fault(delay=0.15, real_body=True, status=200)] * 4)
    src = source(hf_server)

    async def go() -> dict[dt.date, DayFetch | SourceError]:
        results = {}
        async with make_client(src) as client:
            async for day, result in fetch_days(client, src, days, concurrency=2, sleep=Sleeps()):
                results[day] = result
        return results

    results = asyncio.run(go())
    assert set(results) == set(days)
    assert isinstance(results[dt.date(2025, 10, 2)], ParseError)
    ok = {d: len(r.papers) for d, r in results.items() if isinstance(r, DayFetch)}
    assert ok == {dt.date(2025, 10, 1): 37, dt.date(2025, 10, 3): 39, DAY: 11}
    assert hf_server.max_in_flight == 2
