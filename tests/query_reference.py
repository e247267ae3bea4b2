"""The query lexer as it was before the one-regex scan: one character at a time.

Kept only as the reference the tests compare `digest.topics.query._lex` against
(tokens, columns and every error message byte for byte). Not used by the program.
"""

from __future__ import annotations

from digest.errors import QuerySyntaxError
from digest.topics.query import (
    _FIELD_BY_NAME,
    _FIELD_PREFIX,
    _OPERATORS,
    FIELDS,
    Field,
    Phrase,
    Term,
    _error,
    _Tok,
)
from digest.topics.words import is_word_char, tokenize

__all__ = ["QuerySyntaxError", "reference_lex"]


def _make_term(text: str, field: Field | None, col: int, query: str, quoted: bool) -> _Tok:
    """A TERM token from a term's text (`col` is where the text starts)."""
    for k, ch in enumerate(text):
        if ch == "*" and not (
            k == len(text) - 1 and k > 0 and (field == "id" or is_word_char(text[k - 1]))
        ):
            where = "the last word of a phrase" if quoted else "a word"
            raise _error(f"'*' must come at the end of {where}", query, col + k)
    prefix = text.endswith("*")
    body = text[:-1] if prefix else text
    if field == "id":
        raw = body.strip()  # never empty: an empty value or a lone '*' failed above
        if any(c.isspace() for c in raw):
            raise _error("an arXiv id has no spaces", query, col)
        return _Tok("TERM", col, Term(raw, prefix, "id"))
    words = tokenize(body)
    if not words:
        shown = f'"{text}"' if quoted else f"'{text}'"
        raise _error(f"{shown} has no letters or digits to match", query, col)
    if len(words) == 1:
        return _Tok("TERM", col, Term(words[0], prefix, field))
    return _Tok("TERM", col, Phrase(tuple(words), prefix, field))


def reference_lex(query: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(query)
    while i < n:
        ch = query[i]
        col = i + 1
        if ch.isspace():
            i += 1
        elif ch in "()":
            toks.append(_Tok("(" if ch == "(" else ")", col))
            i += 1
        elif ch == "-":
            if i + 1 >= n or query[i + 1].isspace() or query[i + 1] == ")":
                raise _error("'-' must be followed directly by a word, phrase or '('", query, col)
            toks.append(_Tok("NOT", col))
            i += 1
        elif ch == '"':
            i = _lex_quoted(query, i, None, col, toks)
        else:
            j = i
            while j < n and not query[j].isspace() and query[j] not in '()"':
                j += 1
            run = query[i:j]
            op = _OPERATORS.get(run)
            if op is not None:
                toks.append(_Tok(op, col))
                i = j
                continue
            m = _FIELD_PREFIX.match(run)
            if m is None:
                toks.append(_make_term(run, None, col, query, quoted=False))
                i = j
                continue
            name = m.group(1).lower()
            field = _FIELD_BY_NAME.get(name)
            if field is None:
                known = ", ".join(FIELDS)
                raise _error(f"unknown field '{m.group(1)}:' (known: {known})", query, col)
            value_start = i + m.end()
            if value_start < j:
                toks.append(_make_term(query[value_start:j], field, value_start + 1, query, False))
                i = j
            elif j < n and query[j] == '"':
                i = _lex_quoted(query, j, field, col, toks)
            else:
                raise _error(f"'{name}:' needs a word or a quoted phrase after it", query, col)
    return toks


def _lex_quoted(query: str, i: int, field: Field | None, col: int, toks: list[_Tok]) -> int:
    """Lex the quoted phrase whose opening quote is at index `i`; return the index after it."""
    end = query.find('"', i + 1)
    if end < 0:
        raise _error("unterminated quote", query, i + 1)
    text = query[i + 1 : end]
    if not text.strip():
        raise _error("empty phrase", query, i + 1)
    tok = _make_term(text, field, i + 2, query, quoted=True)
    toks.append(tok._replace(col=col))
    return end + 1
