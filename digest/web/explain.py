"""Why a stored paper matched a subscriber, for what a web copy or a feed shows later.

A digest stores its papers' ids, not their explanations (at 100,000 subscribers the
outbox's size matters). The web copy's matches past max_papers and the feed's entries
need the topics (chips, categories) and the words to highlight: `explain` matches the
subscriber's topics again over just those papers (one small index, pure). A paper that
no longer matches (the file changed since) is shown without topics.

Owns: that re-match. Does not own matching itself (`digest/topics/`) or the reads
(`digest/store/copies.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

from digest.config import Subscriber
from digest.records import Match, Paper
from digest.topics import match


def explain(subscriber: Subscriber | None, papers: Sequence[Paper]) -> list[Match]:
    """Each of `papers` as a Match with the topics of `subscriber` it matches (none when
    the subscriber is gone from the file or none matches now), in the order given."""
    if subscriber is None or not papers:
        return [Match(p, ()) for p in papers]
    index = match.PaperIndex.build(papers)
    found = match.match_subscriber(
        index, match.compile_topics(subscriber.topics), min_upvotes=0, max_papers=len(papers)
    )
    by_id = {m.paper.id: m for m in found}
    return [by_id.get(p.id, Match(p, ())) for p in papers]
