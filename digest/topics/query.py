"""The topic query language: words, parsing to an AST, compiling to bitset operations.

Owns: `parse_query` (text -> AST of frozen dataclasses, or QuerySyntaxError with
a 1-based column), `check_query` (the same verdict without the tree),
`compile_query` (AST -> CompiledQuery, which evaluates as set operations over any
`LeafResolver`; `compile_text` from the text) and `evaluate_texts` (the bitsets of
a batch of texts' matches, cut in one regex pass, nothing compiled kept). Does not
own: what a word is (`words.py`; `tokenize` is re-exported here), the paper index,
ranking or highlighting (`match.py`), nor reading queries from the config
(`config.py`).
Pure: no I/O, no clock.

The language (DESIGN.md, "The topic query language"), with the choices made here:

- Words are `words.tokenize`'s: runs of letters, digits and their combining marks,
  NFKC-normalised and case-folded.
- A term's text is tokenised like a document: ``GPT-4o`` and ``title:text-to-image``
  are phrases (``gpt 4o``, ``text to image``); ``$\\alpha$`` is the word ``alpha``.
- ``word*`` is a prefix; ``*`` is allowed only right after a letter or digit at the
  end of a term, or on the last word of a quoted phrase.
- ``AND``/``OR``/``NOT`` are operators only in upper case and unquoted; ``-x`` is
  ``NOT x``. Juxtaposition is AND. Precedence NOT > AND > OR.
- Fields (case-insensitive names): ``title:``, ``abstract:``, ``author:`` (a phrase
  within one author's name), ``org:`` (organisation name or full name), ``keyword:``
  (within one HF ai_keyword), ``id:`` (the raw arXiv id, exact or ``id:2407.*``).
  A bare term searches title and abstract. A field applies to one word or one
  quoted phrase; ``title:(a OR b)`` is an error.
- A query that would match a paper with no text at all (``NOT survey``,
  ``a OR -b``) is an error: a query needs something positive to match.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, NamedTuple, Protocol

from digest.errors import QuerySyntaxError
from digest.topics.words import is_word_char, tokenize, word_spans

Field = Literal["title", "abstract", "author", "org", "keyword", "id"]
FIELDS: tuple[Field, ...] = ("title", "abstract", "author", "org", "keyword", "id")

# ---------------------------------------------------------------------------
# The AST


@dataclass(frozen=True, slots=True)
class Term:
    """One word (for ``id:``, the raw id); ``prefix`` for ``word*``; field None: title+abstract."""

    word: str
    prefix: bool = False
    field: Field | None = None


@dataclass(frozen=True, slots=True)
class Phrase:
    """Consecutive words within one field value; ``prefix_last`` for ``"a b*"``."""

    words: tuple[str, ...]
    prefix_last: bool = False
    field: Field | None = None


@dataclass(frozen=True, slots=True)
class And:
    parts: tuple[Query, ...]


@dataclass(frozen=True, slots=True)
class Or:
    parts: tuple[Query, ...]


@dataclass(frozen=True, slots=True)
class Not:
    part: Query


Query = Term | Phrase | And | Or | Not

# ---------------------------------------------------------------------------
# Lexing


_Kind = Literal["(", ")", "AND", "OR", "NOT", "TERM", "END"]
_OPERATORS: dict[str, _Kind] = {"AND": "AND", "OR": "OR", "NOT": "NOT"}
_FIELD_BY_NAME: dict[str, Field] = {f: f for f in FIELDS}


class _Tok(NamedTuple):
    kind: _Kind
    col: int  # 1-based
    node: Term | Phrase | None = None


_FIELD_PREFIX = re.compile(r"([A-Za-z]+):")
_MAX_DEPTH = 32  # nested parentheses and NOTs; keeps the parser and compiled shapes shallow


def _error(message: str, query: str, col: int) -> QuerySyntaxError:
    return QuerySyntaxError(f"{message} at column {col}", query, col)


# One token per match: '(', ')', '-', a quoted phrase (closed or not), or a run up to
# the next space, parenthesis or quote. Every position but whitespace starts exactly
# one branch, so `finditer` steps over the whitespace alone. `\s` is str.isspace exactly.
_TOKEN = re.compile(r'(\()|(\))|(-)|"([^"]*)("?)|([^\s()"\-][^\s()"]*)')


# pure; the same words recur across queries that are not plain (`parse_query`), and
# a plain query's pieces are each made once anyway (`_plain_piece`): at 100k
# subscribers 65,536 entries hit 9% of the time and held ~5 MB
@lru_cache(maxsize=4096)
def _term_node(text: str, field: Field | None, quoted: bool) -> Term | Phrase | tuple[str, int]:
    """The node of a term's text, or (message, offset into `text`) when it is not valid.

    Cached: equal terms in different queries become one shared, immutable node."""
    if "*" in text:
        last = len(text) - 1
        for k, ch in enumerate(text):
            if ch == "*" and not (
                k == last and k > 0 and (field == "id" or is_word_char(text[k - 1]))
            ):
                where = "the last word of a phrase" if quoted else "a word"
                return f"'*' must come at the end of {where}", k
    prefix = text.endswith("*")
    body = text[:-1] if prefix else text
    if field == "id":
        raw = body.strip()  # never empty: an empty value or a lone '*' failed above
        if any(c.isspace() for c in raw):
            return "an arXiv id has no spaces", 0
        return Term(raw, prefix, "id")
    words = tokenize(body)
    if not words:
        shown = f'"{text}"' if quoted else f"'{text}'"
        return f"{shown} has no letters or digits to match", 0
    if len(words) == 1:
        return Term(words[0], prefix, field)
    return Phrase(tuple(words), prefix, field)


def _make_term(
    text: str, field: Field | None, text_col: int, query: str, quoted: bool, col: int
) -> _Tok:
    """A TERM token at `col` from a term's text (`text_col` is where the text starts)."""
    node = _term_node(text, field, quoted)
    if isinstance(node, tuple):
        raise _error(node[0], query, text_col + node[1])
    return _tok(_Tok, ("TERM", col, node))


