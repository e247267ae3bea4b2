"""The admin's side of suppression and the endpoint's commands, through the real CLI:
`digest unsubscribe`, `digest resubscribe`, what `check` and `status` say about people
the database overrides, and `digest serve` / `digest run` refusing a missing secret."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from digest import store
from digest.cli import main
from digest.store import recipients
from tests.configs import write_config
from tests.web_helpers import ENV, web_table

REPO = Path(__file__).resolve().parent.parent
PEOPLE = """
[[subscribers]]
email = "ada@example.org"
topics = [{ name = "Agents", query = 'agent*' }, { name = "Video", query = 'video' }]

[[subscribers]]
email = "bob@example.org"
topics = [{ name = "Agents", query = 'agent*' }]
"""


def config(tmp_path: Path, *, web: bool = False) -> Path:
    mail = 'maildir = "mail"\n' + (web_table(0) if web else "")
    return write_config(tmp_path, "http://127.0.0.1:9", subscribers=PEOPLE, mail=mail)


def test_unsubscribe_then_check_and_status_list_the_person_then_resubscribe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path)
    assert main(["unsubscribe", "-c", str(path), "Ada@Example.org"]) == 0
    assert capsys.readouterr().out == "ada@example.org: unsubscribed, gets no more digests\n"
    assert main(["unsubscribe", "-c", str(path), "ada@example.org"]) == 0
    assert "(already unsubscribed)" in capsys.readouterr().out
    today = dt.datetime.now(dt.UTC).date()
    line = f"ada@example.org: unsubscribed {today} (admin)"
    assert main(["check", "-c", str(path)]) == 0
    assert line in capsys.readouterr().out.splitlines()
    assert main(["status", "-c", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert line in out and not any(x.startswith("bob@example.org:") for x in out)
    assert main(["status", "-c", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recipients"] == [line]

    assert main(["resubscribe", "-c", str(path), "ada@example.org"]) == 0
    assert "resubscribed" in capsys.readouterr().out
    assert main(["resubscribe", "-c", str(path), "ada@example.org"]) == 2
    assert capsys.readouterr().err == "digest: ada@example.org is not unsubscribed\n"
    assert main(["status", "-c", str(path)]) == 0
    assert line not in capsys.readouterr().out


def test_status_shows_pauses_and_muted_topics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path)
    assert main(["status", "-c", str(path)]) == 0  # makes the database
    capsys.readouterr()
    engine = store.open_engine(f"sqlite:///{tmp_path / 'digest.db'}")
    now = dt.datetime.now(dt.UTC)
    recipients.set_pause(engine, "ada@example.org", now + dt.timedelta(weeks=2), now)
    recipients.set_muted(engine, "ada@example.org", ["Video"], now)
    recipients.set_muted(engine, "bob@example.org", ["Agents"], now)
    engine.dispose()
    assert main(["status", "-c", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    (ada,) = [x for x in out if x.startswith("ada@example.org:")]
    until = (now + dt.timedelta(weeks=2)).strftime("%Y-%m-%d")
    assert ada.startswith(f"ada@example.org: paused until {until}")
    assert ada.endswith('; muted "Video"')
    assert 'bob@example.org: muted "Agents"' in out


def test_unsubscribe_takes_an_address_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["unsubscribe", "-c", str(config(tmp_path)), "not an address"]) == 2
    assert capsys.readouterr().err.startswith('digest: "not an address" is not an email address')


def test_an_address_not_in_the_file_can_be_unsubscribed_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(tmp_path)
    assert main(["unsubscribe", "-c", str(path), "eve@example.org"]) == 0
    assert capsys.readouterr().out.endswith(f"; not in {path}\n")


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    full |= {"PYTHONPATH": str(REPO), **env}
    return subprocess.run(
        [sys.executable, "-m", "digest.cli", *args], capture_output=True, text=True,
        env=full, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("command", ["serve", "run", "check"])
def test_a_missing_secret_at_start_is_exit_2_and_one_line(tmp_path: Path, command: str) -> None:
    path = config(tmp_path, web=True)
    result = run_cli(command, "-c", str(path), env={})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"digest: {path}:19: web.secret_env: the environment variable DIGEST_WEB_SECRET is not "
        "set (it should hold the secret that signs unsubscribe and preferences links)"
    ]
    assert "Traceback" not in result.stderr


def test_serve_without_a_web_table_is_exit_2(tmp_path: Path) -> None:
    result = run_cli("serve", "-c", str(config(tmp_path)), env=ENV)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"digest: {tmp_path / 'digest.toml'}: no [web] table; `digest serve` has nothing to serve"
    ]
