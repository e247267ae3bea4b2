"""Digests with [web] for the web copy and feed tests: a real config file with [web]
(tests/web_helpers.py), two real Hugging Face lists stored as two listing days, planning
through `pipeline.plan_due` and delivery through the real Maildir transport.

Ada reads email (max_papers = 3 of about a dozen matches: her list is cut), Bob reads
only his feed (`delivery = "feed"`). Both match the same two topics.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import html as html_module
import mailbox
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from zoneinfo import ZoneInfo

from digest import pipeline, store
from digest.mail.delivery import make_transport
from digest.mail.drain import DrainReport, drain_outbox
from digest.sources.hf_api import parse_api
from tests.backends import Backend
from tests.configs import write_config
from tests.store_helpers import plan_all
from tests.testdata import HF
from tests.web_helpers import Endpoint, web_table

ADA, BOB = "ada@example.org", "bob@example.org"
BERLIN = ZoneInfo("Europe/Berlin")
TOPICS = """topics = [
  { name = "Agents", query = 'agent*' },
  { name = "Video", query = 'video' },
]"""
PEOPLE = f"""
[[subscribers]]
email = "{ADA}"
timezone = "Europe/Berlin"
schedule = "daily 08:00"
max_papers = 3
{TOPICS}

[[subscribers]]
email = "{BOB}"
timezone = "Europe/Berlin"
schedule = "daily 08:00"
delivery = "feed"
{TOPICS}
"""
# two real lists, stored as two listing days: each day's digest has its own papers
DAY_ONE, DAY_TWO = dt.date(2026, 3, 12), dt.date(2026, 3, 13)
LISTS = {DAY_ONE: "api-daily_papers-2025-10-01.json", DAY_TWO: "api-daily_papers-2025-10-03.json"}


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=BERLIN).astimezone(dt.UTC)


def config_file(tmp_path: Path, backend: Backend, people: str = PEOPLE) -> Path:
    path = write_config(
        tmp_path, "http://127.0.0.1:9", subscribers=people,
        mail='maildir = "mail"\n' + web_table(0),
    )  # fmt: skip
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace('url = "sqlite:///digest.db"', f'url = "{backend.url()}"'))
    return path


def store_day(e: Endpoint, day: dt.date) -> None:
    body = (HF / LISTS[day]).read_bytes()
    store.upsert_listings(e.engine, day, parse_api(body, day), at(f"{day} 00:30"))


def plan(e: Endpoint, now: dt.datetime) -> dict[str, pipeline.PlannedDigest]:
    planner = pipeline.Planner(e.config, e.engine)
    planned = plan_all(planner, e.config.subscribers, now, daemon=False)
    return {p.subscriber.email: p for p in planned}


def deliver(e: Endpoint, now: dt.datetime) -> DrainReport:
    """Drain the outbox into the config's Maildir, as `digest send` does."""

    async def drain() -> DrainReport:
        async with make_transport(e.config.mail) as transport:
            return await drain_outbox(e.engine, transport, now=lambda: now)

    with ThreadPoolExecutor(1) as thread:  # its own loop: Playwright's may run here
        return thread.submit(lambda: asyncio.run(drain())).result(60)


def mails(e: Endpoint) -> list[email.message.EmailMessage]:
    """Every message in the Maildir (none when it was never made)."""
    folder = e.config.mail.maildir
    if not folder.exists():
        return []
    box = mailbox.Maildir(folder, create=False)
    return [
        email.message_from_bytes(box.get_bytes(key), policy=email.policy.default)  # type: ignore[misc]
        for key in box.iterkeys()
    ]


def html_of(message: email.message.EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None
    return str(part.get_content())


def text_of(message: email.message.EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def local(e: Endpoint, url: str) -> str:
    """A link from a digest, pointed at the running endpoint (the config says port 0)."""
    assert e.config.web is not None
    return url.replace(e.config.web.base_url, e.base)


def hrefs(html: str, text: str) -> list[str]:
    """The targets of the links whose text contains `text`."""
    found = re.findall(r'<a [^>]*href="([^"]+)"[^>]*>(.*?)</a>', html, re.DOTALL)
    return [href.replace("&amp;", "&") for href, inner in found if text in inner]


def card_titles(html: str) -> list[str]:
    """The paper titles of a digest's HTML, in order, as a reader sees them (the
    highlights' <mark>s and the entities taken out)."""
    found = re.findall(r'<a class="title"[^>]*>(.*?)</a>', html, re.DOTALL)
    return [" ".join(html_module.unescape(re.sub(r"<[^>]+>", "", t)).split()) for t in found]
