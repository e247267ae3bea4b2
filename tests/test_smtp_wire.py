"""The mail transaction on the wire (digest/smtp_wire.py): PIPELINING when offered, one
command at a time when not, refusals, and the DATA payload's dot-stuffing. Against a raw
scripted SMTP server on 127.0.0.1 that records every chunk it reads, so a test can see
what left the client in one write."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from digest.config import SmtpConfig
from digest.errors import PermanentDeliveryError, TransientDeliveryError
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
    assert envelope_address("ada@example.org") == b"<ada@example.org>"


@given(st.binary(max_size=300) | st.text(alphabet=".\r\nab ", max_size=60).map(str.encode))
def test_to_wire_round_trips_and_never_ends_data_early(message: bytes) -> None:
    wire = to_wire(message)
    assert unstuff(wire) == crlf(message)
    assert b"\r" not in wire.replace(b"\r\n", b"")  # no bare CR
    assert b"\n" not in wire.replace(b"\r\n", b"")  # no bare LF
    assert (b"\r\n" + wire).find(b"\r\n.\r\n") == len(wire) - 3  # only the final dot ends it
