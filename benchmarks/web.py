"""One-click unsubscribes per second, and their p99 latency, while the daemon drains an outbox.

Rows, each measured with the same aiohttp client loop on 127.0.0.1 (CONCURRENCY requests
in flight, each POST `List-Unsubscribe=One-Click` to a distinct signed link):

- bare aiohttp: a subprocess whose only route answers 200 "ok" to any POST: the ceiling
  of aiohttp on this machine;
- digest run, idle: the real daemon with [web], nothing to send: token check, the SQL
  of a suppression (and its cancel), the page;
- digest run, draining: the same while the daemon sends an outbox of pending digests
  to an aiosmtpd sink in this process (the drain shares the daemon's event loop).

Usage: .venv/bin/python benchmarks/web.py [--posts N] [--outbox N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from digest import store
from digest.config import load_config
from digest.store import recipients
from digest.web.tokens import Links
from tests.smtpd_helpers import SmtpServer, add_digests, free_port

SECRET = "benchmark-secret-0123456789abcdef"
SMTP_LIMITS = "max_connections = 4, rate_per_second = 100000"  # the drain as fast as it goes
BARE = """
import sys
from aiohttp import web

async def ok(request):
    await request.read()
    return web.Response(text="ok")

app = web.Application()
app.router.add_post("/u/{token}", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def write_config(folder: Path, smtp_port: int, web_port: int, busy: list[str]) -> Path:
    """The daemon's config; `busy`: the people with pending digests (in the file, or the
    daemon would cancel their digests at start as removed subscribers)."""
    path = folder / "digest.toml"
    people = "".join(
        f'[[subscribers]]\nemail = "{e}"\nschedule = "weekly mon 06:00"\n'
        f"topics = [{{ name = \"Agents\", query = 'agent*' }}]\n\n"
        for e in busy
    )
    path.write_text(
        f"""
[source]
base_url = "http://127.0.0.1:9"
mode = "api"
poll_interval = "1h"
retries = 0
timeout = 1

[storage]
url = "sqlite:///digest.db"

[mail]
from = "Papers Digest <digest@example.org>"
smtp = {{ host = "127.0.0.1", port = {smtp_port}, security = "none", {SMTP_LIMITS} }}

[web]
listen = "127.0.0.1:{web_port}"
base_url = "http://127.0.0.1:{web_port}"

[[subscribers]]
email = "someone@example.org"
schedule = "weekly mon 06:00"
topics = [{{ name = "Agents", query = 'agent*' }}]

{people}""",
        encoding="utf-8",
    )
    return path


async def hammer(urls: list[str], concurrency: int) -> tuple[float, list[float], int]:
    """POST one-click to every URL, `concurrency` at a time: (seconds, latencies, non-200)."""
    latencies: list[float] = []
    bad = 0
    queue = list(reversed(urls))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal bad
            while queue:
                url = queue.pop()
                started = time.perf_counter()
                async with session.post(url, data={"List-Unsubscribe": "One-Click"}) as r:
                    await r.read()
                    bad += r.status != 200
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies, bad


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    sys.exit(f"nothing listens on port {port} after {timeout}s")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def counts(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db) as conn:
        sent = conn.execute("SELECT count(*) FROM digests WHERE status = 'sent'").fetchone()[0]
        gone = conn.execute("SELECT count(*) FROM suppressions").fetchone()[0]
    return int(sent), int(gone)


def run_daemon_case(
    folder: Path, posts: int, pending: int, concurrency: int
) -> tuple[float, list[float], int, int, int]:
    """(seconds, latencies, non-200, digests sent meanwhile, suppressions) for one case."""
    with SmtpServer() as smtp:
        web_port = free_port()
        busy = [f"busy{i:05d}@example.org" for i in range(pending)]
        config = write_config(folder, smtp.port, web_port, busy)
        env = {**os.environ, "DIGEST_WEB_SECRET": SECRET, "PYTHONPATH": str(Path.cwd())}
        engine = store.open_engine(f"sqlite:///{folder / 'digest.db'}")
        store.migrate(engine)
        crowd = [f"reader{i:05d}@example.org" for i in range(posts)]
        keys = recipients.ensure_recipients(engine, crowd, dt.datetime.now(dt.UTC))
        if pending:
            add_digests(engine, busy)
        engine.dispose()
        links = Links(load_config(config, env).web)  # type: ignore[arg-type]
        urls = [links.for_key(keys[e]).unsubscribe for e in crowd]
        log = (folder / "daemon.log").open("wb")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "digest.cli", "run", "-c", str(config)],
            cwd=folder, env=env, stdout=log, stderr=log,
        )  # fmt: skip
        try:
            wait_port(web_port, daemon)
            if pending:  # the drain has started: measure while it works
                deadline = time.monotonic() + 30
                while not smtp.handler.received and time.monotonic() < deadline:
                    time.sleep(0.01)
            sent_before = len(smtp.handler.received)
            seconds, latencies, bad = asyncio.run(hammer(urls, concurrency))
            sent_during = len(smtp.handler.received) - sent_before
        finally:
            daemon.terminate()
            daemon.wait(60)
            log.close()
        _, gone = counts(folder / "digest.db")
        return seconds, latencies, bad, sent_during, gone


def run_bare(posts: int, concurrency: int) -> tuple[float, list[float], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BARE, str(port)])
    try:
        wait_port(port, proc)
        urls = [f"http://127.0.0.1:{port}/u/token{i}" for i in range(posts)]
        return asyncio.run(hammer(urls, concurrency))
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=3000)
    parser.add_argument("--outbox", type=int, default=3000, help="digests pending at start")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()

    rows = []
    seconds, lat, bad = run_bare(args.posts, args.concurrency)
    rows.append(("bare aiohttp (200 ok)", seconds, lat, bad, None, None))
    base_rate = args.posts / seconds
    with tempfile.TemporaryDirectory() as tmp:
        idle = Path(tmp) / "idle"
        idle.mkdir()
        s, lat, bad, sent, gone = run_daemon_case(idle, args.posts, 0, args.concurrency)
        rows.append(("digest run, idle", s, lat, bad, sent, gone))
        busy = Path(tmp) / "busy"
        busy.mkdir()
        s, lat, bad, sent, gone = run_daemon_case(busy, args.posts, args.outbox, args.concurrency)
        rows.append((f"digest run, draining {args.outbox}", s, lat, bad, sent, gone))

    print(f"\n{args.posts} one-click POSTs, {args.concurrency} in flight, 127.0.0.1, "
          f"{os.cpu_count()} cores\n")  # fmt: skip
    print("| server | POSTs/s | p50 ms | p99 ms | non-200 | suppressed | digests sent meanwhile "
          "| vs bare |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, seconds, lat, bad, sent, gone in rows:
        rate = args.posts / seconds
        print(
            f"| {name} | {rate:,.0f} | {pct(lat, 0.50):.1f} | {pct(lat, 0.99):.1f} | {bad} | "
            f"{'-' if gone is None else gone} | {'-' if sent is None else sent} | "
            f"{rate / base_rate:.2f}x |"
        )


if __name__ == "__main__":
    main()
