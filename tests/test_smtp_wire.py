"""The mail transaction on the wire (digest/smtp_wire.py): PIPELINING when offered, one
command at a time when not, refusals, and the DATA payload's dot-stuffing. Against a raw
scripted SMTP server on 127.0.0.1 that records every chunk it reads, so a test can see
what left the client in one write."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from digest.config import SmtpConfig
from digest.errors import MaybeDeliveredError, PermanentDeliveryError, TransientDeliveryError
from digest.mail.replies import LINE_LIMIT, REPLY_LIMIT, Closed, Replies
from digest.mail.smtp import SmtpTransport
from digest.mail.wire import envelope_address, to_wire

SENDER = "digest@example.org"


def unstuff(wire: bytes) -> bytes:
    """What a server stores from a DATA payload (RFC 5321 4.5.2), without the final dot."""
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    body = wire[: -len(b".\r\n")]
    lines = body.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def crlf(message: bytes) -> bytes:
    body = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return body if not body or body.endswith(b"\r\n") else body + b"\r\n"


@dataclass
class ScriptedServer:
    """A minimal SMTP server: scripted replies, every read chunk and message recorded."""

    pipelining: bool = True
    rcpt_reply: bytes = b"250 2.1.5 ok"
    data_reply: bytes | None = None  # None: 354 when RCPT was accepted, else 554
    chunks: list[bytes] = field(default_factory=list)
    commands: list[bytes] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    connections: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(b"220 scripted ESMTP\r\n")
        buffer, in_data, rcpt_ok = b"", False, False
        while chunk := await reader.read(1 << 16):
            self.chunks.append(chunk)
            buffer += chunk
            while True:
                if in_data:
                    end = buffer.find(b"\r\n.\r\n")
                    if end < 0:
                        break
                    self.messages.append(buffer[: end + 5])
                    buffer, in_data = buffer[end + 5 :], False
                    writer.write(b"250 2.0.0 queued as 42\r\n")
                    continue
                line, sep, rest = buffer.partition(b"\r\n")
                if not sep:
                    break
                buffer = rest
                self.commands.append(line)
                verb = line[:4].upper()
                if verb == b"EHLO":
                    offer = b"250-PIPELINING\r\n" if self.pipelining else b""
                    writer.write(b"250-scripted\r\n" + offer + b"250 8BITMIME\r\n")
                elif verb == b"RCPT":
                    rcpt_ok = self.rcpt_reply.startswith(b"2")
                    writer.write(self.rcpt_reply + b"\r\n")
                elif verb == b"DATA":
                    reply = self.data_reply or (b"354 go on" if rcpt_ok else b"554 no rcpt")
                    in_data = reply.startswith(b"354")
                    writer.write(reply + b"\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    writer.close()
                    return
                else:  # MAIL, RSET, NOOP
                    rcpt_ok = False if verb == b"RSET" else rcpt_ok
                    writer.write(b"250 ok\r\n")
        writer.close()


def send_all(server: ScriptedServer, messages: list[tuple[str, bytes]]) -> list[object]:
    """Send each (recipient, message) in turn over one pooled connection; the outcomes."""

    async def go() -> list[object]:
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        config = SmtpConfig(host="127.0.0.1", port=port, security="none", max_connections=1,
                            rate_per_second=0, retries=0, timeout=5)  # fmt: skip
        outcomes: list[object] = []
        async with listener, SmtpTransport(config) as transport:
            for recipient, message in messages:
                try:
                    outcomes.append(await transport.send(SENDER, recipient, message))
                except (PermanentDeliveryError, TransientDeliveryError) as e:
                    outcomes.append(e)
        return outcomes

    return asyncio.run(asyncio.wait_for(go(), 20))


MESSAGE = b"Subject: hi\n\n.starts with a dot\nline\r\n..two dots\n.\nend"


def test_pipelining_sends_mail_rcpt_data_in_one_write() -> None:
    server = ScriptedServer(pipelining=True)
    outcomes = send_all(server, [("ada@example.org", MESSAGE), ("bob@example.org", MESSAGE)])
    assert outcomes == ["250 2.0.0 queued as 42"] * 2
    envelopes = [c for c in server.chunks if b"MAIL FROM:" in c]
    assert len(envelopes) == 2
    for chunk in envelopes:  # one write, three commands
        assert chunk.startswith(b"MAIL FROM:<digest@example.org>\r\nRCPT TO:<")
        assert chunk.endswith(b">\r\nDATA\r\n")
    assert [unstuff(m) for m in server.messages] == [crlf(MESSAGE)] * 2
    assert server.connections == 1 and server.commands[-1] == b"QUIT"


def test_without_pipelining_one_command_per_write() -> None:
    server = ScriptedServer(pipelining=False)
    assert send_all(server, [("ada@example.org", MESSAGE)]) == ["250 2.0.0 queued as 42"]
    for verb in (b"MAIL", b"RCPT", b"DATA"):
        (chunk,) = [c for c in server.chunks if c.startswith(verb)]
        assert chunk.count(b"\r\n") == 1  # the client waited for each reply
    assert [unstuff(m) for m in server.messages] == [crlf(MESSAGE)]


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_refused_recipient_resets_and_the_connection_carries_the_next(pipelining: bool) -> None:
    server = ScriptedServer(pipelining=pipelining, rcpt_reply=b"550 5.1.1 no such user")
    first, second = send_all(server, [("gone@example.org", MESSAGE), ("ada@example.org", b"x")])
    assert isinstance(first, PermanentDeliveryError)
    assert "gone@example.org" in str(first) and "550 5.1.1 no such user" in str(first)
    assert isinstance(second, PermanentDeliveryError)  # the scripted server refuses all
    assert server.commands.count(b"RSET") == 2 and server.connections == 1
    assert server.messages == []


def test_a_server_that_starts_data_after_a_refusal_gets_no_message() -> None:
    server = ScriptedServer(rcpt_reply=b"550 no", data_reply=b"354 go on anyway")
    (outcome,) = send_all(server, [("ada@example.org", MESSAGE)])
    assert isinstance(outcome, TransientDeliveryError) and "354" in str(outcome)
    assert server.messages == []  # the connection was closed before any content


@pytest.mark.parametrize(
    "bad", ["ada@example.org>\r\nRCPT TO:<eve@example.org", "a da@example.org", "zoë@example.org"]
)
def test_an_address_that_cannot_go_on_the_wire_is_refused_before_sending(bad: str) -> None:
    server = ScriptedServer()
    (outcome,) = send_all(server, [(bad, MESSAGE)])
    assert isinstance(outcome, PermanentDeliveryError) and "cannot take it" in str(outcome)
    assert not [c for c in server.commands if c.startswith((b"MAIL", b"RCPT"))]


def test_to_wire_examples() -> None:
    assert to_wire(b"a\nb") == b"a\r\nb\r\n.\r\n"
    assert to_wire(b".a\r\n.\r\nb\r") == b"..a\r\n..\r\nb\r\n.\r\n"
    assert to_wire(b"") == b".\r\n"
    # CRLF already (what the renderer writes): kept as is unless a line starts with a dot
    assert to_wire(b"a\r\nb\r\n") == b"a\r\nb\r\n.\r\n"
    assert to_wire(b"a\r\n.b\r\n") == b"a\r\n..b\r\n.\r\n"
    assert to_wire(b".a\r\nb") == b"..a\r\nb\r\n.\r\n"
    # a bare CR or LF among CRLFs, even the very last byte, is a line end too
    assert to_wire(b"a\r\nb\r") == b"a\r\nb\r\n.\r\n"
    assert to_wire(b"a\r\nb\nc\rd") == b"a\r\nb\r\nc\r\nd\r\n.\r\n"
    assert to_wire(b"a\r\r\nb") == b"a\r\n\r\nb\r\n.\r\n"
    assert envelope_address("ada@example.org") == b"<ada@example.org>"


@given(st.binary(max_size=300) | st.text(alphabet=".\r\nab ", max_size=60).map(str.encode))
def test_to_wire_round_trips_and_never_ends_data_early(message: bytes) -> None:
    wire = to_wire(message)
    assert unstuff(wire) == crlf(message)
    assert b"\r" not in wire.replace(b"\r\n", b"")  # no bare CR
    assert b"\n" not in wire.replace(b"\r\n", b"")  # no bare LF
    assert (b"\r\n" + wire).find(b"\r\n.\r\n") == len(wire) - 3  # only the final dot ends it


# --------------------------------------------------------------------------- replies as they come


Steps = list[tuple[float, bytes | None]]  # (seconds to wait, bytes to write or None: hang up)
Script = Callable[[bytes], Steps | None]


def talk(
    script: Script,
    timeout: float = 0.5,
    data_timeout: float = 5,
) -> object:
    """One message through a server on 127.0.0.1 whose answer to each chunk it reads after
    the greeting and EHLO is `script(chunk)`: (delay, bytes) pairs written in turn (None
    instead of the bytes, or instead of the list: hang up). The outcome: the DATA reply,
    or the DeliveryError."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 raw ESMTP\r\n")
        await reader.readline()  # EHLO
        writer.write(b"250-raw\r\n250 PIPELINING\r\n")
        while chunk := await reader.read(1 << 16):
            steps = script(chunk)
            if steps is None:
                break
            for delay, data in steps:
                await asyncio.sleep(delay)
                if data is None:
                    writer.close()
                    return
                writer.write(data)
        writer.close()

    async def go() -> object:
        listener = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        config = SmtpConfig(host="127.0.0.1", port=port, security="none", max_connections=1,
                            rate_per_second=0, retries=0, timeout=timeout,
                            data_timeout=data_timeout)  # fmt: skip
        async with listener, SmtpTransport(config) as transport:
            try:
                return await transport.send(SENDER, "ada@example.org", b"Subject: hi\n\nbody\n")
            except (PermanentDeliveryError, TransientDeliveryError) as e:
                return e

    return asyncio.run(asyncio.wait_for(go(), 20))


