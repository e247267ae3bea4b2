"""Where a query leaf occurs in a piece of text: the character spans a digest marks. Pure.

Owns: `leaf_spans` (one leaf, one text -> the spans of its occurrences) and
`merged_spans` (several leaves -> the spans to mark, overlaps joined). A phrase is one
span from its first word's start to its last word's end (``"text to image"`` in
``Text-to-Image`` is one span over all of it); a prefix marks only the words it
matches; a word marks itself. Words are `words.py`'s, exactly as the index sees
them, so a span is found where the index found a match. Does not own which leaves
explain a match (`index.py`), which field's leaves apply to which shown text, or
the HTML (`digest/render/text.py`). No I/O.

Cost: a text's word spans and each (text, leaf)'s spans are memoised (LRU): at a
slot many subscribers' digests show the same papers with the same few leaves.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from digest.topics.query import Leaf
from digest.topics.words import word_spans

Span = tuple[int, int]  # [start, end) offsets into the text


@lru_cache(maxsize=4096)
def _words_of(text: str) -> tuple[tuple[int, int, str], ...]:
    return tuple(word_spans(text))


@lru_cache(maxsize=65536)
def leaf_spans(text: str, leaf: Leaf) -> tuple[Span, ...]:
    """The spans of `text` where `leaf`'s words occur (its field is the caller's
    business; an ``id:`` leaf occurs nowhere)."""
    if leaf.field == "id":
        return ()
    words, prefix = leaf.words, leaf.prefix
    spans = _words_of(text)
    n, last = len(words), len(words) - 1
    found: list[Span] = []
    for i in range(len(spans) - n + 1):
        if all(spans[i + k][2] == words[k] for k in range(last)):
            word = spans[i + last][2]
            if word == words[last] or (prefix and word.startswith(words[last])):
                found.append((spans[i][0], spans[i + last][1]))
    return tuple(found)


def merged_spans(text: str, leaves: Iterable[Leaf]) -> list[Span]:
    """The spans to mark in `text` for `leaves`, in order; overlapping ones joined
    into one (``"reinforcement learning"`` and ``"learning from"`` -> one mark)."""
    spans = sorted({s for leaf in leaves for s in leaf_spans(text, leaf)})
    merged: list[Span] = []
    for start, end in spans:
        if merged and start < merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


__all__ = ["Span", "leaf_spans", "merged_spans"]
