"""One mail transaction (MAIL, RCPT, DATA) on an SMTP connection that is already set up.

aiosmtplib opens the connection and does everything before the first message: TLS or
STARTTLS with certificate checks, EHLO, AUTH (smtp.py). Then `Wire.take_over` moves the
connection's transport to this small reader and every message goes through `transact`:
with PIPELINING (RFC 2920, offered by Postfix, Exim, SES, ...) MAIL, RCPT and DATA leave
in one write and their three replies come back together, so a message costs two round
trips instead of four; without it, one command at a time. aiosmtplib's own reader cannot
do this: it drops replies that arrive while an earlier one waits to be picked up.

Owns: the wire format of a message (`to_wire`: CRLF line ends, dot-stuffing, the final
dot, done with bytes.replace), the three-reply bookkeeping, RSET after a refusal, QUIT.
Does not own: reading replies off the connection and the silence limit (replies.py),
what a reply code means for the digest (smtp.py classifies) or retries.
Raises only `Refused` (the server answered, not with success), `Dropped` (connection
lost, timed out or out of sync before the message was complete) and `Unanswered` (no
reply to the final dot within `data_timeout`: the server may have the message); smtp.py
turns them into the DeliveryError tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable

import aiosmtplib

from digest.config import ascii_address
from digest.mail.replies import Closed, Replies

_BAD_ADDRESS = re.compile(r"[\x00-\x20<>\x7f]")  # control chars, spaces, brackets: refuse
_SUCCESS = {"MAIL": (250,), "RCPT": (250, 251), "DATA": (354,)}
FINAL_DOT = b".\r\n"  # the line that ends DATA: what to_wire appends
# called just before the final dot (where the server takes the message): None when there
# is nothing to wait for (the dot leaves with the rest, one write), else what the dot
# waits for; raising, or an awaitable that raises, stops it
Hold = Callable[[], Awaitable[None] | None]


class Refused(Exception):
    """The server answered `code` `text` to `command` (the transaction was reset)."""

    def __init__(self, command: str, code: int, text: str) -> None:
        super().__init__(f"{command}: {code} {text}")
        self.command = command
        self.code = code
        self.text = text


class Dropped(Exception):
    """The connection was lost, timed out (`timed_out`) or went out of sync; it is closed."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class Unanswered(Exception):
    """The whole message went out but its final reply did not come within data_timeout:
    the server may have stored it ("maybe delivered"). The connection is closed."""


def to_wire(message: bytes) -> bytes:
    """The DATA payload: every line ending CRLF, lines starting with '.' doubled, then the
    terminating '.' line (RFC 5321 4.5.2).

    A rendered digest already ends every line with CRLF and rarely starts one with a dot:
    checking that (two counts and one search) is a third of the cost of rewriting it
    (~25 against ~85 us for 27 KB; bytes.replace of a two-byte pattern is slow), so it is
    only rewritten when it must be."""
    body = message
    if b"\r" not in body:  # \n only (a message from elsewhere): one fast one-byte replace
        body = body.replace(b"\n", b"\r\n")
        if _DOT_LINE.search(message):
            body = body.replace(b"\r\n.", b"\r\n..")
    elif _count(body, b"\r") != _count(body, b"\n") or _NOT_PLAIN_CRLF.search(body):
        body = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        body = body.replace(b"\r\n.", b"\r\n..")
    # else: CRLF throughout (as many CRs as LFs, and each CR followed by LF), no dot lines
    if body.startswith(b"."):
        body = b"." + body
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + FINAL_DOT


_DOT_LINE = re.compile(rb"\n\.")  # a line (not the first) starting with '.'
_NOT_PLAIN_CRLF = re.compile(rb"\r(?:[^\n]|\n\.|\Z)")  # a CR alone, or a CRLF then '.'


def _count(data: bytes, byte: bytes) -> int:
    """How many times `byte` occurs in `data` (a one-byte replace is faster than count)."""
    return len(data) - len(data.replace(byte, b""))


def envelope_address(address: str) -> bytes:
    """An address as MAIL FROM / RCPT TO carry it, an internationalized domain IDNA-encoded;
    ValueError when it cannot go on the wire (a non-ASCII local part without SMTPUTF8
    support, control characters, spaces or angle brackets)."""
    address = ascii_address(address)
    if _BAD_ADDRESS.search(address):
        raise ValueError(f"address {address!r} contains characters SMTP cannot carry")
    try:
        return b"<" + address.encode("ascii") + b">"
    except UnicodeEncodeError as e:
        raise ValueError(f"address {address!r} is not ASCII") from e