# tuple.__new__ directly: a NamedTuple's own __new__ is a Python function, and the lexer
# makes a token for every word of 300,000 queries when a 100k-subscriber file is checked
_tok = tuple.__new__


def _lex(query: str) -> list[_Tok]:
    """The tokens of `query`, left to right; the first problem met raises."""
    toks: list[_Tok] = []
    n = len(query)
    field: Field | None = None  # set by a bare `title:` right before a quote
    field_col = 0
    for m in _TOKEN.finditer(query):
        opening, closing, minus, quoted, closed, run = m.groups()
        i = m.start()
        if quoted is not None:
            if not closed:
                raise _error("unterminated quote", query, i + 1)
            if not quoted.strip():
                raise _error("empty phrase", query, i + 1)
            col = field_col if field is not None else i + 1
            toks.append(_make_term(quoted, field, i + 2, query, True, col))
            field = None
        elif run is not None:
            col = i + 1
            op = _OPERATORS.get(run)
            if op is not None:
                toks.append(_tok(_Tok, (op, col, None)))
                continue
            if ":" not in run:
                toks.append(_make_term(run, None, col, query, False, col))
                continue
            f = _FIELD_PREFIX.match(run)
            if f is None:
                toks.append(_make_term(run, None, col, query, False, col))
                continue
            name = f.group(1).lower()
            named = _FIELD_BY_NAME.get(name)
            if named is None:
                known = ", ".join(FIELDS)
                raise _error(f"unknown field '{f.group(1)}:' (known: {known})", query, col)
            value_start = i + f.end()
            j = m.end()
            if value_start < j:
                toks.append(
                    _make_term(
                        query[value_start:j], named, value_start + 1, query, False, value_start + 1
                    )
                )
            elif j < n and query[j] == '"':
                field, field_col = named, col  # the quote is the very next match
            else:
                raise _error(f"'{name}:' needs a word or a quoted phrase after it", query, col)
        elif opening is not None:
            toks.append(_tok(_Tok, ("(", i + 1, None)))
        elif closing is not None:
            toks.append(_tok(_Tok, (")", i + 1, None)))
        elif minus is not None:
            nxt = query[i + 1 : i + 2]
            if not nxt or nxt.isspace() or nxt == ")":
                raise _error("'-' must be followed directly by a word, phrase or '('", query, i + 1)
            toks.append(_tok(_Tok, ("NOT", i + 1, None)))
    return toks


