"""Parser speed, side by side with a baseline, in one process run.

(a) The listing page papers-page-2024-08-01.html: digest.sources.hf_html (selectolax/lexbor)
    against a BeautifulSoup("html.parser") implementation of the same extraction, written
    below, for the data-props path and the cards path. Both produce the same records (checked
    before timing). ms/page and the ratio.
(b) API parse throughput over the whole corpus (413 files; bytes read first, parse timed):
    digest.sources.hf_api.parse_api against bare `json.loads` (the floor: decoding alone).

Run: .venv/bin/python benchmarks/parse.py
"""

from __future__ import annotations

import datetime as dt
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bs4 import BeautifulSoup, Tag

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from digest.records import Paper
from digest.sources.hf_api import clean_url, collapse, parse_api, parse_records
from digest.sources.hf_html import parse_cards, parse_props
from tests.testdata import HF, corpus_dir

DAY = dt.date(2024, 8, 1)
PAGE = HF / "papers-page-2024-08-01.html"
CORPUS = corpus_dir()


# --------------------------------------------------------------------------- the baseline


def bs4_props(body: bytes, day: dt.date) -> list[Paper]:
    soup = BeautifulSoup(body, "html.parser")
    node = soup.find(class_="SVELTE_HYDRATER", attrs={"data-target": "DailyPapers"})
    assert isinstance(node, Tag)
    props = json.loads(str(node["data-props"]))
    return parse_records(props["dailyPapers"], day, where="bs4 baseline")


def bs4_cards(body: bytes, day: dt.date) -> list[Paper]:
    soup = BeautifulSoup(body, "html.parser")
    papers = []
    for article in soup.find_all("article"):
        link = article.select_one('a[href^="/papers/"]')
        title = article.select_one("h3 a")
        if link is None or title is None:
            continue
        image = link.select_one("img[src]")
        video = link.select_one("video[src]")
        authors = article.select_one("li.order-first")
        found = re.search(r"(\d+)\s+authors?", authors.get_text()) if authors else None
        submitter = None
        for div in article.select("div.pointer-events-none.absolute"):
            text = collapse(div.get_text())
            if text.startswith("Submitted by"):
                submitter = text[len("Submitted by") :].strip() or None
        papers.append(
            Paper(
                id=str(link["href"])[len("/papers/") :],
                title=collapse(title.get_text()),
                listed_on=day,
                author_count=int(found.group(1)) if found else 0,
                upvotes=_number(
                    article.select_one('a[href^="/login?next=%2Fpapers%2F"] .leading-none')
                ),
                num_comments=_number(article.select_one('a[href$="#community"]')),
                thumbnail=clean_url(image["src"]) if image else None,
                media_urls=(str(video["src"]),) if video else (),
                submitter=submitter,
            )
        )
    return papers


def _number(node: Tag | None) -> int:
    found = re.search(r"\d+", node.get_text()) if node is not None else None
    return int(found.group()) if found else 0


# --------------------------------------------------------------------------- timing


def ms_per_call(call: Callable[[], object], repeat: int) -> float:
    """Median of `repeat` timed calls, in milliseconds (after one warm-up call)."""
    call()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    body = PAGE.read_bytes()
    assert bs4_props(body, DAY) == parse_props(body, DAY), "props paths disagree"
    assert bs4_cards(body, DAY) == parse_cards(body, DAY), "cards paths disagree"

    print(f"(a) listing page {PAGE.name} ({len(body):,} bytes), median ms/page")
    print(f"{'path':<8} {'selectolax':>11} {'bs4 html.parser':>16} {'ratio':>7}")
    for name, ours, theirs in (
        ("props", parse_props, bs4_props),
        ("cards", parse_cards, bs4_cards),
    ):
        fast = ms_per_call(lambda f=ours: f(body, DAY), repeat=50)
        slow = ms_per_call(lambda f=theirs: f(body, DAY), repeat=10)
        print(f"{name:<8} {fast:>11.2f} {slow:>16.2f} {slow / fast:>6.1f}x")

    files = sorted(CORPUS.glob("*.json"))
    bodies = [(dt.date.fromisoformat(p.stem), p.read_bytes()) for p in files]
    size = sum(len(b) for _, b in bodies)
    papers = sum(len(parse_api(b, d)) for d, b in bodies)

    def parse_all() -> None:
        for day, data in bodies:
            parse_api(data, day)

    def decode_all() -> None:
        for _, data in bodies:
            json.loads(data)

    ours_s = ms_per_call(parse_all, repeat=5) / 1000
    floor_s = ms_per_call(decode_all, repeat=5) / 1000
    print()
    print(
        f"(b) API corpus: {len(files)} files, {size / 1e6:.1f} MB, {papers:,} papers, median of 5"
    )
    print(f"{'':<22} {'seconds':>8} {'papers/s':>10} {'vs json.loads':>14}")
    print(f"{'json.loads only':<22} {floor_s:>8.3f} {papers / floor_s:>10,.0f} {1.0:>13.2f}x")
    print(f"{'parse_api':<22} {ours_s:>8.3f} {papers / ours_s:>10,.0f} {ours_s / floor_s:>13.2f}x")


if __name__ == "__main__":
    main()
