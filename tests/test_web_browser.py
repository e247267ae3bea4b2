"""The preferences page in a real browser: Debian's chromium (/usr/bin/chromium) driven by
Playwright (no browser download), against `digest run` with [web] as a real subprocess.

Open the preferences link from a digest that arrived at the real SMTP test server, pause
for 2 weeks (the database says so, the next slots send nothing to her while Bob gets
his), resume, unsubscribe, resubscribe; on a phone-sized window the page fits.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page

from tests.browser import chromium
from tests.daemons import WAIT, Daemon, utcnow
from tests.hfserver import HFServer
from tests.smtpd_helpers import SmtpServer
from tests.web_daemon_helpers import (
    SECRET_ENV,
    messages_to,
    one_click_url,
    person,
    preferences_url,
    web_daemon_config,
)

pytestmark = pytest.mark.slow

ADA, BOB = "ada@example.org", "bob@example.org"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:  # tests/browser.py: Debian's chromium, no download
        yield launched


@pytest.fixture
def daemon_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRET_ENV.items():
        monkeypatch.setenv(name, value)


def wait_until(what: str, check: object, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def row(db: Path, query: str, *args: object) -> tuple[object, ...] | None:
    with sqlite3.connect(db) as conn:
        found: tuple[object, ...] | None = conn.execute(query, args).fetchone()
        return found


def planned_for(db: Path, who: str, after: str) -> int:
    with sqlite3.connect(db) as conn:
        (n,) = conn.execute(
            "SELECT count(*) FROM digests WHERE subscriber = ? AND created_at > ?", (who, after)
        ).fetchone()
        return int(n)


def db_now(db: Path) -> str:
    """'now' as the digests table writes created_at (SQLAlchemy's text form of UTC)."""
    return utcnow().strftime("%Y-%m-%d %H:%M:%S.%f")


def test_pause_resume_unsubscribe_resubscribe_in_chromium(
    tmp_path: Path, hf: HFServer, smtp: SmtpServer, daemon_env: None, browser: Browser
) -> None:
    config, _ = web_daemon_config(tmp_path, hf, smtp, [person(ADA), person(BOB)])
    db = tmp_path / "digest.db"
    daemon = Daemon(config)
    try:
        daemon.wait_for(r"web: listening")
        wait_until("both got a digest", lambda: messages_to(smtp, ADA) and messages_to(smtp, BOB))
        url = preferences_url(messages_to(smtp, ADA)[-1])
        page: Page = browser.new_page(viewport={"width": 700, "height": 900})
        page.goto(url)
        assert page.title() == "Your digest preferences - Papers Digest"
        assert page.get_by_role("heading", name="Your digest preferences").is_visible()

        # pause for 2 weeks: the database holds it, and her next slots send nothing
        before = utcnow()
        page.get_by_role("button", name="2 weeks").click()
        page.wait_for_load_state()
        assert "Paused for 2 weeks" in page.locator(".notice").inner_text()
        found = row(db, "SELECT paused_until FROM recipients WHERE email = ?", ADA)
        assert found is not None
        paused_until = dt.datetime.fromisoformat(str(found[0])).replace(tzinfo=dt.UTC)
        assert before + dt.timedelta(days=14) <= paused_until
        assert paused_until <= utcnow() + dt.timedelta(days=14)
        paused_at = db_now(db)
        bob = len(messages_to(smtp, BOB))
        wait_until("three more for Bob", lambda: len(messages_to(smtp, BOB)) >= bob + 3)
        assert planned_for(db, ADA, paused_at) == 0

        # resume: her digests come again
        page.get_by_role("button", name="Resume now").click()
        page.wait_for_load_state()
        assert "Resumed" in page.locator(".notice").inner_text()
        resumed_at = db_now(db)
        wait_until("Ada planned again", lambda: planned_for(db, ADA, resumed_at) >= 1)

        # unsubscribe from the page, then resubscribe from the same page
        page.get_by_role("button", name="Unsubscribe").click()
        page.wait_for_load_state()
        assert row(db, "SELECT how FROM suppressions WHERE email = ?", ADA) == ("page",)
        assert page.get_by_role("button", name="Resubscribe").is_visible()
        gone_at = db_now(db)
        bob = len(messages_to(smtp, BOB))
        wait_until("two more for Bob", lambda: len(messages_to(smtp, BOB)) >= bob + 2)
        assert planned_for(db, ADA, gone_at) == 0
        page.get_by_role("button", name="Resubscribe").click()
        page.wait_for_load_state()
        assert "Resubscribed" in page.locator(".notice").inner_text()
        assert row(db, "SELECT how FROM suppressions WHERE email = ?", ADA) is None
        back_at = db_now(db)
        wait_until("Ada planned again", lambda: planned_for(db, ADA, back_at) >= 1)

        # a topic muted from the page
        page.locator("li", has_text="Agents").get_by_role("button", name="Mute").click()
        page.wait_for_load_state()
        assert row(db, "SELECT muted_topics_json FROM recipients WHERE email = ?", ADA) == (
            '["Agents"]',
        )
        page.close()
    finally:
        code = daemon.stop()
    assert code == 0


def test_the_pages_fit_a_phone_and_need_no_script(
    tmp_path: Path, hf: HFServer, smtp: SmtpServer, daemon_env: None, browser: Browser
) -> None:
    config, _ = web_daemon_config(tmp_path, hf, smtp, [person(ADA)])
    daemon = Daemon(config)
    try:
        daemon.wait_for(r"web: listening")
        wait_until("a digest", lambda: messages_to(smtp, ADA))
        message = messages_to(smtp, ADA)[-1]
        context = browser.new_context(
            viewport={"width": 375, "height": 740}, java_script_enabled=False
        )
        page = context.new_page()

        for url in (preferences_url(message), one_click_url(message)):
            page.goto(url)
            box = page.locator("main").bounding_box()
            assert box is not None and box["width"] <= 375
            for button in page.get_by_role("button").all():
                b = button.bounding_box()
                assert b is not None and b["x"] + b["width"] <= 375 and b["height"] >= 40
        # without JavaScript the unsubscribe button still works: a plain form POST
        page.get_by_role("button", name="Unsubscribe").click()
        page.wait_for_load_state()
        assert "No more digests go to" in page.content()
        assert row(tmp_path / "digest.db", "SELECT how FROM suppressions") == ("page",)
        context.close()
    finally:
        code = daemon.stop()
    assert code == 0
