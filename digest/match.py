"""Batch matching: index a batch of papers once, then match each subscriber against it.

Owns: `PaperIndex` (an inverted index over one batch of candidate papers, per
field, with bitsets as Python ints over paper positions), `compile_topics`,
`match_subscriber` (evaluate, rank, cut, explain). Does not own: the query
language (`query.py`), which papers are candidates or already delivered (the
store and the daemon pass them in), nor rendering. Pure: no I/O, no clock.

Cost: building the index is linear in the batch's text. A query's leaves (a word,
a prefix, a phrase in a field) are resolved against the index once per batch and
memoised, so a subscriber costs a few bitset operations per query node. Words for
highlighting are computed only for the papers that survive ranking.

Ranking (DESIGN.md): topics matched desc, then upvotes desc, then newest listing
desc, then id asc. Papers get their bit positions in the last three keys' order
when the index is built, so ranking a subscriber's matches needs no sort: walk the
"matched k topics" bitsets from the largest k down, lowest bit first.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from digest.config import Topic
from digest.models import Match, Paper, TopicHit
from digest.query import CompiledQuery, Leaf, compile_query, parse_query, tokenize

# The index's columns: the text fields of query.FIELDS, plus "text" (title, gap, abstract)
# for bare terms. Ids are indexed apart.
Column = str
_GAP = ""  # put between an author's (org name's, keyword's) words and the next: never a word


@dataclass(frozen=True, slots=True)
class CompiledTopic:
    """A subscriber's topic, parsed and compiled once (the daemon caches these)."""

    name: str
    query: CompiledQuery


def compile_topics(topics: Sequence[Topic]) -> list[CompiledTopic]:
    """Parse and compile each topic's query; raises QuerySyntaxError on a bad one."""
    return [CompiledTopic(t.name, compile_query(parse_query(t.query))) for t in topics]


def _segments_tokens(segments: Sequence[str]) -> list[str]:
    """The words of several values (authors, keywords) with a gap so no phrase spans two."""
    out: list[str] = []
    for seg in segments:
        words = tokenize(seg)
        if words:
            if out:
                out.append(_GAP)
            out.extend(words)
    return out


def _phrase_starts(
    tokens: Sequence[str], starts: Sequence[int], words: tuple[str, ...], prefix: bool
) -> list[int]:
    """Where the phrase occurs in `tokens`, given `starts`, the positions of words[0]."""
    head = list(words[:-1])
    last = words[-1]
    end_offset = len(words) - 1
    found = []
    for start in starts:
        end = start + end_offset
        if end < len(tokens) and tokens[start:end] == head:
            word = tokens[end]
            if word == last or (prefix and word.startswith(last)):
                found.append(start)
    return found


def _word_positions(tokens: list[str]) -> dict[str, list[int]]:
    """Word -> where it occurs in `tokens`."""
    where: dict[str, list[int]] = {}
    for k, word in enumerate(tokens):
        where.setdefault(word, []).append(k)
    return where


def _bitset(positions: list[int]) -> int:
    """The bitset with exactly these bits set (built as bytes: linear, not quadratic)."""
    raw = bytearray((positions[-1] >> 3) + 1)
    for pos in positions:
        raw[pos >> 3] |= 1 << (pos & 7)
    return int.from_bytes(raw, "little")


def iter_bits(bits: int) -> Iterator[int]:
    """The positions of the set bits of `bits`, lowest first."""
    while bits:
        low = bits & -bits
        yield low.bit_length() - 1
        bits ^= low


class _LeafBits(dict[str, int]):
    """Leaf key -> bitset, resolved against the index on first use, then remembered."""

    def __init__(self, index: PaperIndex) -> None:
        super().__init__()
        self._index = index

    def __missing__(self, key: str) -> int:
        bits = self[key] = self._index.resolve(key)
        return bits


_NO_WORDS: frozenset[str] = frozenset()


