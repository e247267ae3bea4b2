"""Tests of the fast paths of rendering: `render_digest_bytes` (the outbox's bytes,
written without the EmailMessage tree) against `render_digest(...).as_bytes()`, and
the per-paper skeletons shared by the digests of one Renderer."""

from __future__ import annotations

import binascii
import dataclasses
import datetime as dt
import email
import email.policy
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digest.config import Topic
from digest.config.schema import TOPIC_SEPARATOR
from digest.records import Match, Paper
from digest.render import (
    DigestBodies,
    RecipientLinks,
    Renderer,
    build_digest_bytes,
    build_digest_message,
    message_id_for,
    pack_html,
    render_digest,
    render_digest_bodies,
    render_digest_bytes,
)
from digest.render import message as message_module
from digest.sources.hf_api import parse_api
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
from tests.testdata import corpus_day

DAYS = ("2025-10-03", "2025-10-14", "2025-12-02", "2025-12-19")


@pytest.fixture(scope="module")
def papers() -> list[Paper]:
    return list(corpus_papers())


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


def both_ways(renderer: Renderer, matches: list[Match], **kw: object) -> tuple[str, bytes]:
    """(subject, bytes) from render_digest_bytes, checked against render_digest."""
    args: dict[str, object] = {"subscriber": make_subscriber(), "slot": SLOT, "mail": MAIL,
                               "now": NOW, "matches": matches}  # fmt: skip
    args.update(kw)
    subject, data = render_digest_bytes(renderer, **args)
    msg = render_digest(renderer, **args)
    assert data == msg.as_bytes()
    assert subject == str(msg["Subject"])
    return subject, data


# ---------------------------------------------------------------------------
# render_digest_bytes == render_digest(...).as_bytes()


@pytest.mark.parametrize("day", DAYS)
def test_bytes_path_matches_the_email_message_on_corpus_days(renderer: Renderer, day: str) -> None:
    papers = parse_api(corpus_day(day).read_bytes(), dt.date.fromisoformat(day))
    matches = [Match(p, (RL, VLM) if i % 3 else (RL,)) for i, p in enumerate(papers[:20])]
    subject, data = both_ways(renderer, matches, total_matches=31)
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed["Subject"] == subject
    _, html_part = parsed.iter_parts()
    assert html_part["Content-Transfer-Encoding"] == "7bit"  # packed lines stay short
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    html = html_part.get_content()
    assert all(p.arxiv_url in Html(html).hrefs() for p in papers[:20])


def packed_one_line_at_a_time(html: str, width: int) -> str:
    """pack_html's rule walked line by line: every non-ASCII character as an entity,
    then the next line joined while the output line stays under `width`."""
    out: list[str] = []
    for line in html.encode("ascii", "xmlcharrefreplace").decode("ascii").split("\n"):
        if out and len(out[-1]) + 1 + len(line) < width:
            out[-1] += " " + line
        else:
            out.append(line)
    return "\n".join(out)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.text(st.sampled_from("<p>é x"), max_size=40), max_size=30),
    width=st.sampled_from([1, 5, 20, 80]),
)
def test_pack_html_joins_lines_greedily_under_the_width(lines: list[str], width: int) -> None:
    html = "\n".join(lines)
    assert pack_html(html, width) == packed_one_line_at_a_time(html, width)


def test_the_renderer_knows_the_longest_html_line_it_packed(papers: list[Paper]) -> None:
    """The message trusts `html_longest_line` for the 7bit check: it is the real one."""
    renderer = Renderer()
    for matches, more in (([Match(p, (RL,)) for p in papers[:12]], ()),
                          ([Match(p, (RL, VLM)) for p in papers[:2]], [Match(papers[5], (RL,))]),
                          ([], ())):  # fmt: skip
        bodies = render_digest_bodies(renderer, subscriber=make_subscriber(), slot=SLOT,
                                      matches=matches, mail=MAIL, more=more)  # fmt: skip
        assert bodies.html_longest_line == max(map(len, bodies.html.split("\n")))


