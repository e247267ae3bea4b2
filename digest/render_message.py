"""Rendered digests and alerts as email.message.EmailMessage objects. Pure.

Owns: the headers (From, To built with Address, Subject, Date from `now`, the
Message-ID derived from (subscriber, slot), List-ID, List-Unsubscribe,
Auto-Submitted), the MIME structure (multipart/alternative: text first, HTML
last), the parts' transfer encodings, and keeping CR/LF and control characters
out of every header (`clean_header`).

Does not own: the bodies (`render.py` renders them) or sending (`delivery.py`).

Speed: building and serialising a message is most of a digest's cost with the
stdlib defaults, so this module parses each header name's class once
(`_CachedHeaderRegistry`), parses and folds the headers that repeat across
messages once (`_same_header`), and encodes parts in C (`_text_part`).
"""

from __future__ import annotations

import binascii
import datetime as dt
import email.policy
import functools
import hashlib
import re
from dataclasses import dataclass
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Any

from digest.config import MailConfig, Subscriber
from digest.errors import ConfigError

# C0/C1 controls, zero-width and bidi-override characters, line/paragraph separators.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
_DOMAIN_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


def clean_text(value: str) -> str:
    """One line of display text: control characters and runs of whitespace -> one space."""
    return " ".join(_CONTROL_RE.sub(" ", value).split())


def clean_header(value: str, *, limit: int = 200) -> str:
    """Text safe for a header: no CR/LF or other control characters, at most `limit` chars."""
    return shorten(clean_text(value), limit)


def shorten(text: str, limit: int) -> str:
    """`text` cut at a word boundary to at most `limit` characters, with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut[limit // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:") + "…"


@dataclass(frozen=True)
class DigestBodies:
    """A rendered digest before it becomes a message. `html` is ASCII (entities)."""

    subject: str
    text: str
    html: str


class _CachedHeaderRegistry(HeaderRegistry):
    """The stdlib registry builds a new class for every header it parses (a third of the
    cost of a message); this one builds each header name's class once."""

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(name)
        return cls


class _DigestPolicy(email.policy.EmailPolicy):
    """email.policy.SMTP, except that the headers made by `_same_header` are folded once."""

    def fold_binary(self, name: str, value: str) -> bytes:
        entry = _FOLDED.get(id(value))
        if entry is not None and entry[0] is value:
            return entry[1]
        return super().fold_binary(name, value)


_POLICY = _DigestPolicy(linesep="\r\n", header_factory=_CachedHeaderRegistry())
# Headers whose value repeats across messages, parsed once, and their folded bytes.
# Both grow only with distinct config values (sender, unsubscribe URL, MIME types).
_SAME: dict[tuple[str, str], Any] = {}
_FOLDED: dict[int, tuple[Any, bytes]] = {}


def parse_address(value: str, *, what: str) -> Address:
    """`value` ("Name <a@b>" or "a@b") as an Address; ConfigError naming `what` if invalid."""
    address = _parse_address(value)
    if address is None:
        raise ConfigError(f"{what}: {value!r} is not a valid email address (user@domain)")
    return address


@functools.lru_cache(maxsize=1024)
def _parse_address(value: str) -> Address | None:
    name, addr = parseaddr(clean_header(value, limit=998))
    try:
        address = Address(display_name=clean_header(name), addr_spec=addr)
    except (ValueError, IndexError):  # email.errors.HeaderParseError is a ValueError
        return None
    return address if address.domain and address.username else None


def _domain_of(address: Address) -> str:
    return address.domain if _DOMAIN_RE.match(address.domain) else "localhost"


def message_id_for(subscriber_email: str, slot: dt.datetime, from_addr: str) -> str:
    """`<digest-HASH@DOMAIN>`, the same for the same (subscriber, slot) every time."""
    if slot.tzinfo is None:
        raise ValueError(f"slot {slot.isoformat()} must be timezone-aware (UTC)")
    key = f"{subscriber_email.strip().lower()}\n{slot.astimezone(dt.UTC).isoformat()}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"<digest-{digest}@{_domain_of(parse_address(from_addr, what='mail.from'))}>"


def unsubscribe_url(mail: MailConfig) -> str:
    """mail.unsubscribe (mailto: or http(s):), else mailto:FROM?subject=unsubscribe."""
    if mail.unsubscribe is None:
        sender = parse_address(mail.from_addr, what="mail.from")
        return f"mailto:{sender.addr_spec}?subject=unsubscribe"
    url = clean_header(mail.unsubscribe, limit=900).strip("<>")
    if not url.lower().startswith(("mailto:", "https://", "http://")) or any(
        c in url for c in ' <>"'
    ):
        raise ConfigError(f"mail.unsubscribe: {mail.unsubscribe!r} is not a mailto: or https: URL")
    return url


