"""One PostgreSQL outbox drained by one and by two `digest run` daemons, next to smtp-source.

The outbox is filled once with N digests of the cycle's mean size (`benchmarks/cycle.py`:
about 27 KB), in a fresh database on the given server; then, for each drainer count,
every digest is made pending again (the same rows, their deliveries deleted) and that
many real `digest run` processes are started on it, each with `--sessions` SMTP
connections to Postfix's smtp-sink on 127.0.0.1, rate cap off (1,000,000/s). The subscription file
lists the N subscribers with a yearly schedule, so the daemons plan nothing (and cancel
nothing): they only drain, claiming with FOR UPDATE SKIP LOCKED.

The drain's rate is N over the span from the first `sent_at` to the last (the daemons'
start-up is not in it: loading a large file takes a while); the baseline is Postfix's
smtp-source sending N messages of the same size over the same number of connections as
all the daemons together. Wall seconds only: the work is spread over processes (the
daemons, the PostgreSQL server, smtp-sink); the load average is printed beside.

    out=$(bash .ci/pg-cluster start); eval "$(sed -n 2p <<<"$out")"
    .venv/bin/python benchmarks/pg_drain.py [--digests 100000] [--drainers 1 2] [--sessions 4]
    bash .ci/pg-cluster stop "$(sed -n 1p <<<"$out")"

The server URL comes from --url or $DIGEST_TEST_PG_URL. Needs smtp-sink/smtp-source
(Debian: apt-get install postfix).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from send import build_message, find_tools, free_port, run_smtp_source, wait_listening
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from digest import store
from digest.store import outbox

REPO = Path(__file__).resolve().parents[1]
NOW = dt.datetime(2026, 1, 1, 8, 0, tzinfo=dt.UTC)
SENDER = "digest@example.org"
WAIT = 3600.0  # seconds one drain may take at most


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def make_database(server_url: str) -> str:
    """A fresh database on the server; its URL."""
    name = f"pg_drain_{secrets.token_hex(4)}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, url: str) -> None:
    name = make_url(url).database
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def people(n: int) -> list[str]:
    return [f"reader{i:06d}@example.org" for i in range(n)]


def fill_outbox(url: str, n: int, size: int) -> None:
    engine = store.open_engine(url)
    store.migrate(engine)
    body = build_message(size, 0)
    for start in range(0, n, 2000):
        batch = [
            outbox.NewDigest(who, NOW, who, SENDER, f"<bench.{i}@example.org>", "Digest",
                             ("2401.00001", "2401.00002", "2401.00003"), body)
            for i, who in enumerate(people(n)[start : start + 2000], start)
        ]  # fmt: skip
        outbox.add_digests(engine, batch, now=NOW, handled=[(d.subscriber, NOW) for d in batch])
    engine.dispose()


def reset_outbox(url: str) -> None:
    """Every digest pending again, never tried, no delivery recorded."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM deliveries"))
        conn.execute(text(
            "UPDATE digests SET status = 'pending', sent_at = NULL, last_reply = NULL, "
            "attempts = 0, next_attempt_at = NULL, lease_host = NULL, lease_pid = NULL, "
            "lease_started = NULL, maybe_sent_at = NULL"
        ))  # fmt: skip
        conn.execute(text("ANALYZE digests"))
    engine.dispose()


def write_config(path: Path, url: str, n: int, smtp_port: int, sessions: int) -> None:
    dead_port = free_port()  # polls fail at once: the daemons only drain
    with path.open("w", encoding="utf-8") as out:
        out.write(
            f'[source]\nbase_url = "http://127.0.0.1:{dead_port}"\nmode = "api"\nretries = 0\n'
            f'poll_interval = "24h"\n\n[storage]\nurl = "{url}"\n\n'
            f'[mail]\nfrom = "Papers Digest <{SENDER}>"\ntransport = "smtp"\n'
            f'smtp = {{ host = "127.0.0.1", port = {smtp_port}, security = "none", '
            f"max_connections = {sessions}, rate_per_second = 1000000 }}\n\n"
            f'[defaults]\ntimezone = "UTC"\nschedule = "0 8 1 1 *"\n'
        )
        for who in people(n):
            out.write(f'\n[[subscribers]]\nemail = "{who}"\n'
                      "topics = [{ name = \"All\", query = 'model*' }]\n")  # fmt: skip


