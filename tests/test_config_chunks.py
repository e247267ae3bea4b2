"""A big subscription file read a chunk of subscribers at a time (digest/config/chunks.py):
the same Config, and the same error messages and lines, as reading it whole with
tomllib; and every file that cannot be cut safely read whole.

Chunks are made 2 subscribers long here, so a file of 7 is read in 4 pieces."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from digest.config import Config, Topic, load_config
from digest.config import chunks as chunks_module
from digest.config.build import build_config
from digest.errors import ConfigError
from digest.topics import query as query_module

HEAD = """\
[source]
poll_interval = "1h"

[defaults]
timezone = "Europe/Berlin"
max_papers = 10
"""


def subscriber(i: int, query: str = "diffusion", extra: str = "") -> str:
    return f"""
[[subscribers]]
email = "user{i}@example.org"
name = "User {i}"
schedule = "{("daily 07:00", "weekly fri 17:30")[i % 2]}"
topics = [{{ name = "Topic", query = '{query}' }}, {{ name = "T{i}", query = "agent* -survey" }}]
{extra}"""


def seven(**changes: str) -> str:
    """HEAD and 7 subscribers; `changes` maps "s3" to the text of subscriber 3 instead."""
    return HEAD + "".join(changes.get(f"s{i}", subscriber(i)) for i in range(7))


def whole(path: Path) -> Config | list[str]:
    """What the file means read whole by tomllib: the Config, or the problems."""
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        pytest.fail("the reference needs valid TOML; compare syntax errors by message")
    try:
        return build_config(data, path=path, text=text, env={})
    except ConfigError as e:
        return e.problems


def chunked(path: Path) -> Config | list[str]:
    try:
        return load_config(path, {})
    except ConfigError as e:
        return e.problems


def texts_given(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> list[str]:
    """The texts module.name (a function of one text) is called with, from now on."""
    seen: list[str] = []
    real = getattr(module, name)

    def spy(text: str) -> object:
        seen.append(text)
        return real(text)

    monkeypatch.setattr(module, name, spy)
    return seen


@pytest.fixture
def pieces(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Chunks of 2 subscribers, and the texts toml-rs was given, in order."""
    monkeypatch.setattr(chunks_module, "CHUNK", 2)
    return texts_given(monkeypatch, chunks_module, "fast_loads")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "digest.toml"
    path.write_bytes(text.encode("utf-8"))
    return path


def test_a_valid_file_is_read_in_pieces_into_the_same_config(
    tmp_path: Path, pieces: list[str]
) -> None:
    path = write(tmp_path, seven())
    config = chunked(path)
    assert isinstance(config, Config)
    assert config == whole(path)
    assert [s.email for s in config.subscribers] == [f"user{i}@example.org" for i in range(7)]
    assert len(pieces) == 5  # the head, then subscribers 0-1, 2-3, 4-5 and 6
    assert pieces[0].strip() == HEAD.strip() and all(
        p.startswith("[[subscribers]]") for p in pieces[1:]
    )
    assert sum(p.count("[[subscribers]]") for p in pieces) == 7


