"""The skeleton fast path of rendering (`digest/render/fragments.py`) against plain Jinja.

Each paper's templates are rendered once per batch with placeholders and filled per
match; these tests render the same digests with `Renderer(skeletons=False)` (every
match's paper templates rendered by Jinja) and compare the bytes: the real matcher's
matches for varied queries (phrases, prefixes, fields, overlaps, NOT), topic names that
need escaping or are not ASCII, every thumbnail choice, and the same paper in many
digests with other topics and leaves. The page around the papers (`pages.py`) likewise:
every shape of page (no papers, the "more" list, matches only counted, signed links,
a web copy, no topics) against the plain Jinja page.
"""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from digest.config import Topic
from digest.records import Match, Paper
from digest.render import RecipientLinks, Renderer, render_digest_bytes
from digest.render.text import wrap
from digest.topics.match import PaperIndex, compile_topics, match_subscriber
from tests.render_helpers import MAIL, NOW, SLOT, corpus_papers, make_subscriber

QUERIES = (
    '"reinforcement learning"',
    "reinforcement AND learning",
    "diffusion*",
    '"diffusion model*"',
    'title:"language model*"',
    "abstract:agent*",
    "title:vision OR abstract:vision",
    '"reinforcement learning" OR "learning from"',
    '"large language" OR "language models"',
    "llm* OR (reasoning AND NOT survey)",
    'author:"wang" OR author:zhang',
    "org:nvidia OR org:alibaba* OR org:google",
    "video OR image* OR 3d",
    "text-to-image OR multimodal",
    "benchmark NOT survey",
    "a*",
)
NAMES = (
    st.text(st.sampled_from("ab <&>\"'é日·…-"), min_size=1, max_size=20).map(str.strip).filter(bool)
)

FAST = Renderer()
PLAIN = Renderer(skeletons=False)


def matches_for(papers: list[Paper], topics: list[Topic]) -> list[Match]:
    index = PaperIndex.build(papers)
    return match_subscriber(index, compile_topics(topics), min_upvotes=0, max_papers=12)


def both(matches: list[Match], thumbnails: str, name: str = "Ada") -> bytes:
    sub = make_subscriber(thumbnails=thumbnails, name=name)
    args = {"subscriber": sub, "slot": SLOT, "mail": MAIL, "now": NOW, "matches": matches}
    fast = render_digest_bytes(FAST, **args)  # type: ignore[arg-type]
    plain = render_digest_bytes(PLAIN, **args)  # type: ignore[arg-type]
    assert fast == plain
    return fast[1]


@settings(max_examples=60, deadline=None)
@given(
    picks=st.lists(
        st.tuples(NAMES, st.lists(st.sampled_from(QUERIES), min_size=1, max_size=3)),
        min_size=1,
        max_size=3,
    ),
    thumbnails=st.sampled_from(["small", "large", "none"]),
)
def test_filled_skeletons_equal_plain_jinja_for_real_matches(
    picks: list[tuple[str, list[str]]], thumbnails: str
) -> None:
    topics = [Topic(f"{name} {i}", " OR ".join(f"({q})" for q in qs))
              for i, (name, qs) in enumerate(picks)]  # fmt: skip
    matches = matches_for(list(corpus_papers()), topics)
    both(matches, thumbnails)
    for m in matches:  # and paper by paper, the fragments the page is made of
        assert FAST.render_paper(m, thumbnails) == PLAIN.render_paper(m, thumbnails)


def test_one_paper_in_many_digests_keeps_each_matchs_marks_and_topics() -> None:
    """The same papers in every digest, each time with other topics and leaves: one
    skeleton per paper serves them all, and every digest equals its plain render."""
    papers = list(corpus_papers())
    seen = set()
    for i, query in enumerate(QUERIES):
        topics = [Topic(f"T{i} <{query[:8]}>", query), Topic("Agents & tools", "agent*")]
        matches = matches_for(papers, topics)
        seen.add(both(matches, ("small", "large", "none")[i % 3], name=f"User {i}"))
    assert len(seen) == len(QUERIES)


