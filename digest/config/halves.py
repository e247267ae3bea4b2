"""A big subscription file read on two cores: its second half in a forked child.

    parent: head, [defaults] -> fork -> pieces up to MIDDLE -> take the child's half
    child:                              pieces from MIDDLE -> its Subscribers, spooled

Owns: whether to fork (POSIX, one thread, a file of HALVES_FROM bytes or more), where
the middle is, the child's life (a spool file, `os._exit`, reaped whatever happens)
and the hand-over (pickle, through an unlinked file). Does not own what is read
(`subscribers.py` decides what it accepts of the child's half: only a half with no
problem and no warning, starting where the parent stopped and sharing no email with
the first half; else the parent reads the second half itself, so every message is the
one a serial read gives) nor where pieces are cut (`chunks.py`).

At 100,000 subscribers (34 MB) nearly all of a load is checking values in Python, and
two halves take about 55-60% of one core's time (3.7 -> 2.4 s on one machine, 7.5 ->
4.2 s on a slower one; the child's 50,000 Subscribers cross in ~0.1 s). A fork from a
process running threads could copy a lock another thread holds, so a process with
threads (a daemon reloading) reads on one core.
"""

from __future__ import annotations

import os
import pickle
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from digest.config.schema import Subscriber

HALVES_FROM = 4 << 20  # bytes (~12,000 subscribers): below it, one core is quick enough
# The parent's share of the file's bytes, in percent: a little over half, since the
# child has more to do with its half (find its start, pickle its Subscribers) and the
# parent waited for it (100k: 0.06-0.37 s at 50%, 0-0.05 s at 52%, 3 runs each)
PARENT_SHARE = 52


def middle_of(path: Path) -> int | None:
    """The byte offset to cut `path`'s subscribers at (`PARENT_SHARE`), or None to read
    them on one core."""
    if not hasattr(os, "fork") or _threads_running():
        return None
    try:
        size = path.stat().st_size
    except OSError:
        return None  # reading it says why
    return size * PARENT_SHARE // 100 if size >= HALVES_FROM else None


def _threads_running() -> bool:
    return threading.active_count() > 1


@dataclass(frozen=True)
class Half:
    """What the child read: its Subscribers, from the `first`-th table of the file on."""

    first: int
    subscribers: list[Subscriber]


class SecondHalf:
    """A child process running `read` (the second half); `take` what it read."""

    def __init__(self, read: Callable[[], Half | None]) -> None:
        # closed by close(), which second_half() calls, in the parent; by exiting, in the child
        self._spool = tempfile.TemporaryFile()  # noqa: SIM115
        self._pid: int | None = os.fork()
        if self._pid == 0:  # the child: never returns into the parent's stack
            code = 1
            try:
                half = read()
                if half is not None:
                    pickle.dump(half, self._spool, protocol=pickle.HIGHEST_PROTOCOL)
                    self._spool.flush()
                    code = 0
            finally:
                os._exit(code)

    def take(self) -> Half | None:
        """Wait for the child: its Half, or None if it failed, or gave none."""
        pid, self._pid = self._pid, None
        if pid is None:
            return None
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            return None
        self._spool.seek(0)
        try:
            half = pickle.load(self._spool)
        except Exception:  # a spool cut short (a full disk): read the half here instead
            return None
        return half if isinstance(half, Half) else None

    def close(self) -> None:
        """Stop the child if it still runs (the parent stopped early), and reap it."""
        pid, self._pid = self._pid, None
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        self._spool.close()


@contextmanager
def second_half(read: Callable[[], Half | None] | None) -> Iterator[SecondHalf | None]:
    """A SecondHalf running `read` for the block, reaped after it; None if `read` is."""
    if read is None:
        yield None
        return
    half = SecondHalf(read)
    try:
        yield half
    finally:
        half.close()