@pytest.mark.parametrize(
    "name",
    [
        'Zoë "Ziggy" Ångström, PhD',  # quoting and encoded words in To
        "Eve\r\nBcc: x@y",  # no header injection either way
        "A very long display name " * 6,  # To folds
        "=?utf-8?q?encoded?= words",
    ],
)
def test_bytes_path_matches_for_awkward_names_and_topics(
    renderer: Renderer, papers: list[Paper], name: str
) -> None:
    topic = hit(f"Topic {name}", "learning")
    sub = make_subscriber(name=name, topics=(Topic(f"Topic {name}", "learning"),))
    subject, data = both_ways(renderer, [Match(papers[0], (topic,))], subscriber=sub)
    # no header line starts with Bcc (the wrapped text body may: it is text there)
    assert b"\r\nBcc:" not in data.split(b"\r\n\r\n", 1)[0]
    assert subject.startswith("1 new paper: ")


def test_bytes_path_matches_for_empty_and_capped_digests(
    renderer: Renderer, papers: list[Paper]
) -> None:
    both_ways(renderer, [])
    many = [dataclasses.replace(papers[0], id=f"2510.{i:05d}", title="Über " * 40)
            for i in range(400)]  # fmt: skip
    _, data = both_ways(renderer, [Match(p, (RL,)) for p in many])
    _, html = parts(email.message_from_bytes(data, policy=email.policy.default))
    assert "more on Hugging Face Daily Papers" in Html(html).all_text()


# Any name a config can hold: st.text's default alphabet (no surrogates) without the
# separator, which the loader and Subscriber refuse.
NAME_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters=TOPIC_SEPARATOR)


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(st.sampled_from("ab \r\n=.é日-_\t") | st.characters(), max_size=1500),
    html=st.text(st.sampled_from("<p> \n&x;é"), max_size=3000),
    name=st.text(NAME_CHARS, max_size=40),
    subject=st.text(min_size=1, max_size=120),
)
def test_bytes_builder_matches_the_email_message_for_any_bodies(
    text: str, html: str, name: str, subject: str
) -> None:
    bodies = DigestBodies(subject=subject, text=text, html=html)
    args = {"subscriber": make_subscriber(name=name), "slot": SLOT, "mail": MAIL, "now": NOW}
    got_subject, data = build_digest_bytes(bodies, **args)
    msg = build_digest_message(bodies, **args)
    assert data == msg.as_bytes()
    assert got_subject == str(msg["Subject"])
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


TOKEN_CHARS = st.sampled_from("aZ09-_.=?,<> \té") | st.characters(exclude_categories=["Cs"])


@settings(max_examples=100, deadline=None)
@given(
    token=st.text(TOKEN_CHARS, max_size=120),
    mailto=st.sampled_from([None, "mailto:unsub@example.org?subject=stop"]),
)
def test_bytes_builder_matches_the_email_message_for_any_signed_links(
    token: str, mailto: str | None
) -> None:
    """A recipient's List-Unsubscribe is new in every message: folded from its text when
    plain, parsed when not (an encoded word, non-ASCII, odd spaces): the same bytes."""
    links = RecipientLinks(unsubscribe=f"https://d.example/u/{token}",
                           preferences=f"https://d.example/p/{token}")  # fmt: skip
    mail = dataclasses.replace(MAIL, unsubscribe=mailto)
    bodies = DigestBodies(subject="s", text="t\n", html="<p>h</p>\n")
    args = {"subscriber": make_subscriber(), "slot": SLOT, "mail": mail, "now": NOW,
            "links": links}  # fmt: skip
    _, data = build_digest_bytes(bodies, **args)  # type: ignore[arg-type]
    assert data == build_digest_message(bodies, **args).as_bytes()  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        st.text(st.sampled_from("ab .=\t é日\x00") | st.characters(), max_size=100), max_size=8
    ),
    end=st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_quoted_printable_by_lines_equals_b2a_qp_of_the_whole(lines: list[str], end: str) -> None:
    """Trailing spaces, a lone dot, "=", lines past 76, non-ASCII, surrogates, CRs."""
    for text in (end.join(lines), end.join(lines) + end, "\n".join(lines) + "\n"):
        whole = binascii.b2a_qp(text.encode("utf-8", "replace"), istext=True).decode("ascii")
        assert message_module._quoted_printable(text) == whole


