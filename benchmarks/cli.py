"""The command line at scale: start-up, and every read-only command at N subscribers.

Each command runs as a real subprocess (`python -m digest.cli`, what the `digest` script
runs) against a subscription file of N generated subscribers (benchmarks/cycle.py's
generator: three realistic topics each, mixed timezones and schedules) and an SQLite
file holding a poll of the loopback fixture server plus a planned cycle: every
subscriber's state (its last slot handled just now, its coverage up to yesterday) and a
pending digest for each (written with sqlite3 in the rows' own format: how fast the
planner writes them is benchmarks/cycle.py's business). Rows:

  python -c pass                       the baseline: the interpreter's own start-up
  --help, status on a 1-subscriber file   start-up: imports and argument parsing
  check, status, match --json at N     the config load and the batched reads: with the
                                       file checked, then read from the copy kept of
                                       its checked subscribers (digest/config/remembered.py)
  run: started / ready                 seconds until the daemon logs "daemon started",
                                       and until its start-up poll and catch-up are done
                                       ("catch-up: ..."); then its RSS after 5 idle s
                                       (run on a copy of the store without the pending
                                       digests: the relay is a closed port)

Start-up rows are the best of --repeat runs (wall) with that run's CPU (user + sys of the
child); the N rows run once (each takes seconds to minutes on a shared box).

    .venv/bin/python benchmarks/cli.py [--subscribers 100000] [--importtime]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cycle import load_average, write_config, write_subscribers
from send import free_port

from tests.hfserver import HFServer
from tests.testdata import corpus_dir

REPO = Path(__file__).resolve().parents[1]
# the file checked every time; the rows "from its copy" give a folder to keep one in
ENV = {**os.environ, "PYTHONPATH": str(REPO), "DIGEST_CACHE_DIR": ""}
ONE = """
[[subscribers]]
email = "ada@example.org"
topics = [{ name = "Agents", query = 'agent*' }]
"""


def timed(
    command: list[str], cwd: Path, ok: tuple[int, ...] = (0,), env: dict[str, str] = ENV
) -> tuple[float, float]:
    """Wall and CPU seconds of one run of `command` (output discarded; exit code in `ok`)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env=env, check=False)  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode not in ok:
        sys.exit(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]!r}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def best(command: list[str], cwd: Path, repeat: int) -> tuple[float, float]:
    return min(timed(command, cwd) for _ in range(repeat))


def serve_busy_days(hf: HFServer, today: dt.date) -> None:
    """cycle.py's five busiest corpus days, as yesterday's and today's lists (real dates:
    the CLI runs on the real clock)."""
    busiest = sorted(corpus_dir().glob("*.json"), key=lambda p: len(json.loads(p.read_bytes())))
    week = [item for path in busiest[-5:] for item in json.loads(path.read_bytes())]
    for n, day in enumerate((today - dt.timedelta(days=1), today)):
        hf.set_api_body(day, json.dumps(week[n::2]).encode())


