"""The paper index: one batch of candidate papers, indexed once for matching.

Owns: `PaperIndex` (an inverted index over one batch, per field, with bitsets as
Python ints over paper positions; it resolves query leaves and tells which of a
query's leaves explain a match), and the shared `TopicHit` records built from them. Does not
own: the query language (`query.py`), evaluating, ranking and cutting a
subscriber's matches (`match.py`), which papers are candidates (the store and the
daemon). Pure: no I/O, no clock.

Cost: building is linear in the batch's text. A leaf (a word, a prefix, a phrase
in a field) is resolved once per batch and memoised. A match is explained by the
query's positive leaves that also match the paper (one bit test each, none for a
plain conjunction); where they occur in the shown text is the renderer's business
(`spans.leaf_spans`). `TopicHit`s are memoised per index until `forget_explanations`
(planning calls it after each chunk of subscribers): these frozen records are shared
by every subscriber whose topic of that name is explained by the same leaves (a
day's 100k subscribers get ~525k hits, far fewer distinct ones). Matches are not
shared: on a week's batch most are distinct and the memo cost more than it saved.
A phrase is found by a substring test (in C) on each candidate paper's words in that
field, kept as one string with a space on either side of every word (`_spaced`): no
token lists, no per-paper position memo (that memo was ~3 MB per index, kept for the
run). Where two values meet (two authors, the title and the abstract) the words are
two spaces apart, and a phrase's needle holds single spaces only: no phrase crosses.

Papers get their bit positions in ranking order (upvotes desc, newest listing desc,
id asc) when the index is built; `match.py` relies on it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from digest.records import Paper, TopicHit
from digest.topics.query import CompiledQuery, Leaf, leaf_of, leaf_set, tokenize

# The index's columns: the text fields of query.FIELDS, plus "text" (title, gap, abstract)
# for bare terms. Ids are indexed apart.
Column = str
_GAP = ""  # put between an author's (org name's, keyword's) words and the next: never a word


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


def _spaced(words: list[str]) -> str:
    """A paper's words in one column as the string phrases are looked for in: " a b c ".
    A _GAP ("") between two values becomes a double space, which no needle holds."""
    return f" {' '.join(words)} "


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


class PaperIndex:
    """An inverted index over one batch of papers; implements query.LeafResolver.

    Build it with `PaperIndex.build(papers)`. Duplicate ids keep their best-ranked
    listing. `papers[i]` is the paper at bit position i. Per column: postings
    (word -> bitset), a sorted vocabulary for prefixes, and each paper's words as one
    spaced string (for phrases; "text" has none of its own: its phrases are looked for
    in the title's and the abstract's).
    """

    def __init__(self, papers: tuple[Paper, ...], tokens: dict[Column, list[list[str]]]) -> None:
        self.papers = papers
        self.ids = tuple(p.id for p in papers)
        self.all_bits = (1 << len(papers)) - 1
        self._spaced: dict[Column, tuple[list[str], ...]] = {
            column: ([_spaced(words) for words in per_paper],)
            for column, per_paper in tokens.items()
            if column != "text"
        }
        self._spaced["text"] = (*self._spaced["title"], *self._spaced["abstract"])
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
            self._vocab[column] = sorted(positions)
        self._id_pos = {paper_id: i for i, paper_id in enumerate(self.ids)}
        self._sorted_ids = sorted(self._id_pos)
        self.leaf_bits: dict[str, int] = _LeafBits(self)
        self._prefix_words: dict[tuple[Column, str], list[str]] = {}
        # One shared object per distinct value: the leaf sets that explain matches (so
        # equal sets are one object with a cached hash) and TopicHits. Sharing is safe:
        # both are frozen. They live until `forget_explanations` (planning: per chunk).
        self._leaf_sets: dict[tuple[str, ...], frozenset[Leaf]] = {}
        self._hits: dict[tuple[str, frozenset[Leaf]], TopicHit] = {}
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
        # One str object per distinct word: a batch's ~100k words are ~10k distinct ones.
        canon: dict[str, str] = {}
        for per_paper in tokens.values():
            for words in per_paper:
                words[:] = [canon.setdefault(w, w) for w in words]
        # A bare term searches title and abstract: one more field, never spanning the two.
        tokens["text"] = [
            [*t, _GAP, *a] for t, a in zip(tokens["title"], tokens["abstract"], strict=True)
        ]
        return cls(batch, tokens)

    def __len__(self) -> int:
        return len(self.papers)

    def resolve(self, key: str) -> int:
        """The papers the leaf `key` matches (callers go through the memo `leaf_bits`)."""
        field, words, prefix = Leaf.from_key(key)  # once per key: no Leaf kept
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
        # the words between single spaces; a prefix's last word may run on
        needle = f" {' '.join(words)}" if prefix else f" {' '.join(words)} "
        spaced = self._spaced[column]
        result = 0
        for pos in iter_bits(candidates):
            for texts in spaced:
                if needle in texts[pos]:
                    result |= 1 << pos
                    break
        return result

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

    def id_bits(self, ids: Iterable[str]) -> int:
        """The papers of the batch among `ids`, as a bitset (ids not in it are ignored)."""
        where = self._id_pos
        bits = 0
        for paper_id in ids:
            pos = where.get(paper_id)
            if pos is not None:
                bits |= 1 << pos
        return bits

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

    def query_leaves(self, query: CompiledQuery, pos: int) -> frozenset[Leaf]:
        """The leaves of `query` that explain why it matched paper `pos`: its positive
        leaves (not under a NOT) that match the paper too."""
        if query.fixed_leaves is not None:
            return query.fixed_leaves
        bits_of = self.leaf_bits
        found = tuple(key for key in query.positive if (bits_of[key] >> pos) & 1)
        leaves = self._leaf_sets.get(found)
        if leaves is None:
            leaves = self._leaf_sets[found] = leaf_set(tuple(map(leaf_of, found)))
        return leaves

    def forget_explanations(self) -> None:
        """Drop the shared leaf sets and TopicHits (matches made so far keep theirs). At
        100k subscribers they would grow to ~50k of each; planning calls this after
        each chunk, so that they hold one chunk's, and memory stops growing with the
        subscriber count. The leaves' bitsets stay: they are bounded by the vocabulary."""
        self._leaf_sets.clear()
        self._hits.clear()

    def topic_hit(self, topic: str, leaves: frozenset[Leaf]) -> TopicHit:
        """The one shared TopicHit(topic, leaves) of this batch."""
        hit = self._hits.get((topic, leaves))
        if hit is None:
            hit = self._hits[(topic, leaves)] = TopicHit(topic, leaves)
        return hit


__all__ = ["PaperIndex", "iter_bits"]
