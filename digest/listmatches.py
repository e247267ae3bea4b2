"""`digest match` in bulk: every chosen subscriber's next digest, written as JSON lines or
text, at 100k subscribers in seconds.

Owns how `cmd_match` gets there: one plain read of the subscribers' state, one read of
the papers they already have, each distinct (schedule, zone, window, last slot,
watermark)'s slot and window worked out once, the matches ranked without explanations
(`match.ranked_topics`), and each paper's constant part of a line written once per
window. Does not own what a next digest is (`schedule.upcoming_slot`,
`pipeline.digest_days`; `commands.next_digest` is the same recipe for one subscriber,
which `digest preview` uses), matching (`topics/match.py`), nor the reads themselves
(`store`).

What it writes is byte for byte what one `json.dumps(record, ensure_ascii=False)` per
subscriber (or the text lines) wrote before: the same keys in the same order, strings
through json's own encoder.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring  # what json.dumps(ensure_ascii=False) uses
from typing import TYPE_CHECKING, TextIO
from zoneinfo import ZoneInfo

from digest.humanize import count

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from digest import pipeline
    from digest.config import Subscriber
    from digest.topics.match import PaperIndex

WRITE_EVERY = 2000  # subscribers whose lines are joined into one write

Window = tuple[dt.date, dt.date]
_Ranked = list[tuple[int, tuple[str, ...]]]


def write_matches(
    planner: pipeline.Planner,
    chosen: Sequence[Subscriber],
    now: dt.datetime,
    since: dt.date | None,
    out: TextIO,
    *,
    as_json: bool,
) -> None:
    """Each of `chosen`'s next digest (the due slot if one is waiting, else the next one;
    with `since`, every paper listed from that day on), in `chosen`'s order."""
    from digest.topics import match

    states = _slot_states(planner, [s.email for s in chosen])
    plans = _plans(chosen, states, now, since)
    windows = {window for _, window in plans.values()}
    taken = _taken(planner, windows, [s.email for s in chosen])
    pages = {window: _Page(planner.index_for(*window), as_json) for window in windows}
    buffer: list[str] = []
    for subscriber in chosen:
        slot, window = plans[_plan_key(subscriber, states.get(subscriber.email), since)]
        page = pages[window]
        have = taken.get(subscriber.email)
        ranked, total = match.ranked_topics(
            page.index,
            subscriber.topics,
            min_upvotes=subscriber.min_upvotes,
            max_papers=subscriber.max_papers,
            excluded=page.index.id_bits(have) if have else 0,
        )
        buffer.append(page.record(subscriber, slot, ranked, total))
        if len(buffer) >= WRITE_EVERY:
            out.write("".join(buffer))
            buffer.clear()
    out.write("".join(buffer))


_State = tuple[dt.datetime | None, dt.date | None]  # last handled slot, watermark
_PlanKey = tuple[object, ...]


def _slot_states(planner: pipeline.Planner, emails: list[str]) -> dict[str, _State]:
    """`peek.slot_states` over the planner's engine (any backend, already migrated)."""
    from digest.config.dburl import parse_db_url
    from digest.store import peek

    engine: Engine = planner.engine
    connection = engine.raw_connection()
    try:
        where = parse_db_url(planner.config.storage.url).masked()
        reader = peek.Reader(connection, engine.dialect.paramstyle, where)
        return peek.slot_states(reader, emails)
    finally:
        connection.close()


def _plan_key(subscriber: Subscriber, state: _State | None, since: dt.date | None) -> _PlanKey:
    """What a subscriber's slot and window depend on: equal keys, equal answers (at 100k
    subscribers a few dozen distinct ones)."""
    last_slot, covered_until = state or (None, None)
    return (subscriber.schedule, subscriber.timezone, subscriber.window_days, last_slot,
            covered_until, since)  # fmt: skip


