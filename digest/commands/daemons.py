"""`digest run` and `digest serve`: the long-running processes, each in its own package."""

from __future__ import annotations

import argparse
import os
from typing import TextIO


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    from digest.daemon.service import run_daemon

    return run_daemon(args.config, os.environ)


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    import asyncio

    from digest.web.server import serve

    return asyncio.run(serve(args.config, os.environ))
