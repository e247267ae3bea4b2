"""Where a query leaf occurs in a piece of text: the character spans a digest marks. Pure.

Owns: `leaf_spans` (one leaf, one text -> the spans of its occurrences) and
`merged_spans` (several leaves -> the spans to mark, overlaps joined). A phrase is one
span from its first word's start to its last word's end (``"text to image"`` in
``Text-to-Image`` is one span over all of it); a prefix marks only the words it
matches; a word marks itself. Words are `words.py`'s, exactly as the index sees
them, so a span is found where the index found a match. Does not own which leaves
explain a match (`index.py`), which field's leaves apply to which shown text, or
the HTML (`digest/render/text.py`). No I/O.

Cost: a text's words are memoised (LRU) with where each distinct word occurs, so a
leaf costs a dict lookup (a walk over the words only for a one-word prefix, memoised
per (text, prefix)): at a slot many subscribers' digests show the same few hundred
texts with ever other leaves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import NamedTuple

from digest.topics.query import Leaf
from digest.topics.words import word_spans

Span = tuple[int, int]  # [start, end) offsets into the text


class _Words(NamedTuple):
    """A text's words (`spans`) and, for each distinct word, where it occurs."""

    spans: tuple[tuple[int, int, str], ...]
    at: dict[str, list[int]]  # word -> its positions in `spans`


@lru_cache(maxsize=4096)
def _words_of(text: str) -> _Words:
    spans = tuple(word_spans(text))
    at: dict[str, list[int]] = {}
    for i, (_, _, word) in enumerate(spans):
        at.setdefault(word, []).append(i)
    return _Words(spans, at)


def leaf_spans(text: str, leaf: Leaf) -> tuple[Span, ...]:
    """The spans of `text` where `leaf`'s words occur (its field is the caller's
    business; an ``id:`` leaf occurs nowhere)."""
    return _leaf_spans(text, _words_of(text), leaf)


@lru_cache(maxsize=16384)
def _prefix_starts(text: str, prefix: str) -> tuple[int, ...]:
    """Where the words of `text` that begin with `prefix` stand, in order (memoised: a
    walk over the text's distinct words, the same few prefixes on the same texts)."""
    at = _words_of(text).at
    return tuple(sorted(i for word, where in at.items() if word.startswith(prefix)
                        for i in where))  # fmt: skip


def _leaf_spans(text: str, words_of: _Words, leaf: Leaf) -> tuple[Span, ...]:
    """Looked up by the leaf's first word (or, for a one-word prefix, each distinct
    word it begins), not by a walk over the text: most leaves occur in none of a
    paper's texts but one, and cost one dict lookup there."""
    if leaf.field == "id":
        return ()
    words, prefix = leaf.words, leaf.prefix
    spans, at = words_of
    n, last = len(words), len(words) - 1
    one_prefix = n == 1 and prefix
    starts: Sequence[int] = _prefix_starts(text, words[0]) if one_prefix else at.get(words[0], [])
    found: list[Span] = []
    for i in starts:
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
    found = [got for leaf in leaves if (got := _leaf_spans(text, words_of, leaf))]
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