class PaperIndex:
    """An inverted index over one batch of papers; implements query.LeafResolver.

    Build it with `PaperIndex.build(papers)`. Duplicate ids keep their best-ranked
    listing. `papers[i]` is the paper at bit position i. Per column: postings
    (word -> bitset), a sorted vocabulary for prefixes, and each paper's words in
    order (for phrases) and as a set (for prefixes' highlight words).
    """

    def __init__(self, papers: tuple[Paper, ...], tokens: dict[Column, list[list[str]]]) -> None:
        self.papers = papers
        self.ids = tuple(p.id for p in papers)
        self.all_bits = (1 << len(papers)) - 1
        self._tokens = tokens
        self._word_sets: dict[Column, list[frozenset[str]]] = {}
        # word -> positions, per paper, built the first time a phrase needs that paper
        self._where: dict[Column, list[dict[str, list[int]] | None]] = {
            column: [None] * len(papers) for column in tokens
        }
        self._postings: dict[Column, dict[str, int]] = {}
        self._vocab: dict[Column, list[str]] = {}
        for column, per_paper in tokens.items():
            word_sets = [frozenset(toks) for toks in per_paper]
            positions: dict[str, list[int]] = {}
            for pos, words in enumerate(word_sets):
                for word in words:
                    positions.setdefault(word, []).append(pos)
            positions.pop(_GAP, None)
            self._postings[column] = {w: _bitset(ps) for w, ps in positions.items()}
            self._word_sets[column] = word_sets
            self._vocab[column] = sorted(positions)
        self._id_pos = {paper_id: i for i, paper_id in enumerate(self.ids)}
        self._sorted_ids = sorted(self._id_pos)
        self.leaf_bits: dict[str, int] = _LeafBits(self)
        self._leaves: dict[str, Leaf] = {}
        self._prefix_words: dict[tuple[Column, str], list[str]] = {}
        # leaf key -> its words for every paper it matches, or a list of them per paper
        self._words_memo: dict[str, frozenset[str] | list[frozenset[str] | None]] = {}
        self._upvote_masks: dict[int, int] = {}

    @classmethod
    def build(cls, papers: Sequence[Paper]) -> PaperIndex:
        """Index a batch: tokenize every field of every paper once."""
        ranked = sorted(papers, key=lambda p: (-p.upvotes, -p.listed_on.toordinal(), p.id))
        unique: dict[str, Paper] = {}
        for p in ranked:
            unique.setdefault(p.id, p)
        batch = tuple(unique.values())
        tokens: dict[Column, list[list[str]]] = {
            "title": [tokenize(p.title) for p in batch],
            "abstract": [tokenize(p.abstract) for p in batch],
            "author": [_segments_tokens(p.authors) for p in batch],
            "org": [
                _segments_tokens([s for s in (p.organization, p.organization_fullname) if s])
                for p in batch
            ],
            "keyword": [_segments_tokens(p.ai_keywords) for p in batch],
        }
        # A bare term searches title and abstract: one more field, never spanning the two.
        tokens["text"] = [
            [*t, _GAP, *a] for t, a in zip(tokens["title"], tokens["abstract"], strict=True)
        ]
        return cls(batch, tokens)

    def __len__(self) -> int:
        return len(self.papers)

    def _leaf(self, key: str) -> Leaf:
        leaf = self._leaves.get(key)
        if leaf is None:
            leaf = self._leaves[key] = Leaf.from_key(key)
        return leaf

    def resolve(self, key: str) -> int:
        """The papers the leaf `key` matches (callers go through the memo `leaf_bits`)."""
        leaf = self._leaf(key)
        field, words, prefix = leaf
        if field == "id":
            return self._id_bits(words[0], prefix)
        column = field or "text"
        postings = self._postings[column]
        if len(words) == 1:
            return self._prefix_bits(column, words[0]) if prefix else postings.get(words[0], 0)
        candidates = self.all_bits
        for w in words[:-1]:
            candidates &= postings.get(w, 0)
        last = words[-1]
        candidates &= self._prefix_bits(column, last) if prefix else postings.get(last, 0)
        result = 0
        for pos in iter_bits(candidates):
            if self._phrase_starts(column, pos, words, prefix):
                result |= 1 << pos
        return result

    def _phrase_starts(
        self, column: Column, pos: int, words: tuple[str, ...], prefix: bool
    ) -> list[int]:
        where = self._where[column][pos]
        if where is None:
            where = self._where[column][pos] = _word_positions(self._tokens[column][pos])
        starts = where.get(words[0], ())
        return _phrase_starts(self._tokens[column][pos], starts, words, prefix)

    def _words_with_prefix(self, column: Column, prefix: str) -> list[str]:
        """The vocabulary words of `column` that start with `prefix` (bisect, memoised)."""
        found = self._prefix_words.get((column, prefix))
        if found is None:
            vocab = self._vocab[column]
            i = end = bisect_left(vocab, prefix)
            while end < len(vocab) and vocab[end].startswith(prefix):
                end += 1
            found = self._prefix_words[(column, prefix)] = vocab[i:end]
        return found

    def _prefix_bits(self, column: Column, prefix: str) -> int:
        postings = self._postings[column]
        result = 0
        for word in self._words_with_prefix(column, prefix):
            result |= postings[word]
        return result

    def _id_bits(self, raw: str, prefix: bool) -> int:
        if not prefix:
            pos = self._id_pos.get(raw)
            return 0 if pos is None else 1 << pos
        result = 0
        ids = self._sorted_ids
        i = bisect_left(ids, raw)
        while i < len(ids) and ids[i].startswith(raw):
            result |= 1 << self._id_pos[ids[i]]
            i += 1
        return result

    def upvotes_at_least(self, minimum: int) -> int:
        """The papers with at least `minimum` upvotes, as a bitset (memoised)."""
        mask = self._upvote_masks.get(minimum)
        if mask is None:
            mask = 0
            for pos, p in enumerate(self.papers):
                if p.upvotes >= minimum:
                    mask |= 1 << pos
            self._upvote_masks[minimum] = mask
        return mask

    def leaf_words(self, key: str, pos: int) -> frozenset[str]:
        """The words of paper `pos` that the leaf `key` matched (empty: ids, non-matches)."""
        if not (self.leaf_bits[key] >> pos) & 1:
            return _NO_WORDS
        words = self._words_memo.get(key)
        if words is None:
            words = self._words_memo[key] = self._new_words_entry(key)
        if isinstance(words, frozenset):
            return words
        found = words[pos]
        if found is None:
            found = words[pos] = self._find_leaf_words(self._leaf(key), pos)
        return found

    def _new_words_entry(self, key: str) -> frozenset[str] | list[frozenset[str] | None]:
        """A plain word explains every paper it matches alike; others are found per paper."""
        field, words, prefix = self._leaf(key)
        if field == "id":
            return _NO_WORDS
        if len(words) == 1 and not prefix:
            return frozenset(words)
        return [None] * len(self.papers)

    def _find_leaf_words(self, leaf: Leaf, pos: int) -> frozenset[str]:
        field, words, prefix = leaf
        column = field or "text"
        if len(words) > 1:
            tokens = self._tokens[column][pos]
            found = self._phrase_starts(column, pos, words, prefix)
            return frozenset(w for start in found for w in tokens[start : start + len(words)])
        where = self._word_sets[column][pos]
        return frozenset(w for w in self._words_with_prefix(column, words[0]) if w in where)

    def query_words(self, query: CompiledQuery, pos: int) -> frozenset[str]:
        """The words of paper `pos` that explain why `query` matched it."""
        if query.fixed_words is not None:
            return query.fixed_words
        bits_of = self.leaf_bits
        found = []
        for key, fixed in query.positive:
            if (bits_of[key] >> pos) & 1:
                words = self.leaf_words(key, pos) if fixed is None else fixed
                if words:
                    found.append(words)
        return found[0] if len(found) == 1 else frozenset().union(*found)


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
    if max_papers <= 0 or not topics:
        return []
    results = _evaluate(index, topics, min_upvotes)
    union = 0
    for bits in results:
        union |= bits
    if not union:
        return []
    papers, query_words = index.papers, index.query_words
    named = [
        (t.name, t.query, t.query.fixed_words, bits)
        for t, bits in zip(topics, results, strict=True)
        if bits
    ]
    matches: list[Match] = []
    for pos in _rank(results, union, index.ids, max_papers, exclude):
        hits = [
            TopicHit(name, query_words(query, pos) if fixed is None else fixed)
            for name, query, fixed, bits in named
            if (bits >> pos) & 1
        ]
        matches.append(Match(papers[pos], tuple(hits)))
    return matches