def test_papers_with_odd_fields_equal_plain_jinja() -> None:
    """No authors, no organization, no summary, markup and non-ASCII in the text, a
    summary with a NUL-like control (cleaned away before any template sees it)."""
    base = corpus_papers()[0]
    replace = dataclasses.replace
    odd = [
        replace(base, id="2510.90001", authors=(), author_count=0, organization=None,
                organization_fullname=None),
        replace(base, id="2510.90002", title="Diffuse", ai_summary=None, abstract=""),
        replace(base, id="2510.90003", title="<b>Learning</b> & «diffusion» \x00x",
                ai_summary="Learning\x00 to <diffuse> — fast"),
        replace(base, id="2510.90004", authors=("Ünal <Learner>",) * 5, author_count=9,
                organization_fullname="Learning & Co"),
    ]  # fmt: skip
    topics = [Topic("Learning", "learn* OR author:learner OR org:learning OR diffuse")]
    matches = matches_for(odd, topics)
    assert len(matches) == len(odd)
    for thumbnails in ("small", "large", "none"):
        both(matches, thumbnails)


def test_overridden_paper_templates_render_plainly(tmp_path: Path) -> None:
    """A custom _paper.html.j2 may use a match's leaves or topics any way it likes: it
    is rendered per match, and sees the real ones."""
    (tmp_path / "_paper.html.j2").write_text(
        "<p>{{ p.topics | length }} {{ p.topics | sort | join('/') }} "
        "{{ p.leaves | length }} {{ p.title | hl(p.leaves, 'title') }}</p>\n"
    )
    custom = Renderer(tmp_path)
    papers = list(corpus_papers())
    matches = matches_for(papers, [Topic("B", "learn*"), Topic("A", "model*")])
    both_topics = next(m for m in matches if len(m.topics) == 2)
    html = str(custom.render_paper(both_topics, "small").html)
    assert f"2 A/B {len(both_topics.leaves)} " in html


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(st.sampled_from("ab \t\n\r\x0b\x0c\xa0é-/"), max_size=90),
    indent=st.integers(0, 8),
)
def test_wrap_equals_textwrap(text: str, indent: int) -> None:
    pad = " " * indent
    lines = textwrap.wrap(text, 72, initial_indent=pad, subsequent_indent=pad,
                          break_long_words=False, break_on_hyphens=False)  # fmt: skip
    assert wrap.__wrapped__(text, 72, indent) == ("\n".join(lines) if lines else pad)


WORD_CHARS = st.sampled_from("ab/:.é\xa0\u3000\x1c")  # and spaces textwrap does not split at


@settings(max_examples=300, deadline=None)
@given(
    words=st.lists(st.text(WORD_CHARS, min_size=1, max_size=80), max_size=12),
    width=st.sampled_from([8, 20, 72]),
    indent=st.integers(0, 8),
)
def test_wrap_of_long_words_equals_textwrap(words: list[str], width: int, indent: int) -> None:
    """Words and URLs longer than a line, single spaces between: wrap's own loop."""
    text, pad = " ".join(words), " " * indent
    lines = textwrap.wrap(text, width, initial_indent=pad, subsequent_indent=pad,
                          break_long_words=False, break_on_hyphens=False)  # fmt: skip
    assert wrap.__wrapped__(text, width, indent) == ("\n".join(lines) if lines else pad)


# ---------------------------------------------------------------------------
# The page skeleton (`pages.py`): the page around the papers, filled per digest

LINKS = RecipientLinks(
    unsubscribe="https://d.example/u/T<1>&x", preferences="https://d.example/p/T1"
)
WEB = dataclasses.replace(LINKS, web_copy="https://d.example/d/T1?a=1&b=<2>")
LONG = RecipientLinks(  # URLs longer than a text line: `wrap` gives each a line of its own
    unsubscribe="https://d.example/u/" + "T" * 90,
    preferences="https://d.example/p/" + "P" * 80,
    web_copy="https://d.example/d/" + "W" * 75,
)


def both_pages(matches: list[Match], more: list[Match], total: int, **changes: object) -> bytes:
    links = changes.pop("links", None)
    sub = make_subscriber(**changes)
    args = {"subscriber": sub, "slot": SLOT, "mail": MAIL, "now": NOW, "matches": matches,
            "more": more, "total_matches": total, "links": links}  # fmt: skip
    fast = render_digest_bytes(FAST, **args)  # type: ignore[arg-type]
    plain = render_digest_bytes(PLAIN, **args)  # type: ignore[arg-type]
    assert fast == plain
    return fast[1]


