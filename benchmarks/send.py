"""Messages/s from our SMTP pool into Postfix's smtp-sink, next to Postfix's smtp-source.

Both send the same number of messages of the same size over the same number of parallel,
reused connections (smtp-source -d) to one smtp-sink on 127.0.0.1. Rows:

- smtp-source: Postfix's C load generator, the baseline; it pipelines MAIL/RCPT/DATA
  (RFC 2920) when the server offers PIPELINING, as smtp-sink does by default;
- smtp-source, no PIPELINING: the same into a second smtp-sink started with -p, the
  fair comparison for aiosmtplib, which waits for each reply (4 round trips a message);
- aiosmtplib sendmail: the same reused connections driven by aiosmtplib's own
  `sendmail` (what SmtpTransport did before smtp_wire.py: no pipelining, 4 round trips);
- SmtpTransport: digest.smtp's pool, `send()` called for every message at once;
- drain_outbox: the same pool fed from a SQLite outbox (digests claimed a batch at a
  time, outcomes and the next claims group-committed, each final dot waiting for its
  connection's previous commit).

Usage: .venv/bin/python benchmarks/send.py [--messages N] [--size BYTES] [--sessions S] [--lf]
Needs /usr/sbin/smtp-sink and smtp-source (Debian: apt-get install postfix).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import email.policy
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib

# Run as a script from a checkout: the repo root is not on sys.path, the package need not
# be installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from digest import store
from digest.config import SmtpConfig
from digest.mail.drain import drain_outbox
from digest.mail.smtp import SmtpTransport
from digest.store import outbox

SENDER = "bench@example.org"
RECIPIENT = "sink@example.org"
NOW = dt.datetime(2026, 3, 2, 7, 0, tzinfo=dt.UTC)
BASELINE = "smtp-source (Postfix, C)"
NO_PIPELINING = "smtp-source, no PIPELINING"


def find_tools() -> tuple[str, str]:
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    if not (Path(sink).exists() and Path(source).exists()):
        sys.exit(
            "benchmarks/send.py needs Postfix's smtp-sink and smtp-source; install them with\n"
            "  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postfix"
        )
    return sink, source


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"smtp-sink did not start listening on 127.0.0.1:{port}")


def build_message(size: int, n: int, *, lf: bool = False) -> bytes:
    """A message of about `size` bytes; its lines end CRLF, as rendered digests' do in the
    outbox (email.policy.SMTP), or LF with `lf` (a message from elsewhere: the pool then
    rewrites every line end)."""
    message = EmailMessage(policy=email.policy.default if lf else email.policy.SMTP)
    message["From"] = SENDER
    message["To"] = RECIPIENT
    message["Subject"] = f"benchmark {n}"
    message["Message-ID"] = f"<bench.{n}@example.org>"
    head = len(message.as_bytes()) + 64
    line = "La De Da " * 8 + "\n"
    message.set_content((line * (max(size - head, 0) // len(line) + 1))[: max(size - head, 1)])
    return message.as_bytes()


def run_smtp_source(source: str, port: int, messages: int, size: int, sessions: int) -> float:
    command = [source, "-d", "-s", str(sessions), "-m", str(messages), "-l", str(size),
               "-f", SENDER, "-t", RECIPIENT, f"127.0.0.1:{port}"]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def smtp_config(port: int, sessions: int) -> SmtpConfig:
    return SmtpConfig(
        host="127.0.0.1",
        port=port,
        security="none",
        max_connections=sessions,
        rate_per_second=1e9,  # no cap: we measure the pool, not the limiter
    )


async def run_pool(port: int, messages: list[bytes], sessions: int) -> float:
    async with SmtpTransport(smtp_config(port, sessions)) as transport:
        started = time.perf_counter()
        await asyncio.gather(*(transport.send(SENDER, RECIPIENT, m) for m in messages))
        return time.perf_counter() - started


async def run_sendmail(port: int, messages: list[bytes], sessions: int) -> float:
    """aiosmtplib's sendmail over `sessions` reused connections, the messages shared out."""
    clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port) for _ in range(sessions)]
    for client in clients:
        await client.connect()

    async def one_connection(client: aiosmtplib.SMTP, share: list[bytes]) -> None:
        for message in share:
            await client.sendmail(SENDER, [RECIPIENT], message)

    started = time.perf_counter()
    await asyncio.gather(*(one_connection(c, messages[n::sessions]) for n, c in enumerate(clients)))
    took = time.perf_counter() - started
    for client in clients:
        await client.quit()
    return took


