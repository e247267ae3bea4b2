"""Drain an outbox into a plaintext SMTP server on 127.0.0.1, as a separate process.

test_kill.py runs this and SIGKILLs it mid-batch (the lead will switch it to the real
`digest send` CLI). Usage:

    python -m tests.drain_driver DB_URL PORT RATE CONCURRENCY CLOCK_SHIFT_SECONDS

CLOCK_SHIFT_SECONDS moves the drain's clock forward (past the claim lease of a killed
run). Writes the DrainReport as one JSON line on stdout.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from dataclasses import asdict

from digest import store
from digest.config import SmtpConfig
from digest.delivery import DrainReport, drain_outbox
from digest.smtp import SmtpTransport


async def run(url: str, port: int, rate: float, concurrency: int, shift: float) -> DrainReport:
    engine = store.open_engine(url)
    config = SmtpConfig(
        host="127.0.0.1",
        port=port,
        security="none",
        max_connections=concurrency,
        rate_per_second=rate,
    )

    def now() -> dt.datetime:
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=shift)

    async with SmtpTransport(config) as transport:
        return await drain_outbox(engine, transport, now=now, batch=50)


def main(argv: list[str]) -> int:
    url, port, rate, concurrency, shift = argv
    report = asyncio.run(run(url, int(port), float(rate), int(concurrency), float(shift)))
    sys.stdout.write(json.dumps(asdict(report)) + "\n")
    return 0 if report.pending == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
