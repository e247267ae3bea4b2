"""Benchmark: batch matching (digest.match) vs a naive regex loop, side by side.

100,000 subscribers x 3 topics, queries generated with a seeded RNG from the
vocabulary of the real API corpus (tests/data/corpus): single words,
phrases from frequent title bigrams, prefixes, a NOT, fields (title:, author:,
org:, keyword:). Batches: 100 papers (the most recent corpus days until 100
papers: no single corpus day lists 100) and ~700 papers (the next days back).

Ours: PaperIndex.build once per batch, then match_subscriber per subscriber.
Baseline: for each subscriber, for each paper, evaluate each topic's AST with
one precompiled regex per term over that field's text, then rank and cut. It
runs on a sample of subscribers and is extrapolated linearly (marked "extrap.").

Run: .venv/bin/python benchmarks/match.py [--subscribers N] [--seed S]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import itertools
import random
import re
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import psutil

# Run as a script from a checkout (`.venv/bin/python benchmarks/match.py`): the repo root
# is not on sys.path then, and the package need not be installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from digest.config import Topic
from digest.records import Paper
from digest.sources.hf_api import parse_api
from digest.topics.match import CompiledTopic, PaperIndex, compile_topics, match_subscriber
from digest.topics.query import And, Not, Or, Phrase, Query, Term, parse_query, tokenize
from tests.testdata import corpus_dir

# -- data -------------------------------------------------------------------


def load_days() -> list[list[Paper]]:
    """Every corpus day's papers, newest day first."""
    days = []
    for path in sorted(corpus_dir().glob("*.json"), reverse=True):
        day = dt.date.fromisoformat(path.stem)
        days.append(parse_api(path.read_bytes(), day))
    return days


def take(days: list[list[Paper]], start: int, count: int) -> tuple[list[Paper], int]:
    """`count` papers from consecutive days starting at day index `start`; next index."""
    out: list[Paper] = []
    i = start
    while len(out) < count and i < len(days):
        out.extend(days[i])
        i += 1
    return out[:count], i


class Vocabulary:
    """Words, bigrams, prefixes, authors, orgs and keywords to build queries from."""

    def __init__(self, papers: Sequence[Paper]) -> None:
        df: Counter[str] = Counter()
        bigrams: Counter[tuple[str, str]] = Counter()
        authors: Counter[str] = Counter()
        orgs: Counter[str] = Counter()
        keywords: Counter[str] = Counter()
        for p in papers:
            # sorted: ties in most_common() below must not depend on the hash seed
            df.update(sorted(set(tokenize(p.title + " " + p.abstract))))
            t = tokenize(p.title)
            bigrams.update(sorted(set(itertools.pairwise(t))))
            authors.update(p.authors)
            if p.organization:
                orgs[p.organization] += 1
            keywords.update(k.lower() for k in p.ai_keywords)
        n = len(papers)
        # Topic-like words: not stop words (< 5% of papers), not hapaxes (> 0.05%).
        self.words = sorted(
            w for w, c in df.items() if n * 0.0005 < c < n * 0.05 and w.isalpha() and len(w) > 3
        )
        self.bigrams = [b for b, c in bigrams.most_common(3000) if all(len(w) > 2 for w in b)]
        self.prefixes = sorted({w[: max(4, len(w) - 3)] for w in self.words if len(w) >= 7})
        self.authors = [a for a, c in authors.most_common(500)]
        self.orgs = [o for o, c in orgs.most_common(100)]
        self.keywords = [k for k, c in keywords.most_common(2000) if " " not in k]


def random_clause(rng: random.Random, v: Vocabulary) -> str:
    r = rng.random()
    if r < 0.30:
        return rng.choice(v.words)
    if r < 0.50:
        a, b = rng.choice(v.bigrams)
        return f'"{a} {b}"'
    if r < 0.62:
        return rng.choice(v.prefixes) + "*"
    if r < 0.72:
        return f"{rng.choice(v.words)} {rng.choice(v.words)}"
    if r < 0.80:
        return f"title:{rng.choice(v.words)}"
    if r < 0.86:
        a, b = rng.choice(v.bigrams)
        return f'"{a} {b[:4]}*"'
    if r < 0.92:
        return f"keyword:{rng.choice(v.keywords)}"
    if r < 0.96:
        return f'author:"{rng.choice(v.authors)}"'
    return f"org:{rng.choice(v.orgs)}"


def random_query(rng: random.Random, v: Vocabulary) -> str:
    clauses = [random_clause(rng, v) for _ in range(rng.choice((1, 2, 2, 3)))]
    query = " OR ".join(clauses) if len(clauses) == 1 else f"({' OR '.join(clauses)})"
    if rng.random() < 0.4:
        query += f" -{rng.choice(v.words)}"
    return query


# -- the naive baseline --------------------------------------------------------

Pred = Callable[[dict[str, list[str]]], bool]


def regex_of(node: Term | Phrase) -> re.Pattern[str]:
    words = (node.word,) if isinstance(node, Term) else node.words
    prefix = node.prefix if isinstance(node, Term) else node.prefix_last
    body = r"[\W_]+".join(re.escape(w) for w in words)
    return re.compile(rf"(?<![^\W_]){body}" + (r"" if prefix else r"(?![^\W_])"), re.I)


def naive_predicate(node: Query) -> Pred:
    """The AST as nested Python predicates over a paper's field texts, one regex per term."""
    if isinstance(node, Term | Phrase):
        if node.field == "id":
            assert isinstance(node, Term)
            raw, prefix = node.word, node.prefix
            return lambda f: f["id"][0].startswith(raw) if prefix else f["id"][0] == raw
        search, field = regex_of(node).search, node.field or "text"
        return lambda f: any(search(value) for value in f[field])
    if isinstance(node, Not):
        inner = naive_predicate(node.part)
        return lambda f: not inner(f)
    parts = [naive_predicate(p) for p in node.parts]
    if isinstance(node, And):
        return lambda f: all(p(f) for p in parts)
    assert isinstance(node, Or)
    return lambda f: any(p(f) for p in parts)