async def run_drain(port: int, messages: list[bytes], sessions: int, folder: Path) -> float:
    engine = store.open_engine(f"sqlite:///{folder / 'bench.db'}")
    store.migrate(engine)
    for n, message in enumerate(messages):
        outbox.add_digest(
            engine,
            subscriber=f"user{n}@example.org",
            slot=NOW,
            recipient=RECIPIENT,
            sender=SENDER,
            message_id=f"<bench.{n}@example.org>",
            subject=f"benchmark {n}",
            paper_ids=["2401.00001", "2401.00002"],
            message=message,
            now=NOW,
        )
    async with SmtpTransport(smtp_config(port, sessions)) as transport:
        started = time.perf_counter()
        report = await drain_outbox(engine, transport, now=lambda: NOW)
        took = time.perf_counter() - started
    engine.dispose()
    if report.sent != len(messages):
        sys.exit(f"drain_outbox sent {report.sent} of {len(messages)}: {report}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=20_000, help="bytes per message")
    parser.add_argument("--sessions", type=int, default=4, help="parallel connections")
    parser.add_argument("--rounds", type=int, default=3, help="best of this many runs each")
    parser.add_argument("--lf", action="store_true", help="messages with LF line ends")
    args = parser.parse_args()
    sink, source = find_tools()
    port, plain_port = free_port(), free_port()
    sinks = [
        subprocess.Popen([sink, "-u", "nobody", f"127.0.0.1:{port}", "256"]),
        subprocess.Popen([sink, "-u", "nobody", "-p", f"127.0.0.1:{plain_port}", "256"]),
    ]
    try:
        wait_listening(port)
        wait_listening(plain_port)
        messages = [build_message(args.size, n, lf=args.lf) for n in range(args.messages)]
        size = len(messages[0])
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            runs = {
                BASELINE: run_smtp_source(source, port, args.messages, size, args.sessions),
                NO_PIPELINING: run_smtp_source(
                    source, plain_port, args.messages, size, args.sessions
                ),
                "aiosmtplib sendmail (before)": asyncio.run(
                    run_sendmail(port, messages, args.sessions)
                ),
                "SmtpTransport pool": asyncio.run(run_pool(port, messages, args.sessions)),
            }
            with tempfile.TemporaryDirectory() as folder:
                runs["drain_outbox (SQLite outbox + pool)"] = asyncio.run(
                    run_drain(port, messages, args.sessions, Path(folder))
                )
            for name, took in runs.items():
                best[name] = min(best.get(name, took), took)
    finally:
        for process in sinks:
            process.terminate()
            process.wait(5)
    print(
        f"{args.messages} messages of {size} bytes ({'LF' if args.lf else 'CRLF'} line ends), "
        f"{args.sessions} reused connections, "
        f"into smtp-sink on 127.0.0.1 (best of {args.rounds})"
    )
    print(f"{'sender':<38} {'seconds':>8} {'msg/s':>7} {'vs smtp-source':>15} {'vs no-pipe':>11}")
    for name, took in best.items():
        rate = args.messages / took
        ratio = best[BASELINE] / took
        ratio_plain = best[NO_PIPELINING] / took
        print(f"{name:<38} {took:>8.3f} {rate:>7.0f} {ratio:>15.0%} {ratio_plain:>11.0%}")


if __name__ == "__main__":
    main()
