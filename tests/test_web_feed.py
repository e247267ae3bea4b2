"""The Atom feed at /f/TOKEN.atom through the real endpoint (the aiohttp app on
127.0.0.1), on SQLite and PostgreSQL, read back with feedparser; and `delivery = "feed"`.

Ada reads email: her feed holds exactly the papers her sent digests delivered (a digest
still pending adds nothing), newest digest first and best first within one, each with
the topics it matched as categories and the digest's date. Bob has delivery = "feed":
his digests are planned (his feed has the same papers, the cut ones included) but no
message to him ever reaches the Maildir, and `digest status` counts them apart. A reader
that sends the ETag back gets 304 until a new digest delivers something.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator
from pathlib import Path

import feedparser
import httpx
import pytest
from playwright.sync_api import Browser
from sqlmodel import Session, text

from digest import store
from digest.config import load_config
from digest.errors import ConfigError
from digest.store import outbox
from digest.web.tokens import Purpose
from tests.backends import Backend
from tests.browser import chromium, open_url
from tests.digest_web_helpers import (
    ADA,
    BOB,
    DAY_ONE,
    DAY_TWO,
    at,
    config_file,
    deliver,
    local,
    mails,
    plan,
    store_day,
)
from tests.web_helpers import ENV, Endpoint, web_table

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


def feed_url(e: Endpoint, who: str) -> str:
    return local(e, e.links.feed(e.key(who)))


def delivered(e: Endpoint, who: str) -> list[tuple[str, dt.datetime]]:
    """(paper id, its digest's slot) of every delivery to `who`, as the database has it."""
    with e.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT d.paper_id, g.slot FROM deliveries d JOIN digests g ON g.id = d.digest_id"
                 " WHERE d.subscriber = :who"), {"who": who},
        ).all()  # fmt: skip
    return [(paper_id, slot) for paper_id, slot in rows]


def read(client: httpx.Client, url: str) -> tuple[httpx.Response, feedparser.FeedParserDict]:
    r = client.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/atom+xml")
    parsed = feedparser.parse(r.content)
    assert not parsed.bozo, parsed.get("bozo_exception")
    return r, parsed


def ids_of(parsed: feedparser.FeedParserDict) -> list[str]:
    return [e.link.rsplit("/", 1)[1] for e in parsed.entries]