def _plans(
    chosen: Sequence[Subscriber],
    states: dict[str, _State],
    now: dt.datetime,
    since: dt.date | None,
) -> dict[_PlanKey, tuple[dt.datetime, Window]]:
    """Each distinct plan key's slot and listing days, worked out once."""
    from digest import pipeline
    from digest.schedule import upcoming_slot

    plans: dict[_PlanKey, tuple[dt.datetime, Window]] = {}
    for subscriber in chosen:
        state = states.get(subscriber.email)
        key = _plan_key(subscriber, state, since)
        if key in plans:
            continue
        last_slot, covered_until = state or (None, None)
        slot, _ = upcoming_slot(subscriber, now, last_slot)
        if since is not None:
            window = (since, now.date() + dt.timedelta(days=1))
        else:
            window = pipeline.digest_days(subscriber, slot, last_slot, covered_until)
        plans[key] = slot, window
    return plans


def _taken(
    planner: pipeline.Planner, windows: set[Window], emails: list[str]
) -> dict[str, set[str]]:
    """Of the papers of every window, the ones each subscriber already has or is about to
    get: one read for all the windows (each subscriber's share of a window is then a
    bitset of its index, `PaperIndex.id_bits`)."""
    from sqlmodel import Session

    from digest import store

    ids = {paper_id for w in windows for paper_id in planner.index_for(*w).ids}
    few = emails if len(emails) <= 1000 else None  # else everyone's, in one pass
    with Session(planner.engine) as session:
        return store.papers_taken(session, ids, few)


class _Page:
    """One window's papers as `digest match` writes them: each paper's constant parts
    made once, a subscriber's line joined from them."""

    def __init__(self, index: PaperIndex, as_json: bool) -> None:
        self.index = index
        papers = index.papers
        self.record: Callable[[Subscriber, dt.datetime, _Ranked, int], str]
        if as_json:
            self.heads = [
                f'{{"id": {encode_basestring(p.id)}, "title": {encode_basestring(p.title)}, '
                '"topics": '
                for p in papers
            ]
            self.tails = [
                f', "upvotes": {p.upvotes!r}, "listed_on": "{p.listed_on.isoformat()}"}}'
                for p in papers
            ]
            self.record = self._json
        else:
            self.heads = [f"  {p.id:<12} {p.upvotes:>4}  {p.title[:70]:<70}  [" for p in papers]
            self.record = self._text
        self._topics: dict[tuple[str, ...], str] = {}
        self._slots: dict[tuple[dt.datetime, str], str] = {}

    def _json(self, subscriber: Subscriber, slot: dt.datetime, ranked: _Ranked, total: int) -> str:
        heads, tails, topics = self.heads, self.tails, self._topics
        parts = []
        for pos, names in ranked:
            shown = topics.get(names)
            if shown is None:
                listed = ", ".join([encode_basestring(n) for n in names])
                shown = topics[names] = f'[{listed}], "score": {len(names)}'
            parts.append(heads[pos] + shown + tails[pos])
        return (
            f'{{"subscriber": {encode_basestring(subscriber.email)}, '
            f'"slot": "{slot.isoformat()}", "total": {total}, "papers": [{", ".join(parts)}]}}\n'
        )

    def _text(self, subscriber: Subscriber, slot: dt.datetime, ranked: _Ranked, total: int) -> str:
        when = self._slots.get((slot, subscriber.timezone))
        if when is None:
            local = slot.astimezone(ZoneInfo(subscriber.timezone))
            when = self._slots[slot, subscriber.timezone] = f"{local:%a %Y-%m-%d %H:%M %Z}"
        lines = [
            f"{subscriber.email}: {len(ranked)} of {count(total, 'matching paper')} for {when}\n"
        ]
        heads, topics = self.heads, self._topics
        for pos, names in ranked:
            shown = topics.get(names)
            if shown is None:
                shown = topics[names] = ", ".join(names) + "]\n"
            lines.append(heads[pos] + shown)
        return "".join(lines)
