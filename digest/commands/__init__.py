"""The bodies of the CLI commands: each reads like a recipe over `pipeline` and the edges.

    check.py       init, check        the subscription file, and what the database adds
    fetch.py       fetch              poll the listings, print what is new
    match.py       match, preview     a subscriber's next digest, unsent
    send.py        send               poll, plan, deliver, say what stays pending
    status.py      status             the store, the outbox, the next digests, health
    recipients.py  (un|re)subscribe   a recipient's choice, made by the admin
    daemons.py     run, serve         the long-running processes

Owns what each command prints (to the `out` stream it is given) and its exit code on
success or partial failure; here, what every command shares: loading the config, and
opening the store and closing it when the command ends. Does not own argument parsing
or turning errors into exit codes (`cli.py`), nor any step of the pipeline itself.

`run` imports only the module of the command it runs, and each command imports the
stages it uses when it runs: `digest init` loads no SQLAlchemy, `digest status` no
Jinja, httpx or aiosmtplib.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO, TypeVar

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from digest.config import Config
    from digest.store import peek

_T = TypeVar("_T")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# each command's module (its body is cmd_<command> there), imported when it runs
_MODULES = {
    "init": "check",
    "check": "check",
    "fetch": "fetch",
    "match": "match",
    "preview": "match",
    "send": "send",
    "run": "daemons",
    "status": "status",
    "serve": "daemons",
    "unsubscribe": "recipients",
    "resubscribe": "recipients",
}


def run(args: argparse.Namespace, out: TextIO) -> int:
    module = importlib.import_module(f"digest.commands.{_MODULES[args.command]}")
    handler: Callable[[argparse.Namespace, TextIO], int] = getattr(module, f"cmd_{args.command}")
    try:
        return handler(args, out)
    finally:
        close_stores()


def load(args: argparse.Namespace) -> Config:
    from digest.config import load_config

    return load_config(args.config, os.environ)


# The engines open_store made, closed by close_stores when the command ends. Not left to
# the collector: cli.py freezes what is alive at exit, so a pooled SQLite connection would
# never close, and the file's write-ahead log would stay beside it un-checkpointed (the
# file alone, copied as a backup, would miss what the command wrote).
_opened: list[Engine] = []


def open_store(config: Config) -> Engine:
    from digest import store

    engine = store.open_engine(config.storage.url)
    _opened.append(engine)
    store.migrate(engine)
    return engine


def close_stores() -> None:
    while _opened:
        _opened.pop().dispose()


def through_store(config: Config, read: Callable[[peek.Reader], _T]) -> _T:
    """`read` with a `peek.Reader` over the full store (any backend, migrated first):
    what `check` and `status` fall back to where the quick sqlite3 path cannot answer."""
    from digest.store import peek

    # the engine is closed with the command (close_stores)
    return peek.through_engine(open_store(config), config.storage.url, read)
