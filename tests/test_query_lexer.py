"""The regex lexer against the per-character one it replaced (tests/query_reference.py):
the same tokens, columns and error messages for any text, and shared term nodes;
the lower-case operator warning's fast path against its full substitution; and the
plain-query lanes (check_query, compile_text) against the parser they skip."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digest.config.values import _OPERATOR_WORD, lowercase_operators
from digest.errors import QuerySyntaxError
from digest.topics.query import (
    CompiledQuery,
    _lex,
    _matches_empty_paper,
    _Parser,
    check_query,
    compile_query,
    compile_text,
    evaluate_texts,
    parse_query,
)
from tests.query_reference import reference_lex

PIECES = [
    *'ab c"()-*:\t\u00a0\u3000\u00e9\u00bd\u0301\n',
    "AND", "OR", "NOT", "and", "title:", "Title:", "id:", "author:", "ORG:", "foo:",
    "x1", "2407.", "GPT-4o", "$\\alpha$", "  ",
]  # fmt: skip


def outcome(lex: object, text: str) -> object:
    try:
        return [tuple(t) for t in lex(text)]  # type: ignore[operator]
    except QuerySyntaxError as e:
        return ("error", str(e), e.args)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=14).map("".join))
def test_regex_lexer_matches_the_reference(text: str) -> None:
    assert outcome(_lex, text) == outcome(reference_lex, text)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=20))
def test_regex_lexer_matches_the_reference_on_any_text(text: str) -> None:
    assert outcome(_lex, text) == outcome(reference_lex, text)


def test_field_quoted_phrase_and_errors_keep_their_columns() -> None:
    assert [(t.kind, t.col) for t in _lex('x title:"a b" -(y)')] == [
        ("TERM", 1), ("TERM", 3), ("NOT", 15), ("(", 16), ("TERM", 17), (")", 18),
    ]  # fmt: skip
    for text, message in [
        ('a title:"b', "unterminated quote at column 9"),
        ("a b* c*d", "'*' must come at the end of a word at column 7"),
        ('"x* y"', "'*' must come at the end of the last word of a phrase at column 3"),
        ("id:2407 1 - x", "'-' must be followed directly by a word, phrase or '(' at column 11"),
    ]:
        try:
            _lex(text)
        except QuerySyntaxError as e:
            assert str(e) == message
        else:
            raise AssertionError(f"{text!r} lexed")


def test_equal_terms_in_different_queries_are_one_node() -> None:
    first = parse_query("reward model* OR title:diffusion")
    second = parse_query('title:diffusion -"reward model*" unrelated')
    assert first.parts[1] is second.parts[0]  # type: ignore[union-attr]


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(
        st.sampled_from([*PIECES, "or", "Or", "not", "NOT", "nOt", "And", "(or)"]), max_size=10
    ).map("".join)
)
def test_lowercase_operator_precheck_changes_no_answer(text: str) -> None:
    """The cheap search that skips the substitution must never skip a query it would change."""
    found: list[str] = []

    def upper(m: re.Match[str]) -> str:
        word = m.group(1)
        if word is None or word.isupper():
            return m.group(0)
        found.append(word)
        return word.upper()

    assert lowercase_operators(text) == (found, _OPERATOR_WORD.sub(upper, text))


@settings(max_examples=2000, deadline=None)
@given(
    st.lists(st.sampled_from([*PIECES, "-", "(", ")", "OR", "AND", "NOT"]), max_size=12).map(
        "".join
    )
)
def test_parser_answers_as_with_the_reference_tokens(text: str) -> None:
    """The parser (end sentinel, NOT-free queries skip the empty-paper walk) on the
    reference lexer's tokens: the same AST or the same error as on the regex lexer's."""

    def parse(lex: object) -> object:
        try:
            toks = lex(text)  # type: ignore[operator]
            if not toks:
                return "empty"
            node = _Parser(text, toks).parse()
            return (node, _matches_empty_paper(node))
        except QuerySyntaxError as e:
            return ("error", str(e))

    expected = parse(reference_lex)
    try:
        got: object = parse_query(text)
    except QuerySyntaxError as e:
        got = ("error", str(e))
    if expected == "empty":
        assert got == ("error", "empty query at column 1")
    elif isinstance(expected, tuple) and expected[0] == "error":
        assert got == expected
    else:
        node, matches_empty = expected  # type: ignore[misc]
        if matches_empty:
            assert isinstance(got, tuple) and "something positive" in str(got[1])
        else:
            assert got == node


# and what check_query's plain lane (a regex instead of the lexer) must tell apart
PLAIN = ["-", "(", ")", "OR", "AND", "NOT", "a*", '"a b"', '"a b*"', "-a", "ANDx", "9", "org:",
         "a-b", "x.5", "-c", ".", "AND-x", '"y-z w"']  # fmt: skip


@settings(max_examples=4000, deadline=None)
@given(st.lists(st.sampled_from([*PIECES, *PLAIN]), max_size=14).map("".join))
def test_check_query_says_what_parse_query_says(text: str) -> None:
    """check_query (the config's check: a regex or the lexer for the tokens, their
    shapes for the rest, no tree) refuses exactly what parse_query refuses, with the
    same message and column."""

    def verdict(check: object) -> object:
        try:
            check(text)  # type: ignore[operator]
        except QuerySyntaxError as e:
            return ("error", str(e), e.args)
        return "ok"

    assert verdict(check_query) == verdict(parse_query)


class Bits:
    """A LeafResolver over 8 papers, each leaf matching a random set of them."""

    def __init__(self, keys: set[str], rnd: random.Random) -> None:
        self.all_bits = 0xFF
        self.leaf_bits = {key: rnd.getrandbits(8) for key in keys}


def explained(query: CompiledQuery, bits: Bits, pos: int) -> set[str]:
    """The leaves that explain why `query` matched paper `pos` (what the digest marks)."""
    if query.fixed_leaves is not None:
        return {leaf.key for leaf in query.fixed_leaves}
    return {key for key in query.positive if (bits.leaf_bits[key] >> pos) & 1}


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from([*PIECES, *PLAIN]), max_size=14).map("".join), st.randoms())
def test_compile_text_means_what_the_parsed_query_means(text: str, rnd: random.Random) -> None:
    """compile_text (a plain query compiled from its shape, stand-ins replaced) matches the
    same papers as compile_query(parse_query(...)) and explains each match by the same
    leaves, or refuses the query with the same message."""
    try:
        reference = compile_query(parse_query(text))
    except QuerySyntaxError as e:
        with pytest.raises(QuerySyntaxError) as refused:
            compile_text(text)
        assert str(refused.value) == str(e)
        return
    fast = compile_text(text)
    assert set(fast.keys) == set(reference.keys)
    assert set(fast.positive) == set(reference.positive)
    bits = Bits(set(reference.keys), rnd)
    matched = reference.evaluate(bits)
    assert fast.evaluate(bits) == matched
    for pos in range(8):
        if (matched >> pos) & 1:
            assert explained(fast, bits, pos) == explained(reference, bits, pos)


BATCH_PIECES = [*PIECES, *PLAIN, "\x1f"]  # and the separator evaluate_texts joins by


class AnyBits(dict[str, int]):
    """Leaf key -> a random set of 8 papers (a third of them none), drawn the first time
    the key is asked for."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed

    def __missing__(self, key: str) -> int:
        rnd = random.Random(f"{self.seed} {key}")
        bits = self[key] = 0 if rnd.random() < 1 / 3 else rnd.getrandbits(8)
        return bits


