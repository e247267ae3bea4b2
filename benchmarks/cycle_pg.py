"""benchmarks/cycle.py on PostgreSQL: its database, and the send stage by 1 or more processes.

Owns what the cycle needs only on PostgreSQL: the outbox made pending again between
drains, the server's CPU seconds, the send stage run by separate drainer processes that
share one outbox, and that stage's table (and the table printer cycle.py uses). Does
not own the cycle's other stages or its main table (cycle.py), nor the database per
size (pg_drain.py's make_database and drop_database, called by cycle.py).

A drainer process is the daemon's own outbox worker: `digest.daemon.drainer.Drainer`
(what `digest run` kicks after each plan) on an engine from `store.open_engine`, with
the [mail] and [storage] of the cycle's subscription file (and no subscribers: a
`digest run` would load the whole file, plan and cancel too; here only the drain
runs). Each one reads the real clock, claims with FOR UPDATE SKIP LOCKED and leases
what it claims, as `digest run` does. They are started, wait until all have imported
and connected, then drain at one signal; each exits when nothing is due, printing
what it sent and its own CPU seconds and peak RSS.

The send stage's wall is from that signal to the last process's exit; its CPU is the
drainers' plus the PostgreSQL server's (every backend and the postmaster's own helpers,
read from /proc: the server must run on this machine).

    .venv/bin/python benchmarks/cycle_pg.py --drain CONFIG   (what cycle.py starts)
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pg_drain import reset_outbox as reset_rows

from tests.race_child import send_go, wait_ready

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (field 3 onwards)."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()


def postmaster(url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            backend = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        return int(_stat(backend)[1])  # the backend's parent
    finally:
        engine.dispose()


def server_cpu(postmaster: int) -> float:
    """CPU seconds of the PostgreSQL server so far: the postmaster's, its exited children's
    (backends of closed connections) and its live children's."""
    fields = _stat(postmaster)
    ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    for child in Path("/proc").iterdir():
        if child.name.isdigit():
            try:
                stat = _stat(int(child.name))
            except OSError:  # gone meanwhile
                continue
            if int(stat[1]) == postmaster:
                ticks += int(stat[11]) + int(stat[12])
    return ticks / TICKS


def reset_outbox(url: str) -> None:
    """Every digest pending again, no delivery recorded (pg_drain.py), then VACUUM: each
    drain starts from the same table, not one with a dead row per digest drained before."""
    from sqlalchemy import create_engine, text

    reset_rows(url)
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("VACUUM ANALYZE digests"))
        conn.execute(text("VACUUM ANALYZE deliveries"))
    engine.dispose()


def send_stage(
    url: str,
    config: Path,
    digests: int,
    drainers: int,
    sessions: int,
    smtp_source: Callable[[int], float],
) -> dict[str, Any]:
    """The outbox pending again, drained by `drainers` processes; then smtp-source's
    seconds for as many messages over as many connections as they had in all."""
    reset_outbox(url)
    drained = drain_in_processes(url, config, digests, drainers)
    return {**drained, "smtp_source": smtp_source(sessions * drainers)}


def drain_in_processes(url: str, config: Path, digests: int, drainers: int) -> dict[str, Any]:
    """Drain the outbox with `drainers` processes at once; what they did, timed."""
    server_pid = postmaster(url)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [
        subprocess.Popen([sys.executable, __file__, "--drain", str(config)], env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(drainers)
    ]  # fmt: skip
    wait_ready(procs)  # the handshake of tests/race_child.py
    server = server_cpu(server_pid)
    started = time.perf_counter()
    send_go(procs)
    reports = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            sys.exit(f"a drainer process failed ({proc.returncode})")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.perf_counter() - started
    server = server_cpu(server_pid) - server
    sent = sum(r["sent"] for r in reports)
    if sent != digests or any(r["failed"] for r in reports):  # a digest sent twice, or lost
        sys.exit(f"{drainers} drainers sent {[r['sent'] for r in reports]} of {digests}")
    return {
        "drainers": drainers, "wall": wall, "cpu": sum(r["cpu"] for r in reports),
        "server_cpu": server, "each": [r["sent"] for r in reports],
        "rss": max(r["rss"] for r in reports),
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }  # fmt: skip


def drains_table(results: list[dict[str, Any]], sessions: int) -> None:
    """Each size's drains: 1 process, 2, ... beside smtp-source."""
    print(f"The send stage on PostgreSQL: drainer processes (the daemon's Drainer), {sessions} "
          "SMTP connections each; smtp-source over as many connections in all; "
          "wall s (CPU s)")  # fmt: skip
    heads = ["subscribers", "drainers", "send", "digests/s", "PG server CPU s",
             "sent by each", "smtp-source", "send/smtp-source", "vs 1 drainer",
             "peak RSS MB", "load avg"]  # fmt: skip
    rows = []
    for r in results:
        one = next((d["wall"] for d in r["drains"] if d["drainers"] == 1), None)
        for d in r["drains"]:
            rows.append([
                f"{r['subscribers']:,}", str(d["drainers"]), f"{d['wall']:.1f} ({d['cpu']:.1f})",
                f"{r['digests'] / d['wall']:.0f}", f"{d['server_cpu']:.1f}",
                "/".join(f"{n:,}" for n in d["each"]), f"{d['smtp_source']:.1f}",
                f"{d['smtp_source'] / d['wall']:.0%}",
                f"{one / d['wall']:.2f}x" if one else "-", f"{d['rss']:.0f}", d["load"],
            ])  # fmt: skip
    print_table(heads, rows)
    print("send: from the signal to drain to the last drainer's exit; CPU: the drainers' own "
          "(the server's beside it); vs 1 drainer: the 1-drainer wall over this one's")  # fmt: skip


def print_table(heads: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(heads)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def drain_child(config_path: Path) -> None:
    """One drainer process: ready, wait for "go" on stdin, drain, print one JSON line."""
    from digest import store
    from digest.config import load_config
    from digest.daemon.drainer import Drainer
    from digest.daemon.service import utcnow

    config = load_config(config_path, {})
    engine = store.open_engine(config.storage.url)
    with engine.connect():
        pass  # connected before the clock starts
    print("ready", flush=True)
    sys.stdin.readline()
    cpu = time.process_time()

    async def drain() -> Drainer:
        stop = asyncio.Event()
        tasks: list[asyncio.Task[Any]] = []

        def spawn(work: Any) -> asyncio.Task[Any]:
            tasks.append(asyncio.create_task(work))
            return tasks[-1]

        drainer = Drainer(engine, lambda: config.mail, clock=utcnow, stop=stop, spawn=spawn)
        drainer.kick()
        await asyncio.gather(*tasks)
        return drainer

    drainer = asyncio.run(drain())
    engine.dispose()
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec (the parent's, ~200 MB)
    status = Path("/proc/self/status").read_text()
    rss = int(status.split("VmHWM:")[1].split()[0]) / 1024
    report = {"sent": drainer.sent, "failed": drainer.failed, "cpu": time.process_time() - cpu}
    print(json.dumps({**report, "rss": rss}), flush=True)


if __name__ == "__main__" and sys.argv[1:2] == ["--drain"]:
    drain_child(Path(sys.argv[2]))