# ---------------------------------------------------------------------------
# Parsing


class _Parser:
    """Recursive descent over the tokens.

    or := and (OR and)*;  and := unary (AND? unary)*;  unary := NOT unary | primary;
    primary := TERM | '(' or ')'.
    """

    def __init__(self, query: str, toks: list[_Tok]) -> None:
        self.query = query
        self.toks = [*toks, _Tok("END", len(query) + 1)]  # never consumed: no bounds checks
        self.pos = 0
        self.depth = 0

    def fail(self, message: str, col: int) -> QuerySyntaxError:
        return _error(message, self.query, col)

    def parse(self) -> Query:
        node = self.parse_or()
        tok = self.toks[self.pos]
        if tok.kind != "END":  # only a stray ')' can stop parse_or early
            raise self.fail("unmatched ')'", tok.col)
        return node

    def parse_or(self) -> Query:
        parts = [self.parse_and()]
        while (tok := self.toks[self.pos]).kind == "OR":
            self.pos += 1
            self.expect_operand(tok)
            parts.append(self.parse_and())
        return _join(Or, parts)

    def parse_and(self) -> Query:
        parts = [self.parse_unary()]
        while (tok := self.toks[self.pos]).kind in ("AND", "NOT", "TERM", "("):
            if tok.kind == "AND":
                self.pos += 1
                self.expect_operand(tok)
            parts.append(self.parse_unary())
        return _join(And, parts)

    def parse_unary(self) -> Query:
        tok = self.toks[self.pos]
        if tok.kind == "NOT":
            self.pos += 1
            self.expect_operand(tok)
            self.enter(tok)
            node = Not(self.parse_unary())
            self.depth -= 1
            return node
        return self.parse_primary()

    def enter(self, tok: _Tok) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.fail(f"query nested too deeply (more than {_MAX_DEPTH} levels)", tok.col)

    def parse_primary(self) -> Query:
        tok = self.toks[self.pos]
        if tok.kind == "END":
            raise self.fail("empty query", 1)
        if tok.kind == "TERM":
            self.pos += 1
            assert tok.node is not None  # TERM tokens always carry their node
            return tok.node
        if tok.kind == "(":
            self.pos += 1
            close = self.toks[self.pos]
            if close.kind == ")":
                raise self.fail("empty parentheses", tok.col)
            self.enter(tok)
            node = self.parse_or()
            self.depth -= 1
            close = self.toks[self.pos]
            if close.kind != ")":
                raise self.fail("unclosed '('", tok.col)
            self.pos += 1
            return node
        if tok.kind == ")":
            raise self.fail("unmatched ')'", tok.col)
        raise self.fail(f"'{tok.kind}' needs a word, phrase or '(' before it", tok.col)

    def expect_operand(self, op: _Tok) -> None:
        """After a binary or NOT operator: something must follow that can start an operand."""
        nxt = self.toks[self.pos]
        shown = "-" if self.query[op.col - 1] == "-" else op.kind
        if nxt.kind in ("END", ")"):
            raise self.fail(f"'{shown}' needs a word, phrase or '(' after it", op.col)
        if nxt.kind in ("AND", "OR"):
            raise self.fail(f"unexpected '{nxt.kind}' after '{shown}'", nxt.col)


def _join(kind: type[And] | type[Or], parts: list[Query]) -> Query:
    if len(parts) == 1:
        return parts[0]
    flat: list[Query] = []
    for p in parts:
        flat.extend(p.parts if isinstance(p, kind) else (p,))
    return kind(tuple(flat))


