"""`digest status`: the store, the outbox, each subscriber's next digest, and with
`--check` whether the service is healthy."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import TYPE_CHECKING, TextIO

from digest.commands import load, through_store, utcnow
from digest.commands.check import recipient_lines
from digest.errors import DigestError
from digest.humanize import count, duration

if TYPE_CHECKING:
    from digest.config import Config
    from digest.store import peek


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    """The store, the outbox and each subscriber's next digest (as `match` and `send` see
    it: the due slot if one is waiting, else the next). With `--check`, exit 1 when the
    last poll failed or mail has been failing (the container's HEALTHCHECK).

    An SQLite file at the current schema is read with sqlite3 alone (`store.peek`), so a
    status answers before SQLAlchemy could even be imported; anything else (PostgreSQL,
    no database yet, an older schema) goes through the full store, migrated first."""
    from digest.schedule import upcoming_slot
    from digest.store import peek

    config = load(args)
    now = utcnow()
    emails = [s.email for s in config.subscribers]
    with peek.open_sqlite(config.storage.url) as reader:
        read = status_reads(reader, emails, now, check=args.check) if reader else None
    if read is None:
        read = through_store(config, lambda r: status_reads(r, emails, now, check=args.check))
    stats, last_slots, choices, trouble = read
    slots: dict[str, tuple[dt.datetime, bool]] = {}
    # the same schedule, zone and last slot give the same answer: at 100k subscribers
    # a few dozen distinct ones, each worked out once
    known: dict[tuple[object, str, dt.datetime | None], tuple[dt.datetime, bool]] = {}
    for s in config.subscribers:
        key = (s.schedule, s.timezone, last_slots.get(s.email))
        answer = known.get(key)
        if answer is None:
            slot, due = upcoming_slot(s, now, key[2])
            answer = known[key] = slot.astimezone(s.zone), due
        slots[s.email] = answer
    if args.json:
        record = stats.as_dict() | {
            "subscribers": {e: t.isoformat() for e, (t, _) in slots.items()},
            "due": sorted(e for e, (_, due) in slots.items() if due),
        }
        record["recipients"] = recipient_lines(config, choices, now)
        rate = send_rate(config)
        pending = stats.digests.get("pending", 0)
        record["rate_per_second"] = rate
        record["pending_send_seconds"] = None if rate is None else pending / rate
        if args.check:
            record["problems"] = trouble
        out.write(json.dumps(record, default=str) + "\n")
    else:
        for line in stats.lines():
            out.write(line + "\n")
        pending = stats.digests.get("pending", 0)
        if pending:
            out.write(pending_line(pending, send_rate(config)) + "\n")
        shown: dict[tuple[dt.datetime, object, bool], str] = {}  # tzinfo too: equal
        for email, (when, due) in slots.items():  # instants in two zones print apart
            if (tail := shown.get((when, when.tzinfo, due))) is None:
                waiting = " (due now: `digest send` sends it)" if due else ""
                tail = shown[when, when.tzinfo, due] = f"{when:%a %Y-%m-%d %H:%M %Z}{waiting}\n"
            out.write(f"next digest for {email}: {tail}")
        for line in recipient_lines(config, choices, now):
            out.write(line + "\n")
    if trouble:
        raise DigestError("unhealthy: " + "; ".join(trouble))
    return 0


def status_reads(
    reader: peek.Reader, emails: list[str], now: dt.datetime, *, check: bool
) -> tuple[peek.StoreStats, dict[str, dt.datetime], dict[str, peek.Choice], list[str]]:
    """Everything `digest status` reads: a handful of queries, whatever the subscribers."""
    from digest.store import peek

    return (
        peek.store_stats(reader),
        peek.last_slots(reader, emails),
        peek.choices(reader, emails),
        peek.health_problems(reader, now) if check else [],
    )


def send_rate(config: Config) -> float | None:
    """The messages a second the configured transport is capped at; None: no cap (Maildir)."""
    smtp = config.mail.smtp
    return smtp.rate_per_second if config.mail.transport == "smtp" and smtp else None


def pending_line(pending: int, rate: float | None) -> str:
    """How long the digests waiting in the outbox take to go out at the configured cap
    (at the least: a slow relay or retries take longer)."""
    waiting = count(pending, "pending digest")
    if rate is None:
        return f"sending {waiting}: no rate cap (Maildir)"
    took = duration(max(1, round(pending / rate)))
    return (
        f"sending {waiting} takes at least {took} at rate_per_second = {rate:g} "
        "(the README says which rate your relay takes)"
    )
