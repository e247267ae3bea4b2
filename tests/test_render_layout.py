"""The digest as a reader sees it: its height and width in headless Chromium at 700
and 375 px, light and dark, the thumbnail choices, and the text part's 72 columns.

The digest is a real one: two corpus days (2025-09-30 and 2025-10-01, 87 papers)
through the real matcher with three broad topics: the best 25 of 70 matches in full
(the other 45 as title links where a test says so).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser

from digest.config import Topic
from digest.records import Match
from digest.render import Renderer
from digest.sources.hf_api import parse_api
from digest.topics.match import PaperIndex, compile_topics, count_matches, match_subscriber
from tests.browser import chromium, open_html, page_height
from tests.render_helpers import Html, make_subscriber, parts, render
from tests.testdata import corpus_day

HEIGHT_BOUND = 4000  # px at 700 px wide, for 25 papers (the issue: "about 4,000 px")
TOPICS = (
    Topic("Language models", '"language model*" OR llm*'),
    Topic("Reinforcement learning", '"reinforcement learning" OR rl'),
    Topic("Diffusion", "diffusion"),
)
SUBSCRIBER = make_subscriber(topics=TOPICS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def digest() -> tuple[list[Match], list[Match]]:
    """The best 25 matches, and the other 45 (the digest's title links past max_papers)."""
    papers = []
    for day in ("2025-09-30", "2025-10-01"):
        papers += parse_api(corpus_day(day).read_bytes(), dt.date.fromisoformat(day))
    index = PaperIndex.build(papers)
    topics = compile_topics(TOPICS)
    found = match_subscriber(index, topics, min_upvotes=0, max_papers=100)
    assert len(found) == count_matches(index, topics, min_upvotes=0) == 70
    return found[:25], found[25:]


def html_of(
    digest: tuple[list[Match], list[Match]], *, with_more: bool = False, **changes: object
) -> str:
    """The 25 papers' HTML; `with_more`: and the other 45 matches as title links."""
    matches, more = digest
    sub = make_subscriber(topics=TOPICS, **changes)
    extra = more if with_more else []
    _, html = parts(render(Renderer(), matches, subscriber=sub, more=extra))
    return html


def test_a_25_paper_digest_fits_the_height_bound_at_700_px(
    browser: Browser, digest: tuple[list[Match], list[Match]]
) -> None:
    html = html_of(digest)
    heights = {}
    for scheme in ("light", "dark"):
        page = open_html(browser, html, width=700, scheme=scheme)
        heights[scheme] = page_height(page)
        page.close()
    assert heights["light"] < HEIGHT_BOUND, heights
    assert heights["dark"] == heights["light"]  # dark mode changes colours, not layout
    # the 45 matches past max_papers add one short line each, not a card
    page = open_html(browser, html_of(digest, with_more=True), width=700)
    extra = page_height(page) - heights["light"]
    page.close()
    assert 45 * 15 < extra < 45 * 25 + 100, extra


@pytest.mark.parametrize("width", [700, 375])
def test_nothing_is_wider_than_the_screen(
    browser: Browser, digest: tuple[list[Match], list[Match]], width: int
) -> None:
    page = open_html(browser, html_of(digest), width=width)
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    page.close()


def test_dark_mode_turns_the_page_and_the_cards_dark(
    browser: Browser, digest: tuple[list[Match], list[Match]]
) -> None:
    html = html_of(digest)
    colours = {}
    for scheme in ("light", "dark"):
        page = open_html(browser, html, width=700, scheme=scheme)
        colours[scheme] = page.evaluate(
            "[getComputedStyle(document.body).backgroundColor,"
            " getComputedStyle(document.querySelector('table.container')).backgroundColor,"
            " getComputedStyle(document.querySelector('mark')).backgroundColor]"
        )
        page.close()
    assert colours["light"] == ["rgb(244, 244, 245)", "rgb(255, 255, 255)", "rgb(254, 240, 138)"]
    assert colours["dark"] == ["rgb(24, 24, 27)", "rgb(39, 39, 42)", "rgb(133, 77, 14)"]


def test_thumbnail_choices(browser: Browser, digest: tuple[list[Match], list[Match]]) -> None:
    with_thumbnail = sum(1 for m in digest[0] if m.paper.thumbnail)
    assert with_thumbnail > 20
    heights = {}
    for choice, width in (("small", "112"), ("large", "592"), ("none", None)):
        html = html_of(digest, thumbnails=choice)
        imgs = [a for tag, a in Html(html).tags if tag == "img"]
        assert len(imgs) == (0 if width is None else with_thumbnail)
        assert all(a["width"] == width and a["alt"] == "Preview" for a in imgs)
        page = open_html(browser, html, width=700)
        heights[choice] = page_height(page)
        page.close()
    # a small thumbnail sits beside the text; a large one is the old full-width image
    assert heights["none"] <= heights["small"] < HEIGHT_BOUND < 2 * HEIGHT_BOUND < heights["large"]


def test_with_images_blocked_the_layout_holds(
    browser: Browser, digest: tuple[list[Match], list[Match]]
) -> None:
    page = open_html(browser, html_of(digest), width=700, images=False)
    boxes = page.evaluate(
        "Array.from(document.images).map(i => [i.width, i.height, i.alt, i.naturalWidth])"
    )
    height = page_height(page)
    page.close()
    assert boxes and all(box == [112, 60, "Preview", 0] for box in boxes)  # broken, same box
    assert height < HEIGHT_BOUND


URL_RE = re.compile(r"https?://\S+")


def test_the_text_part_wraps_at_72_columns_with_aligned_numbers(
    digest: tuple[list[Match], list[Match]],
) -> None:
    matches, _ = digest
    text, _ = parts(render(Renderer(), matches, subscriber=SUBSCRIBER))
    text = text.replace("\r\n", "\n")
    assert text.endswith("\n") and not text.endswith("\n\n")
    lines = text.split("\n")[:-1]
    for line in lines:  # 72 columns, unless the line is one URL that is longer
        assert len(line) <= 72 or URL_RE.fullmatch(line.strip()), line
    numbered = [line for line in lines if re.match(r"^ ?\d+\. ", line)]
    assert [line[:4] for line in numbered] == [f"{n:>2}. " for n in range(1, 26)]
    entries = text.split("\n\n")[1:-1]  # between the intro and the footer
    assert len(entries) == 25
    for entry in entries:  # every line of an entry is indented under its title
        assert all(line.startswith("    ") for line in entry.split("\n")[1:]), entry
    for m in matches:  # URLs are never broken
        for url in (m.paper.url, m.paper.arxiv_url, m.paper.pdf_url, m.paper.github_repo):
            if url:
                assert url.strip() in URL_RE.findall(text), url
    # a URL longer than the width keeps a line of its own
    long_urls = [u for u in URL_RE.findall(text) if len(u) > 68]
    assert long_urls and all(f"    {u}" in lines for u in long_urls)
