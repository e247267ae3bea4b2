"""The walk over the subscription file's data: where each problem is reported.

Owns: `Reader`, the base of the config builders, with what every rule needs: the
line of a key path (scanned only when there is a problem to report, and in a big
file only in the piece of the subscriber being read), problems and warnings as
"file:LINE: subscribers[3] (ada@example.org).max_papers: ...", and the generic
table and field readers. Does not own any rule of a key (`build.py`,
`subscribers.py`) nor reading the file (`load.py`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from digest.config.lines import Path as KeyPath
from digest.config.lines import key_lines, line_of
from digest.config.values import (
    Invalid,
    describe,
)

T = TypeVar("T")


class Reader:
    """What the builders share: the file, the problems found so far, the line lookup."""

    def __init__(
        self, path: Path, text: str | None, env: Mapping[str, str], head_text: str | None = None
    ) -> None:
        self.path = path
        self.base = path.absolute().parent  # relative paths in the file resolve against it
        self.text = text  # the whole file's; None: read in pieces, read again if needed
        self._lines: dict[KeyPath, int] | None = None
        # a file read in pieces: a problem's line is found in its own piece, or in the
        # head, never by scanning all of a 100k-subscriber file (~12 s)
        self.head_text = head_text
        self._head_lines: dict[KeyPath, int] | None = None
        self.piece: tuple[int, str, int] | None = None  # first subscriber, text, lines before
        self._piece_lines: dict[KeyPath, int] | None = None
        # query -> the name of its first topic: a query is checked (and warned about) once
        # while it is remembered (subscribers.CHECKED_QUERIES)
        self.checked_queries: dict[str, str] = {}
        # equal values shared by every subscriber that has them: one Schedule per distinct
        # schedule text, one str per time zone
        self.shared: dict[tuple[str, Any], Any] = {}
        self.env = env
        self.problems: list[tuple[int, str]] = []
        self.warnings: list[tuple[int, str]] = []  # the file works, but likely not as meant
        # the subscriber being read (index, table), for labels: every problem is
        # reported while its own subscriber is read
        self.current: tuple[int, object] | None = None

    # -- reporting

    def line(self, where: KeyPath) -> int:
        """The line of `where` in the file, scanned on the first problem only (a valid
        file never pays): in the piece of the subscriber being read, or in the head."""
        if self.piece is not None and where[:1] == ("subscribers",) and len(where) > 1:
            first, text, lines_before = self.piece
            index = where[1]
            if isinstance(index, int) and index >= first:
                if self._piece_lines is None:
                    self._piece_lines = key_lines(text)
                local = ("subscribers", index - first, *where[2:])
                return line_of(self._piece_lines, local) + lines_before
        if self.head_text is not None and where[:1] != ("subscribers",):
            if self._head_lines is None:
                self._head_lines = key_lines(self.head_text)
            return line_of(self._head_lines, where)
        if self._lines is None:  # the whole file: it was read whole, or an earlier piece
            if self.text is None:  # rare (a duplicate email pieces apart): read it again
                self.text = self.path.read_bytes().decode("utf-8-sig", errors="replace")
            self._lines = key_lines(self.text)
        return line_of(self._lines, where)

    def in_piece(self, first: int, text: str, lines_before: int) -> None:
        """The subscribers from the `first` on are read from `text`, a piece of the file
        after `lines_before` lines: their lines are found there."""
        self.piece, self._piece_lines = (first, text, lines_before), None

    def problem(self, where: KeyPath, message: str) -> None:
        line = self.line(where)
        self.problems.append((line, f"{self.path}:{line}: {self.label(where)}: {message}"))

    def warning(self, where: KeyPath, message: str) -> None:
        line = self.line(where)
        self.warnings.append((line, f"{self.path}:{line}: {self.label(where)}: {message}"))

    def current_email(self, i: int) -> str | None:
        """The email the i-th subscriber's table gives, if it is the one being read."""
        if self.current is None or self.current[0] != i or not isinstance(self.current[1], dict):
            return None
        email = self.current[1].get("email")
        return email.strip().lower() if isinstance(email, str) else None

    def label(self, where: KeyPath) -> str:
        out = ""
        for i, part in enumerate(where):
            if isinstance(part, int):
                out += f"[{part + 1}]"  # 1-based: "the first [[subscribers]]" is [1]
                email = self.current_email(part) if where[:i] == ("subscribers",) else None
                if email is not None:
                    out += f" ({email})"
            else:
                out += f".{part}" if out else part
        return out or "(top level)"

    # -- generic readers

    def table(self, where: KeyPath, value: object, allowed: Iterable[str]) -> dict[str, Any]:
        """`value` as a table whose keys are all in `allowed`; {} (and a problem) if not."""
        if not isinstance(value, dict):
            self.problem(where, f"expected a table, got {describe(value)}")
            return {}
        allowed = tuple(allowed)
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = (
                    f'; did you mean "{close[0]}"?'
                    if close
                    else (f"; expected one of: {', '.join(allowed)}")
                )
                self.problem((*where, key), f'unknown key "{key}"{hint}')
        return {k: v for k, v in value.items() if k in allowed}

    def field(
        self,
        table: dict[str, Any],
        where: KeyPath,
        key: str,
        default: T,
        convert: Callable[[Any], T],
    ) -> T:
        """table[key] through `convert`, or `default` when absent or invalid (reported)."""
        if key not in table:
            return default
        try:
            return convert(table[key])
        except Invalid as e:
            self.problem((*where, key), str(e))
            return default

    def local_path(self, raw: str) -> Path:
        return (self.base / Path(raw).expanduser()).absolute()