def count_matches(
    index: PaperIndex,
    topics: Sequence[CompiledTopic],
    *,
    min_upvotes: int,
    exclude: AbstractSet[str] = frozenset(),
) -> int:
    """How many papers `match_subscriber` would return with no `max_papers` cut (cheap)."""
    union = 0
    for bits in _evaluate(index, topics, min_upvotes):
        union |= bits
    if exclude:
        return sum(1 for pos in iter_bits(union) if index.ids[pos] not in exclude)
    return union.bit_count()


def _evaluate(index: PaperIndex, topics: Sequence[CompiledTopic], min_upvotes: int) -> list[int]:
    """Each topic's matches as a bitset, papers under `min_upvotes` removed."""
    memo, everything = index.leaf_bits, index.all_bits
    mask = index.upvotes_at_least(min_upvotes) if min_upvotes > 0 else everything
    return [t.query.function(memo, t.query.keys, everything) & mask for t in topics]


def _rank(
    results: list[int], union: int, ids: tuple[str, ...], limit: int, exclude: AbstractSet[str]
) -> list[int]:
    """The best `limit` positions not excluded: most topics first, then lowest position.

    Positions are already in (upvotes, newest, id) order, so among papers that
    matched as many topics the lowest bit is the best paper.
    """
    levels = [union]
    seen = overlap = 0
    for bits in results:
        overlap |= seen & bits
        seen |= bits
    if overlap:  # some paper matched several topics: rank by how many
        # at_least[k]: the papers matched by more than k topics (a bitwise counter).
        at_least = [0] * (len(results) + 1)
        for bits in results:
            for k in range(len(results) - 1, 0, -1):
                at_least[k] |= at_least[k - 1] & bits
            at_least[0] |= bits
        levels = [at_least[k] & ~at_least[k + 1] for k in range(len(results) - 1, -1, -1)]
    chosen: list[int] = []
    for level in levels:
        while level:
            low = level & -level
            level ^= low
            pos = low.bit_length() - 1
            if exclude and ids[pos] in exclude:
                continue
            chosen.append(pos)
            if len(chosen) == limit:
                return chosen
    return chosen


__all__ = [
    "CompiledTopic",
    "PaperIndex",
    "compile_topics",
    "count_matches",
    "iter_bits",
    "match_subscriber",
]
