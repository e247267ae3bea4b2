"""Tests of digest rendering: real papers from the corpus, real templates, the message
parsed back from its bytes as a mail client would."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy

import pytest

from digest.errors import ConfigError
from digest.records import Match, Paper, TopicHit
from digest.render import (
    HTML_CAP_BYTES,
    Renderer,
    message_id_for,
    render_digest,
    render_plain_message,
)
from tests.render_helpers import (
    MAIL,
    NOW,
    RL,
    SLOT,
    VLM,
    Html,
    corpus_papers,
    hit,
    make_subscriber,
    parts,
    render,
)


@pytest.fixture(scope="module")
def papers() -> list[Paper]:
    return list(corpus_papers())


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


# ---------------------------------------------------------------------------
# The message


def test_message_headers_and_parts_order(renderer: Renderer, papers: list[Paper]) -> None:
    msg = render(renderer, [Match(p, (RL,)) for p in papers[:7]])
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg["From"] == "Papers Digest <digest@example.org>"
    assert msg["To"].addresses[0].addr_spec == "ada@example.org"
    assert msg["To"].addresses[0].display_name == "Ada"
    assert msg["Subject"] == "7 new papers: reinforcement learning (Oct 1)"
    assert msg["Date"].datetime == NOW
    assert msg["Message-ID"] == message_id_for("ada@example.org", SLOT, MAIL.from_addr)
    assert msg["List-ID"] == "<papers-digest.example.org>"
    assert msg["List-Unsubscribe"] == "<mailto:digest@example.org?subject=unsubscribe>"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["MIME-Version"] == "1.0"
    assert msg.defects == []
    text_part, html_part = msg.iter_parts()
    assert html_part["Content-Transfer-Encoding"] == "7bit"  # ASCII, short lines: readable
    assert text_part.get_content_charset() == "utf-8"


def test_message_bytes_are_deterministic_and_smtp_safe(
    renderer: Renderer, papers: list[Paper]
) -> None:
    matches = [Match(p, (RL,)) for p in papers[:5]]
    args = {"subscriber": make_subscriber(), "slot": SLOT, "mail": MAIL, "now": NOW}
    one = render_digest(renderer, matches=matches, **args).as_bytes()
    two = render_digest(renderer, matches=matches, **args).as_bytes()
    assert one == two
    lines = one.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    assert b"\n" not in one.replace(b"\r\n", b"")  # CRLF line ends only


def test_message_id_derives_from_subscriber_and_slot() -> None:
    a = message_id_for("Ada@Example.org", SLOT, "Digest <d@mail.example.org>")
    assert a == message_id_for("ada@example.org", SLOT, "d@mail.example.org")
    assert a.startswith("<digest-") and a.endswith("@mail.example.org>")
    later = SLOT + dt.timedelta(days=1)
    assert a != message_id_for("ada@example.org", later, "d@mail.example.org")
    assert a != message_id_for("bob@example.org", SLOT, "d@mail.example.org")
    same_instant = SLOT.astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert a == message_id_for("ada@example.org", same_instant, "d@mail.example.org")
    with pytest.raises(ValueError, match="timezone-aware"):
        message_id_for("ada@example.org", SLOT.replace(tzinfo=None), "d@example.org")


def test_custom_unsubscribe_and_bad_config_values(renderer: Renderer, papers: list[Paper]) -> None:
    mail = dataclasses.replace(MAIL, unsubscribe="https://lists.example.org/u?id=1")
    msg = render(renderer, [Match(papers[0], (RL,))], mail=mail)
    assert msg["List-Unsubscribe"] == "<https://lists.example.org/u?id=1>"
    assert "https://lists.example.org/u?id=1" in Html(parts(msg)[1]).hrefs()
    with pytest.raises(ConfigError, match=r"mail\.unsubscribe"):
        render(renderer, [], mail=dataclasses.replace(MAIL, unsubscribe="javascript:alert(1)"))
    with pytest.raises(ConfigError, match=r"mail\.from"):
        render(renderer, [], mail=dataclasses.replace(MAIL, from_addr="not an address"))
    with pytest.raises(ConfigError, match="Mars/Olympus"):
        render(renderer, [], subscriber=make_subscriber(timezone="Mars/Olympus"))


def test_plain_message_for_alerts() -> None:
    msg = render_plain_message(
        from_addr="Papers Digest <digest@example.org>",
        to_addr="admin@example.org",
        subject="3 polls failed\r\nBcc: x@y",
        body="The source is down.\nLast error: timeout",
        now=NOW,
    )
    parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)
    assert parsed["Subject"] == "3 polls failed Bcc: x@y"
    assert parsed["Bcc"] is None
    assert parsed["To"] == "admin@example.org"
    assert parsed["Date"].datetime == NOW
    assert parsed["Message-ID"].endswith("@example.org>")
    assert parsed.get_content_type() == "text/plain"
    assert parsed["MIME-Version"] == "1.0"
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert "Last error: timeout" in parsed.get_content()
    again = render_plain_message(
        from_addr="digest@example.org", to_addr="admin@example.org", subject="s", body="b",
        now=NOW, message_id="<fixed@example.org>",
    )  # fmt: skip
    assert again["Message-ID"] == "<fixed@example.org>"


# ---------------------------------------------------------------------------
# The subject


def test_subject_singular_many_topics_and_local_date(
    renderer: Renderer, papers: list[Paper]
) -> None:
    one = render(renderer, [Match(papers[0], (RL,))])
    assert one["Subject"] == "1 new paper: reinforcement learning (Oct 1)"
    hits = tuple(TopicHit(name) for name in ("Alpha", "Beta", "Gamma", "Delta", "LLM agents"))
    many = render(renderer, [Match(papers[0], hits), Match(papers[1], hits[1:2])])
    assert many["Subject"] == "2 new papers: beta, alpha and 3 more (Oct 1)"
    # 23:30 UTC on Oct 1 is already Oct 2 in Tokyo
    late = SLOT.replace(hour=23, minute=30)
    tokyo = render(renderer, [Match(papers[0], (RL,))], slot=late,
                   subscriber=make_subscriber(timezone="Asia/Tokyo"))  # fmt: skip
    assert tokyo["Subject"].endswith("(Oct 2)")
    acronym = render(renderer, [Match(papers[0], (TopicHit("LLM agents"),))])
    assert acronym["Subject"] == "1 new paper: LLM agents (Oct 1)"


def test_empty_digest_says_so(renderer: Renderer) -> None:
    msg = render(renderer, [])
    assert msg["Subject"] == "No new papers for your topics (Oct 1)"
    text, html = parts(msg)
    assert "No new papers matched your topics" in text
    assert "No new papers matched your topics" in Html(html).all_text()


# ---------------------------------------------------------------------------
# The HTML and text content


def test_every_paper_has_its_links_authors_and_topics(
    renderer: Renderer, papers: list[Paper]
) -> None:
    chosen = papers[:12]
    msg = render(renderer, [Match(p, (RL, VLM) if i % 2 else (RL,)) for i, p in enumerate(chosen)])
    text, html = parts(msg)
    flowed = " ".join(text.split())  # the text part is wrapped at 72 columns
    page = Html(html)
    hrefs = page.hrefs()
    for paper in chosen:
        for url in (paper.url, paper.arxiv_url, paper.pdf_url):
            assert url in hrefs, (paper.id, url)
            assert url in text
        if paper.github_repo:
            assert paper.github_repo in hrefs
        if paper.project_page:
            assert paper.project_page in hrefs
        assert paper.authors[0] in page.all_text()
        assert paper.authors[0] in flowed
        assert " ".join(paper.title.split()) in flowed
    chips = [t for t, a in page.tags if t == "span" and "chip" in str(a.get("class"))]
    assert len(chips) == 12 + 6  # one chip per topic per paper; a paper is never repeated
    assert flowed.count("topics: Reinforcement learning, Vision-language models") == 6
    assert "You get this digest because you subscribed to papers about: " \
        "Reinforcement learning, Vision-language models" in page.all_text()  # fmt: skip
    assert "Unsubscribe: mailto:" in text


def test_email_layout_table_inline_styles_preheader_dark_mode(
    renderer: Renderer, papers: list[Paper]
) -> None:
    _, html = parts(render(renderer, [Match(p, (RL,)) for p in papers[:3]]))
    page = Html(html)
    meta = {str(a.get("name")): str(a.get("content")) for t, a in page.tags if t == "meta"}
    assert meta["color-scheme"] == "light dark"
    container = [a for t, a in page.tags if t == "table" and "container" in str(a.get("class"))]
    assert container[0]["width"] == "640"
    assert "max-width:640px" in str(container[0]["style"])
    preheader = [a for t, a in page.tags if t == "div" and "display:none" in str(a.get("style"))]
    assert len(preheader) == 1
    assert " ".join(papers[0].title.split()) in page.all_text()
    # styles were inlined at load time: no element relies on an inlinable class alone
    styled = [a for t, a in page.tags if a.get("class")]
    assert styled and all(a.get("style") for a in styled)
    assert ".card {" not in html  # the class rules are gone from <style>
    assert "prefers-color-scheme: dark" in html  # the dark-mode rules stay
    imgs = [a for t, a in page.tags if t == "img"]
    assert all(a.get("alt") and str(a["src"]).startswith("https://") for a in imgs)
    assert len(imgs) == sum(1 for p in papers[:3] if p.thumbnail)


def test_a_phrase_is_marked_once_per_occurrence_and_nothing_else(
    renderer: Renderer, papers: list[Paper]
) -> None:
    truthrl = next(p for p in papers if p.id == "2509.25760")
    _, html = parts(render(renderer, [Match(truthrl, (RL,))]))
    # title "...via Reinforcement Learning", summary "a reinforcement learning framework":
    # each occurrence of the phrase is one mark; "learning" alone is never marked, nor
    # the "RL" inside "TruthRL" (part of a word is not the word)
    assert Html(html).marked == ["Reinforcement Learning", "reinforcement learning"]


def test_summary_falls_back_to_two_sentences_of_the_abstract(
    renderer: Renderer, papers: list[Paper]
) -> None:
    paper = dataclasses.replace(papers[1], ai_summary=None)
    text, html = parts(render(renderer, [Match(paper, (RL,))]))
    expected = (
        "While large language models (LLMs) have demonstrated strong performance on factoid "
        "question answering, they are still prone to hallucination and untruthful responses, "
        "particularly when tasks demand information outside their parametric knowledge. "
        "Indeed, truthfulness requires more than accuracy -- models must also recognize "
        "uncertainty and abstain when unsure to avoid hallucinations."
    )
    assert expected in Html(html).all_text()
    assert expected in " ".join(text.split())
    assert "This presents a fundamental challenge" not in text
    assert "AI summary" not in text + html


def test_hostile_paper_text_stays_text(renderer: Renderer, papers: list[Paper]) -> None:
    evil = dataclasses.replace(
        papers[0],
        title='<script>alert(1)</script> "><img src=x onerror=alert(1)>\r\nBcc: x@y',
        ai_summary="<b onmouseover=alert(1)>bold</b> and RL",
        github_repo="javascript:alert(1)",
        project_page="https://ok.example.org/page",
        thumbnail="data:image/png;base64,AAAA",
        organization_fullname="Org\x00\x1b[31m",
    )
    topic = hit("Safety\r\nBcc: x@y", "script OR img OR rl")
    msg = render(renderer, [Match(evil, (topic,))])
    text, html = parts(msg)
    page = Html(html)
    assert not [t for t, _ in page.tags if t == "script"]
    assert not [a for t, a in page.tags if t == "img" and a.get("onerror")]
    assert not [a for _, a in page.tags if any(k.startswith("on") for k in a)]
    assert not [h for h in page.hrefs() if not h.startswith(("https://", "mailto:"))]
    assert "<script>alert(1)</script>" in page.all_text()  # shown, as text
    assert "https://ok.example.org/page" in page.hrefs()
    assert msg["Bcc"] is None
    assert msg["Subject"] == "1 new paper: safety Bcc: x@y (Oct 1)"
    assert "\x1b" not in html and "\x00" not in html and "\x1b" not in text


def test_subscriber_name_cannot_inject_headers(renderer: Renderer, papers: list[Paper]) -> None:
    sub = make_subscriber(name="Eve\r\nBcc: x@y", email="eve@example.org")
    msg = render(renderer, [Match(papers[0], (RL,))], subscriber=sub)
    assert msg["Bcc"] is None
    assert [a.addr_spec for a in msg["To"].addresses] == ["eve@example.org"]
    assert msg["To"].addresses[0].display_name == "Eve Bcc: x@y"
    assert b"\r\nBcc:" not in msg.as_bytes()


def test_unicode_and_latex_titles_render_as_text(renderer: Renderer, papers: list[Paper]) -> None:
    title = r"Über $\mathcal{O}(n^2)$ & <T> 日本語 — “quotes” 🚀"
    paper = dataclasses.replace(papers[0], title=title, authors=("Zoë Ångström", "李雷"))
    msg = render(renderer, [Match(paper, (RL,))])
    text, html = parts(msg)
    assert html.isascii()  # non-ASCII travels as character references
    assert title in Html(html).all_text()
    assert title in text
    assert "Zoë Ångström, 李雷" in text


def test_html_stays_under_the_cap_with_200_long_papers(
    renderer: Renderer, papers: list[Paper]
) -> None:
    long_abstract = " ".join(p.abstract for p in papers[:3])
    many = [
        dataclasses.replace(
            papers[i % len(papers)],
            id=f"2510.{i:05d}",
            ai_summary=None,
            abstract=long_abstract,
            title=f"Paper {i}: " + papers[i % len(papers)].title,
        )
        for i in range(200)
    ]
    msg = render(renderer, [Match(p, (RL, VLM)) for p in many])
    text, html = parts(msg)
    assert len(html.encode()) < HTML_CAP_BYTES  # as sent: CRLF line ends
    assert msg.get_payload()[1]["Content-Transfer-Encoding"] == "7bit"  # a link a line
    hrefs = Html(html).hrefs()
    full = [p for p in many if p.arxiv_url in hrefs]
    linked_only = [p for p in many if p.url in hrefs and p.arxiv_url not in hrefs]
    assert len(full) >= 10 and len(linked_only) >= 50
    assert len(full) + len(linked_only) == 200  # every paper is at least a link
    assert full == many[: len(full)]  # the best-ranked keep their full entry
    assert "More papers" in Html(html).all_text()
    assert all(p.url in text for p in many)  # the text part has no cap


def test_cap_counts_what_no_longer_fits_even_as_links(
    renderer: Renderer, papers: list[Paper]
) -> None:
    many = [dataclasses.replace(papers[0], id=f"2510.{i:05d}", title="T " * 60) for i in range(900)]
    _, html = parts(render(renderer, [Match(p, (RL,)) for p in many]))
    assert len(html.encode()) < HTML_CAP_BYTES  # as sent: CRLF line ends
    hrefs = set(Html(html).hrefs())
    shown = sum(1 for p in many if p.url in hrefs)
    assert 0 < shown < 900
    assert f"and {900 - shown} more on Hugging Face Daily Papers" in Html(html).all_text()


def test_total_matches_is_mentioned(renderer: Renderer, papers: list[Paper]) -> None:
    text, html = parts(render(renderer, [Match(p, (RL,)) for p in papers[:2]], total_matches=9))
    assert "Wednesday, 1 October 2025 - the best 2 of 9 matches" in text
    assert "Wednesday, 1 October 2025 - the best 2 of 9 matches" in Html(html).all_text()


def test_a_bad_id_is_quoted_and_only_http_links_with_a_host_render(
    renderer: Renderer, papers: list[Paper]
) -> None:
    """A row stored before ids were checked (or by hand): its links stay inside their path."""
    evil = dataclasses.replace(
        papers[0],
        id='2603.90008/../../evil?x="><b>\r\n',
        github_repo="https:///no-host",
        project_page="http://[::1",  # unbalanced bracket: urlsplit refuses it
        thumbnail="javascript:alert(1)",
    )
    text, html = parts(render(renderer, [Match(evil, (RL,))]))
    hrefs = Html(html).hrefs()
    assert not [h for h in hrefs if not h.startswith(("https://", "http://", "mailto:"))]
    assert "https:///no-host" not in hrefs and not [h for h in hrefs if "[::1" in h]
    paper_links = [h for h in hrefs if "90008" in h]
    assert paper_links and all("?" not in h and '"' not in h for h in paper_links)
    assert all("%3F" in h and "%0D%0A" in h for h in paper_links)
    assert "javascript:" not in html
    assert "/../../evil?x=" not in text and "2603.90008%2F" not in text
    assert "https://huggingface.co/papers/2603.90008/../../evil%3Fx%3D" in text


def test_matches_past_the_cut_are_title_links_and_the_rest_a_count(
    renderer: Renderer, papers: list[Paper]
) -> None:
    shown, more = papers[:3], papers[3:8]
    msg = render(renderer, [Match(p, (RL,)) for p in shown],
                 more=[Match(p, (RL,)) for p in more], total_matches=20)  # fmt: skip
    text, html = parts(msg)
    # the title links take a line each (packed), so the HTML stays 7bit: on one line
    # they would pass 998 characters and turn the whole part quoted-printable
    assert msg.get_payload()[1]["Content-Transfer-Encoding"] == "7bit"
    assert "the best 3 of 20 matches" in text
    page = Html(html)
    assert "And 17 more matches past the 3 shown:" in page.all_text()
    assert "…and 12 more on Hugging Face Daily Papers" in page.all_text()
    assert "And 17 more matches past the 3 shown:" in text
    assert "...and 12 more on https://huggingface.co/papers" in text
    for p in more:
        assert p.url in page.hrefs() and p.arxiv_url not in page.hrefs()
        assert f"  {p.url}" in text.splitlines()
