"""The full daily cycle at 10k..100k subscribers, stage by stage, next to the machine's limits.

One process, one SQLite file (or a fresh PostgreSQL database), the steps `digest send`
takes:

  load    load_config: a subscription file of N subscribers, three realistic topics
          each (benchmarks/match.py's generator over the corpus vocabulary), mixed
          timezones and schedules, all due at NOW
  poll    polling.poll from the loopback fixture server (tests/hfserver.py) serving
          the five busiest corpus days as today and yesterday
  plan    pipeline.plan_due, split into render (render_digest_bytes), outbox writes
          (outbox.add_digests) and the rest (due slots, windows, matching)
  send    drain.drain_outbox through SmtpTransport into Postfix's smtp-sink,
          4 connections, rate cap off; on PostgreSQL by separate processes running the
          daemon's drainer (cycle_pg.py), once with 1 and once with 2 of them (--drainers)
          sharing the drain, 4 connections each, the outbox made pending again between

Baselines in the same run: Postfix's smtp-source (C) sending the same number of messages
of the same mean size over the same connections (the machine's SMTP ceiling), and a plain
sqlite3 `executemany` writing the very rows add_digests wrote (digests, their message
bytes, the subscribers' slots) into an empty copy of the schema, in the same batches
(SQLite only). On PostgreSQL a second table gives each drain's rate beside smtp-source
sending the same count over as many connections as all its drainers together.

Wall and CPU seconds for every stage (the box is shared: CPU is the fair one), the
load average, and peak RSS (ru_maxrss) after each stage.

    .venv/bin/python benchmarks/cycle.py [--subscribers 10000 25000 ...] [--sessions 4]
        [--backend postgresql [--url URL] [--drainers 1 2]]
--url names a local server (default: $DIGEST_TEST_PG_URL, as `.ci/pg-cluster start`
prints it); each size gets a database of its own on it, dropped after.
Needs smtp-sink/smtp-source (Debian: apt-get install postfix). Each size runs in its own
process so that peak RSS is that size's own.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cycle_pg
from executemany import plain_executemany
from match import Clock, Vocabulary, load_days, random_query
from pg_drain import drop_database, make_database
from send import find_tools, free_port, run_smtp_source, wait_listening

from tests.hfserver import HFServer
from tests.testdata import corpus_dir

NOW = dt.datetime(2026, 3, 13, 9, 0, tzinfo=dt.UTC)  # a Friday
ZONES = ("UTC", "Europe/Berlin", "Europe/London", "America/New_York", "Asia/Tokyo",
         "Asia/Kolkata", "America/Los_Angeles", "Australia/Sydney")  # fmt: skip
SCHEDULES = ("daily 08:00", "daily 07:00", "weekdays 07:30", "daily 06:30")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def write_subscribers(path: Path, n: int) -> None:
    """`n` [[subscribers]] tables with generated topics (run in the parent process: the
    corpus vocabulary must not count in a child's peak RSS)."""
    vocabulary = Vocabulary([p for day in load_days() for p in day])
    rng = random.Random(7)
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            topics = ", ".join(
                f"{{ name = {json.dumps(f'Topic {k}')}, "
                f"query = {json.dumps(random_query(rng, vocabulary))} }}"
                for k in range(3)
            )
            out.write(
                f'\n[[subscribers]]\nemail = "user{i}@example.org"\nname = "User {i}"\n'
                f'timezone = "{ZONES[i % len(ZONES)]}"\nschedule = "{SCHEDULES[i % 7 % 4]}"\n'
                f"topics = [{topics}]\n"
            )


def write_config(
    path: Path,
    subscribers: Path | None,
    base_url: str,
    port: int,
    sessions: int,
    url: str = "sqlite:///cycle.db",
) -> None:
    """The subscription file: the fixture server, the database, smtp-sink, uncapped."""
    with path.open("w", encoding="utf-8") as out:
        out.write(f"""
[source]
base_url = "{base_url}"
mode = "api"
lookback_days = 1

[storage]
url = "{url}"

[mail]
from = "Papers Digest <digest@example.org>"
smtp = {{ host = "127.0.0.1", port = {port}, security = "none", \
max_connections = {sessions}, rate_per_second = 1e9 }}

[defaults]
max_papers = 20
""")
        if subscribers is None:
            return
        with subscribers.open(encoding="utf-8") as body:
            while chunk := body.read(1 << 20):
                out.write(chunk)


def serve_busy_days(hf: HFServer) -> int:
    """The five busiest corpus days, shared out as yesterday's and today's lists."""
    busiest = sorted(corpus_dir().glob("*.json"), key=lambda p: len(json.loads(p.read_bytes())))
    week = [item for path in busiest[-5:] for item in json.loads(path.read_bytes())]
    today = NOW.date()
    for n, day in enumerate((today - dt.timedelta(days=1), today)):
        hf.set_api_body(day, json.dumps(week[n::2]).encode())
    return len(week)


class Timed:
    """Wall and CPU seconds spent inside one function, summed over its calls."""

    def __init__(self, owner: Any, name: str) -> None:
        self.owner, self.name = owner, name
        self.original: Callable[..., Any] = getattr(owner, name)
        self.wall = self.cpu = 0.0
        self.calls = 0

    def __enter__(self) -> Timed:
        def timed(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.wall += time.perf_counter() - wall
                self.cpu += time.process_time() - cpu
                self.calls += 1

        setattr(self.owner, self.name, timed)
        return self

    def __exit__(self, *exc: object) -> None:
        setattr(self.owner, self.name, self.original)


@contextmanager
def smtp_sink(sink: str, port: int) -> Iterator[None]:
    proc = subprocess.Popen([sink, "-u", "nobody", f"127.0.0.1:{port}", "256"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_listening(port)
        yield
    finally:
        proc.terminate()
        proc.wait()


def run_one(subscribers: Path, sessions: int, url: str | None, drainers: list[int]) -> None:
    """One size, in this process: print one JSON line of measurements. `url`: a
    PostgreSQL database to use (else an SQLite file), drained by `drainers` processes."""
    from digest import pipeline, polling, render, store
    from digest.config import load_config
    from digest.mail.drain import drain_outbox
    from digest.mail.smtp import SmtpTransport
    from digest.sources.fetch import make_client
    from digest.store import outbox

    sink, source = find_tools()
    port = free_port()
    result: dict[str, Any] = {"load_start": load_average()}
    with tempfile.TemporaryDirectory() as tmp, HFServer() as hf:
        result["papers"] = serve_busy_days(hf)
        path = Path(tmp) / "digest.toml"
        write_config(path, subscribers, hf.base_url, port, sessions, url or "sqlite:///cycle.db")
        postmaster = cycle_pg.postmaster(url) if url else None
        server_cpu = cycle_pg.server_cpu(postmaster) if postmaster else 0.0
        rss: dict[str, float] = {"start": peak_rss_mb()}
        stages: dict[str, tuple[float, float]] = {}

        with Clock() as c:
            config = load_config(path, {})
        stages["load"], rss["load"] = (c.wall, c.cpu), peak_rss_mb()
        result["subscribers"] = len(config.subscribers)
        engine = store.open_engine(config.storage.url)
        store.migrate(engine)

        async def poll() -> polling.PollReport:
            async with make_client(config.source) as client:
                days = polling.days_to_poll(NOW, config.source.lookback_days)
                return await polling.poll(config, engine, client, days, now=lambda: NOW)

        with Clock() as c:
            report = asyncio.run(poll())
        assert report.ok, report.errors
        stages["poll"], rss["poll"] = (c.wall, c.cpu), peak_rss_mb()

        render_fn = "render_digest_bytes" if hasattr(pipeline, "render_digest_bytes") else None
        with (
            Timed(pipeline if render_fn else render, render_fn or "render_digest_bytes") as r,
            Timed(outbox, "add_digests") as w,
            Clock() as c,
        ):
            planned = pipeline.plan_due(
                pipeline.Planner(config, engine), config.subscribers, NOW, daemon=False
            )
        digests = planned.due if hasattr(planned, "due") else len(planned)  # a PlanReport
        del planned
        stages["plan"], rss["plan"] = (c.wall, c.cpu), peak_rss_mb()
        if postmaster:  # the server's CPU for poll and plan
            result["server_cpu"] = cycle_pg.server_cpu(postmaster) - server_cpu
        stages["render"], stages["outbox"] = (r.wall, r.cpu), (w.wall, w.cpu)
        stages["match"] = (c.wall - r.wall - w.wall, c.cpu - r.cpu - w.cpu)

        with engine.connect() as conn:
            from sqlalchemy import text

            pending, mean, matched = conn.execute(text(
                "SELECT count(*), avg(length(m.message)), "
                "avg(length(d.paper_ids_json) - length(replace(d.paper_ids_json, ',', '')) + 1) "
                "FROM digests d JOIN digest_messages m ON m.digest_id = d.id")).one()  # fmt: skip
        result.update(digests=pending, mean_size=int(mean or 0))
        result["papers_each"] = float(matched or 0)
        assert config.mail.smtp is not None
        smtp = config.mail.smtp

        async def drain() -> Any:
            async with SmtpTransport(smtp) as transport:
                return await drain_outbox(engine, transport, now=lambda: NOW)

        if url:  # separate drainer processes, 1 then 2 (cycle_pg.py)
            engine.dispose()
            drain_config = Path(tmp) / "drain.toml"
            write_config(drain_config, None, hf.base_url, port, sessions, url)
            with smtp_sink(sink, port):
                result["drains"] = drains = [
                    cycle_pg.send_stage(url, drain_config, pending, n, sessions,
                                        lambda n: run_smtp_source(
                                            source, port, pending, result["mean_size"], n))
                    for n in drainers
                ]  # fmt: skip
            stages["send"], rss["send"] = (drains[0]["wall"], drains[0]["cpu"]), peak_rss_mb()
            result.update(sent=pending, failed=0, smtp_source=drains[0]["smtp_source"])
        else:  # in this process
            with smtp_sink(sink, port):
                with Clock() as c:
                    sent = asyncio.run(drain())
                stages["send"], rss["send"] = (c.wall, c.cpu), peak_rss_mb()
                result["sent"], result["failed"] = sent.sent, sent.failed
                started = time.perf_counter()
                run_smtp_source(source, port, pending, result["mean_size"], sessions)
                result["smtp_source"] = time.perf_counter() - started
            engine.dispose()
            wall, cpu, rows = plain_executemany(Path(tmp) / "cycle.db", pipeline.SAVE_EVERY)
            result["executemany"] = (wall, cpu)
            assert rows == pending, (rows, pending)
    result.update(stages=stages, rss=rss, load_end=load_average(), planned=digests)
    print(json.dumps(result))


def table(results: list[dict[str, Any]], backend: str) -> None:
    print(f"{results[0]['papers']} papers in the window; 3 topics per subscriber; "
          f"{backend}; rate cap off; wall s (CPU s)")  # fmt: skip
    heads = ["subscribers", "load", "poll", "match etc.", "render", "outbox write",
             "send", "total", "digests/s", "render/s (CPU)", "smtp-source",
             "send/smtp-source", "executemany", "outbox/executemany", "peak RSS MB",
             "KB, papers/digest", "load avg"]  # fmt: skip
    rows = []
    for r in results:
        s = r["stages"]

        def cell(stage: str, s: dict[str, tuple[float, float]] = s) -> str:
            wall, cpu = s[stage]
            return f"{wall:.1f} ({cpu:.1f})"

        total = sum(s[k][0] for k in ("load", "poll", "plan", "send"))
        total_cpu = sum(s[k][1] for k in ("load", "poll", "plan", "send"))
        d = r["digests"]
        em_wall, em_cpu = r.get("executemany", (0.0, 0.0))
        executemany = f"{em_wall:.1f} ({em_cpu:.1f})"
        versus = f"{s['outbox'][0] / max(em_wall, 1e-9):.1f}x"
        if "server_cpu" in r:  # PostgreSQL: no executemany; the server's CPU for poll+plan
            executemany, versus = "-", f"server CPU {r['server_cpu']:.1f} s"
        rss = r["rss"]
        rows.append([
            f"{r['subscribers']:,}", cell("load"), cell("poll"), cell("match"), cell("render"),
            cell("outbox"), cell("send"), f"{total:.1f} ({total_cpu:.1f})", f"{d / total:.0f}",
            f"{d / max(s['render'][1], 1e-9):.0f}",
            f"{r['smtp_source']:.1f}", f"{r['smtp_source'] / s['send'][0]:.0%}",
            executemany, versus,
            f"{rss['load']:.0f}/{rss['plan']:.0f}/{rss['send']:.0f}",
            f"{r['mean_size'] / 1024:.0f}, {r['papers_each']:.1f}",
            f"{r['load_start']} -> {r['load_end']}",
        ])  # fmt: skip
    cycle_pg.print_table(heads, rows)
    print("peak RSS: after load / after planning / at the end (ru_maxrss, whole process); "
          "digests/s over the total; render/s per CPU second; send/smtp-source: the drain's "
          "rate as a share of smtp-source's; on PostgreSQL, send is the first drain below "
          "(CPU: the drainers' own)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, nargs="+",
                        default=[10_000, 25_000, 50_000, 100_000])  # fmt: skip
    parser.add_argument("--sessions", type=int, default=4, help="SMTP connections per drain")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--url", default=os.environ.get("DIGEST_TEST_PG_URL"),
                        help="a local PostgreSQL server; default $DIGEST_TEST_PG_URL")  # fmt: skip
    parser.add_argument("--drainers", type=int, nargs="+", default=[1, 2],
                        help="PostgreSQL: drain with this many processes, then ...")  # fmt: skip
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # a child: one file
    parser.add_argument("--database", help=argparse.SUPPRESS)  # a child: its PostgreSQL database
    args = parser.parse_args()
    if args.one:
        run_one(args.one, args.sessions, args.database, args.drainers)
        return
    if args.backend == "postgresql" and not args.url:
        sys.exit("--backend postgresql needs a server: --url or DIGEST_TEST_PG_URL")
    find_tools()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.subscribers:
            subscribers = Path(tmp) / f"subscribers-{n}.toml"
            write_subscribers(subscribers, n)
            child = [sys.executable, __file__, "--one", str(subscribers), "--sessions",
                     str(args.sessions), "--drainers", *map(str, args.drainers)]  # fmt: skip
            database = make_database(args.url) if args.backend == "postgresql" else None
            if database:
                child += ["--database", database]
            try:
                out = subprocess.run(child, check=True, stdout=subprocess.PIPE, text=True).stdout
            finally:
                if database:
                    drop_database(args.url, database)
            subscribers.unlink()
            results.append(json.loads(out.strip().splitlines()[-1]))
            print(f"{n:,}: done", file=sys.stderr, flush=True)
            table(results, "SQLite" if database is None else "PostgreSQL")  # the table so far
            if database:
                cycle_pg.drains_table(results, args.sessions)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
