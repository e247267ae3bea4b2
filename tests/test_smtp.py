"""The SMTP transport against real aiosmtpd servers on 127.0.0.1: TLS, STARTTLS, AUTH,
reply handling, the rate cap and the connection pool."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from digest.config import MailConfig, SmtpConfig
from digest.errors import (
    ConfigError,
    MailServerUnavailableError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from digest.mail.delivery import (
    make_transport,
)
from digest.mail.smtp import SmtpTransport
from tests.backends import Backend
from tests.smtpd_helpers import (
    SENDER,
    RecordingHandler,
    Sleeps,
    SmtpServer,
    add_digests,
    build_message,
    drain,
    new_outbox,
    plain,
    recipients,
    rows,
    tls_pair,
)


def test_starttls_and_auth_password_only_after_tls(tmp_path: Path, backend: Backend) -> None:
    tls = tls_pair(tmp_path)
    engine = new_outbox(backend)
    add_digests(engine, ["ada@example.org"])
    with SmtpServer(starttls=tls.server_context, auth=True) as server:
        config = SmtpConfig(
            host="127.0.0.1",
            port=server.port,
            security="starttls",
            username="digest",
            password="s3cret",
            ca_file=tls.ca_file,
        )
        report = drain(engine, SmtpTransport(config))
    assert report.sent == 1
    assert server.handler.auth_log == [("digest", True)]  # AUTH came once, inside TLS
    (item,) = server.handler.received
    assert item.tls


def test_wrong_password_leaves_the_digest_pending(tmp_path: Path, backend: Backend) -> None:
    tls = tls_pair(tmp_path)
    engine = new_outbox(backend)
    add_digests(engine, ["ada@example.org", "bob@example.org"])
    with SmtpServer(starttls=tls.server_context, auth=True) as server:
        config = SmtpConfig(
            host="127.0.0.1",
            port=server.port,
            username="digest",
            password="wrong",
            ca_file=tls.ca_file,
            max_connections=1,
        )
        report = drain(engine, SmtpTransport(config))
    assert report.sent == 0 and report.pending == 2
    assert report.error is not None and "refused AUTH as 'digest'" in report.error
    assert server.handler.received == []


def test_server_without_starttls_is_refused_never_plaintext(
    tmp_path: Path, backend: Backend
) -> None:
    tls = tls_pair(tmp_path)
    engine = new_outbox(backend)
    add_digests(engine, ["ada@example.org"])
    with SmtpServer(auth=False) as server:  # offers no STARTTLS
        config = SmtpConfig(
            host="127.0.0.1",
            port=server.port,
            security="starttls",
            username="digest",
            password="s3cret",
            ca_file=tls.ca_file,
        )
        report = drain(engine, SmtpTransport(config, sleep=Sleeps()))
    assert report.sent == 0 and report.pending == 1
    assert report.error is not None and "STARTTLS" in report.error
    assert server.handler.received == [] and server.handler.auth_log == []
    assert rows(engine)["ada@example.org"].status == "pending"


def test_implicit_tls(tmp_path: Path, backend: Backend) -> None:
    tls = tls_pair(tmp_path)
    engine = new_outbox(backend)
    add_digests(engine, ["ada@example.org"])
    with SmtpServer(implicit_tls=tls.server_context) as server:
        config = SmtpConfig(host="127.0.0.1", port=server.port, security="tls", ca_file=tls.ca_file)
        report = drain(engine, SmtpTransport(config))
    assert report.sent == 1
    assert [r.tls for r in server.handler.received] == [True]


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_untrusted_certificate_is_refused(tmp_path: Path, security: str) -> None:
    tls = tls_pair(tmp_path)
    starttls = tls.server_context if security == "starttls" else None
    implicit = tls.server_context if security == "tls" else None
    with SmtpServer(starttls=starttls, implicit_tls=implicit) as server:
        config = SmtpConfig(host="127.0.0.1", port=server.port, security=security)
        transport = SmtpTransport(config, sleep=Sleeps())

        async def go() -> str:
            async with transport:
                return await transport.send(SENDER, "ada@example.org", build_message("a@x.org"))

        with pytest.raises(MailServerUnavailableError, match=r"TLS with 127\.0\.0\.1:\d+ failed"):
            asyncio.run(go())
    assert server.handler.received == []


def test_plaintext_to_a_remote_host_is_refused() -> None:
    with pytest.raises(ConfigError, match="plaintext"):
        SmtpTransport(SmtpConfig(host="smtp.example.org", port=25, security="none"))
    SmtpTransport(SmtpConfig(host="localhost", port=25, security="none"))  # loopback is fine


def test_rate_cap_is_respected(backend: Backend) -> None:
    # 5/s: gaps of 0.2 s stay far above a loaded machine's scheduling noise (at 20/s a
    # late first connection shrank the measured span below the bound under load).
    engine = new_outbox(backend)
    add_digests(engine, recipients(6))
    with SmtpServer() as server:
        started = time.monotonic()
        report = drain(engine, SmtpTransport(plain(server.port, rate_per_second=5.0)))
        took = time.monotonic() - started
    assert report.sent == 6
    assert took >= 5 / 5.0 * 0.95  # the client waited its turn: 6 starts, 1/5 s apart
    # The cap spaces the starts (each MAIL FROM), not the ends: a message's final dot
    # waits for the group commit of the one before, which a loaded PostgreSQL delays.
    starts = sorted(server.handler.started)
    assert len(starts) == 6
    # The first start also follows the connect and EHLO; the rest reuse the connection.
    assert starts[-1] - starts[1] >= 4 / 5.0 * 0.9
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.1  # never two at once


def test_pool_size_is_respected_and_connections_are_reused(backend: Backend) -> None:
    engine = new_outbox(backend)
    add_digests(engine, recipients(24))
    handler = RecordingHandler(data_delay=0.02)
    with SmtpServer(handler) as server:
        config = plain(server.port, max_connections=3, rate_per_second=0)
        report = drain(engine, SmtpTransport(config), concurrency=8)
        assert server.max_active == 3  # the pool filled up, and never went past its size
        assert server.connections == 3  # each connection carried several messages
    assert report.sent == 24


def test_permanent_and_transient_errors_are_delivery_errors(tmp_path: Path) -> None:
    handler = RecordingHandler(refuse={"gone@example.org": "550 5.1.1 gone"})
    with SmtpServer(handler) as server:
        transport = SmtpTransport(plain(server.port, retries=1), sleep=Sleeps())

        async def go(recipient: str) -> str:
            async with transport:
                return await transport.send(SENDER, recipient, build_message(recipient))

        with pytest.raises(PermanentDeliveryError, match=r"gone@example\.org: .* 550 5\.1\.1 gone"):
            asyncio.run(go("gone@example.org"))
        handler.rcpt_script["busy@example.org"] = ["421 4.3.2 busy", "450 4.2.1 later"]
        with pytest.raises(TransientDeliveryError, match=r"450 4\.2\.1 later") as info:
            asyncio.run(go("busy@example.org"))
        assert info.value.__cause__ is not None  # the aiosmtplib error, wrapped once
        assert "250" in asyncio.run(go("fine@example.org"))


def test_make_transport_picks_smtp_when_configured() -> None:
    smtp = SmtpConfig(host="127.0.0.1", port=2525, security="none")
    assert isinstance(make_transport(MailConfig(transport="smtp", smtp=smtp)), SmtpTransport)
    with pytest.raises(ConfigError, match="smtp"):
        make_transport(MailConfig(transport="smtp"))