def test_a_query_shared_across_pieces_is_checked_once(
    tmp_path: Path, pieces: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []

    def check_query(query: str) -> None:
        checked.append(query)
        real_check(query)

    real_check = query_module.check_query
    monkeypatch.setattr(query_module, "check_query", check_query)
    config = chunked(write(tmp_path, seven()))
    assert isinstance(config, Config) and len(pieces) == 1 + 4  # the head, then 4 pieces
    assert checked.count("diffusion") == 1  # "Topic" = 'diffusion' for all 7
    assert {s.topics[0] for s in config.subscribers} == {Topic("Topic", "diffusion")}


@pytest.mark.parametrize(
    "changes",
    [
        {"s5": subscriber(5, query="diffusion OR")},  # a bad query in the third piece
        {"s6": subscriber(1)},  # user1's email again, in the last piece
        {"s4": subscriber(4, extra="max_papers = 0\nwindow = 3\n")},
        {"s3": subscriber(3, extra='delivery = "feed"\n')},  # no [web]
        {"s2": "\n[[subscribers]]\nname = 'No email'\ntopics = []\n"},
    ],
    ids=["bad query", "duplicate email", "bad and unknown keys", "feed without web", "empty"],
)
def test_problems_in_later_pieces_read_as_in_the_whole_file(
    tmp_path: Path, pieces: list[str], changes: dict[str, str]
) -> None:
    path = write(tmp_path, seven(**changes))
    problems = chunked(path)
    assert isinstance(problems, list) and problems
    assert problems == whole(path)
    assert len(pieces) == 5  # the pieces were enough: the lines come from the whole text


def test_a_bad_default_fails_every_subscriber_without_its_own_value(tmp_path: Path) -> None:
    path = write(tmp_path, seven().replace("max_papers = 10", "max_papers = -1"))
    assert chunked(path) == whole(path)


@pytest.mark.parametrize(
    "text",
    [
        # a table after the subscribers: valid TOML, but that piece holds more than them
        seven() + '\n[alerts]\nemail = "ops@example.org"\n',
        # a multi-line string could hold a line that looks like a header: never cut
        seven().replace('poll_interval = "1h"', 'poll_interval = """1h"""'),
        seven(s3=subscriber(3).replace("'diffusion'", "'''agent\n[[subscribers]]\n'''")),
        # a header spelled another way is still a subscriber, inside its piece
        seven(s3=subscriber(3).replace("[[subscribers]]", "[[ subscribers ]]  # three")),
        # array-of-tables topics, a comment after a header, CRLF line ends
        seven(
            s2='\n[[subscribers]] # two\nemail = "u2@example.org"\n'
            '[[subscribers.topics]]\nname = "A"\nquery = "agent"\n'
        ).replace("\n", "\r\n"),
        # no subscribers at all
        HEAD,
    ],
    ids=[
        "table after",
        "multi-line string",
        "header in a string",
        "other spelling",
        "sub-tables, CRLF",
        "none",
    ],
)
def test_files_that_cannot_be_cut_or_cut_oddly_mean_the_same(
    tmp_path: Path, pieces: list[str], text: str
) -> None:
    path = write(tmp_path, text)
    assert chunked(path) == whole(path)


@pytest.mark.parametrize(
    "text",
    [
        # a syntax error in the third piece
        seven(s5=subscriber(5).replace("name =", "name == ")),
        # an array spread over a cut does not parse in pieces; nor in the whole file
        seven().replace("max_papers = 10", "max_papers = [\n"),
        # TOML 1.1 (toml-rs could read it): a line break inside an inline table
        seven(s1=subscriber(1).replace("[{ name", "[{\n name")),
        # subscribers as a key in the head, then as tables: defined twice
        "subscribers = []\n" + seven(),
    ],
    ids=["syntax error late", "unclosed array", "TOML 1.1 only", "defined twice"],
)
def test_toml_errors_are_tomllibs_with_the_line_in_the_whole_file(
    tmp_path: Path, pieces: list[str], text: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(tomllib.TOMLDecodeError) as reference:
        tomllib.loads(text)
    m = re.search(r"\(at line (\d+), column (\d+)\)$", str(reference.value))
    assert m is not None
    with pytest.raises(ConfigError) as e:
        load_config(path, {})
    assert str(e.value).startswith(f"{path}:{m.group(1)}: invalid TOML: ")
    assert str(e.value).endswith(f"(column {m.group(2)})")


@pytest.mark.parametrize(
    "text",
    [
        seven(s5=subscriber(5, query="diffusion or gan")),  # a warning in the third piece
        seven().replace('poll_interval = "1h"', 'poll_interval = "soon"'),  # in the head
        seven(s6=subscriber(6, query="diffusion OR")),  # an error in the last piece
    ],
    ids=["warning late", "head problem", "error late"],
)
def test_lines_are_found_in_the_piece_without_scanning_the_whole_file(
    tmp_path: Path, pieces: list[str], monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    """A problem's line comes from scanning its own piece (or the head): a 100k file's
    one lower-case "or" cost a 12 s scan of all 34 MB. The same line as read whole."""
    import digest.config.reader as reader_module

    scanned = texts_given(monkeypatch, reader_module, "key_lines")
    path = write(tmp_path, text)
    got = chunked(path)
    assert scanned and text not in scanned  # parts were scanned, never the whole text
    assert all(len(part) < len(text) / 2 for part in scanned)
    monkeypatch.undo()
    expected = whole(path)
    if isinstance(got, Config):
        assert isinstance(expected, Config) and got.warnings == expected.warnings
        assert got.warnings and ":" in got.warnings[0]
    else:
        assert got == expected


def test_a_file_read_in_pieces_is_never_read_whole(
    tmp_path: Path, pieces: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 100k subscribers the whole text is 34 MB held for the whole load: the lines
    are read piece by piece instead (and the whole file only to find a line)."""
    path = write(tmp_path, "\ufeff" + seven())  # a byte-order mark, as Windows writes
    expected = whole(write(tmp_path, seven()))
    write(tmp_path, "\ufeff" + seven())

    def no_whole_read(self: Path) -> bytes:
        raise AssertionError(f"{self} was read whole")

    monkeypatch.setattr(Path, "read_bytes", no_whole_read)
    monkeypatch.setattr(Path, "read_text", no_whole_read)
    assert chunked(path) == expected
    assert len(pieces) == 5 and max(p.count("[[subscribers]]") for p in pieces) == 2


def test_bytes_that_are_not_utf8_in_a_later_piece(tmp_path: Path, pieces: list[str]) -> None:
    text = seven(s5=subscriber(5).replace("User 5", "User \udcff"))
    raw = text.encode("utf-8", "surrogateescape")  # a lone 0xff byte in the third piece
    path = tmp_path / "digest.toml"
    path.write_bytes(raw)
    line = raw[: raw.index(b"\xff")].count(b"\n") + 1
    with pytest.raises(ConfigError) as e:
        load_config(path, {})
    assert str(e.value) == f"{path}:{line}: the config file is not UTF-8 text"
