"""The topic query language: tokenizer, parser (AST) and syntax errors with their column."""

from __future__ import annotations

import pytest

from digest.errors import ConfigError, QuerySyntaxError
from digest.topics.query import And, Not, Or, Phrase, Term, parse_query, tokenize, word_spans


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Text-to-Image", ["text", "to", "image"]),
        ("GPT-4o", ["gpt", "4o"]),
        ("3D Gaussian Splatting", ["3d", "gaussian", "splatting"]),
        ("μLO: Compute-Efficient", ["μlo", "compute", "efficient"]),
        ("µLO", ["μlo"]),  # MICRO SIGN folds to GREEK SMALL LETTER MU
        ("$\\alpha$-divergence", ["alpha", "divergence"]),
        ("model's", ["model", "s"]),
        ("the model\u2019s output", ["the", "model", "s", "output"]),  # curly apostrophe
        ("", []),
        ("  --  ", []),
        ("大规模语言模型的推理", ["大规模语言模型的推理"]),  # a CJK run is one word
        ("多模态 LLM", ["多模态", "llm"]),
        ("Café naïve Ångström", ["café", "naïve", "ångström"]),
        ("Cafe\u0301", ["café"]),  # decomposed accent: one word, NFC-equal to the composed one
        ("हिन्दी भाषा", ["हिन्दी", "भाषा"]),  # Devanagari vowel signs are marks: no split
        ("ﬁne-tuning", ["fine", "tuning"]),  # ligature, NFKC
        ("STRASSE Straße", ["strasse", "strasse"]),  # casefold
        ("snake_case x", ["snake", "case", "x"]),  # underscore is not a letter
        ("Title\n  folded", ["title", "folded"]),
        ("<script>alert(1)</script>", ["script", "alert", "1", "script"]),
    ],
)
def test_tokenize(text: str, words: list[str]) -> None:
    assert tokenize(text) == words


def test_word_spans_point_into_the_original_text() -> None:
    text = "Cafe\u0301 GPT-4o"
    spans = word_spans(text)
    assert [w for _, _, w in spans] == tokenize(text)
    assert [text[a:b] for a, b, _ in spans] == ["Cafe\u0301", "GPT", "4o"]


def t(word: str, prefix: bool = False, field: str | None = None) -> Term:
    return Term(word, prefix, field)  # type: ignore[arg-type]  # tests pass literal field names


def ph(*words: str, prefix: bool = False, field: str | None = None) -> Phrase:
    return Phrase(words, prefix, field)  # type: ignore[arg-type]  # as above


@pytest.mark.parametrize(
    ("query", "ast"),
    [
        ("diffusion", t("diffusion")),
        ("Diffusion", t("diffusion")),
        ("distill*", t("distill", prefix=True)),
        ('"consistency model*"', ph("consistency", "model", prefix=True)),
        ('"reward model"', ph("reward", "model")),
        ('"AND"', t("and")),
        ("GPT-4o", ph("gpt", "4o")),
        ("text-to-im*", ph("text", "to", "im", prefix=True)),
        ("a b", And((t("a"), t("b")))),
        ("a AND b", And((t("a"), t("b")))),
        ("a and b", And((t("a"), t("and"), t("b")))),  # lower-case: a word
        ("a OR b", Or((t("a"), t("b")))),
        ("a or b", And((t("a"), t("or"), t("b")))),
        ("a b OR c", Or((And((t("a"), t("b"))), t("c")))),  # AND binds tighter than OR
        ("a OR b c", Or((t("a"), And((t("b"), t("c")))))),
        ("a (b OR c)", And((t("a"), Or((t("b"), t("c")))))),
        ("NOT a b", And((Not(t("a")), t("b")))),  # NOT binds tighter than AND
        ("b NOT a", And((t("b"), Not(t("a"))))),
        ("b -a", And((t("b"), Not(t("a"))))),
        ('b -"x y"', And((t("b"), Not(ph("x", "y"))))),
        ("b -(x OR y)", And((t("b"), Not(Or((t("x"), t("y"))))))),
        ("NOT NOT a", Not(Not(t("a")))),
        ("a OR b OR c", Or((t("a"), t("b"), t("c")))),
        ("(a OR b) OR c", Or((t("a"), t("b"), t("c")))),  # same-operator groups flatten
        ("title:diffusion", t("diffusion", field="title")),
        ("Title:Diffusion", t("diffusion", field="title")),
        ("title:text-to-image", ph("text", "to", "image", field="title")),
        ('abstract:"reward model*"', ph("reward", "model", prefix=True, field="abstract")),
        ('author:"Nathan Lambert"', ph("nathan", "lambert", field="author")),
        ("author:lambert", t("lambert", field="author")),
        ("org:ByteDance-Seed", ph("bytedance", "seed", field="org")),
        ("keyword:RLHF", t("rlhf", field="keyword")),
        ("id:2407.21783", t("2407.21783", field="id")),
        ("id:2407.*", t("2407.", prefix=True, field="id")),
        ('id:"2407.21783"', t("2407.21783", field="id")),
        ("$\\alpha$-divergence", ph("alpha", "divergence")),
        ("3:1", ph("3", "1")),  # not letters before ':', so not a field
    ],
)
def test_parse(query: str, ast: object) -> None:
    assert parse_query(query) == ast