def db_time(moment: dt.datetime) -> str:
    """A datetime as the tables store it in SQLite: naive UTC text."""
    return moment.astimezone(dt.UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def plant_cycle(db: Path, emails: list[str], now: dt.datetime, *, digests: bool) -> None:
    """Every subscriber's state after a cycle planned just now and, with `digests`, its
    pending digest (a small message; ten of the stored papers), as add_digests leaves them."""
    con = sqlite3.connect(db, isolation_level=None)
    papers = [row[0] for row in con.execute("SELECT id FROM papers ORDER BY id")]
    stamp, yesterday = db_time(now), (now - dt.timedelta(days=1)).date().isoformat()
    con.execute("BEGIN IMMEDIATE")
    con.executemany(
        "INSERT INTO subscribers (email, first_seen_at, last_slot, covered_until) "
        "VALUES (?, ?, ?, ?)",
        ((email, stamp, stamp, yesterday) for email in emails),
    )
    if digests:
        rows = []
        for n, email in enumerate(emails):
            ids = [papers[(n * 7 + k) % len(papers)] for k in range(10)]
            rows.append((n + 1, email, stamp, "pending", 0, f"<{n}@digest.example.org>",
                         email, "digest@example.org", "10 new papers", json.dumps(ids), stamp))
        con.executemany(
            "INSERT INTO digests (id, subscriber, slot, status, attempts, message_id, "
            "recipient, sender, subject, paper_ids_json, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        message = b"Subject: x\r\n\r\nx\r\n"
        con.executemany(
            "INSERT INTO digest_messages (digest_id, message) VALUES (?, ?)",
            ((n + 1, message) for n in range(len(emails))),
        )
    con.execute("COMMIT")
    con.close()


def daemon_ready(
    digest: list[str], cwd: Path, env: dict[str, str] = ENV
) -> tuple[float, float, float, float]:
    """Seconds until `digest run` logs that it started and that its catch-up is done,
    its CPU then, and its RSS 5 idle seconds later (MB)."""
    log = cwd / "run.log"
    started = time.perf_counter()
    with log.open("wb") as err:
        proc = subprocess.Popen([*digest, "run"], cwd=cwd, stdout=subprocess.DEVNULL,
                                stderr=err, env=env)  # fmt: skip
    try:
        ps = psutil.Process(proc.pid)
        up = None
        while "catch-up:" not in (text := log.read_text(errors="replace")):
            if up is None and "daemon started" in text:
                up = time.perf_counter() - started
            if proc.poll() is not None:
                sys.exit(f"digest run exited {proc.returncode}: {text[-2000:]}")
            time.sleep(0.02)
        ready = time.perf_counter() - started
        times = ps.cpu_times()
        time.sleep(5)
        rss = ps.memory_info().rss / 2**20
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return up or ready, ready, times.user + times.system, rss


def importtime(command: list[str], cwd: Path, top: int) -> list[str]:
    """The first `top` lines of `python -X importtime` of `command`, by cumulative time."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "digest.cli", *command],
                         cwd=cwd, capture_output=True, text=True, env=ENV, check=False)  # fmt: skip
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("import time:")]
    return [lines[0], *sorted(lines[1:], key=lambda ln: -int(ln.split("|")[1]))[:top]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--importtime", action="store_true", help="also print `python -X importtime`'s top"
    )
    args = parser.parse_args()
    digest = [sys.executable, "-m", "digest.cli"]
    rows: list[tuple[str, float, float]] = []
    load_start = load_average()
    with tempfile.TemporaryDirectory() as tmp, HFServer() as hf:
        folder, small, daemon = Path(tmp) / "big", Path(tmp) / "small", Path(tmp) / "daemon"
        for path in (folder, small, daemon):
            path.mkdir()
        now = dt.datetime.now(dt.UTC)
        serve_busy_days(hf, now.date())
        port = free_port()  # nothing listens there: no digest is sent
        (small / "body.toml").write_text(ONE, encoding="utf-8")
        write_config(small / "digest.toml", small / "body.toml", hf.base_url, port, 4)
        body = Path(tmp) / "subscribers.toml"
        write_subscribers(body, args.subscribers)
        write_config(folder / "digest.toml", body, hf.base_url, port, 4)
        body.unlink()
        for cwd in (small, folder):
            timed([*digest, "fetch"], cwd)
        emails = [f"user{i}@example.org" for i in range(args.subscribers)]
        shutil.copy(folder / "digest.toml", daemon / "digest.toml")
        shutil.copy(folder / "cycle.db", daemon / "cycle.db")
        plant_cycle(daemon / "cycle.db", emails, now, digests=False)
        plant_cycle(folder / "cycle.db", emails, now, digests=True)

        rows.append(("python -c pass (baseline)",
                     *best([sys.executable, "-c", "pass"], small, args.repeat)))  # fmt: skip
        rows.append(("digest --help", *best([*digest, "--help"], small, args.repeat)))
        rows.append(("digest status, 1 subscriber",
                     *best([*digest, "status"], small, args.repeat)))  # fmt: skip
        n = f"{args.subscribers:,}"
        commands = (["check"], ["status"], ["match", "--json"])
        for command in commands:
            rows.append((f"digest {' '.join(command)}, {n}", *timed([*digest, *command], folder)))
        kept = {**ENV, "DIGEST_CACHE_DIR": str(Path(tmp) / "cache")}
        rows.append((f"digest check, {n}, keeping its copy",
                     *timed([*digest, "check"], folder, env=kept)))  # fmt: skip
        for command in commands:
            rows.append((f"digest {' '.join(command)}, {n}, from its copy",
                         *timed([*digest, *command], folder, env=kept)))  # fmt: skip
        for how, env in (("", ENV), (", from its copy", kept)):
            if env is kept:
                timed([*digest, "check"], daemon, env=kept)  # keeps the daemon's file's copy
            up, ready, cpu, rss = daemon_ready(digest, daemon, env)
            rows.append((f"digest run: 'daemon started', {n}{how}", up, float("nan")))
            rows.append((f"digest run: catch-up done, {n}{how} (idle RSS {rss:.0f} MB)",
                         ready, cpu))  # fmt: skip
        if args.importtime:
            for command in (["--help"], ["status"]):
                print(f"python -X importtime -m digest.cli {' '.join(command)} "
                      "(1 subscriber), top 15 by cumulative us:")  # fmt: skip
                print(*importtime(command, small, 15), sep="\n")
                print()
    width = max(len(r[0]) for r in rows)
    base = rows[0][1]
    print(f"| {'command':<{width}} | {'wall s':>8} | {'CPU s':>8} | {'wall / baseline':>15} |")
    print(f"|{'-' * (width + 2)}|{'-' * 10}|{'-' * 10}|{'-' * 17}|")
    for name, wall, cpu in rows:
        print(f"| {name:<{width}} | {wall:>8.3f} | {cpu:>8.3f} | {wall / base:>14.0f}x |")
    print(f"load average: {load_start} at the start, {load_average()} at the end, "
          f"{os.cpu_count()} CPUs")  # fmt: skip


if __name__ == "__main__":
    main()