def naive_fields(p: Paper) -> dict[str, list[str]]:
    """Each field's values, searched one by one so no phrase spans two of them."""
    return {
        "id": [p.id],
        "text": [p.title, p.abstract],
        "title": [p.title],
        "abstract": [p.abstract],
        "author": list(p.authors),
        "org": [s for s in (p.organization, p.organization_fullname) if s],
        "keyword": list(p.ai_keywords),
    }


def naive_match(
    papers: Sequence[Paper],
    fields: Sequence[dict[str, list[str]]],
    topics: Sequence[tuple[str, Pred]],
    max_papers: int,
) -> list[tuple[Paper, list[str]]]:
    scored = []
    for p, f in zip(papers, fields, strict=True):
        hit = [name for name, pred in topics if pred(f)]
        if hit:
            scored.append((-len(hit), -p.upvotes, -p.listed_on.toordinal(), p.id, p, hit))
    scored.sort(key=lambda s: s[:4])
    return [(s[4], s[5]) for s in scored[:max_papers]]


# -- measuring --------------------------------------------------------------


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def run_ours(index: PaperIndex, subs: Sequence[list[CompiledTopic]]) -> int:
    """Match every subscriber; the number of matches (the lists are dropped as a sender would)."""
    n = 0
    for topics in subs:
        n += len(match_subscriber(index, topics, min_upvotes=0, max_papers=25))
    return n


class Clock:
    """Wall and CPU seconds of a block: the machine may be shared, CPU time is the fair one."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=20260101)
    ap.add_argument("--baseline-sample", type=int, default=500)
    args = ap.parse_args()
    n_subs = args.subscribers
    steps = sorted({min(s, n_subs) for s in (10_000, 50_000, n_subs)})

    days = load_days()
    day_batch, nxt = take(days, 0, 100)
    week_batch, _ = take(days, nxt, 700)
    vocab = Vocabulary([p for d in days[nxt:] for p in d])  # vocabulary from other days
    rng = random.Random(args.seed)
    queries = [[random_query(rng, vocab) for _ in range(3)] for _ in range(n_subs)]
    print(
        f"corpus: {sum(map(len, days))} papers; batches: {len(day_batch)} and "
        f"{len(week_batch)} papers; {n_subs:,} subscribers x 3 topics"
    )
    print("sample queries:", *queries[0], *queries[1], sep="\n  ")

    gc.collect()
    rss0 = rss_mb()
    compiled: list[list[CompiledTopic]] = []
    compile_rss = []
    with Clock() as compile_clock:
        for step in steps:
            compiled += [
                compile_topics([Topic(f"t{i}", q) for i, q in enumerate(qs)])
                for qs in queries[len(compiled) : step]
            ]
            compile_rss.append(f"{step // 1000}k:+{rss_mb() - rss0:.0f}")

    rows: list[tuple[str, ...]] = []
    for label, batch in (("day", day_batch), ("week", week_batch)):
        with Clock() as build:
            index = PaperIndex.build(batch)
        gc.collect()
        before = rss_mb()
        mem_steps = []
        wall = cpu = 0.0
        total_matches = done = 0
        for step in steps:
            with Clock() as ours:
                total_matches += run_ours(index, compiled[done:step])
            wall, cpu, done = wall + ours.wall, cpu + ours.cpu, step
            mem_steps.append(f"{step // 1000}k:+{rss_mb() - before:.0f}")
        sample = min(args.baseline_sample, n_subs)
        fields = [naive_fields(p) for p in index.papers]
        naive_topics = [
            [(f"t{i}", naive_predicate(parse_query(q))) for i, q in enumerate(qs)]
            for qs in queries[:sample]
        ]
        with Clock() as naive:
            naive_ids = [
                [p.id for p, _ in naive_match(index.papers, fields, ts, 25)] for ts in naive_topics
            ]
        ours_ids = [
            [m.paper.id for m in match_subscriber(index, c, min_upvotes=0, max_papers=25)]
            for c in compiled[:sample]
        ]
        assert ours_ids == naive_ids, "the two matchers disagree"  # same papers, same order
        scale = n_subs / sample
        rows.append(
            (
                f"{n_subs // 1000}k x {len(index)} ({label})",
                f"{build.cpu * 1000:.0f} ms",
                f"{cpu:.2f} s ({wall:.2f} s)",
                f"{naive.cpu * scale:.0f} s ({naive.wall * scale:.0f} s), extrap. from {sample}",
                f"{naive.cpu * scale / cpu:.0f}x",
                f"{total_matches / n_subs:.1f}",
                " ".join(mem_steps),
            )
        )
        del index

    heads = (
        "subscribers x papers",
        "index build",
        "ours: CPU (wall)",
        "naive regex loop: CPU (wall)",
        "ratio",
        "matches/sub",
        "RSS growth matching (MB)",
    )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    print()
    print(" | ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\ncompile_topics, once per subscriber (the daemon caches it): {compile_clock.cpu:.1f} s "
        f"CPU ({compile_clock.wall:.1f} s wall) for {n_subs:,}; RSS growth "
        f"{' '.join(compile_rss)} MB. Peak RSS {peak:.0f} MB. Load average at the end: "
        f"{' '.join(f'{x:.1f}' for x in psutil.getloadavg())} on {psutil.cpu_count()} CPUs."
    )


if __name__ == "__main__":
    main()