def _matches_empty_paper(node: Query) -> bool:
    """Would `node` match a paper with no words, no authors and no id at all?"""
    if isinstance(node, Term | Phrase):
        return False
    if isinstance(node, Not):
        return not _matches_empty_paper(node.part)
    if isinstance(node, And):
        return all(_matches_empty_paper(p) for p in node.parts)
    return any(_matches_empty_paper(p) for p in node.parts)


@lru_cache(maxsize=1024)  # the AST is immutable: a query many subscribers share parses once
def parse_query(text: str) -> Query:
    """Parse a topic query; raise QuerySyntaxError (message, query, 1-based column).

    Validating the file and compiling for a run both parse; the bounded cache makes
    that one parse for a query shared by many subscribers (or met again within the
    last 1,024), without keeping an AST per subscriber (~1-2 KB each at 100k)."""
    return _parse_tokens(text, _lex(text))


def check_query(text: str) -> None:
    """Raise QuerySyntaxError exactly when `parse_query(text)` would, with its message.

    What the config check calls for every query of the file: half the cost of a parse,
    since it builds no tree. The lexer runs as for a parse; what the parser would say
    of the tokens depends only on their kinds, so it is asked once per sequence of
    kinds (`_compiled_shape`: 28 shapes, such as "(T|T)&!T", cover the benchmark's
    300,000 queries)."""
    if _PLAIN_QUERY.fullmatch(text):  # nearly every query: the shape without the lexer
        shape = _PLAIN_TERM.sub("T", text)
        shape = shape.replace("AND", "&").replace("OR", "|").replace("NOT", "!")
        shape = "".join(shape.replace("-", "!").split())
    else:
        shape = "".join([_SHAPE[t.kind] for t in _lex(text)])
    if _compiled_shape(shape) is None:
        parse_query(text)  # raises, with the column in `text`


# The plain query, whose tokens the lexer would take the same way and find valid: ASCII
# words (a '*' at the end; '-' or '.' inside, as in gpt-4o or claude-3.5, which make a
# phrase), quoted phrases of them, either after a field other than id:, AND / OR /
# NOT, parentheses, and '-' right before a word, phrase or '('. A word or operator
# ends where the lexer's run does: at a space, a parenthesis, a quote or the end. What
# a plain term means needs no lexer: each is one Term or Phrase.
_END = r'(?=[\s()"]|$)'
_PLAIN_WORD = r"[A-Za-z0-9]+(?:[-.][A-Za-z0-9]+)*"
_PLAIN_PHRASE = rf'"{_PLAIN_WORD}(?: {_PLAIN_WORD})*\*?"'
_PLAIN_TERM = re.compile(  # (a run never starts right after a letter or digit)
    rf"(?<![A-Za-z0-9])(?:"
    rf"(?i:title|abstract|author|org|keyword):(?:{_PLAIN_PHRASE}|{_PLAIN_WORD}\*?{_END})"
    rf"|{_PLAIN_PHRASE}|(?!(?:AND|OR|NOT){_END}){_PLAIN_WORD}\*?{_END})"
)
_PLAIN_QUERY = re.compile(
    rf'(?:\s|[()]|-(?=[A-Za-z0-9"(])|(?:AND|OR|NOT){_END}|{_PLAIN_TERM.pattern})*'
)


_SHAPE: dict[_Kind, str] = {"(": "(", ")": ")", "AND": "&", "OR": "|", "NOT": "!", "TERM": "T"}
_KIND: dict[str, _Kind] = {v: k for k, v in _SHAPE.items()}


def _parse_tokens(text: str, toks: list[_Tok]) -> Query:
    """The tree of `text` from its tokens; QuerySyntaxError if they do not make a query."""
    if not toks:
        raise _error("empty query", text, 1)
    node = _Parser(text, toks).parse()
    # without a NOT, no node can match an empty paper: skip the walk for most queries
    if any(t.kind == "NOT" for t in toks) and _matches_empty_paper(node):
        first_not = next(t.col for t in toks if t.kind == "NOT")
        raise _error(
            "a query needs something positive to match (this one matches every paper "
            "without the negated words)",
            text,
            first_not,
        )
    return node


