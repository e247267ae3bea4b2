"""Operator input the CLI must survive, through the real CLI in a subprocess (`python -m
digest.cli`), a real config file, the fixture server and a real SQLite file: exit codes,
one line on stderr, never a traceback."""

from __future__ import annotations

import datetime as dt
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.configs import write_config
from tests.hfserver import Fault, HFServer
from tests.smtpd_helpers import RecordingHandler, SmtpServer
from tests.testdata import corpus_dir

REPO = Path(__file__).resolve().parent.parent


def cli(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DIGEST_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "digest.cli", *args, "-c", str(config)],
        capture_output=True, text=True, timeout=timeout, cwd=config.parent, env=env,
    )  # fmt: skip


def subscriber(schedule: str, email: str = "ada@example.org") -> str:
    return (
        f'[[subscribers]]\nemail = "{email}"\ntimezone = "UTC"\nschedule = "{schedule}"\n'
        "topics = [{ name = \"Agents\", query = 'agent*' }]\n"
    )


# --------------------------------------------------------------------------- schedules


def test_a_sparse_cron_schedule_works_in_every_command(
    tmp_path: Path, hf_server: HFServer
) -> None:
    """`0 8 1 3 */7`: 1 March on a Sunday, next in 2037; status, match, send and check
    used to die with a traceback ("no slot after ...")."""
    config = write_config(tmp_path, hf_server.base_url, subscribers=subscriber("0 8 1 3 */7"))
    for command in (["check"], ["status"], ["match"], ["send", "--no-fetch"], ["send"]):
        result = cli(config, *command)
        assert result.returncode == 0, (command, result.stderr)
        assert "Traceback" not in result.stderr, command
    status = cli(config, "status").stdout
    assert "next digest for ada@example.org: Sun 2037-03-01 08:00 UTC" in status


# --------------------------------------------------------------------------- the file


def test_a_byte_order_mark_at_the_start_of_the_file_is_accepted(
    tmp_path: Path, hf_server: HFServer
) -> None:
    config = write_config(tmp_path, hf_server.base_url)
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())
    result = cli(config, "check")
    assert result.returncode == 0, result.stderr
    assert "ada@example.org" in result.stdout
    # a mistake after the mark still names its own line: the mark is no line of its own
    text = config.read_bytes().decode("utf-8-sig").replace("retries = 1", "retries = -1")
    config.write_bytes(b"\xef\xbb\xbf" + text.encode())
    line = 1 + text.splitlines().index("retries = -1")
    bad = cli(config, "check")
    assert bad.returncode == 2
    assert bad.stderr.startswith(f"digest: {config}:{line}: source.retries"), bad.stderr


IDN_SUBSCRIBERS = """
[[subscribers]]
email = "Ada@Bücher.Example"
schedule = "daily 00:00"
timezone = "UTC"
topics = [{ name = "Everything", query = 'model* OR learn* OR agent* OR language' }]

[[subscribers]]
email = "bob@xn--r8jz45g.xn--zckzah"
schedule = "daily 00:00"
timezone = "UTC"
topics = [{ name = "Everything", query = 'model* OR learn* OR agent* OR language' }]
"""


def test_internationalized_domains_are_idna_on_the_wire_and_shown_as_written(
    tmp_path: Path, hf_server: HFServer
) -> None:
    body = (corpus_dir() / "2025-12-30.json").read_bytes()
    today = dt.datetime.now(dt.UTC).date()
    for n in range(3):
        hf_server.set_api_body(today - dt.timedelta(days=n), body)
    with SmtpServer(RecordingHandler()) as smtp:
        mail = (
            'transport = "smtp"\n'
            f'smtp = {{ host = "127.0.0.1", port = {smtp.port}, security = "none" }}\n'
        )
        config = write_config(tmp_path, hf_server.base_url, subscribers=IDN_SUBSCRIBERS, mail=mail)
        text = config.read_text().replace("digest@example.org", "digest@bücher.example")
        config.write_text(text, encoding="utf-8")
        check = cli(config, "check")
        assert check.returncode == 0, check.stderr
        assert "ada@bücher.example: UTC" in check.stdout  # display form, lower-cased
        assert "bob@例え.テスト: UTC" in check.stdout
        sent = cli(config, "send")
        assert sent.returncode == 0, sent.stderr
        received = smtp.handler.received
    assert sorted(r for item in received for r in item.rcpt_tos) == [
        "ada@xn--bcher-kva.example",
        "bob@xn--r8jz45g.xn--zckzah",
    ]
    assert {item.mail_from for item in received} == {"digest@xn--bcher-kva.example"}
    for item in received:
        assert item.data.isascii()
        message = item.parsed()
        assert message["From"].addresses[0].domain == "xn--bcher-kva.example"
        assert message["To"].addresses[0].addr_spec in item.rcpt_tos
    status = cli(config, "status").stdout
    assert "next digest for ada@bücher.example" in status


