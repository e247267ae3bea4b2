"""The subscription file's TOML, a big one read a chunk of subscribers at a time.

Owns: splitting the text at its ``[[subscribers]]`` headers and parsing the pieces
with toml-rs, a TOML 1.0 parser in Rust (~5x tomllib at 100,000 subscribers), so
that `build_config` turns each chunk into Subscribers before the next is read: the
parsed dict of a 34 MB file (~250 MB of small objects, fragmenting the heap for
good) is never whole in memory. Does not own what the keys mean (`build.py`,
`subscribers.py`) nor the error messages (`load.py` asks tomllib, the reference).

    head, head_end, pieces = split_subscribers(text)   # None: read it whole instead

The split is only made where it cannot change the meaning. A piece is cut only
before a line that is exactly ``[[subscribers]]`` (a comment after it allowed), and
not at all in a file with a multi-line string (whose text could hold such a line).
Each piece must then parse on its own, the head must not touch ``subscribers``
and each chunk must hold nothing but ``subscribers``: otherwise (an array spread
over a cut, a ``[source]`` table after the subscribers, a syntax error) the caller
reads the whole file with tomllib instead, which also gives the error message and
line. A valid TOML file that passes these checks parses to the same data as a
whole: every table a chunk defines is a subscriber, or inside one, of that chunk.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

CHUNK = 1000  # subscribers parsed at a time: ~2.5 MB of dict, freed before the next

_HEADER = re.compile(r"^\[\[subscribers\]\][ \t]*(?:#[^\n]*)?\r?$", re.MULTILINE)


@dataclass(frozen=True)
class Piece:
    """Subscriber tables parsed from ``text[start:end]`` of the file: where their line
    numbers are found, without scanning the whole file (`reader.py`)."""

    tables: list[Any]
    start: int
    end: int


class Unsplittable(Exception):
    """A piece did not parse, or touched what it must not: read the file whole."""


def fast_loads(text: str) -> dict[str, Any] | None:
    """`text` parsed by toml-rs as TOML 1.0 (what tomllib reads), or None if it fails."""
    import toml_rs  # imported late: only commands that read the config pay for it

    try:
        return toml_rs.loads(text, toml_version="1.0.0")
    except Exception:  # any failure of the fast parser: tomllib decides, and says why
        return None


def split_subscribers(text: str) -> tuple[dict[str, Any], int, Iterator[Piece]] | None:
    """The file's head (everything before the first ``[[subscribers]]``), parsed, where
    it ends, and an iterator over Pieces of up to CHUNK subscriber tables, parsed as
    they are taken.

    None when the file cannot be split safely. The iterator raises Unsplittable when
    a chunk does not parse or holds more than subscribers; the caller then starts
    over with the whole file."""
    if '"""' in text or "'''" in text:
        return None
    starts = [m.start() for m in _HEADER.finditer(text)]
    if not starts:
        return None
    head = fast_loads(text[: starts[0]])
    if head is None or "subscribers" in head:
        return None
    cuts = [*starts[::CHUNK], len(text)]
    return head, starts[0], _chunks(text, cuts)


def _chunks(text: str, cuts: list[int]) -> Iterator[Piece]:
    for begin, end in pairwise(cuts):
        piece = fast_loads(text[begin:end])
        if piece is None or piece.keys() != {"subscribers"}:
            raise Unsplittable
        subscribers = piece["subscribers"]
        if not isinstance(subscribers, list):
            raise Unsplittable
        yield Piece(subscribers, begin, end)
