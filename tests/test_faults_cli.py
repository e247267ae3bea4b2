"""Faults injected under `digest send`, through the real CLI (in-process `main`): a real
config file, the fixture HTTP server playing huggingface.co, aiosmtpd on 127.0.0.1, a
real SQLite file. Exit codes, the last stdout line and the mail the server received are
the contract (issue 9)."""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from pathlib import Path

import pytest

from digest.cli import main
from tests.configs import ADA, write_config
from tests.hfserver import Fault, HFServer
from tests.smtpd_helpers import RecordingHandler, SmtpServer, free_port
from tests.testdata import HF

CAPTURE = HF / "api-daily_papers-2025-10-01.json"
BOB = ADA.replace("ada@", "bob@").replace('"Ada"', '"Bob"')


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def serve_today(hf: HFServer) -> None:
    """A real capture as today's and yesterday's list: every digest has news."""
    for day in (today(), today() - dt.timedelta(days=1)):
        hf.set_api_body(day, CAPTURE.read_bytes())


def smtp_mail(port: int, **extra: object) -> str:
    settings = {"host": "127.0.0.1", "port": port, "security": "none", "timeout": 2,
                "retries": 0, **extra}  # fmt: skip
    inline = ", ".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    return f'transport = "smtp"\nsmtp = {{ {inline} }}'


def send(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["send", "-c", str(config)])
    out, err = capsys.readouterr()
    return code, out, err


def status(config: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, int]:
    assert main(["status", "-c", str(config), "--json"]) == 0
    counts: dict[str, int] = json.loads(capsys.readouterr().out)["digests"]
    return counts


def backoff_over(config: Path) -> None:
    """Time passes: every pending digest's retry delay (a minute after a refusal) is over."""
    with sqlite3.connect(config.parent / "digest.db") as conn:
        conn.execute("UPDATE digests SET next_attempt_at = NULL WHERE status = 'pending'")


# --------------------------------------------------------------------------- 5: removed


def test_a_subscriber_removed_from_the_file_never_gets_their_pending_digest(
    tmp_path: Path, hf_server: HFServer, capsys: pytest.CaptureFixture[str]
) -> None:
    serve_today(hf_server)
    config = write_config(tmp_path, hf_server.base_url, subscribers=ADA + BOB,
                          mail=smtp_mail(free_port()))  # fmt: skip
    code, out, err = send(config, capsys)  # the relay is down: both digests stay pending
    assert code == 1 and "2 pending" in out, (out, err)

    backoff_over(config)
    with SmtpServer() as server:
        write_config(tmp_path, hf_server.base_url, subscribers=BOB, mail=smtp_mail(server.port))
        code, out, err = send(config, capsys)  # ada left the file meanwhile
        assert code == 0, err
        assert out.splitlines()[-1].endswith("1 sent, 0 failed, 0 pending")
        assert send(config, capsys)[0] == 0  # and again: still nothing for ada
    assert {who: len(got) for who, got in server.handler.by_recipient().items()} == {
        "bob@example.org": 1
    }
    assert status(config, capsys) == {"pending": 0, "sent": 1, "failed": 0, "cancelled": 1}
    assert main(["status", "-c", str(config)]) == 0
    assert "digests: 0 pending, 1 sent, 0 failed, 1 cancelled" in capsys.readouterr().out


# --------------------------------------------------------------------------- 4: pending