def test_the_feed_holds_exactly_what_was_delivered_newest_first(
    endpoint: Endpoint, client: httpx.Client
) -> None:
    first = plan(endpoint, at("2026-03-13 09:00"))[ADA]
    _, parsed = read(client, feed_url(endpoint, ADA))
    assert parsed.entries == []  # planned, not sent yet: not delivered
    assert deliver(endpoint, at("2026-03-13 09:00")).sent == 1
    r, parsed = read(client, feed_url(endpoint, ADA))
    shown = [*first.matches, *first.more]  # the cut ones are in the web copy: delivered
    assert ids_of(parsed) == [m.paper.id for m in shown]
    assert sorted(ids_of(parsed)) == sorted(p for p, _ in delivered(endpoint, ADA))
    for entry, m in zip(parsed.entries, shown, strict=True):
        assert entry.title == " ".join(m.paper.title.split())
        assert entry.link == m.paper.url
        assert sorted(t.term for t in entry.tags) == sorted(m.topics)
        assert dt.datetime(*entry.updated_parsed[:6], tzinfo=dt.UTC) == first.slot
        assert entry.summary
    assert parsed.feed.links[0].href == feed_url(endpoint, ADA).replace(
        endpoint.base, endpoint.config.web.base_url  # type: ignore[union-attr]
    )
    etag = r.headers["ETag"]
    # a conditional GET: the same document, 304 however often it is asked
    for _ in range(2):
        again = client.get(feed_url(endpoint, ADA), headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        assert again.headers["ETag"] == etag
    other = client.get(feed_url(endpoint, ADA), headers={"If-None-Match": '"other"'})
    assert other.status_code == 200
    # the next day's digest: new entries first, and the old ETag no longer matches
    store_day(endpoint, DAY_TWO)
    second = plan(endpoint, at("2026-03-14 09:00"))[ADA]
    assert second.matches and deliver(endpoint, at("2026-03-14 09:00")).sent == 1
    r2 = client.get(feed_url(endpoint, ADA), headers={"If-None-Match": etag})
    assert r2.status_code == 200 and r2.headers["ETag"] != etag
    parsed = feedparser.parse(r2.content)
    assert not parsed.bozo
    newer = [m.paper.id for m in (*second.matches, *second.more)]
    assert ids_of(parsed) == newer + [m.paper.id for m in shown]


def test_a_feed_only_subscriber_gets_no_mail_but_a_feed(
    endpoint: Endpoint, client: httpx.Client, tmp_path: Path
) -> None:
    planned = plan(endpoint, at("2026-03-13 09:00"))
    bob = planned[BOB]
    assert bob.digest_id is not None and bob.matches  # planned like anyone's
    report = deliver(endpoint, at("2026-03-13 09:00"))
    assert report.sent == 1 and report.pending == 0  # Ada's; Bob's is never claimed
    assert [m["To"].addresses[0].addr_spec for m in mails(endpoint)] == [ADA]
    _, parsed = read(client, feed_url(endpoint, BOB))
    assert ids_of(parsed) == [m.paper.id for m in (*bob.matches, *bob.more)]
    counts = outbox.outbox_counts(endpoint.engine)
    assert counts["pending"] == 0 and counts["sent"] == 1 and counts["feed"] == 1
    with Session(endpoint.engine) as session:
        lines = store.store_stats(session).lines()
    assert "digests: 0 pending, 1 sent, 0 failed, 0 cancelled, 1 to feeds only" in lines[2]
    # a later drain, or a takeover, never mails it either
    assert deliver(endpoint, at("2026-03-13 12:00")).sent == 0
    assert len(mails(endpoint)) == 1
    # the next plan does not repeat Bob's papers: they count as delivered
    store_day(endpoint, DAY_TWO)
    later = plan(endpoint, at("2026-03-14 09:00"))[BOB]
    assert not {m.paper.id for m in later.matches} & {m.paper.id for m in bob.matches}
    # and his preferences page links the feed, saying he gets no email
    page = client.get(local(endpoint, endpoint.links.for_key(endpoint.key(BOB)).preferences))
    assert page.status_code == 200
    href = re.search(r'<a href="([^"]+)">Your Atom feed</a>', page.text)
    assert href is not None and local(endpoint, href.group(1)) == feed_url(endpoint, BOB)
    assert "You get no email" in page.text


def test_bad_feed_tokens_are_refused(endpoint: Endpoint, client: httpx.Client) -> None:
    url = feed_url(endpoint, ADA)
    token = url.rsplit("/", 1)[1].removesuffix(".atom")
    base = url.rsplit("/", 1)[0]
    tampered = token[:-2] + ("xx" if not token.endswith("xx") else "yy")
    preferences = endpoint.tokens().make(Purpose.PREFERENCES, endpoint.key(ADA))
    for bad in (f"{base}/{tampered}.atom", f"{base}/{preferences}.atom", f"{base}/{token}"):
        r = client.get(bad)
        assert r.status_code in (400, 404) and "Traceback" not in r.text
    assert client.get(f"{base}/{tampered}.atom").status_code == 400


def test_delivery_must_be_email_or_feed_and_feed_needs_web(tmp_path: Path) -> None:
    path = tmp_path / "digest.toml"
    person = '[[subscribers]]\nemail = "ada@example.org"\ndelivery = "{}"\n' \
        'topics = [{{ name = "A", query = "agent" }}]\n'  # fmt: skip
    path.write_text(person.format("rss") + web_table(0))
    with pytest.raises(ConfigError) as bad:
        load_config(path, ENV)
    assert str(bad.value) == (
        f'{path}:3: subscribers[1] (ada@example.org).delivery: "rss" is not one of '
        '"email", "feed"'
    )
    path.write_text(person.format("feed"))
    with pytest.raises(ConfigError) as no_web:
        load_config(path, ENV)
    assert str(no_web.value) == (
        f"{path}:3: subscribers[1] (ada@example.org).delivery: "
        '"feed" needs a [web] table: the feed is served at /f/TOKEN.atom'
    )
    path.write_text(person.format("feed") + web_table(0))
    assert load_config(path, ENV).subscribers[0].delivery == "feed"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_preferences_page_links_the_feed_and_fits_a_phone(
    endpoint: Endpoint, browser: Browser, tmp_path: Path
) -> None:
    shots = Path(SHOTS) if SHOTS else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    for who, name in ((ADA, "preferences-feed"), (BOB, "preferences-feed-only")):
        url = local(endpoint, endpoint.links.for_key(endpoint.key(who)).preferences)
        for width in (700, 375):
            for scheme in ("light", "dark"):
                page = open_url(browser, url, width=width, scheme=scheme, allow=endpoint.base)
                try:
                    link = page.get_by_role("link", name="Your Atom feed")
                    assert link.is_visible()
                    href = link.get_attribute("href")
                    assert href is not None and local(endpoint, href) == feed_url(endpoint, who)
                    # the long feed URL wraps: nothing scrolls sideways on a phone
                    assert page.evaluate("document.documentElement.scrollWidth") <= width
                    page.screenshot(path=shots / f"{name}-{width}-{scheme}.png", full_page=True)
                finally:
                    page.close()
