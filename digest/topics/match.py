"""Batch matching: match each subscriber against one indexed batch of papers.

Owns: `compile_topics`, `match_subscriber` (evaluate, rank, cut, explain),
`count_matches`, `match_and_count` (both, the queries run once) and `ranked_topics`
(the same ranking with topic names instead of explanations: `digest match`). Does not own:
the index (`index.py`, re-exported here with `iter_bits`), the query language
(`query.py`), which papers are candidates or already delivered (the store and the
daemon pass them in), nor rendering. Pure: no I/O, no clock.

The papers a subscriber already has are one bitset, masked out before counting and
ranking (`PaperIndex.id_bits`).

Cost: a subscriber costs a few bitset operations per query node (the index memoises
every leaf), then a little work per paper kept: its explanation (which of the query's leaves match
it: a bit test per leaf) and a `Match` holding the index's shared `TopicHit`s.

Ranking (DESIGN.md): topics matched desc, then upvotes desc, then newest listing
desc, then id asc. Papers get their bit positions in the last three keys' order
when the index is built, so ranking a subscriber's matches needs no sort: walk the
"matched k topics" bitsets from the largest k down, lowest bit first.
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from digest.config import Topic
from digest.records import Match
from digest.topics.index import PaperIndex, iter_bits
from digest.topics.query import CompiledQuery, compile_text


@dataclass(frozen=True, slots=True)
class CompiledTopic:
    """A subscriber's topic, parsed and compiled for one planning run."""

    name: str
    query: CompiledQuery


def compile_topics(topics: Sequence[Topic]) -> list[CompiledTopic]:
    """Parse and compile each topic's query; raises QuerySyntaxError on a bad one."""
    return [CompiledTopic(t.name, compile_text(t.query)) for t in topics]


def match_subscriber(
    index: PaperIndex,
    topics: Sequence[CompiledTopic],
    *,
    min_upvotes: int,
    max_papers: int,
    exclude: AbstractSet[str] = frozenset(),
) -> list[Match]:
    """The best `max_papers` papers of the batch for one subscriber, ranked, explained.

    `exclude` holds the ids already delivered to this subscriber.
    """
    return match_and_count(
        index, topics, min_upvotes=min_upvotes, max_papers=max_papers, exclude=exclude
    )[0]


def match_and_count(
    index: PaperIndex,
    topics: Sequence[CompiledTopic],
    *,
    min_upvotes: int,
    max_papers: int,
    exclude: AbstractSet[str] = frozenset(),
) -> tuple[list[Match], int]:
    """`match_subscriber`'s matches and `count_matches`' count, the queries run once."""
    results, ranked, several, total = _ranked(
        index, topics, min_upvotes, max_papers, index.id_bits(exclude) if exclude else 0
    )
    if not ranked:
        return [], total
    papers, query_leaves, topic_hit = index.papers, index.query_leaves, index.topic_hit
    named = [
        (t.name, t.query, t.query.fixed_leaves, bits)
        for t, bits in zip(topics, results, strict=True)
        if bits
    ]
    matches: list[Match] = []
    for pos in ranked:
        if (several >> pos) & 1:  # a few papers: several topics matched them
            hits = tuple(
                topic_hit(name, query_leaves(query, pos) if fixed is None else fixed)
                for name, query, fixed, bits in named
                if (bits >> pos) & 1
            )
            matches.append(Match(papers[pos], hits))
            continue
        for name, query, fixed, bits in named:  # most papers: the one topic that matched
            if (bits >> pos) & 1:
                leaves = query_leaves(query, pos) if fixed is None else fixed
                matches.append(Match(papers[pos], (topic_hit(name, leaves),)))
                break
    return matches, total


