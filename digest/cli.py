"""The command line: parses arguments, runs one command, turns errors into exit codes.

Exit 0 on success, 1 on a runtime failure, 2 on bad usage or a bad config, always with
one clear line on stderr. This is the one place that catches DigestError; the command
bodies live in `digest/commands/`, a module per command.

Imports nothing heavy: `digest --help` and a bad option answer at once; the commands
(and SQLAlchemy, Jinja, httpx behind them) load only once a command runs.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import gc
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from digest import __version__
from digest.errors import ConfigError, DigestError, UsageError
from digest.logs import setup_logging


def common_options(defaults: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name. Only the top level
    holds defaults, so `digest -c x.toml check` is not undone by the subcommand's copy."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        type=Path,
        default=default(Path(os.environ.get("DIGEST_CONFIG", "digest.toml"))),
        help="subscription file (default: $DIGEST_CONFIG, then ./digest.toml)",
    )
    common.add_argument(
        "--log-level",
        default=default("INFO"),
        choices=["DEBUG", "INFO", "WARNING"],
        help="how much to log on stderr (default: INFO)",
    )
    common.add_argument(
        "--log-format",
        default=default("text"),
        choices=["text", "json"],
        help="json: one object per line, for journald or a log shipper",
    )
    return common


DESCRIPTION = """\
Hugging Face Daily Papers, filtered per subscriber, mailed on each one's own schedule.

Start with `digest init` (an example digest.toml), then `digest check`, then
`digest send` (or `digest run` as a service)."""

EPILOG = """\
Exit status: 0 success, 1 a runtime failure (source, database or mail), 2 bad usage
or a bad config; the reason is always one line on stderr.
`digest COMMAND --help` shows the options of one command."""


def parse_day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digest",
        parents=[common_options(defaults=True)],
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"papers-digest {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = common_options(defaults=False)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help, description=help)

    p = command("init", "write a commented example digest.toml to start from")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    command("check", "validate the config: every problem with its line, or a summary")

    p = command("fetch", "fetch listings into the database; print new and updated papers")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--date", type=parse_day, help="one day, YYYY-MM-DD")
    when.add_argument("--since", type=parse_day, help="first day of a range")
    p.add_argument("--until", type=parse_day, help="last day of the range (default today)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = command("match", "show what each subscriber's next digest would hold; changes nothing")
    p.add_argument("--since", type=parse_day, help="papers listed on or after this day")
    p.add_argument("--subscriber", help="only this email")
    p.add_argument("--json", action="store_true", help="one JSON object per subscriber")

    p = command("preview", "render a subscriber's next digest without sending it")
    p.add_argument("--subscriber", required=True, help="email")
    p.add_argument("--out", type=Path, help="FILE.html or FILE.eml (default: text to stdout)")

    p = command("send", "poll, then build and deliver every digest due now (fit for cron)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would go to whom from what is stored; polls, writes and sends nothing",
    )
    p.add_argument("--no-fetch", action="store_true", help="do not poll the source first")

    command("run", "run as a service: poll, send at every slot, retry; stop with SIGTERM")

    p = command("status", "last fetch, papers stored, outbox, each subscriber's next slot")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the last poll failed or mail has been failing (a health check)",
    )

    command("serve", "run only the web endpoint ([web]): unsubscribe and preferences pages")
    p = command("unsubscribe", "stop all digests to an address, whatever the file says")
    p.add_argument("email", help="the address")
    p = command("resubscribe", "undo an unsubscribe: digests start again at the next slot")
    p.add_argument("email", help="the address")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # What is alive when the interpreter exits (SQLAlchemy's and pydantic's modules, their
    # cycles) is left to the OS, not collected and freed one object at a time: ~0.25 ->
    # ~0.09 s at the end of `digest match` at 100k. Registered once per process.
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        if args.command == "fetch" and args.until and not args.since:
            raise UsageError("--until needs --since")
        if args.command == "fetch" and args.since and args.until and args.since > args.until:
            raise UsageError(
                f"--since {args.since} is later than --until {args.until}: no day between"
            )
        from digest import commands  # here, not at the top: see the module docstring

        return commands.run(args, sys.stdout)
    except ConfigError as e:
        for problem in e.problems:
            print(f"digest: {problem}", file=sys.stderr)
        return e.exit_code
    except DigestError as e:
        print(f"digest: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `digest fetch | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("digest: interrupted", file=sys.stderr)
        return 130
    finally:
        logging.shutdown()


if __name__ == "__main__":
    sys.exit(main())
