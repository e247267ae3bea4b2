"""`digest init` and `digest check`: the subscription file, and what the database says of
its subscribers (who unsubscribed, paused or muted topics)."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, TextIO
from zoneinfo import ZoneInfo

from digest.commands import load, through_store, utcnow
from digest.config.dburl import parse_db_url
from digest.errors import StoreError, UsageError

if TYPE_CHECKING:
    from digest.config import Config
    from digest.store import peek


def cmd_init(args: argparse.Namespace, out: TextIO) -> int:
    from digest.config import example_config

    path = args.config
    if path.exists() and not args.force:
        raise UsageError(f"{path} already exists; use --force to overwrite it")
    path.write_text(example_config(), encoding="utf-8")
    out.write(f"wrote {path}: edit the subscribers, then run `digest check`\n")
    return 0


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    from digest.config import summarize_config
    from digest.render import Renderer

    config = load(args)
    Renderer(config.mail.templates)  # a broken template folder is a config problem too
    for line in summarize_config(config):
        out.write(line + "\n")
    for warning in config.warnings:
        out.write(f"warning: {warning}\n")
    if config.web is not None:
        from digest.web.pages import Pages  # a broken page template is one too

        Pages(config.mail.templates)
    for line in check_recipients(config):
        out.write(line + "\n")
    return 0


def check_recipients(config: Config) -> list[str]:
    """`digest check`'s view of the database: who unsubscribed or paused. A database
    that does not exist yet is not created here; one that fails is a line, not an exit."""
    url = parse_db_url(config.storage.url)
    file = url.database if url.backend == "sqlite" else None
    if file and file != ":memory:" and not Path(file).exists():
        return []
    try:
        return recipient_lines(config, read_choices(config), utcnow())
    except StoreError as e:
        return [f"recipients: not checked, the database failed: {e}"]


def recipient_lines(
    config: Config, choices: Mapping[str, peek.Choice], now: dt.datetime
) -> list[str]:
    """Who in the file unsubscribed, paused or muted topics: the database overrides the
    file, so `check` and `status` say whom the file lists in vain. `choices`: what
    `peek.choices` read."""
    lines = []
    for sub in config.subscribers:
        choice = choices.get(sub.email)
        if choice is None:
            continue
        if choice.suppressed_at is not None:
            when = f"{choice.suppressed_at:%Y-%m-%d}"
            lines.append(f"{sub.email}: unsubscribed {when} ({choice.how})")
            continue
        notes = []
        if choice.paused_at(now) and choice.paused_until is not None:
            local = choice.paused_until.astimezone(ZoneInfo(sub.timezone))
            notes.append(f"paused until {local:%Y-%m-%d %H:%M %Z}")
        muted = sorted(choice.muted & {t.name for t in sub.topics})
        if muted:
            notes.append("muted " + ", ".join(f'"{name}"' for name in muted))
        if notes:
            lines.append(f"{sub.email}: {'; '.join(notes)}")
    return lines


def read_choices(config: Config) -> dict[str, peek.Choice]:
    """`peek.choices` for the file's subscribers: quick on SQLite, else the full store."""
    from digest.store import peek

    emails = [s.email for s in config.subscribers]
    with peek.open_sqlite(config.storage.url) as reader:
        if reader is not None:
            return peek.choices(reader, emails)
    return through_store(config, lambda reader: peek.choices(reader, emails))
