"""DKIM: every message `digest send` hands the real SMTP test server verifies with dkimpy
against the public key (served by a DNS stub), and the signature covers both unsubscribe
headers (RFC 8058 section 4). Without [mail] dkim, nothing is signed."""

from __future__ import annotations

import base64
import datetime as dt
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest

from digest import store
from digest.cli import main
from digest.config import AlertsConfig, Config, DkimConfig, MailConfig, SourceConfig
from digest.daemon import alerts
from digest.mail.dkim import SIGNED_HEADERS, sign_message
from tests.configs import write_config
from tests.hfserver import HFServer
from tests.smtpd_helpers import SmtpServer
from tests.testdata import HF
from tests.web_helpers import ENV, web_table

CAPTURE = HF / "api-daily_papers-2025-10-01.json"
PEOPLE = "".join(
    f"""
[[subscribers]]
email = "{who}@example.org"
schedule = "daily 00:00"
topics = [{{ name = "Agents", query = 'agent* OR model*' }}]
"""
    for who in ("ada", "bob", "cy")
)


def make_key(folder: Path) -> tuple[Path, bytes]:
    """A 2048-bit RSA key and its DNS TXT record."""
    key = folder / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True,
                   capture_output=True)  # fmt: skip
    der = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout  # fmt: skip
    return key, b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def dns_stub(record: bytes, asked: list[bytes]):  # type: ignore[no-untyped-def]
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        asked.append(name)
        return record if name == b"digest._domainkey.example.org." else None

    return lookup


@pytest.fixture
def hf() -> Iterator[HFServer]:
    with HFServer() as server:
        today = dt.datetime.now(dt.UTC).date()
        for n in range(0, 2):
            server.set_api_body(today - dt.timedelta(days=n), CAPTURE.read_bytes())
        yield server


def test_every_sent_digest_verifies_and_signs_both_unsubscribe_headers(
    tmp_path: Path, hf: HFServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    _, record = make_key(tmp_path)
    with SmtpServer() as smtp:
        mail = (
            f'smtp = {{ host = "127.0.0.1", port = {smtp.port}, security = "none" }}\n'
            'dkim = { domain = "example.org", selector = "digest", key_file = "dkim.pem" }\n'
            + web_table(8080)
        )
        config = write_config(tmp_path, hf.base_url, subscribers=PEOPLE, mail=mail)
        assert main(["send", "-c", str(config)]) == 0
        received = smtp.handler.received
    assert {r.rcpt_tos[0] for r in received} == {f"{w}@example.org" for w in ("ada", "bob", "cy")}
    for item in received:
        asked: list[bytes] = []
        assert dkim.verify(item.data, dnsfunc=dns_stub(record, asked)), item.rcpt_tos
        assert asked == [b"digest._domainkey.example.org."]
        head = item.data.split(b"\r\n\r\n", 1)[0].decode()
        signature = re.search(r"^DKIM-Signature:(.*?)(?=^\S)", head + "\nX", re.M | re.S)
        assert signature is not None
        fields = dict(
            part.strip().split("=", 1)
            for part in "".join(signature.group(1).split()).split(";")
            if part.strip()
        )
        assert fields["a"] == "rsa-sha256" and fields["c"] == "relaxed/relaxed"
        assert fields["d"] == "example.org" and fields["s"] == "digest"
        signed = fields["h"].lower().split(":")
        assert "list-unsubscribe" in signed and "list-unsubscribe-post" in signed
        assert {"from", "to", "subject", "date", "message-id", "list-id", "mime-version",
                "content-type"} <= set(signed)  # fmt: skip
        # and a changed unsubscribe header breaks it
        post = b"List-Unsubscribe-Post: List-Unsubscribe="
        tampered = item.data.replace(post + b"One-Click", post + b"Two-Clicks")
        assert tampered != item.data
        assert not dkim.verify(tampered, dnsfunc=dns_stub(record, []))


def test_without_dkim_nothing_is_signed(tmp_path: Path, hf: HFServer) -> None:
    with SmtpServer() as smtp:
        mail = f'smtp = {{ host = "127.0.0.1", port = {smtp.port}, security = "none" }}\n'
        config = write_config(tmp_path, hf.base_url, subscribers=PEOPLE, mail=mail)
        assert main(["send", "-c", str(config)]) == 0
        assert smtp.handler.received
        assert all(b"DKIM-Signature" not in r.data for r in smtp.handler.received)


def test_only_headers_the_message_has_are_signed(tmp_path: Path) -> None:
    key, record = make_key(tmp_path)
    config = DkimConfig("example.org", "digest", key, key.read_bytes())
    message = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: hi\r\n"
               b"Date: Mon, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <x@example.org>\r\n"
               b"\r\nhello\r\n")  # fmt: skip
    signed = sign_message(message, config)
    assert signed.endswith(message)
    assert dkim.verify(signed, dnsfunc=dns_stub(record, []))
    h = re.search(rb"h=([^;]+);", b"".join(signed.split(b"\r\n ")))
    assert h is not None
    names = [n.strip().lower() for n in h.group(1).replace(b" ", b"").split(b":")]
    assert names == [n.lower() for n in SIGNED_HEADERS if n.lower() in
                     {b"from", b"to", b"subject", b"date", b"message-id"}]  # fmt: skip
    assert sign_message(message, None) == message


def test_an_admin_alert_is_signed_like_every_digest(tmp_path: Path) -> None:
    """The alert goes through the same relay as the digests: unsigned, a DMARC policy of
    the From domain would send it to spam exactly when something is wrong."""
    key, record = make_key(tmp_path)
    config = Config(
        path=tmp_path / "digest.toml",
        source=SourceConfig(base_url="http://127.0.0.1:9"),
        mail=MailConfig(from_addr="Digest <digest@example.org>",
                        dkim=DkimConfig("example.org", "digest", key, key.read_bytes())),
        alerts=AlertsConfig(email="admin@example.org", after_failed_polls=1),
    )  # fmt: skip
    engine = store.open_engine(f"sqlite:///{tmp_path / 'digest.db'}")
    store.migrate(engine)
    now = dt.datetime(2026, 6, 1, 8, 0, tzinfo=dt.UTC)
    assert alerts.record_poll(engine, config, ok=False, errors=["boom"], now=now)
    engine.dispose()
    with sqlite3.connect(tmp_path / "digest.db") as db:
        [(message,)] = db.execute("SELECT message FROM digest_messages").fetchall()
    assert message.startswith(b"DKIM-Signature:")
    assert dkim.verify(message, dnsfunc=dns_stub(record, []))
    assert b"\n" not in message.replace(b"\r\n", b"")  # CRLF throughout, as digests
