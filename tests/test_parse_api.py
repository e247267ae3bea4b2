"""hf_api.parse_api on the real captures: golden records, the STRUCTURE.md quirks, bad bodies,
and a property test that mutated captures raise nothing but ParseError.

Golden files: tests/data/hf/<capture>.expected.json. Regenerate with
`DIGEST_REGEN_GOLDEN=1 .venv/bin/pytest tests/test_parse_api.py tests/test_parse_html.py`,
then read the diff before trusting it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digest.errors import ParseError
from digest.records import Paper
from digest.sources.hf_api import clean_url, parse_api
from tests.testdata import HF, corpus_dir

FIXTURES = HF
CORPUS = corpus_dir()
GOLDEN = HF
API_CAPTURES = sorted(
    p for p in FIXTURES.glob("api-daily_papers-*.json") if not p.name.endswith(".expected.json")
)


def capture_day(path: Path) -> dt.date:
    return dt.date.fromisoformat(path.stem[-10:])


def paper_json(paper: Paper) -> dict[str, Any]:
    """A Paper as plain JSON (dates as ISO strings, tuples as lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(paper):
        value = getattr(paper, f.name)
        if isinstance(value, dt.date | dt.datetime):
            value = value.isoformat()
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def check_golden(name: str, papers: list[Paper]) -> None:
    """Compare with tests/data/hf/<name>.expected.json, or rewrite it under DIGEST_REGEN_GOLDEN."""
    path = GOLDEN / f"{name}.expected.json"
    actual = [paper_json(p) for p in papers]
    if os.environ.get("DIGEST_REGEN_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(actual, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    expected = json.loads(path.read_text(encoding="utf-8"))
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert got == want, f"{name}: paper {want['id']} differs"


def parse_file(path: Path) -> list[Paper]:
    return parse_api(path.read_bytes(), capture_day(path))


def by_id(papers: list[Paper]) -> dict[str, Paper]:
    return {p.id: p for p in papers}


# --------------------------------------------------------------------------- golden


def test_there_are_eight_api_captures() -> None:
    assert len(API_CAPTURES) == 8


@pytest.mark.parametrize("path", API_CAPTURES, ids=lambda p: p.stem)
def test_golden(path: Path) -> None:
    check_golden(path.stem, parse_file(path))


# --------------------------------------------------------------------------- the quirks


def test_line_folds_are_collapsed_in_title_and_abstract() -> None:
    papers = by_id(parse_file(FIXTURES / "api-daily_papers-2024-05-27.json"))
    raw = json.loads((FIXTURES / "api-daily_papers-2024-05-27.json").read_bytes())
    folded = [r["paper"] for r in raw if "\n" in r["paper"]["title"]]
    assert len(folded) == 10
    for record in folded:
        paper = papers[record["id"]]
        assert "\n" not in paper.title and "  " not in paper.title
        assert paper.title == " ".join(record["title"].split())
        assert "\n" not in paper.abstract and paper.abstract == " ".join(record["summary"].split())


def test_hidden_authors_are_dropped_but_counted() -> None:
    papers = by_id(parse_file(CORPUS / "2024-06-26.json"))
    paper = papers["2406.17774"]
    assert paper.author_count == 7 and len(paper.authors) == 4
    assert not {"Ruben Wiersma", "Julien Philip", "Valentin Deschaintre"} & set(paper.authors)


def test_old_media_url_is_the_thumbnail_and_submitter_may_be_missing() -> None:
    papers = parse_file(FIXTURES / "api-daily_papers-2024-05-27.json")
    assert all(p.thumbnail and p.thumbnail.endswith(f"/papers/{p.id}.png") for p in papers)
    assert all(p.submitter is None for p in papers)  # no submittedBy before 2024-06-13


def test_organization_from_each_of_its_three_places() -> None:
    submitter_org = by_id(parse_file(FIXTURES / "api-daily_papers-2025-10-01.json"))
    orgs = {(p.organization, p.organization_fullname) for p in submitter_org.values()}
    assert ("nvidia", "NVIDIA") in orgs
    assert sum(p.organization is not None for p in submitter_org.values()) == 20
    top_level = parse_file(FIXTURES / "api-daily_papers-2025-10-03.json")
    assert sum(p.organization is not None for p in top_level) == 16
    records = json.loads((FIXTURES / "api-daily_papers-2026-08-19.json").read_bytes())
    record = next(r for r in records if "organization" in r)
    del record["organization"]
    record["paper"]["organization"] = {"name": "paper-org", "fullname": "Paper Org"}
    (paper,) = parse_api(json.dumps([record]).encode(), dt.date(2026, 8, 19))
    assert (paper.organization, paper.organization_fullname) == ("paper-org", "Paper Org")


def test_listed_on_is_the_requested_day_not_the_shifted_published_at() -> None:
    papers = parse_file(FIXTURES / "api-daily_papers-2025-10-01.json")
    assert {p.listed_on for p in papers} == {dt.date(2025, 10, 1)}
    paper = by_id(papers)["2509.24002"]
    assert paper.published_at == dt.datetime(2025, 9, 28, 17, 53, 27, tzinfo=dt.UTC)


def test_github_repo_with_embedded_newline_is_cleaned() -> None:
    paper = by_id(parse_file(CORPUS / "2025-10-23.json"))["2510.18940"]
    assert paper.github_repo == "https://github.com/FightingFighting/NeuroAda.git"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        (" https://github.com/a/b \n", "https://github.com/a/b"),
        ("HTTPS://github.com/a/b", "HTTPS://github.com/a/b"),
        ("github.com/a/b", None),
        ("javascript:alert(1)", None),
        ("https://", None),
        ("http://[::1", None),
        (42, None),
    ],
)
def test_clean_url(raw: object, clean: str | None) -> None:
    assert clean_url(raw) == clean