def answers(envelope: Steps, final: Steps) -> Script:
    """A script: `envelope` to the chunk holding MAIL/RCPT/DATA, `final` to the message."""

    def script(chunk: bytes) -> Steps | None:
        if chunk.startswith(b"MAIL"):
            return envelope
        if chunk.endswith(b"\r\n.\r\n"):
            return final
        return [] if not chunk.startswith(b"QUIT") else None

    return script


OK_ENVELOPE = [(0, b"250 ok\r\n250 ok\r\n354 go on\r\n")]


def test_replies_cut_anywhere_and_multi_line_ones_are_read_whole() -> None:
    envelope = b"250 ok\r\n250 ok\r\n354 go on\r\n"
    final = b"250-2.0.0 first line\r\n250-second\r\n250 2.0.0 queued as 7\r\n"
    bytewise = answers([(0, bytes([b])) for b in envelope], [(0, bytes([b])) for b in final])
    assert talk(bytewise) == "250 2.0.0 first line\nsecond\n2.0.0 queued as 7"


def test_a_slow_reply_is_waited_for_while_the_server_keeps_talking() -> None:
    """The limit is silence, not a line's or a reply's whole time: one line in 7 pieces
    0.1 s apart under a 0.5 s data_timeout takes 0.7 s and arrives."""
    line = b"250 2.0.0 queued, slowly\r\n"  # 26 bytes
    final = [(0.1, line[n : n + 4]) for n in range(0, len(line), 4)]
    assert len(final) == 7
    assert talk(answers(OK_ENVELOPE, final), data_timeout=0.5) == "250 2.0.0 queued, slowly"


