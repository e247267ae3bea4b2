"""One process of a race (tests/test_races.py): imports everything, says `ready`, waits
for `go` on stdin, does one store call and prints its outcome as one JSON line; and the
parent's side of that handshake (`run_together`; `wait_ready` and `send_go` apart).

So the calls of several processes start within a millisecond or two of one another,
not a second apart as their start-up would have them.

    python -m tests.race_child URL migrate
    python -m tests.race_child URL upsert DAY       (the real corpus list of DAY)
    python -m tests.race_child URL handled EMAIL... (add_digests with no digests)
    python -m tests.race_child URL drain PORT       (the daemon's Drainer, SMTP on PORT)
    python -m tests.race_child cli ARGS...          (the command line: digest ARGS...)
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from sqlalchemy import Engine

from digest import store
from digest.errors import DigestError
from digest.store import outbox
from tests.store_helpers import NOW, corpus_day


def wait_ready(children: Sequence[subprocess.Popen[str]]) -> None:
    """The parent's side: wait until every child has said `ready` (an AssertionError
    shows what one said instead, and its stderr)."""
    for child in children:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line == "ready\n", (line, child.stderr.read() if child.stderr else "")


def send_go(children: Sequence[subprocess.Popen[str]]) -> None:
    """Tell every child `go`, as close together as a loop of writes gets."""
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()


def run_together(
    children: Sequence[subprocess.Popen[str]], timeout: float
) -> list[tuple[int, str, str]]:
    """Release started children at once and collect each one's (exit code, stdout,
    stderr), at most `timeout` seconds each; any still running after that is killed."""
    try:
        wait_ready(children)
        send_go(children)
        results = []
        for child in children:
            out, err = child.communicate(timeout=timeout)
            results.append((child.returncode, out, err))
        return results
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(10)


def main(argv: list[str]) -> int:
    if argv[0] == "cli":  # the real CLI, its imports done before `go`
        from digest import cli

        print("ready", flush=True)  # noqa: T201  # the parent waits for this line
        if sys.stdin.readline().strip() != "go":
            return 2
        return cli.main(argv[1:])
    url, action, *rest = argv
    engine = store.open_engine(url)
    papers = corpus_day(dt.date.fromisoformat(rest[0])) if action == "upsert" else []
    print("ready", flush=True)  # noqa: T201  # the parent waits for this line
    if sys.stdin.readline().strip() != "go":
        return 2
    result: dict[str, object] = {}
    try:
        if action == "migrate":
            result["version"] = store.migrate(engine)
        elif action == "upsert":
            report = store.upsert_listings(engine, dt.date.fromisoformat(rest[0]), papers, NOW)
            result["new"] = sorted(p.id for p in report.new)
            result["updated"] = sorted(p.id for p in report.updated)
            result["unchanged"] = report.unchanged
        elif action == "handled":
            outbox.add_digests(engine, [], now=NOW, handled=[(email, NOW) for email in rest])
            result["handled"] = len(rest)
        elif action == "drain":
            result["sent"] = drain(engine, int(rest[0]))
        else:
            result["error"] = f"unknown action {action}"
    except DigestError as e:
        result["error"] = str(e)
    finally:
        engine.dispose()
    print(json.dumps(result), flush=True)  # noqa: T201  # the parent reads this line
    return 1 if "error" in result else 0


def drain(engine: Engine, port: int) -> int:
    """Drain the outbox as `digest run` does (its Drainer, the real clock) into the SMTP
    server on `port`, 2 connections; how many this process sent."""
    import asyncio

    from digest.config import MailConfig, SmtpConfig
    from digest.daemon.drainer import Drainer
    from digest.daemon.service import utcnow

    smtp = SmtpConfig(host="127.0.0.1", port=port, security="none", max_connections=2,
                      rate_per_second=1e6, retries=0)  # fmt: skip
    mail = MailConfig(from_addr="Digest <digest@example.org>", transport="smtp", smtp=smtp)

    async def run() -> int:
        tasks: list[asyncio.Task[None]] = []

        def spawn(work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
            tasks.append(asyncio.create_task(work))
            return tasks[-1]

        drainer = Drainer(engine, lambda: mail, clock=utcnow, stop=asyncio.Event(), spawn=spawn)
        drainer.kick()
        await asyncio.gather(*tasks)
        return drainer.sent

    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
