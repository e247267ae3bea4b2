"""Rendered digests scored by Debian's SpamAssassin (`spamassassin -t -L`: the shipped
rules, local tests only, no network): every shape of digest stays below 1.0.

It once scored 2.0: FONT_INVIS_MSGID (a 1px font in the hidden preheader) and
END_FUTURE_EMAILS (the footer's "To stop these emails"). The digests are the bytes the
outbox stores, from real corpus papers through the real matcher."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess

import pytest

from digest.config import Topic
from digest.records import Paper
from digest.render import Renderer, render_digest_bytes
from digest.sources.hf_api import parse_api
from digest.topics.match import PaperIndex, compile_topics, count_matches, match_subscriber
from tests.render_helpers import MAIL, NOW, SLOT, make_subscriber
from tests.testdata import corpus_day
from tests.tools import require

BOUND = 1.0
WEEK = ("2025-09-30", "2025-10-01", "2025-10-02", "2025-10-03", "2025-10-06", "2025-10-07")
SPAMASSASSIN = shutil.which("spamassassin") or "/usr/bin/spamassassin"
TOPICS = (
    Topic("Language models", '"language model*" OR llm*'),
    Topic("Reinforcement learning", '"reinforcement learning" OR rl'),
    Topic("Diffusion", "diffusion"),
)
_SCORE_RE = re.compile(rb"^X-Spam-Status: \w+, score=(-?[\d.]+)", re.MULTILINE)
_RULES_RE = re.compile(rb"^X-Spam-Status:.*?tests=(.*?)(?:\s+autolearn|\s+version)", re.S | re.M)


def papers_of(*days: str) -> list[Paper]:
    out: list[Paper] = []
    for day in days:
        out += parse_api(corpus_day(day).read_bytes(), dt.date.fromisoformat(day))
    return out


def digest_bytes(papers: list[Paper], topics: tuple[Topic, ...], **changes: object) -> bytes:
    index = PaperIndex.build(papers)
    compiled = compile_topics(topics)
    sub = make_subscriber(topics=topics, **changes)
    matches = match_subscriber(index, compiled, min_upvotes=0, max_papers=sub.max_papers)
    total = count_matches(index, compiled, min_upvotes=0)
    _, data = render_digest_bytes(
        Renderer(), subscriber=sub, slot=SLOT, matches=matches, mail=MAIL, now=NOW,
        total_matches=total,
    )  # fmt: skip
    return data


@pytest.fixture(autouse=True)
def _spamassassin_installed() -> None:
    require(SPAMASSASSIN, "spamassassin")


def score(message: bytes) -> tuple[float, str]:
    """SpamAssassin's score of `message` and the rules that fired."""
    done = subprocess.run(
        [SPAMASSASSIN, "-t", "-L"], input=message, capture_output=True, timeout=180, check=True
    )
    found = _SCORE_RE.search(done.stdout)
    assert found is not None, done.stdout[:2000]
    rules = _RULES_RE.search(done.stdout)
    return float(found.group(1)), b" ".join((rules.group(1) if rules else b"").split()).decode()


CASES = {
    "25 of 70 papers": lambda: digest_bytes(papers_of("2025-09-30", "2025-10-01"), TOPICS),
    "one paper, large thumbnail": lambda: digest_bytes(
        papers_of("2025-10-01"), (Topic("Jigsaw", "jigsaw"),), thumbnails="large"
    ),
    "empty (send_empty)": lambda: digest_bytes(
        papers_of("2025-10-01"), (Topic("Nothing", "zyxwvutsrq"),), send_empty=True
    ),
    "200 papers past the size cap": lambda: digest_bytes(
        papers_of(*WEEK), (Topic("Everything", "the OR a OR we"),), max_papers=200,
        thumbnails="none",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_every_digest_scores_below_one(case: str) -> None:
    message = CASES[case]()
    if "cap" in case:
        assert b"links only" in message  # the case is what it says
    points, rules = score(message)
    assert points < BOUND, (case, points, rules)
    assert "FONT_INVIS" not in rules and "END_FUTURE_EMAILS" not in rules


@pytest.mark.slow
def test_the_scorer_sees_spam_when_there_is_spam() -> None:
    """The check can fail: the old footer wording and the 1px preheader score again."""
    data = digest_bytes(papers_of("2025-10-01"), TOPICS)
    old_footer = b">Unsubscribe</a>. To stop these emails, unsubscribe."
    spammy = data.replace(b">Unsubscribe</a>", old_footer).replace(
        b'<div style="display:none;', b'<div style="display:none;font-size:1px;'
    )
    assert spammy != data
    points, rules = score(spammy)
    assert "END_FUTURE_EMAILS" in rules and "FONT_INVIS_MSGID" in rules, rules
    assert points >= BOUND
