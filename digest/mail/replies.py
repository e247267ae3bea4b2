"""The incoming side of an SMTP connection: bytes parsed into replies as they arrive.

    socket -> data_received -> complete lines -> (code, text) replies -> Replies.next()

Owns: splitting what the server sends into replies (multi-line ones joined, RFC 5321
4.2.1), what counts as a broken connection (a line that is not a reply, a line past
LINE_LIMIT, more than REPLY_LIMIT lines or replies waiting, the server closing) and the
silence limit: `next` waits for a reply only as long as the server stays silent for
`timeout` seconds, so a slow but talking server is not cut off. Does not own what a
reply means (wire.py) nor anything written.

Why not asyncio.StreamReader under `asyncio.timeout`, as before: each reply then cost a
readline and a timeout context (a timer pushed on the loop's heap, then cancelled),
four a message. Here a reply already parsed is returned without waiting, so the three
replies to a pipelined MAIL/RCPT/DATA cost one wait, and no timer is made per wait: one
watchdog per connection runs while a wait is in progress and sleeps until the silence
could end it. The pool went from 59% to 78% of smtp-source's rate (benchmarks/send.py).
"""

from __future__ import annotations

import asyncio
from collections import deque

LINE_LIMIT = 1 << 16  # bytes in one reply line; a longer one is not SMTP
# lines in one reply, and replies read and not yet asked for: an EHLO reply has a few
# dozen lines, PIPELINING leaves three replies waiting; far more is a server gone wrong
REPLY_LIMIT = 1000


class Closed(Exception):
    """The connection cannot give another reply: the server closed it, sent something
    that is not a reply, or was silent too long (`timed_out`)."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class Replies(asyncio.Protocol):
    """A connection's protocol once its handshake is done (`Wire` installs it)."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._replies: deque[tuple[int, str]] = deque()
        self._lines: list[str] = []  # the lines of a reply whose last line has not come
        self._rest = b""  # bytes after the last complete line
        self._closed: Closed | None = None  # why no more replies will come
        self._waiter: asyncio.Future[None] | None = None
        self._heard = 0.0  # loop time of the last bytes, or of the wait's start if later
        self._limit = 0.0  # the waiting call's timeout
        self._watchdog: asyncio.TimerHandle | None = None
        self._transport: asyncio.BaseTransport | None = None

    @property
    def open(self) -> bool:
        """No reason yet why another reply could not come."""
        return self._closed is None

    async def next(self, timeout: float) -> tuple[int, str]:
        """The next reply (code, text lines joined by \\n), waiting while the server is
        silent for less than `timeout` seconds. Raises Closed."""
        while not self._replies:
            if (closed := self._closed) is not None:  # a fresh one each time: no traceback piles up
                raise Closed(str(closed), timed_out=closed.timed_out) from closed.__cause__
            await self._wait(timeout)
        return self._replies.popleft()

    async def _wait(self, timeout: float) -> None:
        waiter = self._waiter = self._loop.create_future()
        self._heard, self._limit = self._loop.time(), timeout
        deadline = self._heard + timeout
        watchdog = self._watchdog
        if watchdog is None or watchdog.when() > deadline:
            if watchdog is not None:
                watchdog.cancel()
            self._watchdog = self._loop.call_at(deadline, self._watch)
        try:
            await waiter
        finally:
            self._waiter = None

    def _watch(self) -> None:
        """The watchdog: fail the wait the server was silent through, else sleep on."""
        self._watchdog = None
        if self._waiter is None:
            return  # nobody waits: the next wait arms it again
        deadline = self._heard + self._limit
        if self._loop.time() < deadline:
            self._watchdog = self._loop.call_at(deadline, self._watch)
            return
        self._close(Closed(f"no reply: silent for {self._limit:g}s", timed_out=True))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._closed is not None:
            return
        *lines, rest = (self._rest + data if self._rest else data).split(b"\n")
        for line in lines:
            code = line[:3]
            if not code.isdigit():
                self._close(Closed(f"not an SMTP reply: {line[:80]!r}"))
                return
            text = line[4:].strip().decode("utf-8", "replace")
            if line[3:4] == b"-":  # more lines to come
                self._lines.append(text)
                if len(self._lines) > REPLY_LIMIT:
                    self._close(Closed(f"a reply of more than {REPLY_LIMIT} lines"))
                    return
                continue
            if self._lines:
                self._lines.append(text)
                text, self._lines = "\n".join(self._lines), []
            self._replies.append((int(code), text))
            if len(self._replies) > REPLY_LIMIT:
                self._close(Closed(f"more than {REPLY_LIMIT} replies nobody asked for"))
                return
        if len(rest) > LINE_LIMIT:
            self._close(Closed(f"a reply line longer than {LINE_LIMIT} bytes"))
            return
        self._rest = rest
        if self._waiter is not None:
            self._heard = self._loop.time()
            if self._replies and not self._waiter.done():
                self._waiter.set_result(None)

    def eof_received(self) -> bool:
        self._close(Closed("the server closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        why = f"the connection was lost: {exc}" if exc else "the server closed the connection"
        self._close(Closed(why), cause=exc)

    def _close(self, closed: Closed, cause: BaseException | None = None) -> None:
        """No more replies (those already parsed are still given); the transport closed."""
        if self._closed is None:
            closed.__cause__ = cause
            self._closed = closed
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        if self._transport is not None:
            self._transport.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)  # next() raises self._closed