def ranked_topics(
    index: PaperIndex,
    names: Sequence[str],
    found: Sequence[int],
    *,
    min_upvotes: int,
    max_papers: int,
    excluded: int = 0,
) -> tuple[list[tuple[int, tuple[str, ...]]], int]:
    """`match_and_count` without the explanations, from what each topic's query matched
    (`found`, in the order of the topics' `names`: `evaluate_texts` of their queries,
    a batch of subscribers to a call, nothing compiled built or kept): each chosen
    paper's position in the index with the names of the topics that matched it (in the
    subscriber's order), and the count. What `digest match` lists; `excluded` is a
    bitset (`PaperIndex.id_bits`)."""
    if not found:
        return [], 0
    mask = index.upvotes_at_least(min_upvotes) if min_upvotes > 0 else index.all_bits
    if excluded:
        mask &= ~excluded
    results = [bits & mask for bits in found]
    union, several = _union_and_overlap(results)
    total = union.bit_count()
    if max_papers <= 0 or not union:
        return [], total
    if not several and total <= max_papers:  # common: each paper one topic's, all kept
        kept: list[tuple[int, tuple[str, ...]]] = []
        for name, bits in zip(names, results, strict=True):
            one = (name,)
            while bits:
                low = bits & -bits
                bits ^= low
                kept.append((low.bit_length() - 1, one))
        kept.sort()  # by position alone: no two are equal
        return kept, total
    ranked = _rank(results, union, several, max_papers)
    named = [(name, bits) for name, bits in zip(names, results, strict=True) if bits]
    if len(named) == 1:  # every paper matched the one topic
        only = (named[0][0],)
        return [(pos, only) for pos in ranked], total
    chosen: list[tuple[int, tuple[str, ...]]] = []
    for pos in ranked:
        if (several >> pos) & 1:
            chosen.append((pos, tuple([name for name, bits in named if (bits >> pos) & 1])))
            continue
        for name, bits in named:
            if (bits >> pos) & 1:
                chosen.append((pos, (name,)))
                break
    return chosen, total


def _ranked(
    index: PaperIndex,
    topics: Sequence[CompiledTopic],
    min_upvotes: int,
    max_papers: int,
    excluded: int,
) -> tuple[list[int], list[int], int, int]:
    """Each topic's matches (the `excluded` bitset left out), the best `max_papers`
    positions, the papers several topics matched, and how many matched in all."""
    if not topics:
        return [], [], 0, 0
    results = _evaluate(index, topics, min_upvotes, excluded)
    union, several = _union_and_overlap(results)
    total = union.bit_count()
    if max_papers <= 0 or not union:
        return results, [], several, total
    return results, _rank(results, union, several, max_papers), several, total


def count_matches(
    index: PaperIndex,
    topics: Sequence[CompiledTopic],
    *,
    min_upvotes: int,
    exclude: AbstractSet[str] = frozenset(),
) -> int:
    """How many papers `match_subscriber` would return with no `max_papers` cut (cheap)."""
    union = 0
    for bits in _evaluate(index, topics, min_upvotes, index.id_bits(exclude) if exclude else 0):
        union |= bits
    return union.bit_count()


def _evaluate(
    index: PaperIndex, topics: Sequence[CompiledTopic], min_upvotes: int, excluded: int
) -> list[int]:
    """Each topic's matches as a bitset, papers under `min_upvotes` and the `excluded`
    ones removed (an excluded paper is then neither counted nor ranked)."""
    memo, everything = index.leaf_bits, index.all_bits
    mask = index.upvotes_at_least(min_upvotes) if min_upvotes > 0 else everything
    if excluded:
        mask &= ~excluded
    return [t.query.function(memo, t.query.keys, everything) & mask for t in topics]


def _union_and_overlap(results: list[int]) -> tuple[int, int]:
    """The papers any topic matched, and those that several topics matched."""
    seen = overlap = 0
    for bits in results:
        overlap |= seen & bits
        seen |= bits
    return seen, overlap


def _rank(results: list[int], union: int, overlap: int, limit: int) -> list[int]:
    """The best `limit` positions: most topics first, then lowest position.

    `overlap`: the papers several topics matched. Positions are already in
    (upvotes, newest, id) order, so among papers that matched as many topics the
    lowest bit is the best paper.
    """
    chosen: list[int] = []
    if not overlap and union.bit_count() <= limit:  # common: keep them all
        while union:
            low = union & -union
            union ^= low
            chosen.append(low.bit_length() - 1)
        return chosen
    levels = [union]
    if overlap:  # some paper matched several topics: rank by how many
        # at_least[k]: the papers matched by more than k topics (a bitwise counter).
        at_least = [0] * (len(results) + 1)
        for bits in results:
            for k in range(len(results) - 1, 0, -1):
                at_least[k] |= at_least[k - 1] & bits
            at_least[0] |= bits
        levels = [at_least[k] & ~at_least[k + 1] for k in range(len(results) - 1, -1, -1)]
    for level in levels:
        while level:
            low = level & -level
            level ^= low
            chosen.append(low.bit_length() - 1)
            if len(chosen) == limit:
                return chosen
    return chosen


__all__ = [
    "CompiledTopic",
    "PaperIndex",
    "compile_topics",
    "count_matches",
    "iter_bits",
    "match_and_count",
    "match_subscriber",
    "ranked_topics",
]