class Lazy:
    """A LeafResolver over 8 papers whose leaves are `AnyBits`."""

    def __init__(self, seed: int) -> None:
        self.all_bits = 0xFF
        self.leaf_bits = AnyBits(seed)


def parses(text: str) -> bool:
    try:
        parse_query(text)
    except QuerySyntaxError:
        return False
    return True


TEXT = st.lists(st.sampled_from(BATCH_PIECES), max_size=10)


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.one_of(TEXT.map("".join), TEXT.map(" ".join)), max_size=12),
       st.integers(0, 2**32))  # fmt: skip
def test_evaluate_texts_of_a_batch_means_what_each_parsed_query_means(
    texts: list[str], seed: int
) -> None:
    """evaluate_texts (a batch of texts cut by one regex call, plain or not, some holding
    the batch's separator) matches for each query what compile_query(parse_query(text))
    matches; a batch with a refused text is refused with its message."""
    resolver = Lazy(seed)
    valid = [text for text in texts if parses(text)]
    expected = [compile_query(parse_query(text)).evaluate(resolver) for text in valid]
    assert evaluate_texts(valid, resolver) == expected
    refused = [text for text in texts if text not in valid]
    if refused:
        with pytest.raises(QuerySyntaxError) as raised:
            evaluate_texts([*valid, *refused], resolver)
        with pytest.raises(QuerySyntaxError) as alone:
            parse_query(refused[0])
        assert str(raised.value) == str(alone.value)