def build_digest_message(
    bodies: DigestBodies,
    *,
    subscriber: Subscriber,
    slot: dt.datetime,
    mail: MailConfig,
    now: dt.datetime,
) -> EmailMessage:
    """The headers around rendered bodies: text part first, HTML last."""
    sender = parse_address(mail.from_addr, what="mail.from")
    recipient = parse_address(subscriber.email, what=f"subscriber {subscriber.email!r}")
    message_id = message_id_for(subscriber.email, slot, mail.from_addr)
    msg = _new_message(sender, now)
    msg["To"] = Address(display_name=clean_header(subscriber.name or ""),
                        username=recipient.username, domain=recipient.domain)  # fmt: skip
    msg["Subject"] = clean_header(bodies.subject, limit=250)
    msg["Message-ID"] = message_id
    msg.set_raw("List-ID", _same_header("List-ID", f"<papers-digest.{_domain_of(sender)}>"))
    msg.set_raw("List-Unsubscribe", _same_header("List-Unsubscribe", f"<{unsubscribe_url(mail)}>"))
    msg.set_raw("Auto-Submitted", _same_header("Auto-Submitted", "auto-generated"))
    msg.set_raw("MIME-Version", _same_header("MIME-Version", "1.0"))
    boundary = "=_alt_" + message_id[len("<digest-") : message_id.index("@")]
    msg["Content-Type"] = f'multipart/alternative; boundary="{boundary}"'
    msg.attach(_text_part(bodies.text, "plain"))
    msg.attach(_text_part(bodies.html, "html"))
    return msg


def _same_header(name: str, value: str) -> Any:
    """A header whose value repeats across messages (config, MIME types), parsed once.

    Parsing and folding are most of the cost of a message; header objects are
    immutable, so one is stored in every message with `set_raw`, as `msg[name] =
    value` would, and `_DigestPolicy` reuses its folded bytes.
    """
    header = _SAME.get((name, value))
    if header is None:
        header = _SAME[(name, value)] = _POLICY.header_store_parse(name, value)[1]
        _FOLDED[id(header)] = (header, _POLICY.fold_binary(name, header))
    return header


def _text_part(text: str, subtype: str) -> EmailMessage:
    """A text/* part encoded in C: 7bit when it can travel as is, else quoted-printable.

    (EmailMessage.set_content would pick quoted-printable for any line over 78 chars
    and encode it in pure Python: most of the cost of a digest.)
    """
    part = EmailMessage(policy=_POLICY)
    part.set_raw("Content-Type", _same_header("Content-Type", f'text/{subtype}; charset="utf-8"'))
    if text.isascii() and max(map(len, text.splitlines()), default=0) <= 998:
        cte, payload = "7bit", text
    else:
        cte = "quoted-printable"
        payload = binascii.b2a_qp(text.encode(), istext=True).decode("ascii")
    part.set_raw("Content-Transfer-Encoding", _same_header("Content-Transfer-Encoding", cte))
    part.set_payload(payload)
    return part


def render_plain_message(
    *,
    from_addr: str,
    to_addr: str,
    subject: str,
    body: str,
    now: dt.datetime,
    message_id: str | None = None,
) -> EmailMessage:
    """A plain-text message (admin alerts). The default Message-ID hashes its content."""
    sender = parse_address(from_addr, what="mail.from")
    msg = _new_message(sender, now)
    msg["To"] = parse_address(to_addr, what="alerts.email")
    msg["Subject"] = clean_header(subject, limit=250)
    if message_id is None:
        key = f"{to_addr}\n{subject}\n{now.isoformat()}\n{body}".encode()
        message_id = f"<alert-{hashlib.sha256(key).hexdigest()[:32]}@{_domain_of(sender)}>"
    msg["Message-ID"] = clean_header(message_id)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(body)
    return msg


def _new_message(sender: Address, now: dt.datetime) -> EmailMessage:
    if now.tzinfo is None:
        raise ValueError(f"now {now.isoformat()} must be timezone-aware")
    msg = EmailMessage(policy=_POLICY)
    msg.set_raw("From", _same_header("From", str(sender)))
    msg["Date"] = format_datetime(now)
    return msg
