"""Who holds an outbox lease: a process named by (host, pid, start time).

Owns: this process's identity (`this_process`) and whether the process that took a
lease on this host is still running (`is_running`). A pid alone is not enough: pids are
reused, so the identity carries the process's start time (Linux: boot time plus the
start tick from /proc/<pid>/stat), and a pid now held by a younger process counts as
gone, as does a zombie (killed, not yet reaped). Elsewhere (no /proc) the start time
is empty and a live pid counts as running.

Does not own: the lease columns or when a lease is taken over (leases.py).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class Owner:
    host: str
    pid: int
    started: str  # "" where the platform does not tell

    def __str__(self) -> str:
        return f"{self.host} pid {self.pid}"


def _boot_time() -> str:
    try:
        for line in (_PROC / "stat").read_text().splitlines():
            if line.startswith("btime "):
                return line.split()[1]
    except OSError:
        pass
    return ""


def start_time(pid: int) -> str | None:
    """When process `pid` started, as "boot-time:ticks" (Linux); "" where the platform
    does not tell but the process exists; None when there is no such process."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except FileNotFoundError:
        return None if _PROC.joinpath("self").exists() else _exists(pid)
    except OSError:
        return _exists(pid)
    # the command name (field 2) may hold spaces and parentheses: split after its ")"
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent: gone
        return None
    return f"{_boot_time()}:{fields[19]}"  # field 22 of stat(5), starttime in ticks


def _exists(pid: int) -> str | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return ""  # someone else's process: it exists
    return ""


_mine: Owner | None = None


def this_process() -> Owner:
    """This process's identity (worked out again after a fork)."""
    global _mine  # a per-process cache; the pid check keeps it honest
    if _mine is None or _mine.pid != os.getpid():
        pid = os.getpid()
        _mine = Owner(socket.gethostname(), pid, start_time(pid) or "")
    return _mine


def is_running(owner: Owner) -> bool:
    """Whether `owner`, a process on THIS host, still runs (the same process, not a
    later one that got its pid)."""
    started = start_time(owner.pid)
    if started is None:
        return False
    return not (owner.started and started and started != owner.started)