class Wire:
    """A connection after its handshake: `transact` per message, `aclose` at the end."""

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        pipelining: bool,
        timeout: float,
        data_timeout: float | None = None,
    ) -> None:
        self.pipelining = pipelining
        self.timeout = timeout
        self.data_timeout = timeout if data_timeout is None else data_timeout
        self._transport = transport
        self._replies = Replies()
        transport.set_protocol(self._replies)
        self._replies.connection_made(transport)

    @classmethod
    def take_over(
        cls, client: aiosmtplib.SMTP, timeout: float, data_timeout: float | None = None
    ) -> Wire:
        """The transport of a connected, greeted (and authenticated) aiosmtplib client."""
        protocol = client.protocol
        transport = protocol.transport if protocol is not None else None
        if not isinstance(transport, asyncio.WriteTransport) or transport.is_closing():
            raise Dropped("the connection closed right after the handshake")
        return cls(transport, client.supports_extension("pipelining"), timeout, data_timeout)

    @property
    def is_connected(self) -> bool:
        return not self._transport.is_closing() and self._replies.open

    async def transact(
        self,
        sender: bytes,
        recipient: bytes,
        wire_message: bytes,
        hold: Hold | None = None,
    ) -> str:
        """Send one message (`to_wire` output) to one recipient; the reply text to the
        final dot. Raises Refused (the envelope is reset) or Dropped (now closed).

        `hold`: called before the final dot (where the server takes the message), and what
        it returns awaited before the dot goes (None: nothing to wait for, the message
        goes in one write); if either raises, the connection is closed without the dot, so
        the server keeps nothing, and the exception propagates."""
        commands = [(b"MAIL FROM:" + sender, "MAIL"), (b"RCPT TO:" + recipient, "RCPT"),
                    (b"DATA", "DATA")]  # fmt: skip
        if self.pipelining:
            self._transport.write(b"".join(line + b"\r\n" for line, _ in commands))
        refusal: Refused | None = None
        for line, name in commands:
            if not self.pipelining:
                self._transport.write(line + b"\r\n")
            try:
                code, text = await self._reply()
            except Dropped:
                if refusal is not None:  # e.g. 421 then the server hung up: report the 421
                    raise refusal from None
                raise
            if refusal is None and code not in _SUCCESS[name]:
                refusal = Refused(name, code, text)
                if not self.pipelining:
                    break
            elif refusal is not None and code == 354:  # DATA started despite a refusal
                self.close()
                raise Dropped(f"server answered 354 to DATA after {refusal}")
        if refusal is not None:
            await self._reset()
            raise refusal
        try:
            waiting = None if hold is None else hold()
        except BaseException:
            self.close()  # mid-DATA: only closing leaves the server nothing to deliver
            raise
        if waiting is None:
            self._transport.write(wire_message)
        else:
            self._transport.write(memoryview(wire_message)[: -len(FINAL_DOT)])
            try:
                await waiting
            except BaseException:
                self.close()  # as above
                raise
            self._transport.write(FINAL_DOT)
        try:  # RFC 5321 4.5.3.2.6: the server may take minutes to answer the final dot
            code, text = await self._reply(self.data_timeout)
        except Dropped as e:
            if e.timed_out:
                raise Unanswered(f"no reply to the end of the message within "
                                 f"{self.data_timeout:g}s") from e  # fmt: skip
            raise
        if code != 250:
            raise Refused("DATA", code, text)  # the transaction ends with this reply
        return text

    async def aclose(self) -> None:
        """QUIT politely when the connection still works, then close it."""
        if self.is_connected:
            self._transport.write(b"QUIT\r\n")
            with contextlib.suppress(Dropped):  # closing anyway
                await self._reply()
        self.close()

    def close(self) -> None:
        self._transport.close()

    async def _reset(self) -> None:
        """RSET after a refusal; a connection that cannot reset is closed instead."""
        if self._transport.is_closing():
            return
        self._transport.write(b"RSET\r\n")
        try:
            if (await self._reply())[0] != 250:
                self.close()
        except Dropped:
            pass  # already closed; the refusal is what the caller needs to hear

    async def _reply(self, timeout: float | None = None) -> tuple[int, str]:
        """The next reply: its code and its text lines joined by \\n; waiting while the
        server is silent for less than `timeout` seconds (default: the command timeout)."""
        try:
            return await self._replies.next(self.timeout if timeout is None else timeout)
        except Closed as e:
            self.close()
            raise Dropped(str(e), timed_out=e.timed_out) from e