def sent_span(url: str) -> tuple[int, float]:
    """How many digests are sent, and the seconds from the first sent_at to the last."""
    engine = create_engine(url)
    with engine.connect() as conn:
        count, first, last = conn.execute(text(
            "SELECT count(*), min(sent_at), max(sent_at) FROM digests WHERE status = 'sent'"
        )).one()  # fmt: skip
    engine.dispose()
    return int(count), (last - first).total_seconds() if count else 0.0


def drain_with(config: Path, url: str, n: int, drainers: int) -> tuple[float, float, str]:
    """Start `drainers` daemons, wait until all n are sent; (drain span s, wall s, load)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile()) for _ in range(drainers)]
        started = time.perf_counter()
        daemons = [
            subprocess.Popen([sys.executable, "-m", "digest.cli", "run", "-c", str(config)],
                             cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            for log in logs
        ]  # fmt: skip
        try:
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline and all(d.poll() is None for d in daemons):
                if sent_span(url)[0] >= n:
                    break
                time.sleep(0.5)
            wall = time.perf_counter() - started
            load = load_average()
        finally:
            for daemon in daemons:
                if daemon.poll() is None:
                    daemon.send_signal(signal.SIGTERM)
            for daemon in daemons:
                try:
                    daemon.wait(60)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait(10)
        count, span = sent_span(url)
        if count < n:
            for log in logs:
                log.seek(0)
                sys.stderr.write(log.read().decode("utf-8", "replace")[-3000:])
            sys.exit(f"{drainers} daemon(s) sent {count} of {n}")
    return span, wall, load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("DIGEST_TEST_PG_URL"))
    parser.add_argument("--digests", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=27_000, help="bytes per message")
    parser.add_argument("--sessions", type=int, default=4, help="SMTP connections per daemon")
    parser.add_argument("--drainers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    if not args.url:
        sys.exit("benchmarks/pg_drain.py needs a PostgreSQL server: --url or DIGEST_TEST_PG_URL")
    sink, source = find_tools()
    port = free_port()
    smtp_sink = subprocess.Popen([sink, "-u", "nobody", f"127.0.0.1:{port}", "1024"])
    url = make_database(args.url)
    rows: list[tuple[int, float, float, float, str]] = []
    try:
        wait_listening(port)
        load_before = load_average()
        fill_outbox(url, args.digests, args.size)
        size = len(build_message(args.size, 0))
        with tempfile.TemporaryDirectory() as folder:
            config = Path(folder) / "digest.toml"
            for drainers in args.drainers:
                write_config(config, url, args.digests, port, args.sessions)
                reset_outbox(url)
                span, wall, load = drain_with(config, url, args.digests, drainers)
                baseline = run_smtp_source(
                    source, port, args.digests, size, args.sessions * drainers
                )
                rows.append((drainers, span, wall, baseline, load))
    finally:
        smtp_sink.terminate()
        smtp_sink.wait(10)
        drop_database(args.url, url)
    one = next((span for d, span, *_ in rows if d == 1), None)
    print(f"{args.digests} digests of {size} bytes on PostgreSQL, {args.sessions} SMTP "
          f"connections per daemon into smtp-sink (load before: {load_before})")  # fmt: skip
    print("| daemons | drain s (first to last sent) | digests/s | wall s (start to all sent) "
          "| smtp-source s (same connections) | drain/smtp-source | vs 1 daemon | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    for drainers, span, wall, baseline, load in rows:
        rate = args.digests / span if span else float("inf")
        versus = f"{one / span:.2f}x" if one and span else "-"
        print(f"| {drainers} | {span:.1f} | {rate:.0f} | {wall:.1f} | {baseline:.1f} "
              f"| {baseline / span:.0%} | {versus} | {load} |")  # fmt: skip


if __name__ == "__main__":
    main()
