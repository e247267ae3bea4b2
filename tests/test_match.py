"""Batch matching: fields, phrases, highlights, ranking and cuts, and a property test
that the indexed matcher agrees with a plain recursive evaluator on 380 real papers."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from functools import cache

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from digest.config import Topic
from digest.errors import QuerySyntaxError
from digest.records import Paper
from digest.topics.match import (
    PaperIndex,
    compile_topics,
    count_matches,
    iter_bits,
    match_and_count,
    match_subscriber,
)
from digest.topics.query import Leaf, compile_query, parse_query, tokenize
from tests.testdata import SEED_PAPERS

DAY = dt.date(2025, 10, 1)



def paper(pid: str, title: str, abstract: str = "", **kw: object) -> Paper:
    kw.setdefault("listed_on", DAY)
    return Paper(id=pid, title=title, abstract=abstract, **kw)  # type: ignore[arg-type]  # test kwargs


PAPERS = [
    paper(
        "2501.00001",
        "Consistency Models for Text-to-Image Diffusion",
        "We distill a diffusion model into a consistency model. No survey here.",
        authors=("Ada Lovelace", "Nathan Lambert"),
        organization="ByteDance-Seed",
        organization_fullname="ByteDance Seed",
        ai_keywords=("consistency models", "knowledge distillation"),
        upvotes=10,
    ),
    paper(
        "2501.00002",
        "A Survey of Reward Models",
        "Reward models for RLHF, surveyed. GPT-4o is discussed.",
        authors=("Lambert Nathan", "Grace Hopper"),
        organization="nvidia",
        organization_fullname="NVIDIA",
        ai_keywords=("reward model", "RLHF"),
        upvotes=30,
    ),
    paper(
        "2502.00003",
        "Distillation of Reward Signals",
        "Consistency is all you need. Model merging.",
        authors=("Alan Turing",),
        upvotes=5,
    ),
    paper("2502.00004", "μLO: Compute-Efficient Meta-Learned Optimizers", "", upvotes=1),
]


@cache
def small_index() -> PaperIndex:
    return PaperIndex.build(PAPERS)


def ids_matching(query: str, index: PaperIndex | None = None) -> set[str]:
    index = index or small_index()
    bits = compile_query(parse_query(query)).evaluate(index)
    return {index.papers[pos].id for pos in iter_bits(bits)}


P1, P2, P3, P4 = (p.id for p in PAPERS)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("diffusion", {P1}),
        ("DIFFUSION", {P1}),
        ("reward", {P2, P3}),
        ("reward models", {P2}),  # AND: both words
        ("reward AND signals", {P3}),
        ("reward OR diffusion", {P1, P2, P3}),
        ("reward -survey", {P3}),
        ("reward NOT survey", {P3}),
        ("NOT survey reward", {P3}),
        ("reward -(survey OR signals)", set()),
        ("distill*", {P1, P3}),  # distill, distillation
        ("distill", {P1}),  # whole words only
        ('"consistency model"', {P1}),
        ('"consistency model*"', {P1}),
        ('"model merging"', {P3}),
        ('"diffusion we"', set()),  # a phrase does not run from the title into the abstract
        ("text-to-image", {P1}),
        ("title:text-to-image", {P1}),
        ('"text to image"', {P1}),
        ("GPT-4o", {P2}),
        ("gpt", {P2}),
        ("μLO", {P4}),
        ("µlo", {P4}),  # micro sign
        ("title:consistency", {P1}),
        ("abstract:consistency", {P1, P3}),
        ("title:survey", {P2}),
        ("abstract:survey", {P1}),
        ("survey*", {P1, P2}),
        ('author:"Nathan Lambert"', {P1}),
        ('author:"Lambert Nathan"', {P2}),
        ('author:"lovelace nathan"', set()),  # never across two authors
        ('author:"Ada Lovelace"', {P1}),
        ("author:lambert", {P1, P2}),
        ("author:turing", {P3}),
        ('author:"grace hop*"', {P2}),
        ("org:bytedance", {P1}),
        ("org:ByteDance-Seed", {P1}),  # the name
        ('org:"ByteDance Seed"', {P1}),  # the full name
        ("org:nvidia", {P2}),
        ("org:seed", {P1}),
        ('org:"seed bytedance"', set()),  # not from the end of the name into the full name
        ("keyword:rlhf", {P2}),
        ('keyword:"knowledge distillation"', {P1}),
        ('keyword:"models knowledge"', set()),  # not across two keywords
        ("keyword:distill*", {P1}),
        ("id:2501.00002", {P2}),
        ("id:2501.0000", set()),  # exact unless '*'
        ("id:2501.*", {P1, P2}),
        ("id:2502*", {P3, P4}),
        ("id:2501.00002 OR author:turing", {P2, P3}),
        ("(reward OR consistency) title:distillation", {P3}),
        ("reward models OR diffusion", {P1, P2}),
        ("nothingmatchesthis", set()),
        ("nothing*", set()),
    ],
)
def test_fields_and_operators(query: str, expected: set[str]) -> None:
    assert ids_matching(query) == expected


def topics(*queries: str) -> list[Topic]:
    return [Topic(f"T{i}", q) for i, q in enumerate(queries)]


def run(
    papers: Sequence[Paper],
    queries: Sequence[str],
    *,
    min_upvotes: int = 0,
    max_papers: int = 25,
    exclude: frozenset[str] = frozenset(),
) -> list[tuple[str, tuple[str, ...]]]:
    matches = match_subscriber(
        PaperIndex.build(papers),
        compile_topics(topics(*queries)),
        min_upvotes=min_upvotes,
        max_papers=max_papers,
        exclude=exclude,
    )
    return [(m.paper.id, m.topics) for m in matches]


def keys(leaves: frozenset[Leaf]) -> set[str]:
    return {leaf.key for leaf in leaves}


def test_a_match_is_explained_by_the_positive_leaves_that_match_the_paper() -> None:
    m1, m4 = match_subscriber(
        small_index(),
        compile_topics(topics('distill* "consistency model*" -rlhf OR id:2502.00004')),
        min_upvotes=0,
        max_papers=5,
    )
    assert (m1.paper.id, m4.paper.id) == (P1, P4)
    assert m1.hits[0].topic == "T0"
    # the prefix and the phrase that matched, never the NOT, nor the id that did not
    assert keys(m1.leaves) == {"*|p|distill", "*|p|consistency model"}
    assert keys(m4.leaves) == {"id|x|2502.00004"}  # matched by id only


def test_explaining_leaves_per_field_and_topic() -> None:
    matches = match_subscriber(
        small_index(),
        compile_topics(topics('author:"nathan lam*"', "keyword:rlhf OR title:reward", "id:2501.*")),
        min_upvotes=0,
        max_papers=5,
    )
    by_id = {m.paper.id: m for m in matches}
    assert [h.topic for h in by_id[P1].hits] == ["T0", "T2"]
    assert keys(by_id[P1].hits[0].leaves) == {"author|p|nathan lam"}
    assert keys(by_id[P1].hits[1].leaves) == {"id|p|2501."}
    assert keys(by_id[P2].hits[0].leaves) == {"keyword|x|rlhf", "title|x|reward"}
    assert set(by_id) == {P1, P2, P3}


@pytest.mark.parametrize(
    "query",
    [
        '"reward signals" distillation -survey',  # known when compiled: a conjunction
        '"reward signals" distillation -survey -(rlhf -x)',  # x is positive: tested per paper
    ],
)
def test_explaining_leaves_of_a_conjunction(query: str) -> None:
    [m] = match_subscriber(
        small_index(), compile_topics(topics(query)), min_upvotes=0, max_papers=5
    )
    assert m.paper.id == P3
    assert keys(m.leaves) == {"*|x|reward signals", "*|x|distillation"}


def test_hits_are_shared_by_subscribers_with_the_same_explanation() -> None:
    index = small_index()
    compiled = [compile_topics(topics("diffusion OR survey")) for _ in range(2)]
    a, b = (match_subscriber(index, c, min_upvotes=0, max_papers=5) for c in compiled)
    assert [m.hits[0] for m in a] == [m.hits[0] for m in b]
    assert all(x.hits[0] is y.hits[0] for x, y in zip(a, b, strict=True))


def test_forgetting_the_explanations_changes_no_match() -> None:
    index = small_index()
    compiled = compile_topics(topics('"consistency model*" OR diffusion', "keyword:rlhf"))
    before = match_subscriber(index, compiled, min_upvotes=0, max_papers=5)
    index.forget_explanations()  # what planning does after each chunk of subscribers
    after = match_subscriber(index, compiled, min_upvotes=0, max_papers=5)
    assert before and after == before
    assert all(x.hits[0] is not y.hits[0] for x, y in zip(before, after, strict=True))


def test_a_phrase_after_an_earlier_use_of_its_first_word() -> None:
    papers = [
        paper("2601.00001", "Reward hacking and reward signals in RLHF"),
        paper("2601.00002", "Signals of reward", "signals of reward"),  # never across the two
    ]
    assert run(papers, ['"reward signals"']) == [("2601.00001", ("T0",))]
    assert run(papers, ['"reward sig*"']) == [("2601.00001", ("T0",))]
    assert run(papers, ['title:"reward hacking"']) == [("2601.00001", ("T0",))]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ('"reward models"', {"2602.00001"}),
        ('"reward model"', set()),
        ('"ward model"', set()),  # the needle's first word is whole: not the end of reward
        ('"eward mod*"', set()),
        ('"reward mod"', set()),  # nor its last: mod is not models
        ('"reward mod*"', {"2602.00001"}),
        ('"models hacking"', set()),  # the title's last word, the abstract's first
        ('"models hack*"', set()),
        ('title:"models hack*"', set()),
        ('"hacking is"', {"2602.00001"}),
        ('author:"lovelace nathan"', set()),  # one author's last name, the next's first
        ('author:"lovelace nat*"', set()),
        ('author:"nathan lam*"', {"2602.00001"}),
        ('keyword:"rlhf reward"', set()),  # not across two keywords
        ('keyword:"reward hack*"', {"2602.00001"}),
    ],
)
def test_a_phrase_is_whole_words_within_one_value(query: str, expected: set[str]) -> None:
    papers = [
        paper(
            "2602.00001",
            "Rewarding Reward Models",
            "Hacking is rare",
            authors=("Ada Lovelace", "Nathan Lambert"),
            ai_keywords=("RLHF", "reward hacking"),
        ),
        paper("2602.00002", "Towards a forward model", "models"),
    ]
    assert {pid for pid, _ in run(papers, [query])} == expected


def test_ranking_by_topics_then_upvotes_then_newest_then_id() -> None:
    d = dt.date(2025, 10, 1)
    papers = [
        paper("a", "alpha", upvotes=50, listed_on=d),
        paper("b", "alpha beta", upvotes=1, listed_on=d),
        paper("c", "beta", upvotes=50, listed_on=d + dt.timedelta(days=1)),
        paper("d", "beta", upvotes=50, listed_on=d),
        paper("e", "beta", upvotes=50, listed_on=d),
        paper("f", "gamma", upvotes=99, listed_on=d),
    ]
    got = run(papers, ["alpha", "beta"])
    assert got == [
        ("b", ("T0", "T1")),  # two topics beat any number of upvotes
        ("c", ("T1",)),  # 50 upvotes, newest listing
        ("a", ("T0",)),  # 50 upvotes, older: then by id
        ("d", ("T1",)),
        ("e", ("T1",)),
    ]


def test_min_upvotes_max_papers_and_exclude() -> None:
    papers = [paper(f"p{i}", "graph", upvotes=i) for i in range(10)]
    assert [pid for pid, _ in run(papers, ["graph"], max_papers=3)] == ["p9", "p8", "p7"]
    assert [pid for pid, _ in run(papers, ["graph"], min_upvotes=8)] == ["p9", "p8"]
    assert [pid for pid, _ in run(papers, ["graph"], max_papers=3, exclude=frozenset({"p9"}))] == [
        "p8",
        "p7",
        "p6",
    ]
    assert run(papers, ["graph"], max_papers=0) == []
    assert run(papers, []) == []
    assert run(papers, ["nomatch"]) == []


def test_count_matches_agrees_with_an_uncut_match() -> None:
    papers = [paper(f"p{i}", "graph" if i % 2 else "tree", upvotes=i) for i in range(12)]
    index = PaperIndex.build(papers)
    compiled = compile_topics(topics("graph", "tree p*"))
    for min_upvotes, exclude in [(0, frozenset()), (5, frozenset({"p7", "p8", "zz"}))]:
        full = match_subscriber(
            index, compiled, min_upvotes=min_upvotes, max_papers=100, exclude=exclude
        )
        counted = count_matches(index, compiled, min_upvotes=min_upvotes, exclude=exclude)
        assert counted == len(full) == len({m.paper.id for m in full})
        for cut in (0, 3, 100):  # both at once, as the planner asks: the same answers
            assert match_and_count(
                index, compiled, min_upvotes=min_upvotes, max_papers=cut, exclude=exclude
            ) == (full[:cut], counted)
    assert count_matches(index, compiled, min_upvotes=0) == 6


def test_exclude_does_not_use_up_the_cut() -> None:
    papers = [paper(f"p{i}", "graph", upvotes=i) for i in range(5)]
    got = run(papers, ["graph"], max_papers=2, exclude=frozenset({"p4", "p3", "p2"}))
    assert [pid for pid, _ in got] == ["p1", "p0"]


def test_a_paper_listed_twice_in_a_batch_counts_once() -> None:
    old = paper("x", "graph", upvotes=3, listed_on=DAY)
    new = paper("x", "graph", upvotes=7, listed_on=DAY + dt.timedelta(days=1))
    matches = match_subscriber(
        PaperIndex.build([old, new]), compile_topics(topics("graph")), min_upvotes=0, max_papers=5
    )
    assert [m.paper for m in matches] == [new]


def test_empty_batch_and_empty_fields() -> None:
    assert run([], ["graph"]) == []
    blank = paper("z", "", "")
    assert run([blank], ["graph", "author:x", "org:y", "keyword:z", "id:z*"]) == [("z", ("T4",))]


def test_compile_topics_reports_the_bad_query() -> None:
    with pytest.raises(QuerySyntaxError) as info:
        compile_topics([Topic("ok", "a"), Topic("bad", "a AND")])
    assert info.value.column == 3


# ---------------------------------------------------------------------------
# Property: the index agrees with a plain evaluator over tokenized text.

AUTHOR_POOL = ["Ada Lovelace", "Alan Turing", "Grace Hopper", "Turing Alan", "Ada Hopper"]


@cache
def seed_papers() -> tuple[Paper, ...]:
    out = []
    for i, line in enumerate(SEED_PAPERS.read_text(encoding="utf-8").splitlines()):
        row = json.loads(line)
        authors = tuple(AUTHOR_POOL[(i + k) % len(AUTHOR_POOL)] for k in range(i % 3 + 1))
        out.append(
            paper(f"2501.{i:05d}", row["title"], row["abstract"], authors=authors, upvotes=i % 7)
        )
    return tuple(out)


@cache
def seed_index() -> PaperIndex:
    return PaperIndex.build(seed_papers())


@cache
def seed_vocabulary() -> tuple[list[str], list[tuple[str, ...]]]:
    """Words (frequent and rare) and real 2-3 word runs from the seed papers."""
    words: dict[str, int] = {}
    runs: list[tuple[str, ...]] = []
    for i, p in enumerate(seed_papers()):
        for text in (p.title, p.abstract):
            toks = tokenize(text)
            for w in toks:
                words[w] = words.get(w, 0) + 1
            if len(toks) > 3:
                k = (i * 7) % (len(toks) - 3)
                runs.append(tuple(toks[k : k + 2 + i % 2]))
    ranked = sorted(words, key=lambda w: (-words[w], w))
    return ranked[:400] + ranked[-200:], runs


Node = tuple  # ("word"|"prefix", field, w) | ("phrase", field, words, prefix) | ops


def leaves() -> st.SearchStrategy[tuple[str, Node]]:
    words, runs = seed_vocabulary()
    field = st.sampled_from([None, None, "title", "abstract"])
    word = st.tuples(st.just("word"), field, st.sampled_from(words))
    prefix = st.tuples(
        st.just("prefix"), field, st.sampled_from(words).map(lambda w: w[: max(1, len(w) // 2)])
    )
    phrase = st.tuples(st.just("phrase"), field, st.sampled_from(runs), st.booleans())
    author = st.tuples(
        st.just("phrase"),
        st.just("author"),
        st.sampled_from(
            [tuple(tokenize(a)) for a in AUTHOR_POOL] + [("lovelace", "alan"), ("turing", "ada")]
        ),
        st.booleans(),
    )
    return st.one_of(word, prefix, phrase, author).map(lambda n: (render_leaf(n), n))


def render_leaf(node: Node) -> str:
    kind, field = node[0], node[1]
    head = f"{field}:" if field else ""
    if kind == "word":
        return head + node[2]
    if kind == "prefix":
        return head + node[2] + "*"
    text = " ".join(node[2]) + ("*" if node[3] else "")
    return f'{head}"{text}"'


def combine(children: st.SearchStrategy[tuple[str, Node]]) -> st.SearchStrategy[tuple[str, Node]]:
    pair = st.tuples(children, children)
    return st.one_of(
        pair.map(lambda ab: (f"({ab[0][0]} {ab[1][0]})", ("and", ab[0][1], ab[1][1]))),
        pair.map(lambda ab: (f"({ab[0][0]} AND {ab[1][0]})", ("and", ab[0][1], ab[1][1]))),
        pair.map(lambda ab: (f"({ab[0][0]} OR {ab[1][0]})", ("or", ab[0][1], ab[1][1]))),
        children.map(lambda a: (f"NOT {a[0]}", ("not", a[1]))),
        children.map(lambda a: (f"-{a[0]}", ("not", a[1]))),
    )


@cache
def segments(p: Paper, field: str | None) -> list[list[str]]:
    """The paper's tokenized values for a field (memoised: the text never changes)."""
    if field is None:
        return [tokenize(p.title), tokenize(p.abstract)]
    if field == "author":
        return [tokenize(a) for a in p.authors]
    return [tokenize(p.title if field == "title" else p.abstract)]