# ---------------------------------------------------------------------------
# Compiling


class Leaf(NamedTuple):
    """A query's atom as the index sees it: a word, prefix or phrase within one field."""

    field: Field | None  # None: title or abstract
    words: tuple[str, ...]  # one word for a term; the raw id for "id"
    prefix: bool  # the last word is a prefix

    @property
    def key(self) -> str:
        """A string key, cheap to hash (str caches its hash): ``"title|x|reward model"``."""
        return f"{self.field or '*'}|{'p' if self.prefix else 'x'}|{' '.join(self.words)}"

    @classmethod
    def from_key(cls, key: str) -> Leaf:
        field, flag, words = key.split("|", 2)
        return cls(
            _FIELD_BY_NAME[field] if field != "*" else None, tuple(words.split(" ")), flag == "p"
        )


class LeafResolver(Protocol):
    """What a compiled query runs against: `match.PaperIndex` implements it."""

    @property
    def all_bits(self) -> int:
        """Every paper of the batch as a bitset."""
        ...

    @property
    def leaf_bits(self) -> Mapping[str, int]:
        """Leaf key -> the papers (a bitset over batch positions) that leaf matches."""
        ...


# A query's shape, e.g. ``(m[k[0]] | m[k[1]]) & ~m[k[2]]``, as a function of
# (m: leaf key -> bitset, k: this query's leaf keys, a: all papers); `evaluate_texts`
# passes the bitsets of the query's terms as m and which term each key is as k.
ShapeFunction = Callable[
    [Mapping[str, int] | Sequence[int], tuple[str, ...] | tuple[int, ...], int], int
]


@lru_cache(maxsize=4096)
def _shape_function(expression: str) -> ShapeFunction:
    """Compile a shape once; every query with that shape shares the function.

    `expression` is built by `_shape_of` from the AST's structure alone (indices,
    ``&``, ``|``, ``~``, parentheses): no text of the query reaches `eval`.
    """
    function: ShapeFunction = eval(f"lambda m, k, a: {expression}", {"__builtins__": {}})
    return function


def _shape_of(node: Query, keys: dict[str, int]) -> str:
    """The bitset expression of `node`; fills `keys` (leaf key -> index in k)."""
    if isinstance(node, Term | Phrase):
        index = keys.setdefault(sys.intern(_leaf_of(node).key), len(keys))
        return f"m[k[{index}]]"
    if isinstance(node, Not):
        return f"(a & ~{_shape_of(node.part, keys)})"
    if isinstance(node, Or):
        return "(" + " | ".join(_shape_of(p, keys) for p in node.parts) + ")"
    positive = [_shape_of(p, keys) for p in node.parts if not isinstance(p, Not)]
    negative = [f"~{_shape_of(p.part, keys)}" for p in node.parts if isinstance(p, Not)]
    return "(" + " & ".join((positive or ["a"]) + negative) + ")"


@dataclass(frozen=True, slots=True, eq=False)
class CompiledQuery:
    """A query ready to run: ``evaluate(index)`` returns the matching papers as a bitset.

    ``keys`` are the leaf keys the shape function reads. ``positive`` lists the keys
    of the leaves not under a NOT: those that also match a paper explain why the
    query matched it (and are what the digest highlights). ``fixed_leaves``: the
    explaining leaves of every match, when the query is a plain conjunction of
    positive leaves and NOTs (``a "b c*" -d``: every match contains all three), else
    None (the index tests each positive leaf against the paper). Small on purpose (the
    daemon keeps one per topic per subscriber); keys are interned, shared strings and
    equal leaf sets are one shared object.
    """

    function: ShapeFunction
    keys: tuple[str, ...]
    positive: tuple[str, ...]
    fixed_leaves: frozenset[Leaf] | None

    def evaluate(self, resolver: LeafResolver) -> int:
        return self.function(resolver.leaf_bits, self.keys, resolver.all_bits)


