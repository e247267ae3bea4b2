"""Highlighting exactly what matched: phrases, prefixes, fields, overlaps, hyphenated
text. Each case runs the real matcher on a one-paper batch, then the real renderer's
highlighter on the title and summary it shows, and lists the marked strings."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from digest.config import Topic
from digest.records import Match, Paper
from digest.render import Renderer
from digest.render.text import highlight
from digest.topics.match import PaperIndex, compile_topics, match_subscriber
from digest.topics.query import Leaf
from digest.topics.spans import leaf_spans, merged_spans
from digest.topics.words import word_spans
from tests.render_helpers import Html, parts, render

DAY = dt.date(2025, 10, 1)
TITLE = "Reinforcement Learning for Text-to-Image Diffusion Models"
SUMMARY = (
    "We apply reinforcement learning from human feedback to diffusion models; "
    "learning rates and distilled diffusion-based models are studied."
)
PAPER = Paper(
    id="2510.00001",
    title=TITLE,
    abstract=SUMMARY,
    ai_summary=SUMMARY,
    listed_on=DAY,
    authors=("Ada Lovelace", "Nathan Lambert", "Grace Hopper"),
    author_count=3,
    organization="ByteDance-Seed",
    organization_fullname="ByteDance Seed",
)


def marks(query: str, paper: Paper = PAPER) -> dict[str, list[str]]:
    """The marked strings of the title, summary, authors and org for `query`."""
    [match] = match_subscriber(
        PaperIndex.build([paper]), compile_topics([Topic("T", query)]), min_upvotes=0,
        max_papers=1,
    )  # fmt: skip
    shown = {
        "title": paper.title,
        "summary": paper.ai_summary or "",
        "author": ", ".join(paper.authors),
        "org": paper.organization_fullname or "",
    }
    return {
        where: Html(str(highlight(text, match.leaves, where, "<mark>"))).marked
        for where, text in shown.items()
    }


@pytest.mark.parametrize(
    ("query", "title", "summary"),
    [
        # a phrase: one mark per occurrence, never its words elsewhere ("learning rates")
        ('"reinforcement learning"', ["Reinforcement Learning"], ["reinforcement learning"]),
        # the same words as two terms: each occurrence of each word, on its own
        ("reinforcement AND learning", ["Reinforcement", "Learning"],
         ["reinforcement", "learning", "learning"]),
        # a prefix: only the words it matched
        ("distill*", [], ["distilled"]),
        ("diffusion*", ["Diffusion"], ["diffusion", "diffusion"]),
        # a phrase ending in a prefix
        ('"diffusion model*"', ["Diffusion Models"], ["diffusion models"]),
        # hyphenated text is one phrase occurrence, hyphens and all
        ('"text to image"', ["Text-to-Image"], []),
        ("text-to-image", ["Text-to-Image"], []),
        ('"diffusion based models"', [], ["diffusion-based models"]),
        ("image", ["Image"], []),
        # overlapping occurrences of two leaves: one mark over both
        ('"reinforcement learning" OR "learning from human"', ["Reinforcement Learning"],
         ["reinforcement learning from human"]),
        ('"learning for text" OR "text to image diffusion"',
         ["Learning for Text-to-Image Diffusion"], []),
        # a NOT marks nothing; the positive part still does
        ("diffusion -survey", ["Diffusion"], ["diffusion", "diffusion"]),
        # an OR marks only the branches that matched this paper
        ("diffusion OR gan", ["Diffusion"], ["diffusion", "diffusion"]),
    ],
)
def test_bare_terms_mark_title_and_summary_exactly(
    query: str, title: list[str], summary: list[str]
) -> None:
    got = marks(query)
    assert (got["title"], got["summary"]) == (title, summary)
    assert got["author"] == got["org"] == []


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # a field's terms mark only in that field
        ("title:diffusion", {"title": ["Diffusion"]}),
        ("abstract:diffusion", {"summary": ["diffusion", "diffusion"]}),
        ('title:"reinforcement learning"', {"title": ["Reinforcement Learning"]}),
        ('author:"Nathan Lambert"', {"author": ["Nathan Lambert"]}),
        ("author:lambert", {"author": ["Lambert"]}),
        ('org:"bytedance seed"', {"org": ["ByteDance Seed"]}),
        # keywords and ids are not shown: the match is real, nothing is marked
        ("id:2510.00001", {}),
        ("id:2510.*", {}),
        # a field term next to a bare one: each where it belongs
        ("title:models learning", {"title": ["Learning", "Models"],
                                   "summary": ["learning", "learning"]}),
    ],
)
def test_field_terms_mark_only_their_field(query: str, expected: dict[str, list[str]]) -> None:
    got = marks(query)
    assert {k: v for k, v in got.items() if v} == expected


def test_case_and_unicode_follow_the_tokenizer() -> None:
    wide_fine = "\uff26\uff49\uff4e\uff45"  # FINE in full-width letters: NFKC makes it "fine"
    paper = Paper(id="2510.00002", title=f"Straße über {wide_fine}-Tuning", listed_on=DAY,
                  abstract="fine tuning", ai_summary="FINE TUNING at scale")  # fmt: skip
    got = marks('"fine tuning" OR strasse', paper)
    assert got["title"] == ["Straße", f"{wide_fine}-Tuning"]  # NFKC + case folding, as matched
    assert got["summary"] == ["FINE TUNING"]


def test_spans_and_merging_directly() -> None:
    text = "a-b a b"
    assert leaf_spans(text, Leaf(None, ("a", "b"), False)) == ((0, 3), (4, 7))
    assert leaf_spans(text, Leaf(None, ("a",), True)) == ((0, 1), (4, 5))
    assert leaf_spans(text, Leaf("id", ("a",), False)) == ()
    assert merged_spans("x y z", [Leaf(None, ("x", "y"), False), Leaf(None, ("y", "z"), False)]) \
        == [(0, 5)]  # fmt: skip
    assert merged_spans("x y", [Leaf(None, ("x",), False), Leaf(None, ("y",), False)]) == [
        (0, 1),
        (2, 3),
    ]


def walked_spans(text: str, leaf: Leaf) -> tuple[tuple[int, int], ...]:
    """`leaf_spans` the slow way: the leaf tried at every word of the text."""
    if leaf.field == "id":
        return ()
    spans, n, found = word_spans(text), len(leaf.words), []
    for i in range(len(spans) - n + 1):
        words = [spans[i + k][2] for k in range(n)]
        last = words[-1] == leaf.words[-1] or (leaf.prefix and words[-1].startswith(leaf.words[-1]))
        if tuple(words[:-1]) == leaf.words[:-1] and last:
            found.append((spans[i][0], spans[i + n - 1][1]))
    return tuple(found)


@given(
    text=st.lists(st.sampled_from(["a", "ab", "abc", "abd", "b", "ba", "a-b", "½", "x"]),
                  max_size=14).map(" ".join),
    words=st.lists(st.sampled_from(["a", "ab", "abc", "b", "x", "1", "2", "zz"]),
                   min_size=1, max_size=3),
    prefix=st.booleans(),
    field=st.sampled_from([None, "title", "id"]),
)  # fmt: skip
def test_leaf_spans_equal_a_walk_over_every_word(
    text: str, words: list[str], prefix: bool, field: str | None
) -> None:
    leaf = Leaf(field, tuple(words), prefix)  # type: ignore[arg-type]
    assert leaf_spans(text, leaf) == walked_spans(text, leaf)


def test_the_digest_marks_what_the_matcher_explained() -> None:
    """End to end through the renderer: the stray "learning" of a phrase query is gone,
    and an author query marks the author, not the words of the name elsewhere."""
    paper = Paper(  # a title that repeats a word of the author's name
        id="2510.00003", title="Lambert's Reinforcement Learning", listed_on=DAY,
        abstract=SUMMARY, ai_summary=SUMMARY, authors=("Nathan Lambert",), author_count=1,
    )  # fmt: skip
    [match] = match_subscriber(
        PaperIndex.build([paper]),
        compile_topics([Topic("RL", '"reinforcement learning"'),
                        Topic("NL", 'author:"nathan lambert"')]),
        min_upvotes=0, max_papers=1,
    )  # fmt: skip
    _, html = parts(render(Renderer(), [Match(paper, match.hits)]))
    assert Html(html).marked == [
        "Reinforcement Learning",  # the title: the phrase, not "Lambert"
        "Nathan Lambert",  # the authors line
        "reinforcement learning",  # the summary
    ]
