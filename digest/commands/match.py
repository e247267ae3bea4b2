"""`digest match` and `digest preview`: a subscriber's next digest, without sending it
(`digest match` for many subscribers at once is `listmatches.py`)."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import TYPE_CHECKING, TextIO

from digest.commands import load, open_store, utcnow
from digest.errors import UsageError
from digest.humanize import count

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from digest import pipeline
    from digest.config import Config, Subscriber
    from digest.models import SubscriberRow
    from digest.records import Match


def select_subscribers(config: Config, email: str | None) -> list[Subscriber]:
    if email is None:
        return list(config.subscribers)
    chosen = [s for s in config.subscribers if s.email == email.strip().lower()]
    if not chosen:
        raise UsageError(f"no subscriber {email!r} in {config.path}")
    return chosen


def subscriber_states(engine: Engine, chosen: list[Subscriber]) -> dict[str, SubscriberRow]:
    """The saved state of every chosen subscriber, in one batched read (never one query
    per subscriber: at 100k that was most of `digest match`)."""
    from sqlmodel import Session

    from digest import store

    with Session(engine) as session:
        return store.get_subscriber_states(session, [s.email for s in chosen])


def next_digest(
    planner: pipeline.Planner,
    subscriber: Subscriber,
    state: SubscriberRow | None,
    now: dt.datetime,
    since: dt.date | None,
    *,
    more: int = 0,
) -> tuple[dt.datetime, list[Match], int]:
    """What the subscriber's next digest would hold: the due slot if one is waiting, else
    the next one; with `since`, every paper listed from that day on. `more`: also up
    to that many matches past max_papers (the digest's title links). `state`: the
    subscriber's saved state (`subscriber_states`)."""
    from digest import pipeline
    from digest.records import as_utc
    from digest.schedule import upcoming_slot

    last_slot = as_utc(state.last_slot) if state and state.last_slot else None
    slot, _ = upcoming_slot(subscriber, now, last_slot)
    if since is not None:
        first, last = since, now.date() + dt.timedelta(days=1)
    else:
        covered_until = state.covered_until if state else None
        first, last = pipeline.digest_days(subscriber, slot, last_slot, covered_until)
    matches, total = planner.matches_for(subscriber, first, last, more=more)
    return slot, matches, total


def cmd_match(args: argparse.Namespace, out: TextIO) -> int:
    from digest import pipeline
    from digest.listmatches import write_matches

    config = load(args)
    planner = pipeline.Planner(config, open_store(config))
    now = utcnow()
    chosen = select_subscribers(config, args.subscriber)
    write_matches(planner, chosen, now, args.since, out, as_json=args.json)
    return 0


def cmd_preview(args: argparse.Namespace, out: TextIO) -> int:
    from digest import pipeline
    from digest.render import render_digest

    config = load(args)
    planner = pipeline.Planner(config, open_store(config))
    now = utcnow()
    (subscriber,) = select_subscribers(config, args.subscriber)
    state = subscriber_states(planner.engine, [subscriber]).get(subscriber.email)
    slot, found, total = next_digest(
        planner, subscriber, state, now, None, more=pipeline.MORE_LINKS
    )
    matches, more = found[: subscriber.max_papers], found[subscriber.max_papers :]
    message = render_digest(
        planner.renderer,
        subscriber=subscriber,
        slot=slot,
        matches=matches,
        mail=config.mail,
        now=now,
        total_matches=total,
        more=more,
    )
    if args.out is None:
        text = message.get_body(("plain",))
        out.write(text.get_content() if text is not None else "")
        return 0
    suffix = args.out.suffix.lower()
    if suffix == ".eml":
        args.out.write_bytes(message.as_bytes())
    elif suffix in (".html", ".htm"):
        html = message.get_body(("html",))
        args.out.write_text(html.get_content() if html is not None else "", encoding="utf-8")
    else:
        raise UsageError(f"--out {args.out}: use a .html or .eml file name")
    out.write(f"wrote {args.out}: {count(len(matches), 'paper')} for {subscriber.email}\n")
    return 0