@settings(max_examples=40, deadline=None)
@given(
    shown=st.integers(0, 6),
    listed=st.integers(0, 4),
    uncounted=st.integers(0, 3),
    links=st.sampled_from([None, LINKS, WEB, LONG]),
    names=st.lists(NAMES, max_size=3),
    person=st.sampled_from(["", "Ada", "Ünal <&>"]),
)
def test_page_skeletons_equal_plain_jinja(
    shown: int,
    listed: int,
    uncounted: int,
    links: RecipientLinks | None,
    names: list[str],
    person: str,
) -> None:
    """Every shape of page: no papers or some, the "more" list or none, matches only
    counted past it, with and without signed links and a web copy (their lines wrapped
    in the text part, long URLs on lines of their own), with no topics or topics that
    need escaping: the bytes equal a plain Jinja render of both pages."""
    topics = [Topic(f"{name} {i}", QUERIES[i]) for i, name in enumerate(names)]
    matches = matches_for(list(corpus_papers()), [Topic("All", "a* OR e* OR i* OR o*")])
    shown_matches, more = matches[:shown], matches[shown : shown + listed]
    total = shown + len(more) + uncounted
    both_pages(shown_matches, more, total, links=links, name=person, topics=tuple(topics))


def test_page_skeleton_serves_many_digests_and_keeps_each_ones_values() -> None:
    """One shape, many digests: the same skeleton filled with each one's own intro,
    papers, "more" links, topics and unsubscribe link."""
    matches = matches_for(list(corpus_papers()), [Topic("All", "a* OR e* OR i* OR o*")])
    seen = set()
    for i in range(6):
        links = dataclasses.replace(WEB if i % 2 else LINKS, unsubscribe=f"https://d.example/u/{i}")
        message = both_pages(matches[i : i + 3], matches[i + 3 : i + 5], 5 + i, links=links,
                             topics=(Topic(f"T{i} & <co>", "model*"),))  # fmt: skip
        assert f"https://d.example/u/{i}".encode() in message
        seen.add(message)
    assert len(seen) == 6
    assert FAST._pages is not None and FAST._pages._cache  # the skeletons were used
    assert FAST._text_pages is not None and FAST._text_pages._cache
    assert None not in FAST._text_pages._cache.values()


def test_overridden_text_page_renders_plainly_and_wrap_still_works(tmp_path: Path) -> None:
    """A custom digest.txt.j2 gets no text skeleton; its `wrap` is the plain filter."""
    (tmp_path / "digest.txt.j2").write_text(
        "{{ (recipient ~ ' ' ~ topics | join(' ')) | wrap(width=10, indent=2) }}\n"
        "{{ intro | upper }}\n"
    )
    custom = Renderer(tmp_path)
    assert custom._text_pages is None and custom._pages is not None
    sub = make_subscriber(topics=(Topic("Bb", "x"), Topic("Aa", "y")))
    _, message = render_digest_bytes(custom, subscriber=sub, slot=SLOT, mail=MAIL, now=NOW,
                                     matches=[])  # fmt: skip
    assert b"  ada@example.org\r\n  Bb Aa\r\nWEDNESDAY, 1 OCTOBER 2025\r\n" in message


def test_overridden_page_template_renders_plainly(tmp_path: Path) -> None:
    """A custom digest.html.j2 may use the context any way: no page skeleton for it."""
    (tmp_path / "digest.html.j2").write_text(
        "<p>{{ intro | length }} {{ topics | sort | join('/') }} {{ recipient | upper }}</p>\n"
    )
    custom = Renderer(tmp_path)
    assert custom._pages is None
    sub = make_subscriber(topics=(Topic("B", "x"), Topic("A", "y")))
    _, message = render_digest_bytes(custom, subscriber=sub, slot=SLOT, mail=MAIL, now=NOW,
                                     matches=[])  # fmt: skip
    assert b"A/B ADA@EXAMPLE.ORG" in message
