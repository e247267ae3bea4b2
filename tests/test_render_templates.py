"""Tests of the template machinery (shipped folder, override folder, load-time CSS
inlining, clear template errors) and of the small text helpers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from digest.errors import ConfigError
from digest.records import Match, Paper
from digest.render import Renderer, shipped_templates_dir
from digest.render.css import inline_template, parse_stylesheet
from digest.render.text import first_sentences, format_authors, highlight
from tests.render_helpers import RL, Html, corpus_papers, hit, parts, render


@pytest.fixture(scope="module")
def papers() -> list[Paper]:
    return list(corpus_papers())


# ---------------------------------------------------------------------------
# Templates: shipped, overridden, broken


def test_shipped_templates_are_found() -> None:
    folder = shipped_templates_dir()
    assert (folder / "digest.html.j2").is_file() and (folder / "digest.css").is_file()


def test_override_folder_wins_and_gets_inlined(tmp_path: Path, papers: list[Paper]) -> None:
    (tmp_path / "_paper_link.html.j2").write_text("unused\n")
    (tmp_path / "_paper.html.j2").write_text(
        '<tr><td class="card" style="border:2px solid red">'
        '<a class="title" href="{{ p.url }}">OVERRIDDEN '
        '{{ p.title | hl(p.leaves, "title") }}</a></td></tr>\n'
    )
    custom = Renderer(tmp_path)
    _, html = parts(render(custom, [Match(papers[1], (RL,))]))
    page = Html(html)
    assert "OVERRIDDEN" in page.all_text()
    cell = next(
        a for t, a in page.tags if t == "td" and "border:2px solid red" in str(a.get("style"))
    )
    assert str(cell["style"]).startswith("padding:10px 24px")  # class first, own style last
    assert papers[1].url in page.hrefs()  # the shipped page template still wraps it


def test_undefined_variable_in_a_template_is_a_clear_error(
    tmp_path: Path, papers: list[Paper]
) -> None:
    (tmp_path / "digest.txt.j2").write_text("line one\n{{ p_title }}\n")
    broken = Renderer(tmp_path)
    with pytest.raises(ConfigError, match=r"digest.txt.j2, line 2: 'p_title' is undefined"):
        render(broken, [Match(papers[0], (RL,))])


def test_template_syntax_error_and_unknown_class_fail_at_load(tmp_path: Path) -> None:
    (tmp_path / "_paper.html.j2").write_text("<tr>\n{% if %}\n</tr>\n")
    with pytest.raises(ConfigError, match=r"_paper.html.j2, line 2"):
        Renderer(tmp_path)
    (tmp_path / "_paper.html.j2").write_text('<tr>\n<td class="crad">x</td></tr>\n')
    with pytest.raises(ConfigError, match=r"_paper.html.j2, line 2: class 'crad'"):
        Renderer(tmp_path)
    with pytest.raises(ConfigError, match="not a folder"):
        Renderer(tmp_path / "missing")


def test_stylesheet_inlining_rules() -> None:
    sheet = parse_stylesheet(
        ".a, .b { color: red; }\n.b { margin:0 }\n/* note */\n"
        "@media (max-width: 600px) { .b { width: 100% !important; } }\np { x: y }"
    )
    assert sheet.inline == {"a": "color:red", "b": "color:red;margin:0"}
    assert sheet.residue_classes == {"b"}
    src = '<p class="a b" style="font-weight:bold" id="x">\n<i class="a">{{ v }}</i>'
    out = inline_template(src, sheet, where="t.html.j2")
    assert out == (
        '<p class="b" style="color:red;color:red;margin:0;font-weight:bold" id="x">\n'
        '<i style="color:red">{{ v }}</i>'
    )
    with pytest.raises(ConfigError, match=re.escape("line 1: class='{{ c }}'")):
        inline_template('<p class="{{ c }}">', sheet, where="t.html.j2")
    with pytest.raises(ConfigError, match="not a 'property: value'"):
        parse_stylesheet(".a { color }")


# ---------------------------------------------------------------------------
# Text helpers


def test_highlight_escapes_what_it_marks_and_what_it_does_not() -> None:
    leaves = hit("T", "amp OR script OR x OR 39").leaves  # 39: the entity of "'"
    out = str(highlight("R&D's <script>x</script> & amp", leaves, "title", "<mark>"))
    assert out == ("R&amp;D&#39;s &lt;<mark>script</mark>&gt;<mark>x</mark>&lt;/"
                   "<mark>script</mark>&gt; &amp; <mark>amp</mark>")  # fmt: skip
    assert str(highlight("a <b>", frozenset(), "title", "<mark>")) == "a &lt;b&gt;"


def test_first_sentences_caps_and_skips_abbreviations() -> None:
    text = "We use e.g. Qwen, as Wei et al. Did. Results hold. Then a third."
    assert first_sentences(text) == "We use e.g. Qwen, as Wei et al. Did. Results hold."
    assert first_sentences("One.\n  Two!  Three?", 2) == "One. Two!"
    long = "word " * 300 + ". Next."
    capped = first_sentences(long)
    assert len(capped) <= 400 and capped.endswith("…")


def test_authors_et_al_counts_every_author() -> None:
    assert format_authors(("A", "B", "C", "D"), 15) == "A, B, C et al. (15 authors)"
    assert format_authors(("A", "B", "C"), 3) == "A, B, C"
    assert format_authors(("A", "B"), 0) == "A, B"
    assert format_authors((), 600) == "600 authors"
    assert format_authors(("A\nB", "C"), 5) == "A B, C et al. (5 authors)"
