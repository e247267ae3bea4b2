"""Soak: `digest run` for minutes with 1,000 subscribers, a poll every second, 1-second
slots for a subset, against the local fixture server and a real aiosmtpd server.

    .venv/bin/python benchmarks/soak.py               # 10 minutes
    .venv/bin/python benchmarks/soak.py --minutes 30  # the long run: is RSS flat after 5?
    .venv/bin/python benchmarks/soak.py --minutes 1   # a quick run

Side by side in the same run, the baseline: a bare httpx loop fetching the same URLs at
the same interval (no parsing, no database, no scheduler, no mail).

Simulated days: every `--rotate` seconds a new day begins. The fixture server then serves
the next real corpus day as today and the previous one as yesterday (each day replaces the
list, as on huggingface.co), and the soak ages the daemon's stored listings by one day
(`listings.listed_on` moved back one day in its SQLite file, the daemon's own busy-timeout
locking), because the daemon runs on the real clock: without the aging every simulated day
would pile onto today and the 2-day digest window would grow without bound. So new papers
keep arriving, the 1-second subscribers keep getting digests, and the window holds two
real days of papers, as in production.

`--trace` (diagnosis only, not for measuring): the daemon runs under tracemalloc and on
SIGUSR1 writes its top allocations, diffed against its first snapshot, to trace.txt next
to its log; the soak signals it after minute 1 and at the end and prints the diff.

Measured: RSS after minute 1 and at the end (growth = a leak), RSS minute by minute (also
printed to stderr as it goes) and how far it strays from minute 5's after minute 5 (the
goal: within +-10%), CPU seconds, digests sent,
duplicates (a paper mailed twice to the same subscriber, or a Message-ID twice: must be
0), and in a second phase the idle CPU between polls (poll every 10 min, nothing due).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import signal
import sqlite3
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

from tests.hfserver import HFServer  # noqa: E402 (needs the repo on sys.path)
from tests.smtpd_helpers import RecordingHandler, SmtpServer  # noqa: E402 (same)
from tests.testdata import corpus_dir  # noqa: E402

TOPICS = [
    ("Models", "model*"),
    ("Language", 'language OR "large language model*" OR llm*'),
    ("Vision", "image* OR video* OR vision OR visual"),
    ("Agents", "agent* OR tool* OR planning"),
    ("RL", 'reinforcement OR reward OR "policy optimization"'),
]
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"]

# Runs `digest.cli` like `python -m digest.cli`, under tracemalloc; SIGUSR1 dumps the top
# allocations (the first signal takes the reference snapshot, later ones diff against it).
TRACED_DAEMON = """
import gc, os, runpy, signal, sys, tracemalloc
tracemalloc.start()
out, first = os.environ["SOAK_TRACE_OUT"], []
def dump(signum, frame):
    snap = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen*")])
    size = tracemalloc.get_traced_memory()[0] / 2**20
    with open(out, "a", encoding="utf-8") as f:
        if not first:
            first.append(snap)
            f.write(f"traced at the reference snapshot: {size:.1f} MiB\\n")
            return
        f.write(f"traced now {size:.1f} MiB; top growth since the reference snapshot:\\n")
        for stat in snap.compare_to(first[0], "lineno")[:15]:
            f.write(f"  {stat}\\n")
        for name, module in sorted(sys.modules.items()):  # the bounded caches: how full
            for attr, value in (vars(module).items() if name.startswith("digest") else ()):
                if type(value).__name__ == "_lru_cache_wrapper":
                    f.write(f"  cache {name}.{attr}: {value.cache_info()}\\n")
        for obj in gc.get_objects():
            if type(obj).__name__ == "Renderer":
                skeletons = obj._skeletons._cache if obj._skeletons else {}
                f.write(f"  Renderer skeletons: {len(skeletons)}\\n")
