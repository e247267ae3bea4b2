"""`delivery = "feed"` through the real CLI: `digest send` mails only the email reader and
says how many digests went to feeds only; `--dry-run` says it would add papers to a feed;
`digest status` counts those digests apart from the sent ones."""

from __future__ import annotations

import json
import mailbox
from pathlib import Path

import pytest

from digest.cli import main
from tests.configs import write_config
from tests.hfserver import HFServer
from tests.test_cli import serve_today
from tests.web_helpers import ENV, web_table

PEOPLE = """
[[subscribers]]
email = "ada@example.org"
schedule = "daily 00:00"
topics = [{ name = "Agents", query = 'agent*' }]

[[subscribers]]
email = "bob@example.org"
schedule = "daily 00:00"
delivery = "feed"
topics = [{ name = "Agents", query = 'agent*' }]
"""


def test_send_mails_only_the_email_reader_and_status_counts_the_feed(
    tmp_path: Path, hf_server: HFServer, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    serve_today(hf_server)
    config = write_config(tmp_path, hf_server.base_url, subscribers=PEOPLE,
                          mail='maildir = "mail"\n' + web_table(0))  # fmt: skip
    assert main(["fetch", "-c", str(config)]) == 0
    capsys.readouterr()
    assert main(["send", "-c", str(config), "--dry-run"]) == 0
    dry = capsys.readouterr().out.splitlines()
    assert [line.split(" (slot")[0].split(" papers ")[1] for line in dry] == [
        "to ada@example.org", "to the feed of bob@example.org",
    ]  # fmt: skip
    assert dry[0].startswith("would send ") and dry[1].startswith("would add ")
    assert main(["send", "-c", str(config)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "2 new digests (0 due slots had nothing new, 1 to feeds only); 1 sent, " \
        "0 failed, 0 pending"  # fmt: skip
    boxes = list(mailbox.Maildir(tmp_path / "mail"))
    assert [m["To"] for m in boxes] == ["ada@example.org"]
    assert main(["status", "-c", str(config)]) == 0
    status = capsys.readouterr().out
    assert "digests: 0 pending, 1 sent, 0 failed, 0 cancelled, 1 to feeds only (never mailed)" \
        in status  # fmt: skip
    assert main(["status", "-c", str(config), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)["digests"]
    assert counts["sent"] == 1 and counts["feed"] == 1 and counts["pending"] == 0
