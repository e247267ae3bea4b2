"""Operator input the CLI must survive, through the real CLI in a subprocess (`python -m
digest.cli`), a real config file, the fixture server and a real SQLite file: exit codes,
one line on stderr, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.configs import write_config
from tests.hfserver import HFServer

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
