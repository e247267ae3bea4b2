"""Operator input the CLI must survive, through the real CLI in a subprocess (`python -m
digest.cli`), a real config file, the fixture server and a real SQLite file: exit codes,
one line on stderr, never a traceback."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

from tests.configs import write_config
from tests.hfserver import HFServer
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
