"""Soak: `digest run` for minutes with 1,000 subscribers, a poll every second, 1-second
slots for a subset, against the local fixture server and a real aiosmtpd server.

    .venv/bin/python benchmarks/soak.py               # 10 minutes
    .venv/bin/python benchmarks/soak.py --minutes 1   # a quick run

Side by side in the same run, the baseline: a bare httpx loop fetching the same URLs at
the same interval (no parsing, no database, no scheduler, no mail). Every `--rotate`
seconds the fixture server starts serving another real day as "today", so new papers keep
arriving and the 1-second subscribers keep getting digests.

Measured: RSS after minute 1 and at the end (growth = a leak), CPU seconds, digests sent,
duplicates (a paper mailed twice to the same subscriber, or a Message-ID twice: must be
0), and in a second phase the idle CPU between polls (poll every 10 min, nothing due).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.hfserver import HFServer, shared_dir  # noqa: E402 (needs the repo on sys.path)
from tests.smtpd_helpers import RecordingHandler, SmtpServer  # noqa: E402 (same)

TOPICS = [
    ("Models", "model*"),
    ("Language", 'language OR "large language model*" OR llm*'),
    ("Vision", "image* OR video* OR vision OR visual"),
    ("Agents", "agent* OR tool* OR planning"),
    ("RL", 'reinforcement OR reward OR "policy optimization"'),
]
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"]

BASELINE = """
import asyncio, datetime as dt, sys, httpx
base, interval, lookback = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
async def main():
    async with httpx.AsyncClient() as client:
        while True:
            today = dt.datetime.now(dt.UTC).date()
            for n in range(lookback, -1, -1):
                day = (today - dt.timedelta(days=n)).isoformat()
                r = await client.get(f"{base}/api/daily_papers", params={"date": day, "limit": 100})
                r.read()
            await asyncio.sleep(interval)
