"""Digests per second, 20 papers each: CSS inlined once at template load (ours) vs the
usual way (the same templates with a <style> block, css_inline.inline() per message).

Both paths render the same digests from real corpus days into message bytes the way
the pipeline does (`render_digest_bytes`: the subject and the bytes for the outbox);
the baseline builds its bytes with the same message stage after inlining. A third
row shows ours through `render_digest` + EmailMessage.as_bytes() (the CLI preview's
path, same bytes). One process, one core, one run.

Each path renders the 5 digests over and over, so papers repeat across digests as
they do across subscribers at a slot: the per-paper skeletons and caches are warm, as
they are in a real batch (many subscribers, the few dozen papers of the day). The last
row empties them before every digest (`Renderer.forget`): no paper shared at all.

    .venv/bin/python benchmarks/render.py [--digests N]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
import time
from collections.abc import Callable
from pathlib import Path

import css_inline

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from digest.config import MailConfig, Subscriber, Topic
from digest.records import Match, Paper, TopicHit
from digest.render import (
    Renderer,
    build_digest_bytes,
    pack_html,
    render_digest,
    render_digest_bodies,
    render_digest_bytes,
)
from digest.schedule import Schedule
from digest.sources.hf_api import parse_api
from digest.topics.query import Leaf
from tests.testdata import corpus_day

DAYS = ["2025-10-01", "2025-10-03", "2025-10-14", "2025-12-02", "2025-12-19"]
TOPICS = {  # each topic's explaining leaves: its words, searched in title and abstract
    name: frozenset(Leaf(None, (w,), False) for w in words)
    for name, words in {
        "Reinforcement learning": ("reinforcement", "learning", "rl", "reward"),
        "Diffusion": ("diffusion", "denoising"),
        "LLM agents": ("agent", "agents", "llm", "llms"),
    }.items()
}
MAIL = MailConfig(from_addr="Papers Digest <digest@example.org>")
SUBSCRIBER = Subscriber(
    email="ada@example.org",
    schedule=Schedule("daily 08:00"),
    timezone="Europe/Berlin",
    name="Ada Lovelace",
    topics=tuple(Topic(name, name.lower()) for name in TOPICS),
)
NOW = dt.datetime(2025, 12, 1, 7, 0, tzinfo=dt.UTC)


def load_digests(size: int) -> list[list[Match]]:
    """One digest of `size` papers per corpus day, each paper hitting 1-2 topics."""
    names = list(TOPICS)
    digests = []
    for day in DAYS:
        papers: list[Paper] = parse_api(
            corpus_day(day).read_bytes(), dt.date.fromisoformat(day)
        )
        matches = []
        for i, paper in enumerate(papers[:size]):
            topics = names[i % 3 : i % 3 + 1 + i % 2]
            matches.append(Match(paper, tuple(TopicHit(t, TOPICS[t]) for t in topics)))
        if len(matches) < size:
            raise SystemExit(f"{day}: only {len(matches)} papers, need {size}")
        digests.append(matches)
    return digests


def ours(renderer: Renderer) -> Callable[[list[Match], dt.datetime], bytes]:
    def run(matches: list[Match], slot: dt.datetime) -> bytes:
        _, message = render_digest_bytes(
            renderer, subscriber=SUBSCRIBER, slot=slot, matches=matches, mail=MAIL, now=NOW
        )
        return message

    return run


def ours_cold(renderer: Renderer) -> Callable[[list[Match], dt.datetime], bytes]:
    """Ours with every paper cache emptied before every digest (`Renderer.forget`):
    the worst case, where no two subscribers share a paper."""
    warm = ours(renderer)

    def run(matches: list[Match], slot: dt.datetime) -> bytes:
        renderer.forget()
        return warm(matches, slot)

    return run


def ours_email_message(renderer: Renderer) -> Callable[[list[Match], dt.datetime], bytes]:
    def run(matches: list[Match], slot: dt.datetime) -> bytes:
        msg = render_digest(
            renderer, subscriber=SUBSCRIBER, slot=slot, matches=matches, mail=MAIL, now=NOW
        )
        return msg.as_bytes()

    return run


def baseline(renderer: Renderer) -> Callable[[list[Match], dt.datetime], bytes]:
    def run(matches: list[Match], slot: dt.datetime) -> bytes:
        bodies = render_digest_bodies(
            renderer, subscriber=SUBSCRIBER, slot=slot, matches=matches, mail=MAIL
        )
        inlined = css_inline.inline(bodies.html)
        # The message stage the same as ours: ASCII only and lines packed to <= 800
        # chars (inlining made the packed lines longer: split them at the spaces
        # packing put between tags, then pack again), so the part travels as 7bit.
        html = pack_html(inlined.replace("> <", ">\n<"))
        _, message = build_digest_bytes(
            dataclasses.replace(bodies, html=html), subscriber=SUBSCRIBER, slot=slot,
            mail=MAIL, now=NOW,
        )  # fmt: skip
        return message

    return run


def measure(
    run: Callable[[list[Match], dt.datetime], bytes], digests: list[list[Match]], count: int
) -> tuple[float, float, int]:
    """CPU seconds and wall seconds for `count` digests, and the mean message size.

    CPU time (this process only) is the "one core" figure and holds up on a busy
    machine; wall time is printed next to it to show how busy the machine was.
    """
    for matches in digests:  # warm up: compile templates' code paths, fill caches
        run(matches, NOW)
    total_bytes = 0
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(count):
        slot = NOW - dt.timedelta(days=i)  # a distinct Message-ID per digest
        total_bytes += len(run(digests[i % len(digests)], slot))
    return time.process_time() - cpu, time.perf_counter() - wall, total_bytes // count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digests", type=int, default=1000, help="digests per path")
    parser.add_argument("--papers", type=int, default=20, help="papers per digest")
    args = parser.parse_args()

    digests = load_digests(args.papers)
    t0 = time.perf_counter()
    ours_renderer = Renderer()
    load_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    base_renderer = Renderer(inline_css=False)
    load_base = time.perf_counter() - t0

    rows = []
    for name, renderer, make in (
        ("ours: CSS inlined once at template load", ours_renderer, ours),
        ("baseline: <style> + css_inline per message", base_renderer, baseline),
        ("ours via EmailMessage.as_bytes() (preview)", ours_renderer, ours_email_message),
        ("ours, cold paper caches (worst case)", ours_renderer, ours_cold),
    ):
        load = load_ours if renderer is ours_renderer else load_base
        cpu_s, wall_s, size = measure(make(renderer), digests, args.digests)
        rows.append((name, load, args.digests / cpu_s, args.digests / wall_s, size))

    print(f"render benchmark: {args.digests} digests x {args.papers} papers per path, "
          f"corpus days {', '.join(DAYS)}")  # fmt: skip
    print()
    head = ("path", "load ms", "digests/s CPU", "ms/digest CPU", "digests/s wall", "msg KB")
    print(f"| {head[0]:<44} | {head[1]:>7} | {head[2]:>13} | {head[3]:>13} | {head[4]:>14} "
          f"| {head[5]:>6} |")  # fmt: skip
    print(f"|{'-' * 46}|{'-' * 9}|{'-' * 15}|{'-' * 15}|{'-' * 16}|{'-' * 8}|")
    for name, load, cpu_rate, wall_rate, size in rows:
        print(f"| {name:<44} | {load * 1000:>7.1f} | {cpu_rate:>13.0f} | {1000 / cpu_rate:>13.3f} "
              f"| {wall_rate:>14.0f} | {size / 1024:>6.1f} |")  # fmt: skip
    print()
    ours_rate, base_rate = rows[0][2], rows[1][2]
    verdict = "met" if ours_rate >= 1000 else "NOT met"
    print(f"ratio ours/baseline (CPU): {ours_rate / base_rate:.2f}x; "
          f"goal for ours, >= 1000 digests/s on one core: {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
