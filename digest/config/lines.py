"""Line numbers for the keys of a TOML document, which tomllib does not give.

Owns: `key_lines(text)`, a small scanner over TOML text that tomllib has already
accepted, mapping every key path to the 1-based line where it appears. Does not
own: parsing values (tomllib does that) or validation (config.py).

A path is a tuple of table keys and 0-based array indexes, the same shape as the
data tomllib returns: ``("subscribers", 1, "topics", 0, "query")`` is the query of
the first topic of the second ``[[subscribers]]``. Array-of-tables headers,
dotted keys, inline tables and arrays spread over several lines are all followed;
for an inline value the line is the one where its key (or array element) starts.
The scanner never raises: on text it does not follow, it returns what it has.
"""

from __future__ import annotations

import contextlib

Path = tuple[str | int, ...]

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def key_lines(text: str) -> dict[Path, int]:
    """Map each key path of `text` (valid TOML) to the line it is written on."""
    scanner = _Scanner(text)
    with contextlib.suppress(IndexError, ValueError):
        scanner.document()  # on failure keep what was found; callers use a parent's line
    return scanner.lines


def line_of(lines: dict[Path, int], path: Path) -> int:
    """The line of `path`, else of its nearest ancestor that has one, else 1."""
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return 1


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.lines: dict[Path, int] = {}
        self.array_counts: dict[Path, int] = {}  # array-of-tables path -> tables seen

    # -- characters

    def peek(self, ahead: int = 0) -> str:
        i = self.pos + ahead
        return self.text[i] if i < len(self.text) else ""

    def advance(self, n: int = 1) -> None:
        self.line += self.text.count("\n", self.pos, self.pos + n)
        self.pos += n

    def skip_blank(self, newlines: bool) -> None:
        """Skip spaces and comments, and newlines too when `newlines`."""
        while self.pos < len(self.text):
            c = self.peek()
            if c in " \t\r" or (newlines and c == "\n"):
                self.advance()
            elif c == "#":
                end = self.text.find("\n", self.pos)
                self.advance((len(self.text) if end < 0 else end) - self.pos)
            else:
                return

    # -- structure

    def document(self) -> None:
        table: Path = ()
        while True:
            self.skip_blank(newlines=True)
            if self.pos >= len(self.text):
                return
            if self.peek() == "[":
                table = self.header()
            else:
                self.key_value(table)

    def header(self) -> Path:
        line = self.line
        double = self.peek(1) == "["
        self.advance(2 if double else 1)
        keys = self.key()
        self.skip_blank(newlines=False)
        self.advance(2 if double else 1)
        if double:
            parent = (*self.resolve(keys[:-1]), keys[-1])
            index = self.array_counts.get(parent, 0)
            self.array_counts[parent] = index + 1
            path = (*parent, index)
        else:
            path = self.resolve(keys)
        self.lines.setdefault(path, line)
        return path

    def resolve(self, keys: tuple[str, ...]) -> Path:
        """Insert the current index after each key that names an array of tables."""
        out: Path = ()
        for key in keys:
            out = (*out, key)
            if out in self.array_counts:
                out = (*out, self.array_counts[out] - 1)
        return out

    def key_value(self, table: Path) -> None:
        line = self.line
        path = table + self.key()
        self.lines.setdefault(path, line)
        self.skip_blank(newlines=False)
        if self.peek() != "=":
            raise ValueError("expected =")
        self.advance()
        self.skip_blank(newlines=False)
        self.value(path)

    def key(self) -> tuple[str, ...]:
        keys: list[str] = []
        while True:
            self.skip_blank(newlines=False)
            c = self.peek()
            if c in "\"'":
                keys.append(self.string())
            else:
                start = self.pos
                while self.peek() and self.peek() in _BARE:
                    self.advance()
                if self.pos == start:
                    raise ValueError("expected a key")
                keys.append(self.text[start : self.pos])
            self.skip_blank(newlines=False)
            if self.peek() != ".":
                return tuple(keys)
            self.advance()

    def value(self, path: Path) -> None:
        c = self.peek()
        if c in "\"'":
            self.string()
        elif c == "[":
            self.array(path)
        elif c == "{":
            self.inline_table(path)
        else:  # number, bool, date: up to a delimiter
            while self.peek() and self.peek() not in ",]}\n#":
                self.advance()

    def array(self, path: Path) -> None:
        self.advance()  # [
        index = 0
        while True:
            self.skip_blank(newlines=True)
            if self.peek() in ("]", ""):
                self.advance()
                return
            self.lines.setdefault((*path, index), self.line)
            self.value((*path, index))
            self.skip_blank(newlines=True)
            if self.peek() == ",":
                self.advance()
                index += 1

    def inline_table(self, path: Path) -> None:
        self.advance()  # {
        while True:
            self.skip_blank(newlines=False)
            if self.peek() in ("}", ""):
                self.advance()
                return
            self.key_value(path)
            self.skip_blank(newlines=False)
            if self.peek() == ",":
                self.advance()

    def string(self) -> str:
        """Consume a basic, literal or multi-line string; return its raw text."""
        quote = self.peek()
        triple = self.text.startswith(quote * 3, self.pos)
        delim = quote * 3 if triple else quote
        self.advance(len(delim))
        start = self.pos
        while self.pos < len(self.text):
            if quote == '"' and self.peek() == "\\":
                self.advance(2)
            elif self.text.startswith(delim, self.pos):
                raw = self.text[start : self.pos]
                self.advance(len(delim))
                while triple and self.peek() == quote:  # """a"""" ends with a quote in it
                    self.advance()
                return raw
            else:
                self.advance()
        raise ValueError("unterminated string")