def reference(node: Node, p: Paper) -> bool:
    """The plain evaluator: straight recursion over the paper's tokenized text."""
    kind = node[0]
    if kind == "and":
        return reference(node[1], p) and reference(node[2], p)
    if kind == "or":
        return reference(node[1], p) or reference(node[2], p)
    if kind == "not":
        return not reference(node[1], p)
    segs = segments(p, node[1])
    if kind == "word":
        return any(node[2] in seg for seg in segs)
    if kind == "prefix":
        return any(w.startswith(node[2]) for seg in segs for w in seg)
    words, prefix = node[2], node[3]
    n = len(words)
    for seg in segs:
        for i in range(len(seg) - n + 1):
            window = seg[i : i + n]
            if window[:-1] == list(words[:-1]) and (
                window[-1] == words[-1] or (prefix and window[-1].startswith(words[-1]))
            ):
                return True
    return False


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(st.recursive(leaves(), combine, max_leaves=6))
def test_index_agrees_with_reference_evaluator(generated: tuple[str, Node]) -> None:
    text, node = generated
    try:
        query = compile_query(parse_query(text))
    except QuerySyntaxError as e:
        assume("something positive" not in str(e))  # NOT-only queries are rejected by design
        raise
    index = seed_index()
    got = {index.papers[pos].id for pos in iter_bits(query.evaluate(index))}
    expected = {p.id for p in seed_papers() if reference(node, p)}
    assert got == expected, text
    for pos in iter_bits(query.evaluate(index)):
        p = index.papers[pos]
        for leaf in index.query_leaves(query, pos):  # each explaining leaf matches the paper
            assert leaf.key in query.positive and (index.leaf_bits[leaf.key] >> pos) & 1
            kind = "prefix" if leaf.prefix and len(leaf.words) == 1 else "word"
            alone: Node = (kind, leaf.field, leaf.words[0]) if len(leaf.words) == 1 else (
                "phrase", leaf.field, leaf.words, leaf.prefix)  # fmt: skip
            assert reference(alone, p), (text, leaf)