@pytest.mark.parametrize(
    ("query", "message", "column"),
    [
        ("", "empty query", 1),
        ("   ", "empty query", 1),
        ("(a OR b", "unclosed '('", 1),
        ("a (b (c) d", "unclosed '('", 3),
        ("a OR b)", "unmatched ')'", 7),
        (")", "unmatched ')'", 1),
        ("()", "empty parentheses", 1),
        ("a AND", "'AND' needs a word, phrase or '(' after it", 3),
        ("a OR", "'OR' needs a word, phrase or '(' after it", 3),
        ("(a OR) b", "'OR' needs a word, phrase or '(' after it", 4),
        ("a AND OR b", "unexpected 'OR' after 'AND'", 7),
        ("OR a", "'OR' needs a word, phrase or '(' before it", 1),
        ("AND", "'AND' needs a word, phrase or '(' before it", 1),
        ("a NOT", "'NOT' needs a word, phrase or '(' after it", 3),
        ("a - b", "'-' must be followed directly by a word, phrase or '('", 3),
        (
            "titel:diffusion",
            "unknown field 'titel:' (known: title, abstract, author, org, keyword, id)",
            1,
        ),
        ("a title:", "'title:' needs a word or a quoted phrase after it", 3),
        ("title:(a OR b)", "'title:' needs a word or a quoted phrase after it", 1),
        ('a "reward model', "unterminated quote", 3),
        ('""', "empty phrase", 1),
        ("dis*till", "'*' must come at the end of a word", 4),
        ("*tion", "'*' must come at the end of a word", 1),
        ("a *", "'*' must come at the end of a word", 3),
        ("a-*", "'*' must come at the end of a word", 3),
        ('"consist* model"', "'*' must come at the end of the last word of a phrase", 9),
        ('"a b"*', "'*' must come at the end of a word", 6),
        ("$$", "'$$' has no letters or digits to match", 1),
        ("title:$$", "'$$' has no letters or digits to match", 7),
        ("id:", "'id:' needs a word or a quoted phrase after it", 1),
        ('id:"2407 1"', "an arXiv id has no spaces", 5),
        ("NOT survey", "a query needs something positive to match", 1),
        ("-survey -review", "a query needs something positive to match", 1),
        ("diffusion OR NOT survey", "a query needs something positive to match", 14),
        ("NOT (a AND NOT b)", "a query needs something positive to match", 1),
        ("(" * 40 + "a" + ")" * 40, "query nested too deeply (more than 32 levels)", 33),
    ],
)
def test_syntax_errors(query: str, message: str, column: int) -> None:
    with pytest.raises(QuerySyntaxError) as info:
        parse_query(query)
    err = info.value
    assert str(err).startswith(message)
    assert str(err).endswith(f"at column {column}")
    assert err.column == column
    assert err.query == query
    assert "\n" not in str(err)
    assert isinstance(err, ConfigError)  # the config loader reports it like any config error


def test_caret_points_at_the_column() -> None:
    with pytest.raises(QuerySyntaxError) as info:
        parse_query("diffusion titel:x")
    assert info.value.caret() == "diffusion titel:x\n          ^"


def test_positive_checks_are_not_over_eager() -> None:
    # A NOT next to something positive is fine, and so is a double negation.
    assert parse_query("a -b -c") == And((t("a"), Not(t("b")), Not(t("c"))))
    assert parse_query("a OR (b -c)") == Or((t("a"), And((t("b"), Not(t("c"))))))


def test_nesting_up_to_the_limit_parses() -> None:
    assert parse_query("(" * 32 + "a" + ")" * 32) == t("a")