signal.signal(signal.SIGUSR1, dump)
sys.argv = ["digest.cli", *sys.argv[1:]]
runpy.run_module("digest.cli", run_name="__main__", alter_sys=True)
"""

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


def start_daemon(config: Path, log: Path, *, trace: bool = False) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    program = ["-m", "digest.cli"]
    if trace:
        env["SOAK_TRACE_OUT"] = str(config.parent / "trace.txt")
        program = ["-c", TRACED_DAEMON]
    return subprocess.Popen(
        [sys.executable, *program, "run", "-c", str(config)],
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


def wait_for_growth_report(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (
        path.exists() and "top growth" in path.read_text(errors="replace")):
        time.sleep(0.2)
    time.sleep(0.5)  # let the writer finish


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


def corpus_days(count: int) -> list[bytes]:
    """The last `count` real corpus days, oldest first (fewer if the corpus is shorter)."""
    files = sorted((corpus_dir()).glob("*.json"))
    return [path.read_bytes() for path in files[-count:]]


def serve_day(hf: HFServer, days: list[bytes], n: int) -> None:
    """Simulated day `n`: real day n as today, real day n-1 as yesterday (wrapping)."""
    today = dt.datetime.now(dt.UTC).date()
    hf.set_api_body(today - dt.timedelta(days=1), days[(n - 1) % len(days)])
    hf.set_api_body(today, days[n % len(days)])


def age_listings(db: Path) -> None:
    """Move every stored listing back one day, as a night passing would.

    Two steps (far into the past, then back to the day before) so no row ever collides
    with the primary key (paper_id, listed_on) of a row not yet moved.
    """
    with sqlite3.connect(db, timeout=60, isolation_level=None) as conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE listings SET listed_on = date(listed_on, '-100000 days')")
        conn.execute("UPDATE listings SET listed_on = date(listed_on, '+99999 days')")
        conn.execute("COMMIT")
    conn.close()


def window_papers(db: Path) -> tuple[int, int]:
    """(papers listed today or yesterday, papers stored): the window must stay bounded."""
    today = dt.datetime.now(dt.UTC).date()
    with sqlite3.connect(db, timeout=60) as conn:
        (window,) = conn.execute(
            "SELECT count(DISTINCT paper_id) FROM listings WHERE listed_on >= ?",
            ((today - dt.timedelta(days=1)).isoformat(),)).fetchone()
        (stored,) = conn.execute("SELECT count(*) FROM papers").fetchone()
    conn.close()
    return int(window), int(stored)


def rotate_days(hf: HFServer, db: Path, days: list[bytes], every: float,
                stop_event: threading.Event, window_sizes: list[int]) -> None:
    """A new simulated day every `every` seconds: age the store first, then serve the
    next day (the other order would let a poll store the new day as today just before
    it is aged into yesterday, and its 304 afterwards would leave today empty)."""
    n = 1
    while not stop_event.wait(every):
        n += 1
        window_sizes.append(window_papers(db)[0])
        age_listings(db)
        serve_day(hf, days, n)


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
        days = corpus_days(int(args.minutes * 60 / args.rotate) + 2)
        serve_day(hf, days, 1)
        config = work / "soak" / "digest.toml"
        db = config.parent / "digest.db"
        config.parent.mkdir()
        write_config(config, hf, smtp, fast=args.fast, total=args.subscribers, poll="1s")
        log = config.parent / "daemon.log"
        daemon = start_daemon(config, log, trace=args.trace)
        baseline = start_baseline(hf.base_url, 1.0)
        d, b = psutil.Process(daemon.pid), psutil.Process(baseline.pid)
        wait_for_line(log, r"daemon started", 60)
        stop_rotating = threading.Event()
        window_sizes: list[int] = []
        rotator = threading.Thread(
            target=rotate_days, args=(hf, db, days, args.rotate, stop_rotating, window_sizes),
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
                if args.trace:
                    daemon.send_signal(signal.SIGUSR1)  # the reference snapshot
            if time.monotonic() - started >= 60 * (len(by_minute) + 1):
                by_minute.append(rss_mib(d))
                print(f"soak: minute {len(by_minute)}: daemon RSS {by_minute[-1]:.1f} MiB",
                      file=sys.stderr, flush=True)
            if daemon.poll() is not None:
                raise SystemExit(f"soak: the daemon died (exit {daemon.returncode}); see {log}")
        rss_end = (rss_mib(d), rss_mib(b))
        cpu = (cpu_seconds(d), cpu_seconds(b))
        stop_rotating.set()
        rotator.join()
        stored = window_papers(db)[1]
        if args.trace:
            daemon.send_signal(signal.SIGUSR1)
            wait_for_growth_report(config.parent / "trace.txt", 120)
            print((config.parent / "trace.txt").read_text(), file=sys.stderr)
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
        "RSS after minute 5, range vs minute 5": (after_minute_5(by_minute), "-"),
        "RSS at the end (MiB)": (f"{rss_end[0]:.1f}", f"{rss_end[1]:.1f}"),
        "RSS growth after minute 1 (MiB)": (f"{rss_end[0] - rss_1m[0]:+.1f}",
                                            f"{rss_end[1] - rss_1m[1]:+.1f}"),
        "CPU seconds used": (f"{cpu[0]:.1f}", f"{cpu[1]:.1f}"),
        "CPU % of one core": (f"{100 * cpu[0] / duration:.1f}", f"{100 * cpu[1] / duration:.1f}"),
        "polls (failed)": (f"{polls.group(1)} ({polls.group(2)})" if polls else "?", "-"),
        "simulated days": (str(len(window_sizes) + 1), "-"),
        "papers in the 2-day window (max)": (str(max(window_sizes, default=0)), "-"),
        "papers stored at the end": (str(stored), "-"),
        "digests sent": (str(len(handler.received)), "-"),
        "duplicate papers / Message-IDs": (f"{paper_dups} / {id_dups}", "-"),
        "ERROR log lines": (str(errors), "-"),
        "exit code after SIGTERM": (str(code), "-"),
    }


def after_minute_5(by_minute: list[float]) -> str:
    """How far RSS strays from its minute-5 value afterwards: "-3% .. +4%" ("-": too short)."""
    if len(by_minute) < 6:
        return "-"
    base = by_minute[4]
    later = [100 * (r - base) / base for r in by_minute[5:]]
    return f"{min(later):+.0f}% .. {max(later):+.0f}%"


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
    parser.add_argument("--trace", action="store_true",
                        help="run the daemon under tracemalloc and print what grew (skews RSS/CPU)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="digest-soak-") as tmp:
        work = Path(tmp)
        by_minute, rows = soak(args, work)
        idle_cpu = idle(args, work)
    rows["idle CPU % between polls"] = (f"{idle_cpu[0]:.2f}", f"{idle_cpu[1]:.2f}")
    print(f"soak: {args.minutes:g} min, {args.subscribers} subscribers ({args.fast} on 1-second "
          f"slots), poll every 1 s, a new day every {args.rotate:g} s (listings aged a day); "
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