def _leaf_of(node: Term | Phrase) -> Leaf:
    if isinstance(node, Term):
        return Leaf(node.field, (node.word,), node.prefix)
    return Leaf(node.field, node.words, node.prefix_last)


def _positive_leaves(node: Query, negated: bool, out: dict[str, Leaf]) -> None:
    if isinstance(node, Term | Phrase):
        if not negated:
            leaf = _leaf_of(node)
            out[sys.intern(leaf.key)] = leaf
    elif isinstance(node, Not):
        _positive_leaves(node.part, not negated, out)
    else:
        for p in node.parts:
            _positive_leaves(p, negated, out)


@lru_cache(maxsize=8192)  # shared by every index, and by the queries compiled in a chunk
def leaf_of(key: str) -> Leaf:
    """The Leaf whose `Leaf.key` is `key`: one object per recent key."""
    return Leaf.from_key(key)


@lru_cache(maxsize=4096)  # one shared set per recent value: compiled queries stay small
def leaf_set(leaves: tuple[Leaf, ...]) -> frozenset[Leaf]:
    """The one shared frozenset of `leaves` (equal sets are then one object, hashed once)."""
    return frozenset(leaves)


def compile_query(q: Query) -> CompiledQuery:
    """Compile an AST into its shape's shared function plus this query's leaf keys."""
    keys: dict[str, int] = {}
    expression = _shape_of(q, keys)
    leaves: dict[str, Leaf] = {}
    _positive_leaves(q, False, leaves)
    direct = [p for p in (q.parts if isinstance(q, And) else (q,)) if not isinstance(p, Not)]
    conjunction = len(direct) == len(leaves) and all(isinstance(p, Term | Phrase) for p in direct)
    fixed = leaf_set(tuple(leaves.values())) if conjunction else None
    return CompiledQuery(_shape_function(expression), tuple(keys), tuple(leaves), fixed)


def compile_text(text: str) -> CompiledQuery:
    """`compile_query(parse_query(text))`, without the parse for a plain query (the one
    check_query reads by regex): its terms and its shape are all there is to know, and
    each shape ("(T|T)&!T") is compiled once with stand-in leaves, which the query's
    own leaves then replace. Raises QuerySyntaxError as parse_query does.

    A plain query is cut into pieces by one regex call, and each distinct piece (a
    word, a field's phrase, an operator) is looked up once (`_plain_piece`): 300,000
    queries of a 100k-subscriber file compile in about a second."""
    if not _PLAIN_QUERY.fullmatch(text):
        return compile_query(parse_query(text))
    shape: list[str] = []
    keys: list[str] = []
    shape_of, key_of = _SHAPES, _KEYS
    for piece in _PLAIN_PIECE.findall(text):
        key = key_of.get(piece)
        if key is None:
            entry = _plain_piece(piece)
            if entry is None:  # never for a plain term; the parser says why
                return compile_query(parse_query(text))
            char, key = entry
        else:
            char = shape_of[piece]
        shape.append(char)
        if key:
            keys.append(key)
    compiled = _compiled_shape("".join(shape))
    if compiled is None:
        return compile_query(parse_query(text))  # raises, with the column in `text`
    function, key_terms, in_order, positive_terms, fixed = compiled
    return CompiledQuery(
        function,
        tuple(keys) if in_order else tuple([keys[i] for i in key_terms]),
        tuple([keys[i] for i in positive_terms]),
        leaf_set(tuple([leaf_of(keys[i]) for i in positive_terms])) if fixed else None,
    )


