"""A digest's web copy at /d/TOKEN through the real endpoint (the aiohttp app on
127.0.0.1), on SQLite and PostgreSQL: planned by the pipeline with [web], delivered to a
real Maildir, its "View in browser" link followed over HTTP and in headless Chromium.

When max_papers cuts Ada's list, the email counts the rest ("And 9 more matches") and
links to the web copy, which shows every match in full. A tampered token, a token made
for another page, or one for a digest the outbox does not have is a page saying so.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser

from digest.web.tokens import Purpose, copy_value
from tests.backends import Backend
from tests.browser import chromium, open_url
from tests.digest_web_helpers import (
    ADA,
    BOB,
    DAY_ONE,
    at,
    card_titles,
    config_file,
    deliver,
    hrefs,
    html_of,
    local,
    mails,
    plan,
    store_day,
    text_of,
)
from tests.web_helpers import Endpoint

SLOT_ONE = "2026-03-13 08:00"
SHOTS = os.environ.get("DIGEST_SCREENSHOTS")  # a folder: keep the screenshots there


@pytest.fixture
def endpoint(tmp_path: Path, backend: Backend) -> Iterator[Endpoint]:
    with Endpoint(config_file(tmp_path, backend)) as e:
        store_day(e, DAY_ONE)
        yield e


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10, follow_redirects=False) as c:
        yield c


def ada_digest(e: Endpoint) -> tuple[str, list[str], str]:
    """Plan and deliver Ada's first digest: (its HTML, every matched title, the web
    copy's URL on the running endpoint)."""
    planned = plan(e, at("2026-03-13 09:00"))[ADA]
    assert len(planned.matches) == 3 and planned.total_matches > 6  # the list was cut
    assert len(planned.more) == planned.total_matches - 3  # with [web]: every match
    report = deliver(e, at("2026-03-13 09:00"))
    assert report.sent == 1
    (message,) = mails(e)
    html = html_of(message)
    (view,) = hrefs(html, "View in browser")
    titles = [m.paper.title for m in (*planned.matches, *planned.more)]
    return html, titles, local(e, view)


def test_the_email_links_its_web_copy_which_shows_every_match(
    endpoint: Endpoint, client: httpx.Client
) -> None:
    html, titles, url = ada_digest(endpoint)
    more = len(titles) - 3
    # the email: the best 3 in full, the rest counted and linked to the web copy
    assert f"And {more} more matches" in html
    assert [local(endpoint, h) for h in hrefs(html, f"And {more} more matches")] == [url]
    assert all(title not in html for title in titles[3:])
    (message,) = mails(endpoint)
    text = " ".join(text_of(message).split())  # wrapped at 72 columns, URLs whole
    path = url.removeprefix(endpoint.base)
    assert f"View in browser: {endpoint.config.web.base_url}{path}" in text  # type: ignore[union-attr]
    assert f"And {more} more matches past the 3 shown, all in the web copy:" in text
    r = client.get(url)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert "View in browser" not in r.text  # this is the browser
    # every match in order, the cut ones included, each as a full card
    assert card_titles(r.text) == [" ".join(t.split()) for t in titles]
    assert card_titles(html) == [" ".join(t.split()) for t in titles[:3]]
    assert f"And {more} more matches</strong> past the 3 shown in the email" in r.text
    assert r.text.count("<mark") > html.count("<mark")  # the cut ones are highlighted too
    assert "img-src https:" in r.headers["Content-Security-Policy"]
    assert r.headers["Referrer-Policy"] == "no-referrer"


def test_bad_links_are_pages_not_tracebacks(endpoint: Endpoint, client: httpx.Client) -> None:
    _, _, url = ada_digest(endpoint)
    base, token = url.rsplit("/", 1)
    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    for bad in (f"{base}/{tampered}", f"{base}/{token[:20]}", f"{base}/x"):
        r = client.get(bad)
        assert r.status_code == 400 and "This link does not work" in r.text
        assert "Traceback" not in r.text
    tokens, key = endpoint.tokens(), endpoint.key(ADA)
    other = tokens.make(Purpose.PREFERENCES, key)  # signed, but for the preferences page
    assert client.get(f"{base}/{other}").status_code == 400
    missing = tokens.make(Purpose.DIGEST, copy_value(key, at("2026-03-01 08:00")))
    r = client.get(f"{base}/{missing}")  # signed for Ada, but no digest at that slot
    assert r.status_code == 404 and "no web copy of this digest" in r.text
    nobody = tokens.make(Purpose.DIGEST, copy_value("unknown-key", at(SLOT_ONE)))
    assert client.get(f"{base}/{nobody}").status_code == 400
    bob = tokens.make(Purpose.DIGEST, copy_value(endpoint.key(BOB), at(SLOT_ONE)))
    r = client.get(f"{base}/{bob}")  # Bob's digest went to his feed: no message kept
    assert r.status_code == 404


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_web_copy_in_chromium_shows_all_matches_at_both_widths(
    endpoint: Endpoint, browser: Browser, tmp_path: Path
) -> None:
    html, titles, url = ada_digest(endpoint)
    shots = Path(SHOTS) if SHOTS else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    for width in (700, 375):
        for scheme in ("light", "dark"):
            page = open_url(browser, url, width=width, scheme=scheme, allow=endpoint.base)
            try:
                shown = page.locator("a.title").all_inner_texts()
                assert [" ".join(t.split()) for t in shown] == [" ".join(t.split()) for t in titles]
                # fits the window: no sideways scrolling on a phone
                assert page.evaluate("document.documentElement.scrollWidth") <= width
                page.screenshot(path=shots / f"web-copy-{width}-{scheme}.png", full_page=True)
            finally:
                page.close()
            email_page = browser.new_page(viewport={"width": width, "height": 800},
                                          color_scheme=scheme)  # fmt: skip
            try:
                email_page.route("**/*", lambda route: route.abort())
                email_page.set_content(html, wait_until="load")
                link = email_page.get_by_role("link", name="View in browser")
                assert link.is_visible()
                email_page.screenshot(path=shots / f"email-{width}-{scheme}.png", full_page=True)
            finally:
                email_page.close()