asyncio.run(main())
"""


def write_config(path: Path, hf: HFServer, smtp: SmtpServer, *, fast: int, total: int,
                 poll: str) -> None:
    parts = [
        f'[source]\nbase_url = "{hf.base_url}"\nmode = "api"\npoll_interval = "{poll}"\n'
        f"lookback_days = 1\nretries = 0\n",
        '[storage]\nurl = "sqlite:///digest.db"\n',
        f'[mail]\nfrom = "Papers Digest <digest@example.org>"\ntransport = "smtp"\n'
        f'smtp = {{ host = "127.0.0.1", port = {smtp.port}, security = "none", '
        f"max_connections = 4, rate_per_second = 10000 }}\n",
    ]
    for i in range(total):
        name, query = TOPICS[i % len(TOPICS)]
        other_name, other_query = TOPICS[(i + 2) % len(TOPICS)]
        schedule = "every 1s" if i < fast else f"daily {8 + i % 3:02d}:00"
        zone = "UTC" if i < fast else ZONES[i % len(ZONES)]
        parts.append(
            f'[[subscribers]]\nemail = "reader{i:04d}@example.org"\ntimezone = "{zone}"\n'
            f'schedule = "{schedule}"\ntopics = [{{ name = "{name}", query = \'{query}\' }}, '
            f"{{ name = \"{other_name}\", query = '{other_query}' }}]\n"
        )
    path.write_text("\n".join(parts), encoding="utf-8")


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen(
        [sys.executable, "-m", "digest.cli", "run", "-c", str(config)],
        cwd=config.parent, env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )


def start_baseline(base_url: str, interval: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", BASELINE, base_url, str(interval), "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for_line(log: Path, pattern: str, timeout: float) -> None:
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and regex.search(log.read_text(errors="replace")):
            return
        time.sleep(0.1)
    raise SystemExit(f"soak: no log line {pattern!r} after {timeout}s; see {log}")


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def rss_mib(proc: psutil.Process) -> float:
    return float(proc.memory_info().rss) / 2**20


def stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def rotate_days(hf: HFServer, every: float, stop_event: threading.Event) -> None:
    """Serve another real day as today every `every` seconds: new papers keep coming."""
    corpus = sorted((shared_dir() / "corpus" / "hf-api").glob("*.json"))
    n = 0
    while not stop_event.wait(every):
        n += 1
        today = dt.datetime.now(dt.UTC).date()
        hf.set_api_body(today, corpus[n % len(corpus)].read_bytes())


def duplicates(handler: RecordingHandler) -> tuple[int, int]:
    """(papers mailed twice to the same subscriber, Message-IDs received twice)."""
    papers: Counter[tuple[str, str]] = Counter()
    ids: Counter[str] = Counter()
    for item in handler.received:
        message = item.parsed()
        ids[str(message["Message-ID"])] += 1
        text = message.get_body(("plain",))
        body = text.get_content() if text is not None else ""
        for paper in set(re.findall(r"huggingface\.co/papers/([0-9.]+)", body)):
            for rcpt in item.rcpt_tos:
                papers[(rcpt, paper)] += 1
    return (sum(n - 1 for n in papers.values() if n > 1),
            sum(n - 1 for n in ids.values() if n > 1))


def soak(args: argparse.Namespace, work: Path) -> tuple[list[float], dict[str, tuple[str, str]]]:
    """(the daemon's RSS at the end of each minute, the table rows)."""
    handler = RecordingHandler()
    with HFServer() as hf, SmtpServer(handler) as smtp:
        corpus = sorted((shared_dir() / "corpus" / "hf-api").glob("*.json"))
        today = dt.datetime.now(dt.UTC).date()
        for n in range(-1, 3):
            hf.set_api_body(today - dt.timedelta(days=n), corpus[-1 - n].read_bytes())
        config = work / "soak" / "digest.toml"
        config.parent.mkdir()
        write_config(config, hf, smtp, fast=args.fast, total=args.subscribers, poll="1s")
        log = config.parent / "daemon.log"
        daemon = start_daemon(config, log)
        baseline = start_baseline(hf.base_url, 1.0)
        d, b = psutil.Process(daemon.pid), psutil.Process(baseline.pid)
        wait_for_line(log, r"daemon started", 60)
        stop_rotating = threading.Event()
        rotator = threading.Thread(target=rotate_days, args=(hf, args.rotate, stop_rotating),
                                   daemon=True)
        rotator.start()
        started = time.monotonic()
        duration = args.minutes * 60
        rss_1m = (0.0, 0.0)
        by_minute: list[float] = []
        while (elapsed := time.monotonic() - started) < duration:
            time.sleep(min(1.0, duration - elapsed))
            if rss_1m == (0.0, 0.0) and time.monotonic() - started >= min(60, duration):
                rss_1m = (rss_mib(d), rss_mib(b))
            if time.monotonic() - started >= 60 * (len(by_minute) + 1):
                by_minute.append(rss_mib(d))
            if daemon.poll() is not None:
                raise SystemExit(f"soak: the daemon died (exit {daemon.returncode}); see {log}")
        rss_end = (rss_mib(d), rss_mib(b))
        cpu = (cpu_seconds(d), cpu_seconds(b))
        stop_rotating.set()
        code = stop(daemon)
        stop(baseline)
        text = log.read_text(errors="replace")
        summary = [line for line in text.splitlines() if "stopped after" in line]
        polls = re.search(r"(\d+) polls \((\d+) failed\)", summary[-1] if summary else "")
        paper_dups, id_dups = duplicates(handler)
        error_lines = [line for line in text.splitlines() if " ERROR " in line]
        errors = len(error_lines)
        for line in error_lines[:5]:
            print(f"soak: daemon logged: {line}", file=sys.stderr)
    return by_minute, {
        "RSS after minute 1 (MiB)": (f"{rss_1m[0]:.1f}", f"{rss_1m[1]:.1f}"),
        "RSS at the end (MiB)": (f"{rss_end[0]:.1f}", f"{rss_end[1]:.1f}"),
        "RSS growth after minute 1 (MiB)": (f"{rss_end[0] - rss_1m[0]:+.1f}",
                                            f"{rss_end[1] - rss_1m[1]:+.1f}"),
        "CPU seconds used": (f"{cpu[0]:.1f}", f"{cpu[1]:.1f}"),
        "CPU % of one core": (f"{100 * cpu[0] / duration:.1f}", f"{100 * cpu[1] / duration:.1f}"),
        "polls (failed)": (f"{polls.group(1)} ({polls.group(2)})" if polls else "?", "-"),
        "digests sent": (str(len(handler.received)), "-"),
        "duplicate papers / Message-IDs": (f"{paper_dups} / {id_dups}", "-"),
        "ERROR log lines": (str(errors), "-"),
        "exit code after SIGTERM": (str(code), "-"),
    }


def idle(args: argparse.Namespace, work: Path) -> tuple[float, float]:
    """CPU % while nothing is due: poll every 10 min, all subscribers on daily slots."""
    with HFServer() as hf, SmtpServer() as smtp:
        config = work / "idle" / "digest.toml"
        config.parent.mkdir()
        write_config(config, hf, smtp, fast=0, total=args.subscribers, poll="10m")
        log = config.parent / "daemon.log"
        daemon = start_daemon(config, log)
        baseline = start_baseline(hf.base_url, 600.0)
        d, b = psutil.Process(daemon.pid), psutil.Process(baseline.pid)
        wait_for_line(log, r"catch-up: ", 60)
        time.sleep(2)
        before = (cpu_seconds(d), cpu_seconds(b))
        time.sleep(args.idle_seconds)
        after = (cpu_seconds(d), cpu_seconds(b))
        stop(daemon)
        stop(baseline)
    return (100 * (after[0] - before[0]) / args.idle_seconds,
            100 * (after[1] - before[1]) / args.idle_seconds)


def ratio(ours: str, base: str) -> str:
    try:
        a, b = float(ours.split()[0]), float(base.split()[0])
    except ValueError:
        return "-"
    return f"{a / b:.2f}x" if b else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--fast", type=int, default=100, help="subscribers on 1-second slots")
    parser.add_argument("--rotate", type=float, default=15.0, help="seconds between new days")
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="digest-soak-") as tmp:
        work = Path(tmp)
        by_minute, rows = soak(args, work)
        idle_cpu = idle(args, work)
    rows["idle CPU % between polls"] = (f"{idle_cpu[0]:.2f}", f"{idle_cpu[1]:.2f}")
    print(f"soak: {args.minutes:g} min, {args.subscribers} subscribers ({args.fast} on 1-second "
          f"slots), poll every 1 s, a new day every {args.rotate:g} s; "
          f"idle phase {args.idle_seconds:g} s with poll every 10 min")
    print("baseline: a bare httpx loop fetching the same URLs at the same interval")
    width = max(len(k) for k in rows)
    print(f"{'':{width}}  {'digest run':>14}  {'baseline':>10}  {'ratio':>7}")
    for name, (ours, base) in rows.items():
        print(f"{name:{width}}  {ours:>14}  {base:>10}  {ratio(ours, base):>7}")
    print("daemon RSS at the end of each minute (MiB): "
          + " ".join(f"{r:.0f}" for r in by_minute))


if __name__ == "__main__":
    main()