def evaluate_texts(texts: Sequence[str], resolver: LeafResolver) -> list[int]:
    """`compile_text(text).evaluate(resolver)` of each of `texts`, without building any
    CompiledQuery: for a listing that needs no explanations (`digest match`: 300,000
    queries, a few thousand to a call). Raises QuerySyntaxError as parse_query does.

    The texts are joined by BATCH_SEPARATOR and cut into pieces by one regex call
    (`_BATCH_PIECE`, which also tells the texts that are not plain); the pieces' shape
    characters and leaf keys are looked up in C loops (`map`), the shape split back into
    one per text, and each plain text's shape function runs on the next bitsets of its
    terms. A query whose leaves match no paper matches none (a query that would match an
    empty paper is refused), so its function is not even called. Any other text is
    compiled (`compile_text`), which raises with the column where it must."""
    cut = _cut(texts)
    if cut is None:
        return [compile_text(text).evaluate(resolver) for text in texts]
    shapes, keys = cut
    bits = list(map(resolver.leaf_bits.__getitem__, keys))
    everything, compiled_shape = resolver.all_bits, _compiled_shape
    found: list[int] = []
    start = 0
    for text, shape in zip(texts, shapes, strict=True):
        end = start + shape.count("T")
        compiled = compiled_shape(shape)
        if compiled is None:  # not plain, a term no query has, or tokens making no query
            found.append(compile_text(text).evaluate(resolver))  # raises, with the column
        else:
            terms = bits[start:end]
            found.append(compiled[0](terms, compiled[1], everything) if any(terms) else 0)
        start = end
    return found


