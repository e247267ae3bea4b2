"""10,000 digests end to end: match, render, outbox, send, with peak RSS.

One process, one SQLite file holding a week of real corpus papers listed today and
yesterday, 10,000 subscribers with three realistic topics each (built from the corpus
vocabulary, as in benchmarks/match.py). Stages, each timed:

  plan   pipeline.plan_due: index once, match each subscriber, render, add to the outbox
  send   delivery.drain_outbox through digest.smtp's pool into Postfix's smtp-sink

Baseline, in the same run: Postfix's smtp-source (C) sending the same number of messages
of the same mean size over the same number of connections: the machine's ceiling.

    .venv/bin/python benchmarks/end_to_end.py [--subscribers N] [--sessions S]
Needs smtp-sink/smtp-source (Debian: apt-get install postfix).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from match import Vocabulary, load_days, random_query
from send import find_tools, free_port, run_smtp_source, wait_listening

from digest import pipeline, store
from digest.config import Config, MailConfig, SmtpConfig, Subscriber, Topic
from digest.mail.delivery import drain_outbox
from digest.mail.smtp import SmtpTransport
from digest.schedule import parse_schedule
from digest.store import outbox

NOW = dt.datetime(2026, 3, 13, 9, 0, tzinfo=dt.UTC)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def subscribers(n: int, vocabulary: Vocabulary) -> tuple[Subscriber, ...]:
    rng = random.Random(7)
    daily = parse_schedule("daily 08:00")
    return tuple(
        Subscriber(
            email=f"user{i}@example.org",
            name=f"User {i}",
            schedule=daily,
            timezone="UTC",
            max_papers=20,
            topics=tuple(Topic(f"Topic {k}", random_query(rng, vocabulary)) for k in range(3)),
        )
        for i in range(n)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--sessions", type=int, default=4)
    args = parser.parse_args()
    sink, source = find_tools()

    days = load_days()
    week = [p for day in sorted(days, key=len)[-5:] for p in day]  # the five busiest days
    vocabulary = Vocabulary([p for day in days for p in day])
    with tempfile.TemporaryDirectory() as tmp:
        engine = store.open_engine(f"sqlite:///{tmp}/e2e.db")
        store.migrate(engine)
        today = NOW.date()
        for n, day in enumerate((today - dt.timedelta(days=1), today)):
            half = week[n::2]
            store.upsert_listings(engine, day, half, NOW)
        port = free_port()
        config = Config(
            path=Path(tmp) / "digest.toml",
            mail=MailConfig(
                from_addr="Papers Digest <digest@example.org>",
                transport="smtp",
                smtp=SmtpConfig(
                    host="127.0.0.1",
                    port=port,
                    security="none",
                    max_connections=args.sessions,
                    rate_per_second=0,
                ),
            ),
            subscribers=subscribers(args.subscribers, vocabulary),
        )
        rss_before = peak_rss_mb()

        started = time.perf_counter()
        cpu = time.process_time()
        planned = pipeline.plan_due(
            pipeline.Planner(config, engine), config.subscribers, NOW, daemon=False
        )
        plan_s, plan_cpu = time.perf_counter() - started, time.process_time() - cpu
        digests = outbox.outbox_counts(engine)["pending"]
        sizes = [len(m) for m in _messages(engine)]
        mean_size = sum(sizes) // max(1, len(sizes))
        rss_plan = peak_rss_mb()

        proc = subprocess.Popen(
            [sink, "-u", "nobody", f"127.0.0.1:{port}", "256"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_listening(port)
            assert config.mail.smtp is not None
            started = time.perf_counter()
            report = asyncio.run(_drain(engine, config.mail.smtp))
            send_s = time.perf_counter() - started
            baseline_s = run_smtp_source(source, port, digests, mean_size, args.sessions)
        finally:
            proc.terminate()
            proc.wait()
        engine.dispose()

    matched = sum(len(p.matches) for p in planned)
    print(
        f"{args.subscribers} subscribers x 3 topics, {len(week)} papers in the window, "
        f"{digests} digests ({matched / max(1, len(planned)):.1f} papers each, "
        f"mean {mean_size / 1024:.0f} KB), {args.sessions} SMTP connections"
    )
    print()
    print(f"{'stage':<44}{'wall s':>9}{'digests/s':>11}")
    print(
        f"{'plan: match + render + outbox (CPU ' + f'{plan_cpu:.1f} s)':<44}"
        f"{plan_s:>9.2f}{digests / plan_s:>11.0f}"
    )
    print(f"{'send: drain_outbox -> smtp-sink':<44}{send_s:>9.2f}{report.sent / send_s:>11.0f}")
    total = plan_s + send_s
    print(f"{'end to end':<44}{total:>9.2f}{digests / total:>11.0f}")
    print(
        f"{'baseline: smtp-source, same count and size':<44}{baseline_s:>9.2f}"
        f"{digests / baseline_s:>11.0f}"
    )
    print(
        f"ratio end-to-end / smtp-source time: {total / baseline_s:.1f}x; "
        f"sent {report.sent}, failed {report.failed}, pending {report.pending}"
    )
    print(
        f"peak RSS: {rss_before:.0f} MB after loading, {rss_plan:.0f} MB after planning, "
        f"{peak_rss_mb():.0f} MB at the end"
    )


def _messages(engine: object) -> list[bytes]:
    from sqlalchemy import text

    with engine.connect() as conn:  # type: ignore[attr-defined]
        table = "digest_messages" if _has_table(conn, "digest_messages") else "digests"
        return [row[0] for row in conn.execute(text(f"SELECT message FROM {table}"))]


def _has_table(conn: object, name: str) -> bool:
    from sqlalchemy import inspect

    return name in inspect(conn).get_table_names()  # type: ignore[arg-type]


async def _drain(engine: object, smtp: SmtpConfig) -> object:
    async with SmtpTransport(smtp) as transport:
        return await drain_outbox(engine, transport, now=lambda: NOW)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