def test_send_exits_1_while_anything_stays_pending_saying_how_many_and_when(
    tmp_path: Path, hf_server: HFServer, capsys: pytest.CaptureFixture[str]
) -> None:
    serve_today(hf_server)
    handler = RecordingHandler(rcpt_script={"ada@example.org": ["451 4.7.1 greylisted"]})
    with SmtpServer(handler) as server:
        config = write_config(tmp_path, hf_server.base_url, subscribers=ADA + BOB,
                              mail=smtp_mail(server.port))  # fmt: skip
        began = dt.datetime.now(dt.UTC)
        code, out, err = send(config, capsys)
        assert code == 1
        assert out.splitlines()[-1].endswith("1 sent, 0 failed, 1 pending")
        (line,) = [x for x in err.splitlines() if x.startswith("digest: ")]
        match = re.fullmatch(
            r"digest: 1 digest stays pending, due again (\S+ \S+) UTC \(in (59s|1m)\): "
            r"run `digest send` again then",
            line,
        )
        assert match, line
        due = dt.datetime.fromisoformat(match[1]).replace(tzinfo=dt.UTC)
        assert began + dt.timedelta(seconds=59) <= due <= began + dt.timedelta(seconds=70)

        backoff_over(config)  # the minute passes: ada's digest goes, nothing stays
        code, out, err = send(config, capsys)
        assert code == 0, err
        assert out.splitlines()[-1].endswith("1 sent, 0 failed, 0 pending")
    assert sorted(handler.by_recipient()) == ["ada@example.org", "bob@example.org"]


# --------------------------------------------------------------------------- 6: slow relay

NINE = "".join(ADA.replace("ada@", f"user{n}@") for n in range(9))


def test_a_relay_that_answers_the_final_dot_late_gets_each_digest_at_most_twice(
    tmp_path: Path, hf_server: HFServer, capsys: pytest.CaptureFixture[str]
) -> None:
    serve_today(hf_server)
    handler = RecordingHandler(reply_late=2.0)  # stores each message, answers after 2 s
    with SmtpServer(handler) as server:
        mail = smtp_mail(server.port, data_timeout=0.5, retries=3)  # retries must not resend
        config = write_config(tmp_path, hf_server.base_url, subscribers=NINE, mail=mail)
        began = dt.datetime.now(dt.UTC)
        code, out, err = send(config, capsys)
        assert code == 1
        assert out.splitlines()[-1].endswith("0 sent, 0 failed, 9 pending")
        assert re.search(r"9 digests stay pending, due again .* \(in (59m\d\ds|1h)\)", err), err
        assert len(handler.received) == 9  # one copy each: no retry inside the run
        with sqlite3.connect(tmp_path / "digest.db") as conn:
            recorded = conn.execute(
                "SELECT maybe_sent_at, next_attempt_at, last_reply, attempts FROM digests"
            ).fetchall()
        for maybe_at, next_at, reply, attempts in recorded:  # recorded, not resent for an hour
            maybe = dt.datetime.fromisoformat(maybe_at).replace(tzinfo=dt.UTC)
            assert began <= maybe <= dt.datetime.now(dt.UTC)
            assert dt.datetime.fromisoformat(next_at).replace(tzinfo=dt.UTC) == (
                maybe + dt.timedelta(hours=1)
            )
            assert reply.startswith("maybe delivered: ") and "0.5s" in reply and attempts == 1

        assert send(config, capsys)[0] == 1  # a rerun within the hour sends nothing
        assert len(handler.received) == 9

        backoff_over(config)  # the hour passes; the relay answers in time now
        handler.reply_late = 0.0
        code, out, err = send(config, capsys)
        assert code == 0, err
        assert out.splitlines()[-1].endswith("9 sent, 0 failed, 0 pending")
        assert send(config, capsys)[0] == 0  # and never again
    copies = handler.by_recipient()
    assert len(copies) == 9 and {len(got) for got in copies.values()} == {2}  # at most twice
    for got in copies.values():  # the resend is the same message: the same Message-ID
        assert len({g.parsed()["Message-ID"] for g in got}) == 1 and got[0].data == got[1].data


def test_a_relay_that_never_answers_the_final_dot_in_time_gets_two_copies_then_failed(
    tmp_path: Path, hf_server: HFServer, capsys: pytest.CaptureFixture[str]
) -> None:
    serve_today(hf_server)
    handler = RecordingHandler(reply_late=2.0)
    with SmtpServer(handler) as server:
        mail = smtp_mail(server.port, data_timeout=0.5)
        config = write_config(tmp_path, hf_server.base_url, mail=mail)
        assert send(config, capsys)[0] == 1
        backoff_over(config)
        code, out, err = send(config, capsys)  # the one resend times out too: failed
        assert code == 1 and out.splitlines()[-1].endswith("0 sent, 1 failed, 0 pending")
        assert "1 digest refused permanently" in err
        backoff_over(config)
        assert send(config, capsys)[0] == 0  # nothing left to try
    assert len(handler.received) == 2  # never a third copy
    with sqlite3.connect(tmp_path / "digest.db") as conn:
        ((state, reply),) = conn.execute("SELECT status, last_reply FROM digests").fetchall()
    assert state == "failed" and reply.startswith("maybe delivered: no reply to the end")


