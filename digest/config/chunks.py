"""The subscription file's TOML, a big one read a chunk of subscribers at a time.

Owns: reading the file's lines, cutting them at the ``[[subscribers]]`` headers, and
parsing the pieces with toml-rs, a TOML 1.0 parser in Rust (~5x tomllib at 100,000
subscribers), so that `build_config` turns each chunk into Subscribers before the
next is read. Neither the file's text (34 MB at 100k subscribers) nor its parsed
dict (~250 MB of small objects, fragmenting the heap for good) is ever whole in
memory: a piece is ~1,000 subscribers' lines. Does not own what the keys mean
(`build.py`, `subscribers.py`) nor the error messages (`load.py` asks tomllib, the
reference, reading the file whole).

    head, head_text, pieces = split_subscribers(binary_file)   # None: read it whole
    head, head_text, pieces = split_subscribers(binary_file, middle=offset)
        # pieces ..., MIDDLE, pieces ...: where a second process may take over (halves.py)
    first, later = pieces_after(path, offset)  # that process's pieces, its first index

The split is only made where it cannot change the meaning. A piece is cut only
before a line that is exactly ``[[subscribers]]`` (a comment after it allowed), and
no piece (nor the head) may hold a multi-line string (whose text could hold such a
line). Each piece must decode as UTF-8 and parse on its own, the head must not
touch ``subscribers`` and each chunk must hold nothing but ``subscribers``:
otherwise (an array spread over a cut, a ``[source]`` table after the subscribers,
a syntax error, a read error) the caller reads the whole file with tomllib instead,
which also gives the error message and line. A valid TOML file that passes these
checks parses to the same data as a whole: every table a chunk defines is a
subscriber, or inside one, of that chunk.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

CHUNK = 1000  # subscribers parsed at a time: ~2.5 MB of dict, freed before the next

_HEADER = re.compile(rb"\[\[subscribers\]\][ \t]*(?:#[^\n]*)?\r?\n?")  # one whole line


@dataclass(frozen=True)
class Piece:
    """Subscriber tables parsed from `text`, a piece of the file after `lines_before`
    lines: where their line numbers are found, without the rest of the file
    (`reader.py`)."""

    tables: list[Any]
    text: str
    lines_before: int


class _Middle:
    def __repr__(self) -> str:
        return "MIDDLE"


# between the pieces before and from the first ``[[subscribers]]`` line starting at or
# after a byte offset: the same cut whichever of split_subscribers and pieces_after finds it
MIDDLE: Final = _Middle()


class Unsplittable(Exception):
    """A piece did not parse, or touched what it must not: read the file whole."""


def fast_loads(text: str) -> dict[str, Any] | None:
    """`text` parsed by toml-rs as TOML 1.0 (what tomllib reads), or None if it fails."""
    import toml_rs  # imported late: only commands that read the config pay for it

    try:
        return toml_rs.loads(text, toml_version="1.0.0")
    except Exception:  # any failure of the fast parser: tomllib decides, and says why
        return None


def split_subscribers(
    lines: Iterable[bytes], *, middle: int | None = None
) -> tuple[dict[str, Any], str, Iterator[Piece | _Middle]] | None:
    """The head of the file whose `lines` are given (everything before the first
    ``[[subscribers]]``), parsed, its text, and an iterator over Pieces of up to CHUNK
    subscriber tables, read and parsed as they are taken; with MIDDLE among them, once,
    at the byte offset `middle` if one is given (and the file goes on past it).

    None when the file cannot be split safely. The iterator raises Unsplittable when
    a chunk does not decode or parse, or holds more than subscribers; the caller then
    starts over with the whole file."""
    it = iter(lines)
    head: list[bytes] = []
    try:
        for line in it:
            if _is_header(line):
                break
            head.append(line)
        else:
            return None  # no [[subscribers]] header: nothing to split
    except OSError:  # reading it whole says why
        return None
    raw = b"".join(head)
    if _has_multiline_string(raw):
        return None
    try:
        head_text = raw.decode("utf-8-sig")  # a byte-order mark is not text
    except UnicodeDecodeError:
        return None
    data = fast_loads(head_text)
    if data is None or "subscribers" in data:
        return None
    return data, head_text, _pieces(line, it, raw.count(b"\n"), len(raw), middle)


def pieces_after(path: Path, middle: int) -> tuple[int, Iterator[Piece]]:
    """The Pieces of the file at `path` that split_subscribers(..., middle=middle) gives
    after MIDDLE, and how many subscriber tables come before them (the index of the
    first). The lines before the middle are only counted, never decoded nor parsed.
    Raises Unsplittable when the file has no subscriber after the middle or cannot be
    read (the iterator too, as split_subscribers' does)."""
    try:
        file = path.open("rb")
    except OSError:
        raise Unsplittable from None
    at = newlines = headers = 0
    try:
        for line in file:
            if _is_header(line):
                if at >= middle:
                    return headers, _rest(file, line, newlines)
                headers += 1
            at += len(line)
            newlines += line.count(b"\n")
    except OSError:
        pass  # as a file that ends here
    file.close()
    raise Unsplittable  # unreadable, or shorter than when it was split


def _rest(file: BinaryIO, first: bytes, lines_before: int) -> Iterator[Piece]:
    with file:
        for piece in _pieces(first, file, lines_before):
            assert isinstance(piece, Piece)  # no middle was asked for
            yield piece


def _is_header(line: bytes) -> bool:
    return line.startswith(b"[[subscribers]]") and _HEADER.fullmatch(line) is not None


def _has_multiline_string(raw: bytes) -> bool:
    return b'"""' in raw or b"'''" in raw


def _pieces(
    first: bytes, lines: Iterator[bytes], lines_before: int, at: int = 0, middle: int | None = None
) -> Iterator[Piece | _Middle]:
    """Pieces of CHUNK subscribers: `first` (a header line, at byte `at` of the file),
    then the rest of `lines`; MIDDLE before the first header at or after byte `middle`."""
    buffer, headers = [first], 1
    at += len(first)
    try:
        for line in lines:
            if _is_header(line):
                at_middle = middle is not None and at >= middle
                if at_middle or headers % CHUNK == 0:
                    piece = _piece(buffer, lines_before)
                    lines_before += piece.text.count("\n")
                    yield piece
                    buffer = []
                if at_middle:
                    yield MIDDLE
                    headers, middle = 0, None
                headers += 1
            at += len(line)
            buffer.append(line)
    except OSError:  # the file could not be read to its end: reading it whole says why
        raise Unsplittable from None
    yield _piece(buffer, lines_before)


def _piece(lines: list[bytes], lines_before: int) -> Piece:
    raw = b"".join(lines)
    if _has_multiline_string(raw):
        raise Unsplittable
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Unsplittable from None
    piece = fast_loads(text)
    if piece is None or piece.keys() != {"subscribers"}:
        raise Unsplittable
    subscribers = piece["subscribers"]
    if not isinstance(subscribers, list):
        raise Unsplittable
    return Piece(subscribers, text, lines_before)