# --------------------------------------------------------------------------- command-line traps

TWO = """
[[subscribers]]
email = "ada@example.org"
schedule = "daily 00:00"
timezone = "UTC"
topics = [{ name = "Everything", query = 'model* OR learn* OR agent* OR language' }]

[[subscribers]]
email = "bob@example.org"
schedule = "daily 00:00"
timezone = "UTC"
topics = [{ name = "Nothing", query = 'zzyzx' }]
"""


def serve_today(hf: HFServer) -> None:
    body = (corpus_dir() / "2025-12-30.json").read_bytes()  # 10 real papers
    today = dt.datetime.now(dt.UTC).date()
    for n in range(3):
        hf.set_api_body(today - dt.timedelta(days=n), body)


def dump(db: Path) -> list[str]:
    """Every row of every table, in order: what "changes nothing" compares."""
    with sqlite3.connect(db) as conn:
        return list(conn.iterdump())


def test_send_dry_run_changes_nothing_and_lists_only_what_would_go_out(
    tmp_path: Path, hf_server: HFServer
) -> None:
    serve_today(hf_server)
    config = write_config(tmp_path, hf_server.base_url, subscribers=TWO)
    db = tmp_path / "digest.db"
    empty = cli(config, "send", "--dry-run")  # an empty folder: not even a database file
    assert (empty.returncode, empty.stdout) == (
        0,
        "would send nothing: no database yet (`digest send` or `digest fetch` make it)\n",
    )
    assert not db.exists() and hf_server.requests == []
    assert cli(config, "fetch").returncode == 0
    before, asked = dump(db), len(hf_server.requests)
    dry = cli(config, "send", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dump(db) == before  # no poll recorded, no slot handled, no subscriber seen
    assert len(hf_server.requests) == asked  # and nothing fetched
    (line,) = dry.stdout.splitlines()  # bob's digest would be empty: not sent, not listed
    slot = r"\(slot \w+ [-\d]+ 00:00 UTC\)"
    assert re.fullmatch(rf"would send \d+ papers to ada@example.org {slot}", line), line
    sent = cli(config, "send", "--no-fetch")
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("1 new digest (1 due slot had nothing new); 1 sent,")
    again = cli(config, "send", "--dry-run")
    assert again.stdout == "would send nothing: no digest is due with new papers\n"


def test_check_warns_about_lowercase_operators(tmp_path: Path, hf_server: HFServer) -> None:
    subscribers = TWO.replace("'zzyzx'", "'diffusion or gan'").replace(
        "'model* OR learn* OR agent* OR language'", '\'"rock and roll" OR jazz\''
    )
    config = write_config(tmp_path, hf_server.base_url, subscribers=subscribers)
    line = 1 + config.read_text().splitlines().index(
        "topics = [{ name = \"Nothing\", query = 'diffusion or gan' }]"
    )
    result = cli(config, "check")
    assert result.returncode == 0, result.stderr
    warnings = [x for x in result.stdout.splitlines() if x.startswith("warning:")]
    assert warnings == [
        f"warning: {config}:{line}: subscribers[2] (bob@example.org).topics[1].query: "
        '"or" is matched as a plain word here; for the operator write it in upper case: '
        "diffusion OR gan"
    ]  # the phrase "rock and roll" is left alone


def test_fetch_since_after_until_is_bad_usage(tmp_path: Path, hf_server: HFServer) -> None:
    config = write_config(tmp_path, hf_server.base_url)
    result = cli(config, "fetch", "--since", "2025-10-05", "--until", "2025-10-01")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "digest: --since 2025-10-05 is later than --until 2025-10-01: no day between\n"
    )
    assert hf_server.requests == []


