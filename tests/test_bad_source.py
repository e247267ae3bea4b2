"""Bad values from the source, injected through the real fixture server and the real CLI
(`python -m digest.cli` in a subprocess): a number out of range or of the wrong type is
dropped and its record kept; a paper id that is not arXiv's drops its record; either is
one log line, the clean records and days of the poll are stored, no traceback."""

from __future__ import annotations

import copy
import datetime as dt
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from digest import store
from digest.models import PaperRow
from digest.sources.hf_api import MAX_COUNT, is_arxiv_id, parse_api
from digest.sources.hf_html import parse_cards
from tests.configs import write_config
from tests.hfserver import HFServer
from tests.testdata import HF

DAY = dt.date(2025, 10, 1)
CLEAN_DAY = dt.date(2024, 8, 1)
RECORDS: list[dict[str, Any]] = json.loads((HF / f"api-daily_papers-{DAY}.json").read_bytes())

BAD_NUMBERS: list[tuple[str, str]] = [
    ("1e30", "1e30"),
    ("negative", "-5"),
    ("2^31", str(2**31)),
    ("10^30 as an integer", "1" + "0" * 30),
    ("5,000 digits", "9" * 5000),  # json.loads alone raises ValueError on this
    ("NaN", "NaN"),
    ("Infinity", "Infinity"),
    ("a string", '"12"'),
    ("a float", "3.5"),
    ("true", "true"),
]


def body_with(upvotes_literal: str, stars_literal: str = "7") -> bytes:
    """The day's capture with the first record's upvotes, numComments and githubStars
    replaced by raw JSON literals (so 1e30, NaN and 5,000 digits reach the parser as sent)."""
    records = copy.deepcopy(RECORDS)
    records[0]["paper"]["upvotes"] = "@UPVOTES@"
    records[0]["paper"]["githubStars"] = "@STARS@"
    records[0]["numComments"] = "@UPVOTES@"
    text = json.dumps(records)
    text = text.replace('"@UPVOTES@"', upvotes_literal).replace('"@STARS@"', stars_literal)
    return text.encode()


@pytest.mark.parametrize(("label", "literal"), BAD_NUMBERS, ids=[b[0] for b in BAD_NUMBERS])
def test_a_bad_number_is_dropped_and_its_record_kept(
    label: str, literal: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="digest.sources.hf_api"):
        papers = parse_api(body_with(literal), DAY)
    assert [p.id for p in papers] == [r["paper"]["id"] for r in RECORDS]
    first = papers[0]
    assert (first.upvotes, first.num_comments, first.github_stars) == (0, 0, 7)
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"paper {first.id}: dropped" in line and "upvotes=" in line and "numComments=" in line
    assert len(line) < 300, line


def test_counts_at_the_edges_are_kept(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        (paper, *_) = parse_api(body_with(str(MAX_COUNT), "0"), DAY)
    assert (paper.upvotes, paper.num_comments, paper.github_stars) == (MAX_COUNT, MAX_COUNT, 0)
    assert not caplog.records


ARXIV_IDS = ["2410.12345", "2410.12345v2", "0704.0001", "1412.1234v10", "hep-th/9901001",
             "math.AG/0101001v3", "cond-mat/0001001"]  # fmt: skip
NOT_ARXIV_IDS = [
    "2603.90008/../../evil?x=",
    "2410.12345\r\nBcc: x@evil.org",
    "2410.12345\n",
    "2413.12345",  # month 13
    "2410.123",
    "2410.1234567",
    "hep-th/99010011",
    "HEP-TH/9901001",
    "javascript:alert(1)",
    "../etc/passwd",
    "2410.12345v0",
    "",
]


def test_arxiv_id_forms() -> None:
    assert all(is_arxiv_id(i) for i in ARXIV_IDS)
    assert [i for i in NOT_ARXIV_IDS if is_arxiv_id(i)] == []


def test_a_record_with_another_id_is_dropped_with_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    records = copy.deepcopy(RECORDS)
    records[0]["paper"]["id"] = "2603.90008/../../evil?x="
    records[1]["paper"]["id"] = "2410.12345\r\nBcc: x@evil.org"
    with caplog.at_level(logging.WARNING, logger="digest.sources.hf_api"):
        papers = parse_api(json.dumps(records).encode(), DAY)
    assert [p.id for p in papers] == [r["paper"]["id"] for r in RECORDS[2:]]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert all("not an arXiv id" in line and "\n" not in line for line in lines)


def test_html_cards_check_ids_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    page = (HF / "papers-page-2024-08-01.html").read_bytes().decode()
    good = parse_cards(page.encode(), CLEAN_DAY)
    first = good[0].id
    evil = page.replace(f'href="/papers/{first}"', 'href="/papers/..%2F..%2Fevil"', 1)
    with caplog.at_level(logging.WARNING, logger="digest.sources.hf_api"):
        papers = parse_cards(evil.encode(), CLEAN_DAY)
    assert first not in {p.id for p in papers} and len(papers) == len(good) - 1
    assert any("not an arXiv id" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- the real CLI


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "digest.cli", *args, "-c", str(config)],
        capture_output=True, text=True, timeout=120, cwd=config.parent,
    )  # fmt: skip


def stored(config: Path) -> dict[str, PaperRow]:
    engine = store.open_engine(f"sqlite:///{config.parent / 'digest.db'}")
    with Session(engine) as session:
        rows = {r.id: r for r in session.exec(select(PaperRow))}
    engine.dispose()
    return rows


@pytest.mark.parametrize("literal", ["1e30", "1" + "0" * 30, "9" * 5000, "-1", '"many"'])
def test_fetch_through_the_cli_stores_every_record_and_day(
    tmp_path: Path, hf_server: HFServer, literal: str
) -> None:
    """One poll of two days, one of which carries the bad number: both days stored,
    the bad record with its count dropped, exit 0, one log line, no traceback."""
    hf_server.set_api_body(DAY, body_with(literal, stars_literal=literal))
    config = write_config(tmp_path, hf_server.base_url)
    result = cli(config, "fetch", "--since", str(DAY - dt.timedelta(days=1)), "--until", str(DAY))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = stored(config)
    assert {r["paper"]["id"] for r in RECORDS} <= set(rows)
    first = rows[RECORDS[0]["paper"]["id"]]
    assert (first.upvotes, first.num_comments, first.github_stars) == (0, 0, None)
    dropped = [line for line in result.stderr.splitlines() if "dropped" in line]
    assert len(dropped) == 1, result.stderr
    assert "githubStars=" in dropped[0]


def test_send_through_the_cli_never_links_a_bad_id(tmp_path: Path, hf_server: HFServer) -> None:
    records = copy.deepcopy(RECORDS)
    records[0]["paper"]["id"] = "2603.90008/../../evil?x="
    records[0]["paper"]["title"] = "An agent paper with a bad id"
    hf_server.set_api_body(DAY, json.dumps(records).encode())
    config = write_config(tmp_path, hf_server.base_url)
    result = cli(config, "fetch", "--date", str(DAY))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if "not an arXiv id" in x]
    assert "2603.90008/../../evil?x=" in line
    assert not any("evil" in pid for pid in stored(config))