def test_a_body_holding_the_boundary_cannot_split_the_message() -> None:
    message_id = message_id_for("ada@example.org", SLOT, MAIL.from_addr)
    boundary = "=_alt_" + message_id[len("<digest-") : message_id.index("@")]
    evil = f"--{boundary}\nContent-Type: text/html\n\n<p>forged</p>\n--{boundary}--\n"
    bodies = DigestBodies(subject="s", text=evil, html=f"<p>{evil}</p>")
    args = {"subscriber": make_subscriber(), "slot": SLOT, "mail": MAIL, "now": NOW}
    _, data = build_digest_bytes(bodies, **args)
    assert data == build_digest_message(bodies, **args).as_bytes()
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed.defects == []
    text, html = parts(parsed)  # still two parts, text then HTML
    assert text.replace("\r\n", "\n") == evil  # quoted-printable keeps the CRLFs
    assert html.replace("\r\n", "\n") == f"<p>{evil}</p>"


def test_a_lone_surrogate_from_json_does_not_break_rendering(
    renderer: Renderer, papers: list[Paper]
) -> None:
    broken = dataclasses.replace(papers[0], title="Broken \ud800 title")
    _, data = both_ways(renderer, [Match(broken, (RL,))])
    text, html = parts(email.message_from_bytes(data, policy=email.policy.default))
    assert "Broken ? title" in text
    assert "Broken" in Html(html).all_text()


# ---------------------------------------------------------------------------
# The per-paper skeletons


def test_shared_papers_are_rendered_once_and_render_the_same(papers: list[Paper]) -> None:
    warm = Renderer()
    shared = [Match(p, (RL,)) for p in papers[:10]]
    render(warm, shared)
    assert warm._skeletons is not None
    made = dict(warm._skeletons._cache)
    assert len(made) == 10  # one paper, one skeleton (one topic each, small thumbnails)
    bob = make_subscriber(email="bob@example.org", name="Bob")
    _, warm_bytes = both_ways(warm, shared[::-1], subscriber=bob)
    assert warm._skeletons._cache == made  # no paper's templates rendered again
    _, fresh_bytes = both_ways(Renderer(), shared[::-1], subscriber=bob)
    assert warm_bytes == fresh_bytes


def test_the_cache_keeps_each_matchs_own_words_and_topics(
    renderer: Renderer, papers: list[Paper]
) -> None:
    truthrl = next(p for p in papers if p.id == "2509.25760")
    _, html_rl = parts(render(renderer, [Match(truthrl, (RL,))]))
    llm = hit("LLMs", "llms")
    text, html_llm = parts(render(renderer, [Match(truthrl, (llm,))]))
    assert "Reinforcement Learning" in Html(html_rl).marked
    assert Html(html_llm).marked and {m.lower() for m in Html(html_llm).marked} == {"llms"}
    assert "topics: LLMs" in text


def test_page_templates_that_still_include_the_paper_template_work(
    tmp_path: Path, papers: list[Paper]
) -> None:
    (tmp_path / "digest.html.j2").write_text(
        '<table class="container">\n{% for p in views[:full] %}\n'
        '{% include "_paper.html.j2" %}\n{% endfor %}\n</table>\n'
    )
    (tmp_path / "_paper.txt.j2").write_text("CUSTOM {{ p.title }}\n\n")
    custom = Renderer(tmp_path)
    text, html = parts(render(custom, [Match(p, (RL,)) for p in papers[:3]]))
    assert all(p.arxiv_url in Html(html).hrefs() for p in papers[:3])
    assert "1. CUSTOM " in text and "3. CUSTOM " in text
