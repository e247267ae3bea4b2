"""Helpers for the render tests: real corpus papers, a subscriber, and a digest
rendered, serialised and parsed back the way a mail client sees it."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import functools
from email.message import EmailMessage
from html.parser import HTMLParser

from digest.config import MailConfig, Subscriber, Topic
from digest.records import Match, Paper, TopicHit
from digest.render import Renderer, render_digest, render_digest_bytes
from digest.schedule import Schedule
from digest.sources.hf_api import parse_api
from digest.topics.query import Leaf, compile_query, parse_query
from tests.testdata import corpus_day

CORPUS_DAY = corpus_day("2025-10-01")
SLOT = dt.datetime(2025, 10, 1, 6, 0, tzinfo=dt.UTC)  # 08:00 in Berlin
NOW = dt.datetime(2025, 10, 1, 6, 0, 5, tzinfo=dt.UTC)
MAIL = MailConfig(from_addr="Papers Digest <digest@example.org>")


def hit(topic: str, query: str) -> TopicHit:
    """A TopicHit explained by every positive leaf of `query` (as if all matched)."""
    compiled = compile_query(parse_query(query))
    return TopicHit(topic, frozenset(Leaf.from_key(k) for k in compiled.positive))


RL = hit("Reinforcement learning", '"reinforcement learning" OR rl')
VLM = hit("Vision-language models", "vlm OR vlms OR vision")


def make_subscriber(**changes: object) -> Subscriber:
    base = Subscriber(
        email="ada@example.org",
        schedule=Schedule("daily 08:00"),
        timezone="Europe/Berlin",
        name="Ada",
        topics=(Topic("Reinforcement learning", "rl"), Topic("Vision-language models", "vlm")),
    )
    return base.replace(**changes)


@functools.cache
def corpus_papers() -> tuple[Paper, ...]:
    """The 37 real papers of 2025-10-01, through the real API parser."""
    return tuple(parse_api(CORPUS_DAY.read_bytes(), dt.date(2025, 10, 1)))


def render(renderer: Renderer, matches: list[Match], **kw: object) -> EmailMessage:
    """Render, serialise and parse back: what a mail client would see.

    Renders both ways, `render_digest_bytes` (the outbox's bytes) and `render_digest`
    (an EmailMessage), and checks that they agree byte for byte."""
    args: dict[str, object] = {"subscriber": make_subscriber(), "slot": SLOT, "mail": MAIL}
    args.update(kw)
    msg = render_digest(renderer, matches=matches, now=NOW, **args)
    subject, data = render_digest_bytes(renderer, matches=matches, now=NOW, **args)
    assert data == msg.as_bytes()
    assert subject == str(msg["Subject"])
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def parts(msg: EmailMessage) -> tuple[str, str]:
    text_part, html_part = msg.iter_parts()
    assert text_part.get_content_type() == "text/plain"
    assert html_part.get_content_type() == "text/html"
    return text_part.get_content(), html_part.get_content()


class Html(HTMLParser):
    """Every start tag with its attributes, the visible text, and the <mark>ed words."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.marked: list[str] = []
        self._in_mark = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_mark = tag == "mark"

    def handle_endtag(self, tag: str) -> None:
        self._in_mark = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_mark:
            self.marked.append(data)

    def hrefs(self) -> list[str]:
        return [str(a["href"]) for t, a in self.tags if t == "a" and a.get("href")]

    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())