def test_status_check_fails_when_the_last_poll_failed_or_mail_is_failing(
    tmp_path: Path, hf_server: HFServer
) -> None:
    serve_today(hf_server)
    config = write_config(tmp_path, hf_server.base_url)
    never = cli(config, "status", "--check")
    assert never.returncode == 1 and "unhealthy: no poll has run yet" in never.stderr
    assert cli(config, "fetch").returncode == 0
    assert cli(config, "status", "--check").returncode == 0
    hf_server.add_fault("/api/", *[Fault(status=503)] * 4)  # both days, both attempts
    assert cli(config, "fetch").returncode == 1
    failed = cli(config, "status", "--check")
    assert failed.returncode == 1
    (line,) = failed.stderr.splitlines()
    assert line.startswith("digest: unhealthy: the last poll (") and "HTTP 503" in line
    assert cli(config, "status").returncode == 0  # without --check: a report, not a verdict
    assert cli(config, "fetch").returncode == 0
    with SmtpServer(RecordingHandler(refuse={"ada@example.org": "451 4.3.0 try later"})) as smtp:
        mail = f'smtp = {{ host = "127.0.0.1", port = {smtp.port}, security = "none" }}'
        write_config(tmp_path, hf_server.base_url, mail=mail)
        assert cli(config, "send").returncode == 1  # refused for now, left pending
    retrying = cli(config, "status", "--check")
    assert retrying.returncode == 1
    assert "1 digest waiting after failed attempts (last reply: " in retrying.stderr
    assert "451" in retrying.stderr


def test_status_match_and_send_agree_on_the_next_digest(
    tmp_path: Path, hf_server: HFServer
) -> None:
    """A slot that is due (ada was never sent today's) is the next digest for all three."""
    serve_today(hf_server)
    config = write_config(tmp_path, hf_server.base_url)
    assert cli(config, "fetch").returncode == 0
    today = dt.datetime.now(dt.UTC).date()
    due = f"{today:%a %Y-%m-%d} 00:00 UTC"
    status = cli(config, "status").stdout
    assert f"next digest for ada@example.org: {due} (due now: `digest send` sends it)" in status
    assert f"matching papers for {due}" in cli(config, "match").stdout.splitlines()[0]
    assert f"(slot {due})" in cli(config, "send", "--dry-run").stdout
    assert cli(config, "send", "--no-fetch").returncode == 0
    tomorrow = f"{today + dt.timedelta(days=1):%a %Y-%m-%d} 00:00 UTC"
    assert f"next digest for ada@example.org: {tomorrow}\n" in cli(config, "status").stdout
    assert f"matching papers for {tomorrow}" in cli(config, "match").stdout


ONE_NOUNS = re.compile(r"(?<![\d.])1 (day|poll|digest|paper|subscriber|topic|slot|match)es?s?\b")


def test_counts_of_one_are_singular_and_durations_read_as_written(
    tmp_path: Path, hf_server: HFServer
) -> None:
    serve_today(hf_server)
    config = write_config(tmp_path, hf_server.base_url)
    config.write_text(config.read_text().replace("[source]", '[source]\npoll_interval = "30m"'))
    outputs = [cli(config, *c) for c in (["check"], ["fetch"], ["send"], ["status"], ["match"])]
    text = "\n".join(r.stdout + r.stderr for r in outputs)
    assert all(r.returncode == 0 for r in outputs), text
    assert "poll every 30m, lookback 1 day" in text
    assert "1 subscriber:" in text and "2 topics, window 2 days" in text
    assert "1 new digest (0 due slots had nothing new)" in text
    assert not [m.group(0) for m in re.finditer(r"(?<![\d.])1 [a-z]+s\b", text)
                if ONE_NOUNS.fullmatch(m.group(0))], text  # fmt: skip
    assert "0:30:00" not in text