def test_a_server_silent_after_the_envelope_is_a_transient_failure() -> None:
    outcome = talk(answers([(0, b"250 ok\r\n")], []), timeout=0.3)  # RCPT and DATA: nothing
    assert isinstance(outcome, TransientDeliveryError)
    assert "silent for 0.3s" in str(outcome)


def test_a_server_silent_after_the_final_dot_may_have_the_message() -> None:
    outcome = talk(answers(OK_ENVELOPE, []), timeout=5, data_timeout=0.3)
    assert isinstance(outcome, MaybeDeliveredError)
    assert "no reply to the end of the message within 0.3s" in str(outcome)


@pytest.mark.parametrize(
    ("garbage", "said"),
    [
        (b"hello there\r\n", "not an SMTP reply: b'hello there"),
        (b"250-" + b"x" * (LINE_LIMIT + 10), "a reply line longer than"),
        (b"250-more\r\n" * (REPLY_LIMIT + 1), f"a reply of more than {REPLY_LIMIT} lines"),
    ],
)
def test_what_is_not_an_smtp_reply_closes_the_connection(garbage: bytes, said: str) -> None:
    outcome = talk(answers([(0, garbage)], []))
    assert isinstance(outcome, TransientDeliveryError) and said in str(outcome)


def test_a_refusal_then_the_server_hanging_up_reports_the_refusal() -> None:
    outcome = talk(answers([(0, b"421 4.3.2 shutting down\r\n"), (0, None)], []), timeout=5)
    assert isinstance(outcome, TransientDeliveryError) and "421 4.3.2 shutting down" in str(outcome)


def test_replies_nobody_asked_for_pile_up_only_to_a_limit() -> None:
    async def go() -> tuple[list[tuple[int, str]], bool, str]:
        replies = Replies()
        replies.data_received(b"250 ok\r\n" * REPLY_LIMIT)
        read = [await replies.next(1) for _ in range(3)]
        still_open = replies.open
        replies.data_received(b"250 ok\r\n" * 4)  # REPLY_LIMIT + 1 waiting
        while True:
            try:
                await replies.next(1)
            except Closed as e:
                return read, still_open, str(e)

    read, still_open, why = asyncio.run(go())
    assert read == [(250, "ok")] * 3 and still_open
    assert why == f"more than {REPLY_LIMIT} replies nobody asked for"