def test_new_fields_ai_summary_keywords_stars_media() -> None:
    papers = parse_file(FIXTURES / "api-daily_papers-2026-08-19.json")
    assert any(p.ai_summary for p in papers)
    assert any(p.ai_keywords for p in papers)
    assert any(p.github_stars is not None for p in papers)
    assert all(p.published_at is not None and p.published_at.tzinfo for p in papers)


def test_submitter_falls_back_to_submitted_on_daily_by() -> None:
    record = json.loads((FIXTURES / "api-daily_papers-2025-10-01.json").read_bytes())[0]
    assert parse_api(json.dumps([record]).encode(), dt.date(2025, 10, 1))[0].submitter
    del record["submittedBy"]
    expected = record["paper"]["submittedOnDailyBy"]["user"]
    (paper,) = parse_api(json.dumps([record]).encode(), dt.date(2025, 10, 1))
    assert paper.submitter == expected


def test_paper_listed_twice_keeps_the_first() -> None:
    records = json.loads((FIXTURES / "api-daily_papers-2025-10-01.json").read_bytes())
    twice = [records[0], records[1], {**records[0], "numComments": 99}]
    papers = parse_api(json.dumps(twice).encode(), dt.date(2025, 10, 1))
    assert [p.id for p in papers] == [records[0]["paper"]["id"], records[1]["paper"]["id"]]
    assert papers[0].num_comments == records[0]["numComments"]


def test_malformed_records_are_skipped_and_the_rest_kept() -> None:
    records = json.loads((FIXTURES / "api-daily_papers-2025-10-01.json").read_bytes())
    no_id = json.loads(json.dumps(records[1]))
    del no_id["paper"]["id"]
    bad_types = json.loads(json.dumps(records[2]))
    bad_types["paper"]["upvotes"] = "many"
    bad_types["paper"]["authors"] = "nobody"
    body = json.dumps([records[0], no_id, "junk", None, bad_types]).encode()
    papers = parse_api(body, dt.date(2025, 10, 1))
    assert [p.id for p in papers] == [records[0]["paper"]["id"], records[2]["paper"]["id"]]
    assert (papers[1].upvotes, papers[1].authors, papers[1].author_count) == (0, (), 0)