def _cut(texts: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """Each text's shape ("?" in it where the text is not plain) and the leaf keys of all
    their terms in order; None if a text holds BATCH_SEPARATOR (no config's does)."""
    joined = BATCH_SEPARATOR.join(texts) + BATCH_SEPARATOR
    if joined.count(BATCH_SEPARATOR) != len(texts):
        return None
    pieces = _BATCH_PIECE.findall(joined)
    try:
        shapes = "".join(map(_SHAPES.__getitem__, pieces))
        keys = list(filter(None, map(_KEYS.__getitem__, pieces)))
    except KeyError:  # a piece met for the first time
        shapes, keys = _learn_pieces(pieces)
    return shapes.split(BATCH_SEPARATOR)[:-1], keys


def _learn_pieces(pieces: list[str]) -> tuple[str, list[str]]:
    """The shape characters and leaf keys of a batch's pieces, the ones met for the first
    time remembered first (a term `_term_node` refuses as "?", which makes no query)."""
    missing = set(pieces).difference(_SHAPES)
    if len(_SHAPES) + len(missing) > _MAX_PIECES:
        _forget_pieces()
        missing = set(pieces)
    for piece in missing:
        _SHAPES[piece], _KEYS[piece] = _piece_entry(piece) or ("?", "")
    keys = list(filter(None, map(_KEYS.__getitem__, pieces)))
    return "".join(map(_SHAPES.__getitem__, pieces)), keys


# A plain query's pieces (`_PLAIN_QUERY` matched it whole): a parenthesis, a '-', a quoted
# phrase with its field, or a run up to a space, a parenthesis or a quote (an operator,
# or a word with its field). In a plain query a '-' only ever starts a piece.
_PLAIN_PIECE = re.compile(r'[()-]|(?:[A-Za-z]+:)?"[^"]*"|[^\s()"]+')
# After each text of a batch (`evaluate_texts`): U+001F, which values.py keeps out of
# every query, and which `_PLAIN_QUERY` and `_PLAIN_PIECE` take for white space.
BATCH_SEPARATOR = "\x1f"
# A batch's pieces: its separators, white space, and each token `_PLAIN_QUERY` accepts (a
# '-' with the token after it); where no plain token starts, the rest of that text and
# its separator, which no plain piece ends in. `_PLAIN_QUERY`'s tokens cannot be read two
# ways (a word ends where the lexer's run does; an operator is never a word), so a text
# is plain exactly when none of its pieces is such a rest: one pass over the batch both
# checks the texts and cuts them.
_BATCH_PIECE = re.compile(
    rf"{BATCH_SEPARATOR}|[^\S{BATCH_SEPARATOR}]+|[()]|-\(|"
    rf"-?(?:(?:AND|OR|NOT){_END}|{_PLAIN_TERM.pattern})|[^{BATCH_SEPARATOR}]*{BATCH_SEPARATOR}"
)
_Piece = tuple[str, str]  # its shape character, its leaf's key ("" for an operator)
# piece -> its shape character, and its leaf's key: the same pieces in both, emptied
# together when they grow past the bound. Leaves are made from keys (`leaf_of`) when a
# query is compiled: a Leaf for each of the ~24k pieces of a 100k-subscriber file was
# ~5 MB, kept for the run.
_SHAPES: dict[str, str] = {}
_KEYS: dict[str, str] = {}
_MAX_PIECES = 1 << 16


def _forget_pieces() -> None:
    _SHAPES.clear()
    _KEYS.clear()


def _plain_piece(piece: str) -> _Piece | None:
    """What a plain query's piece stands for, remembered in `_SHAPES` and `_KEYS`; None
    for a term `_term_node` refuses (the caller then parses the query, for the message)."""
    entry = _piece_entry(piece)
    if entry is None:
        return None
    if len(_SHAPES) >= _MAX_PIECES:
        _forget_pieces()
    _SHAPES[piece], _KEYS[piece] = entry
    return entry


def _piece_entry(piece: str) -> _Piece | None:
    """`_plain_piece`'s answer, worked out. A batch's pieces (`_BATCH_PIECE`) are also
    white space (no shape), a '-' with the token after it, and the rest of a text that is
    not plain with its separator ("?", which makes no query)."""
    op = _OPERATORS.get(piece)
    if op is not None:
        return (_SHAPE[op], "")
    if piece in ("(", ")", BATCH_SEPARATOR):
        return (piece, "")
    if piece.endswith(BATCH_SEPARATOR):
        return ("?" + BATCH_SEPARATOR, "")
    if piece.isspace():
        return ("", "")
    if piece.startswith("-"):
        if piece == "-":
            return ("!", "")
        after = _piece_entry(piece[1:])
        return None if after is None else ("!" + after[0], after[1])
    quoted = piece.endswith('"')
    if quoted:
        field, _, rest = piece.partition('"')
        value, field = rest[:-1], field[:-1]
    else:
        field, _, value = piece.rpartition(":")
    name = _FIELD_BY_NAME[field.lower()] if field else None
    node = _term_node(value, name, quoted)
    if isinstance(node, tuple):
        return None
    return ("T", sys.intern(_leaf_of(node).key))


# (function, which term each of its keys is, whether that is every term in order, which
# terms its positive keys are, whether every match has all the positive leaves)
_ShapeCode = tuple[ShapeFunction, tuple[int, ...], bool, tuple[int, ...], bool]


@lru_cache(maxsize=4096)
def _compiled_shape(shape: str) -> _ShapeCode | None:
    """A shape compiled with the n-th term standing for the n-th leaf: the function, which
    terms its keys and its positive keys are, and whether every match has all the
    positive leaves; None if tokens of this shape do not make a query. (Whatever a
    term's words, it never matches an empty paper: its kind is all the parser needs.)"""
    if not _KIND.keys() >= set(shape):  # a term _term_node refuses ("?")
        return None
    stand_ins: list[_Tok] = []
    for i, c in enumerate(shape):
        node = Term(f"t{shape.count('T', 0, i)}") if c == "T" else None
        stand_ins.append(_Tok(_KIND[c], i + 1, node))
    try:
        compiled = compile_query(_parse_tokens(shape, stand_ins))
    except QuerySyntaxError:
        return None

    def term(key: str) -> int:
        return int(key.rpartition("|t")[2])  # the stand-in's key: "*|x|t<n>"

    key_terms = tuple(term(k) for k in compiled.keys)
    return (
        compiled.function,
        key_terms,
        key_terms == tuple(range(len(key_terms))),
        tuple(term(k) for k in compiled.positive),
        compiled.fixed_leaves is not None,
    )


__all__ = [
    "FIELDS",
    "CompiledQuery",
    "Leaf",
    "check_query",
    "compile_query",
    "compile_text",
    "evaluate_texts",
    "leaf_set",
    "parse_query",
    "tokenize",
    "word_spans",
]
