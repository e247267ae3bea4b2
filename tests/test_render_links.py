"""A digest's unsubscribe headers and footer links: RFC 8058 with [web], mailto without;
the admin's alert mails carry none of it."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

import pytest

from digest.records import Match
from digest.render import RecipientLinks, Renderer, render_plain_message
from tests.render_helpers import MAIL, NOW, RL, Html, corpus_papers, parts, render

TOKEN = "IjVxN2ZQeFZmSXJ3TjFuLWtKNmtoQ0Ei.x2y4L9aV3cR5gQ1jUeWm0pN8sT0"
LINKS = RecipientLinks(
    unsubscribe=f"https://digest.example.org/u/{TOKEN}",
    preferences=f"https://digest.example.org/p/{TOKEN}",
)


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


def matches() -> list[Match]:
    return [Match(p, (RL,)) for p in corpus_papers()[:3]]


def test_with_links_list_unsubscribe_is_https_then_mailto_and_one_click(renderer: Renderer) -> None:
    msg = render(renderer, matches(), links=LINKS)  # also checks bytes == EmailMessage
    assert msg["List-Unsubscribe"] == (
        f"<{LINKS.unsubscribe}>, <mailto:digest@example.org?subject=unsubscribe>"
    )
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert len(msg.get_all("List-Unsubscribe-Post") or []) == 1


def test_the_long_header_folds_without_breaking_a_url(renderer: Renderer) -> None:
    long = RecipientLinks(
        unsubscribe=f"https://digest.example.org/some/prefix/u/{TOKEN}{TOKEN}",
        preferences=LINKS.preferences,
    )
    from digest.render import render_digest_bytes
    from tests.render_helpers import SLOT, make_subscriber

    _, data = render_digest_bytes(
        renderer, subscriber=make_subscriber(), slot=SLOT, matches=matches(), mail=MAIL,
        now=NOW, links=long,
    )  # fmt: skip
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    raw = head[head.index("List-Unsubscribe:") :].split("\r\nList-Unsubscribe-Post")[0]
    assert "=?" not in raw  # no encoded words: a URL must stay as it is
    unfolded = raw.replace("\r\n", "")
    assert f"<{long.unsubscribe}>" in unfolded


def test_with_links_the_footer_carries_unsubscribe_and_preferences_in_both_parts(
    renderer: Renderer,
) -> None:
    text, html = parts(render(renderer, matches(), links=LINKS))
    page = Html(html)
    assert LINKS.unsubscribe in page.hrefs() and LINKS.preferences in page.hrefs()
    visible = page.all_text()
    assert "Unsubscribe" in visible and "Manage preferences" in visible
    assert "You get this digest because you subscribed to papers about:" in visible
    flowed = " ".join(text.split())  # the text part is wrapped at 72 columns
    assert f"Unsubscribe: {LINKS.unsubscribe}" in flowed
    assert f"Manage preferences (pause, mute a topic): {LINKS.preferences}" in flowed
    assert all(len(line) <= 72 or line.startswith("https://") for line in text.splitlines())


def test_without_links_mailto_alone_and_no_preferences(renderer: Renderer) -> None:
    msg = render(renderer, matches())
    assert msg["List-Unsubscribe"] == "<mailto:digest@example.org?subject=unsubscribe>"
    assert msg["List-Unsubscribe-Post"] is None
    text, html = parts(msg)
    assert "Manage preferences" not in text and "Manage preferences" not in html
    assert "Unsubscribe: mailto:digest@example.org?subject=unsubscribe" in text


def test_alerts_to_the_admin_carry_no_unsubscribe_at_all() -> None:
    msg = render_plain_message(
        from_addr=MAIL.from_addr, to_addr="admin@example.org", subject="polls failing",
        body="3 polls failed.", now=NOW,
    )  # fmt: skip
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    assert parsed["List-Unsubscribe"] is None and parsed["List-Unsubscribe-Post"] is None
    body = parsed.get_content()
    assert "nsubscribe" not in body and "preferences" not in body
