"""What a word is: the one tokenizer for papers and queries alike. Pure.

Owns: `tokenize` (text -> normalised words) and `word_spans` (the same words with
their offsets in the original text, for highlighting). Does not own: the query
language (`query.py`) or the index (`match.py`).

A word is a maximal run of Unicode letters and digits (``str.isalnum``); a
combining mark (category M*) right after a letter or digit stays in the word, so
decomposed accents and Indic vowel signs do not split words. Each run is
NFKC-normalised and case-folded (``µ`` and ``μ``, ``ﬁ`` and ``fi``, ``ß`` and
``ss`` compare equal; ``½`` becomes the words ``1`` and ``2``). CJK text has no
spaces, so a run of CJK characters is one word. Everything else separates words:
``Text-to-Image`` -> text, to, image; ``model's`` -> model, s; ``$\\alpha$`` -> alpha.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache


def _combining_marks_class() -> str:
    """A regex character class body holding every combining mark (Unicode category M*)."""
    ranges: list[tuple[int, int]] = []
    planes = (range(0x0300, 0x20000), range(0xE0100, 0xE01F0))  # no marks live elsewhere
    for block in planes:
        for cp in block:
            if unicodedata.category(chr(cp))[0] == "M":
                if ranges and ranges[-1][1] == cp - 1:
                    ranges[-1] = (ranges[-1][0], cp)
                else:
                    ranges.append((cp, cp))
    return "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


@cache
def _raw_word() -> re.Pattern[str]:
    """A raw run: made on first use, since collecting the marks walks ~130,000 code
    points (~30-40 ms) and every command imports this module, `digest status` and a
    config of ASCII queries included, which never need it."""
    # `[^\W_]` is exactly the characters for which str.isalnum() is true.
    return re.compile(rf"[^\W_](?:[^\W_]|[{_combining_marks_class()}])*")


_ASCII_WORD = re.compile(r"[a-z0-9]+")


def _normalize_run(run: str) -> list[str]:
    """The words of one raw run: NFKC, case-folded, split again if NFKC made punctuation."""
    if run.isascii():
        return [run.lower()]
    return _raw_word().findall(unicodedata.normalize("NFKC", run).casefold())


def tokenize(text: str) -> list[str]:
    """The words of `text`, normalised, in order (see the module docstring)."""
    if text.isascii():
        return _ASCII_WORD.findall(text.lower())
    words: list[str] = []
    for run in _raw_word().findall(text):
        words.extend(_normalize_run(run))
    return words


def word_spans(text: str) -> list[tuple[int, int, str]]:
    """(start, end, word) for each word of `text`, offsets into `text` itself.

    For highlighting: a renderer marks ``text[start:end]`` when `word` is in a
    Match's words. A raw run that normalises to several words (``½``) yields one
    span per word, all covering the run.
    """
    spans: list[tuple[int, int, str]] = []
    for m in _raw_word().finditer(text):
        for word in _normalize_run(m.group()):
            spans.append((m.start(), m.end(), word))
    return spans


def is_word_char(ch: str) -> bool:
    """Whether `ch` can be part of a word (a letter, a digit or a combining mark)."""
    return ch.isalnum() or unicodedata.category(ch)[0] == "M"
