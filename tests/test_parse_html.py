"""hf_html on the real listing page: data-props path, cards path, their agreement, golden
records, layout-change errors, and a property test on mutated pages."""

from __future__ import annotations

import datetime as dt
import html
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digest.errors import ParseError
from digest.sources.hf_api import parse_api
from digest.sources.hf_html import parse_cards, parse_html, parse_props
from tests.test_parse_api import (
    FIXTURES,
    check_golden,
    check_papers,
    mutate_bytes,
    mutate_json,
)

DAY = dt.date(2024, 8, 1)
PAGE = (FIXTURES / "papers-page-2024-08-01.html").read_bytes()
PROPS_ATTR = re.compile(rb'(data-target="DailyPapers" )data-props="[^"]*"')


def page_without_props(page: bytes = PAGE) -> bytes:
    stripped, count = PROPS_ATTR.subn(rb"\1", page)
    assert count == 1
    return stripped


def page_with_props(props: object) -> bytes:
    attribute = html.escape(json.dumps(props), quote=True).encode()
    return PROPS_ATTR.sub(lambda m: m.group(1) + b'data-props="' + attribute + b'"', PAGE)


def page_props() -> dict[str, object]:
    match = PROPS_ATTR.search(PAGE)
    assert match is not None
    start = match.group(0).index(b'data-props="') + len(b'data-props="')
    props: dict[str, object] = json.loads(html.unescape(match.group(0)[start:-1].decode()))
    return props


def test_golden_props_path() -> None:
    check_golden("papers-page-2024-08-01", parse_html(PAGE))


def test_golden_cards_path() -> None:
    check_golden("papers-page-2024-08-01.cards", parse_cards(PAGE, DAY))


def test_props_and_cards_agree_on_all_13_papers() -> None:
    props = parse_props(PAGE)
    cards = parse_cards(PAGE)
    assert len(props) == len(cards) == 13

    def key(p: object) -> tuple[object, ...]:
        return tuple(
            getattr(p, f) for f in ("id", "title", "upvotes", "author_count", "num_comments")
        )

    assert [key(p) for p in props] == [key(c) for c in cards]
    assert [c.submitter for c in cards] == [p.submitter for p in props]
    assert {p.listed_on for p in props + cards} == {DAY}


def test_props_path_is_the_api_record_parser() -> None:
    """Papers in both the API capture and the page parse the same, bar later changes."""
    api_body = (FIXTURES / "api-daily_papers-2024-08-01.json").read_bytes()
    api = {p.id: p for p in parse_api(api_body, DAY)}
    page = {p.id: p for p in parse_html(PAGE)}
    assert set(page) - set(api) == {"2407.20229", "2404.01300"}  # added after the API capture
    for paper_id, from_api in api.items():
        from_page = page[paper_id]
        assert (from_page.title, from_page.abstract, from_page.author_count) == (
            from_api.title,
            from_api.abstract,
            from_api.author_count,
        )
        # Between the two captures one author of 2407.21781 was hidden: dropped, still counted.
        hidden_later = {"Xuanyu Huang"} if paper_id == "2407.21781" else set()
        assert from_page.authors == tuple(a for a in from_api.authors if a not in hidden_later)
    assert "Xuanyu Huang" in api["2407.21781"].authors


def test_video_card_and_the_rest() -> None:
    cards = {p.id: p for p in parse_cards(PAGE)}
    video = cards["2407.20229"]
    assert video.thumbnail is None and video.media_urls[0].endswith(".webm")
    llama = cards["2407.21783"]
    assert (llama.upvotes, llama.author_count, llama.num_comments, llama.submitter) == (
        94,
        533,
        5,
        "akhaliq",
    )
    assert llama.thumbnail == (
        "https://cdn-thumbnails.huggingface.co/social-thumbnails/papers/2407.21783.png"
    )


def test_day_comes_from_the_page_unless_given() -> None:
    assert {p.listed_on for p in parse_html(PAGE, dt.date(2024, 8, 2))} == {dt.date(2024, 8, 2)}
    assert {p.listed_on for p in parse_cards(page_without_props())} == {DAY}  # from <time>


def test_missing_props_falls_back_to_cards() -> None:
    papers = parse_html(page_without_props())
    assert len(papers) == 13 and all(p.abstract == "" for p in papers)


def test_unreadable_props_falls_back_to_cards() -> None:
    broken = PROPS_ATTR.sub(rb'\1data-props="{&quot;dailyPapers&quot;: [tru"', PAGE)
    papers = parse_html(broken)
    assert len(papers) == 13 and all(p.abstract == "" for p in papers)
    with pytest.raises(ParseError, match="not valid JSON at char"):
        parse_props(broken)


def test_props_with_no_paper_list_falls_back_to_cards() -> None:
    papers = parse_html(page_with_props({"date": "2024-08-01T00:00:00.000Z", "papers": []}))
    assert len(papers) == 13 and papers[0].abstract == ""


def test_props_with_an_empty_list_is_an_empty_day() -> None:
    assert parse_html(page_with_props({**page_props(), "dailyPapers": []})) == []


def test_html_in_a_title_is_kept_as_text() -> None:
    props = page_props()
    papers = props["dailyPapers"]
    assert isinstance(papers, list)
    papers[0]["paper"]["title"] = '<script>alert("x")</script> &lt;b&gt; Title'
    (first, *_) = parse_html(page_with_props(props))
    assert first.title == '<script>alert("x")</script> &lt;b&gt; Title'  # unescaped once only


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html><body><h1>Maintenance</h1></body></html>",
        page_without_props(
            PAGE.replace(b"<article", b"<section").replace(b"</article", b"</section")
        ),
        (FIXTURES / "paper-page-2509.24002-2025-10-02.bs4-prettified.html").read_bytes(),
    ],
    ids=["empty", "maintenance", "no-props-no-articles", "paper-page"],
)
def test_neither_props_nor_cards_is_a_parse_error(body: bytes) -> None:
    with pytest.raises(ParseError) as info:
        parse_html(body, DAY)
    message = str(info.value)
    assert "\n" not in message and message.startswith("listing page has no readable papers")


def test_cards_without_a_day_anywhere() -> None:
    no_time = re.sub(rb"<time[^>]*>", b"", page_without_props())
    with pytest.raises(ParseError, match="names no date"):
        parse_html(no_time)
    assert len(parse_html(no_time, DAY)) == 13


# --------------------------------------------------------------------------- property


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_pages_raise_only_parse_error(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["bytes", "props-json", "cards-bytes"]), label="kind")
    if kind == "bytes":
        body = mutate_bytes(data, PAGE)
    elif kind == "cards-bytes":
        body = mutate_bytes(data, page_without_props())
    else:
        props = page_props()
        records = props["dailyPapers"]
        assert isinstance(records, list)
        props["dailyPapers"] = mutate_json(data, records)
        if data.draw(st.booleans(), label="break date?"):
            props["date"] = data.draw(st.none() | st.integers() | st.text(max_size=12))
        body = page_with_props(props)
    day = data.draw(st.none() | st.just(DAY), label="day")
    try:
        papers = parse_html(body, day)
    except ParseError as e:
        assert "\n" not in str(e)
        return
    check_papers(papers, papers[0].listed_on if papers else DAY)
