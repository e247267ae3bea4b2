"""Real SMTP servers on 127.0.0.1 for the delivery tests, and small outbox helpers.

`SmtpServer` runs aiosmtpd's SMTP protocol in its own thread and event loop on port 0
(so tests run in parallel without port clashes) and counts connections on the server
side. `RecordingHandler` records what it received and can misbehave on request:
scripted RCPT replies (451 once, 550 always), dropping the connection after the DATA
content but before the final reply, slow DATA, and a slow relay that stores the message
and only then takes `reply_late` seconds to answer the final dot; it offers PIPELINING
unless told not to. `tls_pair` makes a trustme CA and a server certificate for 127.0.0.1
and writes the CA PEM where the client can trust it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import ssl
import threading
import time
import warnings
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword
from aiosmtpd.smtp import Session as SmtpSession
from sqlalchemy import Engine
from sqlmodel import Session, select

from digest.config import SmtpConfig
from digest.mail.delivery import Transport
from digest.mail.drain import DrainReport, drain_outbox
from digest.models import DigestRow
from digest.store import outbox
from tests.backends import Backend

UTC = dt.UTC
T0 = dt.datetime(2026, 3, 2, 7, 0, tzinfo=UTC)
SENDER = "digest@example.org"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    at: float  # time.monotonic() when the server accepted it

    def parsed(self) -> EmailMessage:
        message = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return message


@dataclass
class RecordingHandler:
    received: list[Received] = field(default_factory=list)
    rcpt_script: dict[str, list[str]] = field(default_factory=dict)  # replies used up in order
    refuse: dict[str, str] = field(default_factory=dict)  # recipient -> reply, every time
    drop_data: int = 0  # how many upcoming DATA commands lose the connection before the reply
    data_delay: float = 0.0  # seconds each DATA takes
    reply_late: float = 0.0  # seconds the reply to the final dot waits, message stored
    auth_log: list[tuple[str, bool]] = field(default_factory=list)  # (user, over TLS?)
    dropped: int = 0
    pipelining: bool = True  # offer PIPELINING in the EHLO reply, as real servers do
    started: list[float] = field(default_factory=list)  # time.monotonic() of each MAIL FROM

    async def handle_EHLO(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname  # what aiosmtpd does itself without this hook
        if self.pipelining:  # aiosmtpd reads commands one by one: pipelined input just works
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        self.started.append(time.monotonic())
        envelope.mail_from = address  # what aiosmtpd does itself without this hook
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: SmtpSession,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        script = self.rcpt_script.get(address)
        if script:
            return script.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> str:
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.drop_data > 0:
            self.drop_data -= 1
            self.dropped += 1
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()  # the content arrived, the 250 never goes out
            return "451 unreachable"
        assert isinstance(envelope.content, bytes)
        tls = server.transport is not None and (
            server.transport.get_extra_info("ssl_object") is not None
        )
        self.received.append(
            Received(
                mail_from=str(envelope.mail_from),
                rcpt_tos=list(envelope.rcpt_tos),
                data=envelope.content,
                tls=tls,
                at=time.monotonic(),
            )
        )
        if self.reply_late:  # stored: a client that gives up now has it delivered anyway
            await asyncio.sleep(self.reply_late)
        return "250 2.0.0 Ok: queued"

    def authenticate(
        self, server: SMTP, session: SmtpSession, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        user = data.login.decode()
        self.auth_log.append((user, session.ssl is not None))
        ok = user == "digest" and data.password == b"s3cret"
        return AuthResult(success=ok, handled=False)

    def by_recipient(self) -> dict[str, list[Received]]:
        out: dict[str, list[Received]] = {}
        for item in self.received:
            for rcpt in item.rcpt_tos:
                out.setdefault(rcpt, []).append(item)
        return out


class SmtpServer:
    """aiosmtpd on 127.0.0.1:0 in a thread. Use as a context manager; `.port` once started.

    starttls: a server SSLContext offered through STARTTLS; implicit_tls: TLS from the
    first byte; auth: require AUTH (accepted also without TLS, so a client that sent its
    password in plaintext would be caught by `handler.auth_log`)."""

    def __init__(
        self,
        handler: RecordingHandler | None = None,
        *,
        starttls: ssl.SSLContext | None = None,
        implicit_tls: ssl.SSLContext | None = None,
        auth: bool = False,
    ) -> None:
        self.handler = handler or RecordingHandler()
        self._starttls = starttls
        self._implicit_tls = implicit_tls
        self._auth = auth
        self.port = 0
        self.active = 0
        self.max_active = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def _factory(self) -> SMTP:
        owner = self

        class CountingSMTP(SMTP):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                if self.transport is None:  # not the STARTTLS re-entry
                    owner.active += 1
                    owner.connections += 1
                    owner.max_active = max(owner.max_active, owner.active)
                super().connection_made(transport)

            def connection_lost(self, error: Exception | None) -> None:
                owner.active -= 1
                super().connection_lost(error)

        with warnings.catch_warnings():
            # on purpose: AUTH is accepted without TLS so a client that sends its password
            # in plaintext shows up in auth_log instead of being turned away unnoticed
            warnings.simplefilter("ignore", UserWarning)
            return CountingSMTP(
                self.handler,
                hostname="test.invalid",
                tls_context=self._starttls,
                require_starttls=self._starttls is not None,
                authenticator=self.handler.authenticate if self._auth else None,
                auth_required=self._auth,
                auth_require_tls=False,
            )

    async def _start(self) -> None:
        self._server = await self._loop.create_server(
            self._factory, "127.0.0.1", 0, ssl=self._implicit_tls
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()

    def __enter__(self) -> SmtpServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@dataclass(frozen=True)
class TlsFiles:
    server_context: ssl.SSLContext
    ca_file: Path  # the CA PEM a client must trust


def tls_pair(tmp_path: Path) -> TlsFiles:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_file = tmp_path / "test-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return TlsFiles(context, ca_file)


def free_port() -> int:
    """A port nothing listens on (bound then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- outbox data


def new_outbox(backend: Backend, name: str = "outbox") -> Engine:
    """A migrated, empty outbox on the test's backend (SQLite or PostgreSQL)."""
    return backend.engine(name)


def message_id_for(recipient: str, slot: dt.datetime) -> str:
    return f"<digest.{slot:%Y%m%dT%H%M}.{recipient.replace('@', '.')}@example.org>"


def build_message(
    recipient: str, slot: dt.datetime = T0, *, body: str = "", linesep: str = "\n"
) -> bytes:
    """A digest-like message: text and HTML alternatives, the Message-ID from the key.
    `linesep="\r\n"` gives the outbox's form (the renderer's bytes are SMTP's)."""
    message = EmailMessage()
    message["From"] = f"Papers Digest <{SENDER}>"
    message["To"] = recipient
    message["Subject"] = f"Papers digest for {recipient}"
    message["Message-ID"] = message_id_for(recipient, slot)
    message.set_content(body or f"Hello {recipient}\n\n1. A paper\n")
    message.add_alternative(f"<p>Hello {recipient}</p><ol><li>A paper</li></ol>", subtype="html")
    return message.as_bytes(policy=message.policy.clone(linesep=linesep))


def add_digests(
    engine: Engine,
    recipients: list[str],
    *,
    slot: dt.datetime = T0,
    papers: int = 2,
    linesep: str = "\n",
) -> dict[str, int]:
    """One pending digest per recipient; returns recipient -> digest id."""
    ids: dict[str, int] = {}
    for n, recipient in enumerate(recipients):
        digest_id = outbox.add_digest(
            engine,
            subscriber=recipient,
            slot=slot,
            recipient=recipient,
            sender=SENDER,
            message_id=message_id_for(recipient, slot),
            subject=f"Papers digest for {recipient}",
            paper_ids=[f"2401.{n:05d}{k}" for k in range(papers)],
            message=build_message(recipient, slot, linesep=linesep),
            now=slot,
        )
        assert digest_id is not None
        ids[recipient] = digest_id
    return ids


def recipients(n: int, domain: str = "example.org") -> list[str]:
    return [f"user{i:03d}@{domain}" for i in range(n)]


# --------------------------------------------------------------------------- test plumbing


class Sleeps:
    """An injected sleep that records the waits and only yields (retries without waiting)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


def plain(port: int, **kw: object) -> SmtpConfig:
    return SmtpConfig(host="127.0.0.1", port=port, security="none", **kw)


def clock() -> dt.datetime:
    return T0


def drain(engine: object, transport: Transport, **kw: object) -> DrainReport:
    async def go() -> DrainReport:
        async with transport:
            return await drain_outbox(engine, transport, now=clock, **kw)

    return asyncio.run(go())


def rows(engine: object) -> dict[str, DigestRow]:
    with Session(engine) as session:
        return {r.recipient: r for r in session.exec(select(DigestRow)).all()}