# --------------------------------------------------------------------------- 1: failed poll

TODAYS = HF / "api-daily_papers-2025-10-03.json"  # a different real list for today


def list_ids(capture: Path) -> set[str]:
    return {r["paper"]["id"] for r in json.loads(capture.read_bytes())}


def delivered(config: Path) -> set[str]:
    with sqlite3.connect(config.parent / "digest.db") as conn:
        return {pid for (pid,) in conn.execute("SELECT paper_id FROM deliveries")}


def handled_slots(config: Path) -> list[tuple[str, str | None, str | None]]:
    with sqlite3.connect(config.parent / "digest.db") as conn:
        return conn.execute("SELECT email, last_slot, covered_until FROM subscribers").fetchall()


def test_a_failed_poll_never_uses_up_the_slot(
    tmp_path: Path, hf_server: HFServer, capsys: pytest.CaptureFixture[str]
) -> None:
    hf_server.set_api_body(today() - dt.timedelta(days=1), CAPTURE.read_bytes())
    hf_server.set_api_body(today(), TODAYS.read_bytes())
    hf_server.add_fault("/api/", *[Fault(status=503) for _ in range(50)])  # the source is down
    with SmtpServer() as server:
        config = write_config(tmp_path, hf_server.base_url, mail=smtp_mail(server.port))
        code, out, err = send(config, capsys)
        assert code == 1 and "503" in err
        assert "nothing new" not in out  # no slot closed as empty
        assert handled_slots(config) in ([], [("ada@example.org", None, None)])
        assert server.handler.received == []

        hf_server.clear_faults()  # the source is back
        code, out, err = send(config, capsys)
        assert code == 0, err
        assert out.splitlines()[-1] == (
            "1 new digest (0 due slots had nothing new); 1 sent, 0 failed, 0 pending"
        )
    assert len(server.handler.received) == 1
    papers = delivered(config)
    assert papers & (list_ids(TODAYS) - list_ids(CAPTURE))  # today's own papers are in it
    assert papers & (list_ids(CAPTURE) - list_ids(TODAYS))  # and yesterday's
    ((_, slot, covered),) = handled_slots(config)
    assert slot is not None and covered == today().isoformat()  # the watermark: today


def test_a_poll_that_fails_for_one_day_holds_the_digests_that_cover_it(
    tmp_path: Path, hf_server: HFServer, capsys: pytest.CaptureFixture[str]
) -> None:
    hf_server.set_api_body(today() - dt.timedelta(days=1), CAPTURE.read_bytes())
    hf_server.set_api_body(today(), TODAYS.read_bytes())
    hf_server.add_fault(f"/api/daily_papers?date={today()}",
                        *[Fault(status=500) for _ in range(50)])  # fmt: skip
    with SmtpServer() as server:
        config = write_config(tmp_path, hf_server.base_url, mail=smtp_mail(server.port))
        code, out, err = send(config, capsys)
        assert code == 1 and str(today()) in err  # the one failed day, named
        assert out.splitlines()[-1] == (
            "0 new digests (0 due slots had nothing new, 1 wait for the days the poll could "
            "not fetch); 0 sent, 0 failed, 0 pending"
        )
        assert server.handler.received == []  # not sent on yesterday's list alone

        hf_server.clear_faults()
        code, out, err = send(config, capsys)
        assert code == 0, err
        assert out.splitlines()[-1].endswith("1 sent, 0 failed, 0 pending")
        assert send(config, capsys)[0] == 0  # once
    assert len(server.handler.received) == 1
    assert delivered(config) & (list_ids(TODAYS) - list_ids(CAPTURE))
