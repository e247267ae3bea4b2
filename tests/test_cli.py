"""The command line end to end, in-process: real config file, real fixture server over
HTTP, real SQLite file, real Maildir. Exit codes and stderr lines are the contract."""

from __future__ import annotations

import datetime as dt
import json
import mailbox
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from contextlib import closing
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from digest import store
from digest.cli import main
from digest.commands.status import pending_line
from digest.store import peek
from tests.configs import ADA, write_config
from tests.hfserver import HFServer, closed_port
from tests.testdata import HF, corpus_dir

CAPTURE = HF / "api-daily_papers-2025-10-01.json"


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def papers_stored(config: Path) -> int:
    engine = store.open_engine(f"sqlite:///{config.parent / 'digest.db'}")
    with Session(engine) as session:
        count = store.store_stats(session).papers
    engine.dispose()
    return count


def test_init_writes_an_example_that_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "digest.toml"
    assert main(["init", "-c", str(config)]) == 0
    assert main(["check", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "ada@example.org" in out

    assert main(["init", "-c", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"digest: {config} already exists; use --force to overwrite it"]


def test_bad_config_exits_2_naming_file_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path,
        "http://127.0.0.1:1",
        subscribers="""
[[subscribers]]
email = "ada@example.org"
timezon = "Europe/Berlin"
topics = [{ name = "x", query = 'diffusion AND (' }]
""",
    )
    lines = config.read_text().splitlines()
    typo = 1 + next(n for n, line in enumerate(lines) if line.startswith("timezon"))
    for command in (["check"], ["fetch"], ["send"], ["run"]):
        assert main([*command, "-c", str(config)]) == 2
        err = capsys.readouterr().err
        assert f"{config}:{typo}: subscribers[1] (ada@example.org).timezon: unknown key" in err
        assert f"{config}:{typo + 1}: subscribers[1] (ada@example.org).topics[1].query" in err
    assert not (tmp_path / "digest.db").exists()


def test_fetch_prints_new_papers_once(
    tmp_path: Path, hf_server: HFServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, hf_server.base_url)
    assert main(["fetch", "-c", str(config), "--date", "2024-08-01", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = json.loads(
        (HF / "api-daily_papers-2024-08-01.json").read_text()
    )
    assert sorted(r["id"] for r in lines) == sorted(r["paper"]["id"] for r in expected)
    assert {(r["listed_on"], r["status"]) for r in lines} == {("2024-08-01", "new")}
    assert all(r["title"] for r in lines)

    assert main(["fetch", "-c", str(config), "--date", "2024-08-01", "--json"]) == 0
    assert capsys.readouterr().out == ""


def test_unreachable_source_is_one_line_exit_1_and_loses_nothing(
    tmp_path: Path, hf_server: HFServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, hf_server.base_url)
    assert main(["fetch", "-c", str(config), "--date", "2024-08-01"]) == 0
    stored = papers_stored(config)
    assert stored == 11
    capsys.readouterr()

    down = f"http://127.0.0.1:{closed_port()}"
    write_config(tmp_path, down)
    assert main(["fetch", "-c", str(config), "--date", "2024-08-01"]) == 1
    # the whole of stderr: the source, not a day, is what failed
    assert capsys.readouterr().err.splitlines() == [
        f"digest: cannot reach {down}: connection refused (check the network or [source] base_url)"
    ]
    assert papers_stored(config) == stored


def test_backfill_stores_every_distinct_corpus_paper(
    tmp_path: Path, hf_server: HFServer, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = sorted((corpus_dir()).glob("*.json"))
    ids = {r["paper"]["id"] for p in corpus for r in json.loads(p.read_bytes())}
    config = write_config(tmp_path, hf_server.base_url)
    first, last = corpus[0].stem, corpus[-1].stem
    assert main(["fetch", "-c", str(config), "--since", first, "--until", last, "--json"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len({r["id"] for r in printed if r["status"] == "new"}) == len(ids)
    assert papers_stored(config) == len(ids) == 6106


def serve_today(hf: HFServer) -> list[dict[str, object]]:
    """Serve a real capture as today's and yesterday's list, so digests have news."""
    body = CAPTURE.read_bytes()
    for day in (today(), today() - dt.timedelta(days=1)):
        hf.set_api_body(day, body)
    records: list[dict[str, object]] = json.loads(body)
    return records


def test_match_json_shows_the_next_digest_and_changes_nothing(
    tmp_path: Path, hf_server: HFServer, capsys: pytest.CaptureFixture[str]
) -> None:
    serve_today(hf_server)
    config = write_config(tmp_path, hf_server.base_url)
    assert main(["fetch", "-c", str(config)]) == 0
    capsys.readouterr()
    assert main(["match", "-c", str(config), "--json"]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["subscriber"] == "ada@example.org"
    papers = record["papers"]
    assert papers, "the capture has agent and video papers"
    for paper in papers:
        assert set(paper) >= {"id", "title", "topics", "score"}
        assert paper["topics"] and set(paper["topics"]) <= {"Agents", "Video"}
        assert paper["score"] == len(paper["topics"])
    scores = [p["score"] for p in papers]
    assert scores == sorted(scores, reverse=True)
    assert main(["match", "-c", str(config), "--json"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [record]


def test_send_delivers_once_to_the_maildir(
    tmp_path: Path, hf_server: HFServer, capsys: pytest.CaptureFixture[str]
) -> None:
    serve_today(hf_server)
    config = write_config(tmp_path, hf_server.base_url)
    assert main(["send", "-c", str(config), "--dry-run"]) == 0
    assert "would send" in capsys.readouterr().out
    assert not list(mailbox.Maildir(tmp_path / "mail", create=True))

    assert main(["send", "-c", str(config)]) == 0
    assert main(["send", "-c", str(config)]) == 0
    assert main(["send", "-c", str(config), "--no-fetch"]) == 0
    messages = list(mailbox.Maildir(tmp_path / "mail"))
    assert len(messages) == 1
    message = message_from_bytes(messages[0].as_bytes(), policy=policy.default)
    assert message["To"] == "Ada <ada@example.org>"
    assert "new paper" in message["Subject"]
    html = message.get_body(("html",))
    assert html is not None and "huggingface.co/papers/" in html.get_content()

    capsys.readouterr()
    assert main(["status", "-c", str(config), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["digests"]["sent"] == 1
    assert "ada@example.org" in status["subscribers"]


def test_status_says_how_long_the_pending_digests_take_at_the_rate_cap(
    tmp_path: Path, hf_server: HFServer, capsys: pytest.CaptureFixture[str]
) -> None:
    serve_today(hf_server)
    relay = closed_port()  # the relay is down: the digests stay pending
    smtp = f'host = "127.0.0.1", port = {relay}, security = "none", timeout = 2, retries = 0'
    bob = ADA.replace("ada@", "bob@").replace('"Ada"', '"Bob"')

    def configure(rate: str) -> Path:
        mail = f"smtp = {{ {smtp}, rate_per_second = {rate} }}"
        return write_config(tmp_path, hf_server.base_url, mail=mail, subscribers=ADA + bob)

    config = configure("10")
    assert main(["send", "-c", str(config)]) == 1
    capsys.readouterr()
    configure("0.002")  # the cap status reads is the file's, not the one they were sent with
    assert main(["status", "-c", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = (
        "sending 2 pending digests takes at least 16m40s at rate_per_second = 0.002 "
        "(the README says which rate your relay takes)"
    )
    assert expected in lines, lines
    assert main(["status", "-c", str(config), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["digests"]["pending"] == 2
    assert status["rate_per_second"] == 0.002
    assert status["pending_send_seconds"] == pytest.approx(1000)


def test_status_with_nothing_pending_or_no_cap_says_so(
    tmp_path: Path, hf_server: HFServer, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, hf_server.base_url)  # Maildir: no cap
    assert main(["status", "-c", str(config)]) == 0
    assert "sending" not in capsys.readouterr().out  # nothing waits: no line about it
    assert main(["status", "-c", str(config), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["rate_per_second"] is None and status["pending_send_seconds"] is None
    assert pending_line(1, None) == "sending 1 pending digest: no rate cap (Maildir)"


def test_preview_writes_html_and_eml_without_sending(
    tmp_path: Path, hf_server: HFServer, capsys: pytest.CaptureFixture[str]
) -> None:
    serve_today(hf_server)
    config = write_config(tmp_path, hf_server.base_url)
    assert main(["fetch", "-c", str(config)]) == 0
    for name in ("next.html", "next.eml"):
        out = tmp_path / name
        assert (
            main(
                ["preview", "-c", str(config), "--subscriber", "Ada@Example.org", "--out", str(out)]
            )
            == 0
        )
        assert out.stat().st_size > 1000
    eml = message_from_bytes((tmp_path / "next.eml").read_bytes(), policy=policy.default)
    assert eml.get_content_type() == "multipart/alternative"
    assert "<table" in (tmp_path / "next.html").read_text()
    assert not (tmp_path / "mail").exists() or not list(mailbox.Maildir(tmp_path / "mail"))
    assert main(["preview", "-c", str(config), "--subscriber", "nobody@example.org"]) == 2


def test_help_speaks_to_users_and_names_every_command() -> None:
    """`digest --help` is for the person running it: no developer docstring, every command."""
    out = subprocess.run(
        [sys.executable, "-m", "digest.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "DigestError" not in out and "commands.py" not in out
    for name in ("init", "check", "fetch", "match", "preview", "send", "run", "status"):
        assert f"\n    {name} " in out, name
    assert "Exit status" in out


def test_each_command_closes_its_store_so_the_sqlite_file_alone_holds_it(
    tmp_path: Path, hf_server: HFServer
) -> None:
    """Real processes: cli.py freezes what is alive at exit instead of collecting it, so a
    command must close its store itself. Then SQLite checkpoints its write-ahead log
    into the file (a read-only reader may leave the log behind, empty), and a copy of
    the file alone, a backup, holds what was written."""
    config = write_config(tmp_path, hf_server.base_url)
    listed = len(json.loads((HF / "api-daily_papers-2024-08-01.json").read_bytes()))
    wal, backup = tmp_path / "digest.db-wal", tmp_path / "backup.db"
    for command in (["fetch", "--date", "2024-08-01"], ["send"], ["status"], ["match"]):
        done = subprocess.run(
            [sys.executable, "-m", "digest.cli", *command, "-c", str(config)],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert not wal.exists() or wal.stat().st_size == 0, command
        shutil.copy(tmp_path / "digest.db", backup)
        with closing(sqlite3.connect(backup)) as con:
            assert con.execute("SELECT count(*) FROM papers").fetchone() == (listed,), command


def test_the_first_run_of_the_example_leaves_a_digest_in_mail(
    tmp_path: Path,
    hf_server: HFServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The README's first command in an empty folder, on an ordinary day: 2025-12-02's
    list, on which the example's two precise topics match nothing (the broad ones do),
    served as every polled day. Only the source's address is changed from the example."""
    body = corpus_day_bytes("2025-12-02")
    for back in range(5):
        hf_server.set_api_body(today() - dt.timedelta(days=back), body)
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    config = tmp_path / "digest.toml"
    text = config.read_text(encoding="utf-8")
    old = '# base_url = "https://huggingface.co"'
    assert old in text
    config.write_text(text.replace(old, f'base_url = "{hf_server.base_url}"'), encoding="utf-8")
    capsys.readouterr()

    assert main(["send"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "1 digest delivered to ./mail (mutt -f mail)"
    (path,) = (tmp_path / "mail" / "new").iterdir()
    data = path.read_bytes()
    assert b"\r" not in data  # a Maildir file has LF line ends
    message = message_from_bytes(data, policy=policy.default)
    assert "new papers: language models" in message["Subject"].lower()


def corpus_day_bytes(day: str) -> bytes:
    return (corpus_dir() / f"{day}.json").read_bytes()


def test_match_and_status_read_the_subscribers_state_in_one_batch_not_one_each(
    tmp_path: Path,
    hf_server: HFServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """30 subscribers: the reads of `subscribers` do not grow with them (each used to be
    its own query: 100k of them were most of `digest match` at that size)."""
    from sqlalchemy import Engine, event

    serve_today(hf_server)
    many = "".join(ADA.replace("ada@", f"user{n}@") for n in range(30))
    config = write_config(tmp_path, hf_server.base_url, subscribers=many)
    assert main(["send", "-c", str(config)]) == 0  # every one of them has a saved state now
    capsys.readouterr()
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    # every statement, through SQLAlchemy or in plain SQL (store/peek.py's Reader)
    rows = peek.Reader.rows

    def counted(reader: peek.Reader, sql: str, params: Sequence[object] = ()) -> list[Any]:
        statements.append(sql)
        return rows(reader, sql, params)

    monkeypatch.setattr(peek.Reader, "rows", counted)
    event.listen(Engine, "before_cursor_execute", seen)
    try:
        assert main(["match", "--json", "-c", str(config)]) == 0
    finally:
        event.remove(Engine, "before_cursor_execute", seen)
    reads = [s for s in statements if "FROM subscribers" in s]
    assert len(reads) == 1, len(reads)

    statements.clear()  # status reads with sqlite3 (store/peek.py): every statement it runs
    assert main(["status", "-c", str(config)]) == 0
    assert 1 <= len(statements) <= 10, statements  # a handful, whatever the subscribers
    out = capsys.readouterr().out
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(records) == 30
    assert out.count("next digest for user") == 30
