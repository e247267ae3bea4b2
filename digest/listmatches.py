"""`digest match` in bulk: every chosen subscriber's next digest, written as JSON lines or
text, at 100k subscribers in seconds.

Owns how `cmd_match` gets there: plain reads of the subscribers' state and of the
papers they already have (`store.peek`; a pending digest's ids decoded only when its
subscriber is matched), each distinct (schedule, zone, window, last slot,
watermark)'s slot and window worked out once, the queries of WRITE_EVERY subscribers
run in one call per window (`_found`), the matches ranked without explanations
(`match.ranked_topics`), each paper's constant part of a line written
once per window, and from PARALLEL_FROM subscribers two processes doing the matching
and writing (`_in_two`). Does not own what a next digest is (`schedule.upcoming_slot`,
`pipeline.digest_days`; `commands.match.next_digest` is the same recipe for one subscriber,
which `digest preview` uses), matching (`topics/match.py`), nor the SQL (`store`).

What it writes is byte for byte what one `json.dumps(record, ensure_ascii=False)` per
subscriber (or the text lines) wrote before: the same keys in the same order, strings
through json's own encoder.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import reduce
from itertools import repeat
from json.encoder import encode_basestring  # what json.dumps(ensure_ascii=False) uses
from operator import or_
from typing import TYPE_CHECKING, TextIO, TypeVar
from zoneinfo import ZoneInfo

from digest.humanize import count
from digest.store import peek

if TYPE_CHECKING:
    from digest import pipeline
    from digest.config import Subscriber
    from digest.topics.match import PaperIndex

WRITE_EVERY = 2000  # subscribers whose lines are joined into one write
PARALLEL_FROM = 10_000  # subscribers from which two processes match (_in_two)
# the parent's share of the subscribers, in percent: the child also pays for the pages
# it first writes to (copy-on-write) and for its spool; at 100k the child finished
# 0.14-0.16 s after the parent at 50% (3 runs)
PARENT_SHARE = 52
# pending digests' paper_ids_json decoded once per window (`_Page.held_bits`): a cycle's
# pending digests repeat a few lists (216 distinct of 100k at the benchmark's), a bound
# where they do not
PENDING_KNOWN = 4096

Window = tuple[dt.date, dt.date]
_State = tuple[dt.datetime | None, dt.date | None]  # last handled slot, watermark
_Ranked = list[tuple[int, tuple[str, ...]]]
_T = TypeVar("_T")


@contextmanager
def _gc_frozen() -> Iterator[None]:
    """The config's objects (hundreds of MB at 100k) live until the command ends: the
    collector need not walk them again and again while reading and matching, nor a
    forked process copy every page it touches doing so."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@_gc_frozen()
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
    with `since`, every paper listed from that day on), in `chosen`'s order. Every read
    comes first; from PARALLEL_FROM subscribers on, two processes match and write
    (`_in_two`)."""
    from digest.topics import match

    emails = [s.email for s in chosen]
    states = _reading(planner, lambda reader: peek.slot_states(reader, emails))
    plans = _plans(chosen, states, now, since)
    del states
    windows = {window for _, window in set(plans)}
    pending, delivered = _held(planner, windows)
    pages = {window: _Page(planner.index_for(*window), as_json) for window in windows}

    def share(first: int, end: int) -> Iterator[str]:
        """The lines of chosen[first:end], WRITE_EVERY subscribers to a string."""
        for start in range(first, end, WRITE_EVERY):
            stop = min(start + WRITE_EVERY, end)
            block, planned = chosen[start:stop], plans[start:stop]
            lines = []
            for subscriber, (slot, window), found in zip(
                block, planned, _found(block, planned, pages), strict=True
            ):
                page = pages[window]
                email = subscriber.email
                ranked, total = match.ranked_topics(
                    page.index,
                    subscriber.topics.names,
                    found,
                    min_upvotes=subscriber.min_upvotes,
                    max_papers=subscriber.max_papers,
                    excluded=page.held_bits(pending.get(email), delivered.get(email)),
                )
                lines.append(page.record(subscriber, slot, ranked, total))
            yield "".join(lines)

    if not _in_two(share, len(chosen), out):
        for lines in share(0, len(chosen)):
            out.write(lines)


def _in_two(share: Callable[[int, int], Iterator[str]], n: int, out: TextIO) -> bool:
    """Write share(0, n) to `out` with a forked child doing the second half into a
    spool file, copied after the first half: the same bytes in the same order. False
    (nothing written) where that cannot be done: too few subscribers to pay for it, one
    core, no fork, an `out` with no binary buffer under it. A child that fails is not
    trusted: its half is worked out here again, so any error is this process's own."""
    binary = getattr(out, "buffer", None)
    encoding = getattr(out, "encoding", None)
    if n < PARALLEL_FROM or (os.cpu_count() or 1) < 2 or not hasattr(os, "fork"):
        return False
    if binary is None or encoding is None:
        return False
    middle = n * PARENT_SHARE // 100
    out.flush()
    with tempfile.TemporaryFile() as spool:
        child = os.fork()
        if child == 0:  # pragma: no cover (the child's exit is all the parent sees)
            code = 1
            try:
                with open(spool.fileno(), "w", encoding=encoding, errors=out.errors,
                          closefd=False) as text:  # fmt: skip
                    for lines in share(middle, n):
                        text.write(lines)
                code = 0
            finally:
                os._exit(code)  # no atexit, no buffers of the parent's flushed twice
        try:
            for lines in share(0, middle):
                out.write(lines)
            _, status = os.waitpid(child, 0)
            child = 0
            if os.waitstatus_to_exitcode(status) != 0:
                for lines in share(middle, n):
                    out.write(lines)
                return True
            out.flush()
            spool.seek(0)
            shutil.copyfileobj(spool, binary)
            binary.flush()
        finally:
            if child:  # this process failed (a closed pipe, ^C): the child goes too
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
    return True


