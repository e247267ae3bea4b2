"""`digest unsubscribe` and `digest resubscribe`: a recipient's choice, made by the admin."""

from __future__ import annotations

import argparse
from typing import TextIO

from digest.commands import load, open_store, utcnow
from digest.errors import UsageError


def cmd_unsubscribe(args: argparse.Namespace, out: TextIO) -> int:
    from digest.store import recipients

    config = load(args)
    email = parse_address_arg(args.email)
    engine = open_store(config)
    new = recipients.suppress(engine, email, "admin", utcnow())
    pending = "" if new else " (already unsubscribed)"
    note = "" if email in {s.email for s in config.subscribers} else f"; not in {config.path}"
    out.write(f"{email}: unsubscribed{pending}, gets no more digests{note}\n")
    return 0


def cmd_resubscribe(args: argparse.Namespace, out: TextIO) -> int:
    from digest.store import recipients

    config = load(args)
    email = parse_address_arg(args.email)
    engine = open_store(config)
    if not recipients.resubscribe(engine, email, utcnow()):
        raise UsageError(f"{email} is not unsubscribed")
    note = (
        ""
        if email in {s.email for s in config.subscribers}
        else (f"; not in {config.path}, so nothing will be sent")
    )
    out.write(f"{email}: resubscribed, digests start again at the next slot{note}\n")
    return 0


def parse_address_arg(text: str) -> str:
    from digest.config.values import Invalid, check_address

    try:
        return check_address(text)
    except Invalid as e:
        raise UsageError(str(e)) from None