def test_empty_list_is_a_normal_answer() -> None:
    assert parse_api(b"[]", dt.date(2024, 6, 1)) == []
    assert parse_api(b" [ ]\n", dt.date(2024, 6, 1)) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'[{"paper": {"id": "2401.00001", "tit', "is not valid JSON (truncated?) at char 32"),
        (b"", "is not valid JSON (truncated?) at char 0"),
        (b"<html>Bad gateway</html>", "is not valid JSON (truncated?) at char 0"),
        (b'{"error": "Invalid date"}', "is a JSON dict, expected a list of papers"),
        (b"null", "is a JSON NoneType, expected a list of papers"),
        (b'["\xff"]', "is not valid UTF-8"),
        (b'[1, "x", {"paper": {}}]', "none of its 3 records has a paper id and title"),
    ],
)
def test_bad_bodies_are_one_line_parse_errors(body: bytes, message: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_api(body, dt.date(2024, 8, 1))
    text = str(info.value)
    assert "\n" not in text and text.startswith("API body for 2024-08-01")
    assert message in text


def test_whole_corpus_parses() -> None:
    total = 0
    for path in sorted(CORPUS.glob("*.json")):
        raw = json.loads(path.read_bytes())
        papers = parse_file(path)
        assert len(papers) == len({r["paper"]["id"] for r in raw}), path.name
        total += len(papers)
    assert total > 6000


# --------------------------------------------------------------------------- property

CAPTURE_BYTES = [p.read_bytes() for p in API_CAPTURES]
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)


def mutate_json(data: st.DataObject, records: list[Any]) -> list[Any]:
    """Delete keys and swap values for other types, at random places in random records."""
    for _ in range(data.draw(st.integers(1, 6), label="edits")):
        if not records:
            break
        index = data.draw(st.integers(0, len(records) - 1), label="record")
        target: Any = records[index]
        for _depth in range(data.draw(st.integers(0, 3), label="depth")):
            if isinstance(target, dict) and target:
                child = target[data.draw(st.sampled_from(sorted(target)), label="key")]
            elif isinstance(target, list) and target:
                child = target[data.draw(st.integers(0, len(target) - 1), label="item")]
            else:
                break
            if not isinstance(child, dict | list):
                break
            target = child
        if isinstance(target, dict) and target:
            key = data.draw(st.sampled_from(sorted(target)), label="edit key")
            if data.draw(st.booleans(), label="delete?"):
                del target[key]
            else:
                target[key] = data.draw(ANY_JSON, label="new value")
        elif isinstance(target, list) and target:
            target[data.draw(st.integers(0, len(target) - 1))] = data.draw(ANY_JSON)
        else:
            records[index] = data.draw(ANY_JSON, label="new record")
    return records


def mutate_bytes(data: st.DataObject, body: bytes) -> bytes:
    """Flip some bytes, then maybe truncate."""
    buffer = bytearray(body)
    for _ in range(data.draw(st.integers(0, 4), label="flips")):
        position = data.draw(st.integers(0, len(buffer) - 1), label="at")
        buffer[position] = data.draw(st.integers(0, 255), label="byte")
    if data.draw(st.booleans(), label="truncate?"):
        del buffer[data.draw(st.integers(0, len(buffer)), label="cut") :]
    return bytes(buffer)


def check_papers(papers: list[Paper], day: dt.date) -> None:
    assert len({p.id for p in papers}) == len(papers)
    for paper in papers:
        assert isinstance(paper.id, str) and paper.id and paper.title == paper.title.strip()
        assert paper.listed_on == day and paper.author_count >= len(paper.authors)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_api_captures_raise_only_parse_error(data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(CAPTURE_BYTES) - 1), label="capture")
    day = capture_day(API_CAPTURES[index])
    if data.draw(st.booleans(), label="json-level?"):
        body = json.dumps(mutate_json(data, json.loads(CAPTURE_BYTES[index]))).encode()
    else:
        body = mutate_bytes(data, CAPTURE_BYTES[index])
    try:
        papers = parse_api(body, day)
    except ParseError as e:
        assert "\n" not in str(e)
        return
    check_papers(papers, day)
