"""Where a query leaf occurs in a piece of text: the character spans a digest marks. Pure.

Owns: `leaf_spans` (one leaf, one text -> the spans of its occurrences) and
`merged_spans` (several leaves -> the spans to mark, overlaps joined). A phrase is one
span from its first word's start to its last word's end (``"text to image"`` in
``Text-to-Image`` is one span over all of it); a prefix marks only the words it
matches; a word marks itself. Words are `words.py`'s, exactly as the index sees
them, so a span is found where the index found a match. Does not own which leaves
explain a match (`index.py`), which field's leaves apply to which shown text, or
the HTML (`digest/render/text.py`). No I/O.

Cost: a text's words are memoised (LRU) with where each distinct word occurs and the
distinct words sorted, so a leaf costs a dict lookup (a bisection for a one-word
prefix): at a slot many subscribers' digests show the same few hundred texts with
ever other leaves. (A memo per (text, prefix) hit a quarter of the time in a 10k
cycle: the prefixes of thousands of subscribers' queries over hundreds of texts.)
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import chain
from typing import NamedTuple

from digest.topics.query import Leaf
from digest.topics.words import word_spans

Span = tuple[int, int]  # [start, end) offsets into the text


class _Words(NamedTuple):
    """A text's words (`spans`), for each distinct word where it occurs, and the
    distinct words sorted (a prefix's words are a run of them: found by bisection)."""

    spans: tuple[tuple[int, int, str], ...]
    at: dict[str, list[int]]  # word -> its positions in `spans`
    sorted_words: tuple[str, ...]


@lru_cache(maxsize=4096)
def _words_of(text: str) -> _Words:
    spans = tuple(word_spans(text))
    at: dict[str, list[int]] = {}
    for i, (_, _, word) in enumerate(spans):
        at.setdefault(word, []).append(i)
    return _Words(spans, at, tuple(sorted(at)))


def leaf_spans(text: str, leaf: Leaf) -> tuple[Span, ...]:
    """The spans of `text` where `leaf`'s words occur (its field is the caller's
    business; an ``id:`` leaf occurs nowhere)."""
    return _leaf_spans(_words_of(text), leaf)


def _prefix_starts(words_of: _Words, prefix: str) -> Sequence[int]:
    """Where the words of the text that begin with `prefix` stand, in order: the run of
    its sorted distinct words that begin so, found by bisection (usually none or one
    word; no memo needed, none kept)."""
    keys, at = words_of.sorted_words, words_of.at
    i = bisect_left(keys, prefix)
    if i == len(keys) or not keys[i].startswith(prefix):
        return ()
    first = at[keys[i]]
    i += 1
    if i == len(keys) or not keys[i].startswith(prefix):
        return first
    runs = [first]
    while i < len(keys) and keys[i].startswith(prefix):
        runs.append(at[keys[i]])
        i += 1
    return sorted(chain.from_iterable(runs))


def _leaf_spans(words_of: _Words, leaf: Leaf) -> tuple[Span, ...]:
    """Looked up by the leaf's first word (or, for a one-word prefix, each distinct
    word it begins), not by a walk over the text: most leaves occur in none of a
    paper's texts but one, and cost one dict lookup there."""
    field, words, prefix = leaf
    if field == "id":
        return ()
    spans, at = words_of.spans, words_of.at
    if len(words) == 1:  # a word or a one-word prefix: each occurrence is a span
        starts = _prefix_starts(words_of, words[0]) if prefix else at.get(words[0])
        if not starts:
            return ()
        return tuple([(spans[i][0], spans[i][1]) for i in starts])
    last = len(words) - 1
    found: list[Span] = []
    for i in at.get(words[0], ()):
        if i + last >= len(spans):
            break
        if all(spans[i + k][2] == words[k] for k in range(1, last)):
            word = spans[i + last][2]
            if word == words[last] or (prefix and word.startswith(words[last])):
                found.append((spans[i][0], spans[i + last][1]))
    return tuple(found)


def merged_spans(text: str, leaves: Iterable[Leaf]) -> list[Span]:
    """The spans to mark in `text` for `leaves`, in order; overlapping ones joined
    into one (``"reinforcement learning"`` and ``"learning from"`` -> one mark)."""
    words_of = _words_of(text)
    found = [got for leaf in leaves if (got := _leaf_spans(words_of, leaf))]
    if not found:  # the usual case: none of the leaves occurs in this text
        return []
    # one leaf's spans are in order and distinct already (one per start, starts sorted)
    spans: Sequence[Span] = found[0] if len(found) == 1 else sorted({s for f in found for s in f})
    merged: list[Span] = []
    for start, end in spans:
        if merged and start < merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


__all__ = ["Span", "leaf_spans", "merged_spans"]