def _found(
    block: Sequence[Subscriber],
    planned: Sequence[tuple[dt.datetime, Window]],
    pages: dict[Window, _Page],
) -> list[list[int]]:
    """What each of `block`'s topics matches in its window (`evaluate_texts`: the
    block's queries of one window in one call, a few thousand at a time)."""
    from digest.topics.query import evaluate_texts

    queries = [subscriber.topics.queries for subscriber in block]
    found: list[list[int]] = [[] for _ in block]
    for window in {window for _, window in planned}:
        members = [i for i, (_, w) in enumerate(planned) if w == window]
        flat = evaluate_texts([q for i in members for q in queries[i]], pages[window].index)
        start = 0
        for i in members:
            end = start + len(queries[i])
            found[i] = flat[start:end]
            start = end
    return found


def _reading(planner: pipeline.Planner, read: Callable[[peek.Reader], _T]) -> _T:
    """`read` with a `peek.Reader` over the planner's engine (any backend, migrated)."""
    return peek.through_engine(planner.engine, planner.config.storage.url, read)


def _plans(
    chosen: Sequence[Subscriber],
    states: dict[str, _State],
    now: dt.datetime,
    since: dt.date | None,
) -> list[tuple[dt.datetime, Window]]:
    """Each subscriber's slot and listing days, worked out once per distinct (schedule,
    zone, window_days, last slot, watermark): at 100k subscribers a few dozen."""
    from digest import pipeline
    from digest.schedule import upcoming_slot

    known: dict[tuple[object, ...], tuple[dt.datetime, Window]] = {}
    plans = []
    for subscriber in chosen:
        state = states.get(subscriber.email)
        last_slot, covered_until = state or (None, None)
        key = (subscriber.schedule, subscriber.timezone, subscriber.window_days, last_slot,
               covered_until)  # fmt: skip
        plan = known.get(key)
        if plan is None:
            slot, _ = upcoming_slot(subscriber, now, last_slot)
            if since is not None:
                window = (since, now.date() + dt.timedelta(days=1))
            else:
                window = pipeline.digest_days(subscriber, slot, last_slot, covered_until)
            plan = known[key] = slot, window
        plans.append(plan)
    return plans


def _held(
    planner: pipeline.Planner, windows: set[Window]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The papers each subscriber already has or is about to get, as read (`peek.papers_held`,
    over the papers of every window): their pending digests' paper_ids_json, decoded
    only when the subscriber is matched (by whichever process matches them; each
    distinct text once per window, `PENDING_KNOWN`), and their
    deliveries. `_Page.held_bits` makes a subscriber's share of a window a bitset."""
    ids = {paper_id for w in windows for paper_id in planner.index_for(*w).ids}
    pending, delivered = _reading(planner, lambda reader: peek.papers_held(reader, ids))
    texts: dict[str, list[str]] = {}
    for subscriber, paper_ids_json in pending:
        texts.setdefault(subscriber, []).append(paper_ids_json)
    got: dict[str, list[str]] = {}
    for subscriber, paper_id in delivered:
        got.setdefault(subscriber, []).append(paper_id)
    return texts, got


class _Page:
    """One window's papers as `digest match` writes them: each paper's constant parts
    made once, a subscriber's line joined from them."""

    def __init__(self, index: PaperIndex, as_json: bool) -> None:
        self.index = index
        papers = index.papers
        self._bit = {paper_id: 1 << pos for pos, paper_id in enumerate(index.ids)}.get
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
        self._pending: dict[str, int] = {}  # a pending digest's paper_ids_json -> its bits
        self._slots: dict[tuple[dt.datetime, str], str] = {}  # (slot, zone) -> as shown

    def held_bits(self, pending: list[str] | None, delivered: list[str] | None) -> int:
        """The papers of this window a subscriber has (`_held`), as a bitset."""
        bits = 0
        known = self._pending
        for paper_ids_json in pending or ():
            held = known.get(paper_ids_json)
            if held is None:
                held = reduce(or_, map(self._bit, json.loads(paper_ids_json), repeat(0)), 0)
                if len(known) < PENDING_KNOWN:
                    known[paper_ids_json] = held
            bits |= held
        if delivered:
            bits |= reduce(or_, map(self._bit, delivered, repeat(0)), 0)
        return bits

    def _json(self, subscriber: Subscriber, slot: dt.datetime, ranked: _Ranked, total: int) -> str:
        heads, tails, topics = self.heads, self.tails, self._topics
        when = self._slots.get((slot, ""))
        if when is None:
            when = self._slots[slot, ""] = slot.isoformat()
        parts = []
        for pos, names in ranked:
            shown = topics.get(names)
            if shown is None:
                listed = ", ".join([encode_basestring(n) for n in names])
                shown = topics[names] = f'[{listed}], "score": {len(names)}'
            parts.append(heads[pos] + shown + tails[pos])
        return (
            f'{{"subscriber": {encode_basestring(subscriber.email)}, '
            f'"slot": "{when}", "total": {total}, "papers": [{", ".join(parts)}]}}\n'
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
