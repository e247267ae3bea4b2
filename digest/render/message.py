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
messages once (`_same_header`), and encodes parts in C (`_encode_part`).
`build_digest_bytes` goes further: it folds the same header objects with the same
policy but writes the MIME layout itself, skipping the EmailMessage tree and
`email.generator` (the bytes are identical to `build_digest_message(...).as_bytes()`).
"""

from __future__ import annotations

import binascii
import datetime as dt
import email.policy
import functools
import hashlib
import re
from dataclasses import dataclass, field
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Any

from digest.config import MailConfig, Subscriber, ascii_address
from digest.errors import ConfigError

# C0/C1 controls, zero-width and bidi-override characters, line/paragraph separators.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
_NL_RE = re.compile(r"\r\n|\r|\n")  # what email.generator takes for a line end
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


@dataclass(frozen=True, slots=True)
class RecipientLinks:
    """A recipient's own links, signed (`digest/web/tokens.py` makes them): with them a
    digest carries RFC 8058 one-click unsubscribe and a preferences link."""

    unsubscribe: str  # https://.../u/TOKEN: List-Unsubscribe and the footer's link
    preferences: str  # https://.../p/TOKEN
    web_copy: str | None = None  # https://.../d/TOKEN: this digest in a browser, all matches


ONE_CLICK = "List-Unsubscribe=One-Click"  # the List-Unsubscribe-Post value (RFC 8058)


@dataclass(frozen=True)
class DigestBodies:
    """A rendered digest before it becomes a message. `html` is ASCII (entities).
    `html_longest_line`: its longest line, when the renderer knows it from packing
    (spares the message a pass over the HTML); None: the message measures it."""

    subject: str
    text: str
    html: str
    html_longest_line: int | None = field(default=None, compare=False)


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
        if name.lower() == "list-unsubscribe" and str(value).isascii():
            return _fold_url_list(name, str(value))
        return super().fold_binary(name, value)


def _fold_url_list(name: str, value: str) -> bytes:
    """A header of <URL> items (List-Unsubscribe) folded only between items: the stdlib
    would turn a URL longer than a line into RFC 2047 encoded words, which no mail client
    reads back as a URL. A line may run to 998 characters (RFC 5322); the tokens are ~100."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    line = f"{name}: {', '.join(items)}"
    if len(line) > 78:
        line = f"{name}: " + ",\r\n ".join(items)
    return (line + "\r\n").encode("ascii")


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
    addr = ascii_address(addr)  # an internationalized domain as IDNA: headers stay ASCII
    try:
        address = Address(display_name=clean_header(name), addr_spec=addr)
    except (ValueError, IndexError):  # email.errors.HeaderParseError is a ValueError
        return None
    return address if address.domain and address.username else None


def _domain_of(address: Address) -> str:
    return address.domain if _DOMAIN_RE.match(address.domain) else "localhost"


@functools.lru_cache(maxsize=1024)  # planning asks twice per digest: the header, the row
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


def mailto_unsubscribe(mail: MailConfig) -> str:
    """The mailto: unsubscribe address: mail.unsubscribe when it is one, else the sender's."""
    if mail.unsubscribe is not None and mail.unsubscribe.lower().startswith("mailto:"):
        return unsubscribe_url(mail)
    sender = parse_address(mail.from_addr, what="mail.from")
    return f"mailto:{sender.addr_spec}?subject=unsubscribe"


def build_digest_message(
    bodies: DigestBodies,
    *,
    subscriber: Subscriber,
    slot: dt.datetime,
    mail: MailConfig,
    now: dt.datetime,
    links: RecipientLinks | None = None,
) -> EmailMessage:
    """The headers around rendered bodies: text part first, HTML last."""
    head = _digest_headers(
        bodies, subscriber=subscriber, slot=slot, mail=mail, now=now, links=links
    )
    msg = EmailMessage(policy=_POLICY)
    for name, value in head.values:
        msg.set_raw(name, value)
    msg.attach(_text_part(bodies.text, "plain", head.boundary))
    msg.attach(_text_part(bodies.html, "html", head.boundary, bodies.html_longest_line))
    return msg


def build_digest_bytes(
    bodies: DigestBodies,
    *,
    subscriber: Subscriber,
    slot: dt.datetime,
    mail: MailConfig,
    now: dt.datetime,
    links: RecipientLinks | None = None,
) -> tuple[str, bytes]:
    """The Subject and the bytes of `build_digest_message(...).as_bytes()`, without
    the EmailMessage tree and the generator: the same header objects folded by the
    same policy, the parts laid out as `email.generator.BytesGenerator` lays them out
    (the tests compare the two byte for byte)."""
    out, subject, boundary = _digest_header_bytes(
        bodies, subscriber=subscriber, slot=slot, mail=mail, now=now, links=links
    )
    dash = f"--{boundary}".encode("ascii")
    out += [b"\r\n", dash, b"\r\n", *_part_bytes(bodies.text, "plain", boundary)]
    html = _part_bytes(bodies.html, "html", boundary, bodies.html_longest_line)
    out += [b"\r\n", dash, b"\r\n", *html]
    out += [b"\r\n", dash, b"--\r\n"]
    return subject, b"".join(out)


# A value the policy folds to itself: printable ASCII, no encoded word, on one line.
_PLAIN_VALUE_RE = re.compile(r"(?:(?!=\?)[ -~])*")
# A display name and an address that need no quoting.
_ATOM_NAME_RE = re.compile(r"[A-Za-z0-9]+(?: [A-Za-z0-9]+)*")
_DOT_ATOM_RE = re.compile(r"[A-Za-z0-9+_-]+(?:\.[A-Za-z0-9+_-]+)*")


def _plain_line(name: str, value: str) -> bytes | None:
    """`name: value` CRLF when the policy would fold it to exactly that, else None."""
    if (
        len(name) + 2 + len(value) <= 78
        and value.strip() == value != ""
        and "  " not in value
        and _PLAIN_VALUE_RE.fullmatch(value)
    ):
        return f"{name}: {value}\r\n".encode("ascii")
    return None


def _digest_header_bytes(
    bodies: DigestBodies,
    *,
    subscriber: Subscriber,
    slot: dt.datetime,
    mail: MailConfig,
    now: dt.datetime,
    links: RecipientLinks | None = None,
) -> tuple[list[bytes], str, str]:
    """(folded header lines, Subject, boundary): the bytes `_digest_headers` folds to, but
    the headers that change per message (To, Subject, Message-ID, Content-Type) are
    written directly when they are plain ASCII on one line, and parsed and folded by
    the policy only when they are not (the tests compare both ways byte for byte)."""
    if now.tzinfo is None:
        raise ValueError(f"now {now.isoformat()} must be timezone-aware")
    sender = parse_address(mail.from_addr, what="mail.from")
    local, _, domain = subscriber.email.rpartition("@")
    plain_to = bool(_DOT_ATOM_RE.fullmatch(local) and _DOMAIN_RE.match(domain))
    # a plain address needs no parsing (one per subscriber: no cache would hold them)
    recipient = (
        Address(username=local, domain=domain)
        if plain_to
        else parse_address(subscriber.email, what=f"subscriber {subscriber.email!r}")
    )
    message_id = message_id_for(subscriber.email, slot, mail.from_addr)
    name = clean_header(subscriber.name or "")
    subject = clean_header(bodies.subject, limit=250)
    boundary = "=_alt_" + message_id[len("<digest-") : message_id.index("@")]

    def fold(header: str, value: Any) -> bytes:
        return _POLICY.fold_binary(header, _parse_header(header, value))

    to_line = None
    if (not name or _ATOM_NAME_RE.fullmatch(name)) and _DOT_ATOM_RE.fullmatch(recipient.username):
        to_line = _plain_line(
            "To", f"{name} <{recipient.addr_spec}>" if name else recipient.addr_spec
        )
    if to_line is None:
        to = Address(display_name=name, username=recipient.username, domain=recipient.domain)
        to_line = fold("To", to)
    subject_line = _plain_line("Subject", subject)
    if subject_line is None:
        parsed = _parse_header("Subject", subject)
        subject_line, subject = _POLICY.fold_binary("Subject", parsed), str(parsed)
    lines = [
        _same_line("From", str(sender)),
        _date_line_at(now),
        to_line,
        subject_line,
        _plain_line("Message-ID", message_id) or fold("Message-ID", message_id),
        _same_line("List-ID", f"<papers-digest.{_domain_of(sender)}>"),
        *_unsubscribe_lines(mail, links),
        _same_line("Auto-Submitted", "auto-generated"),
        _same_line("MIME-Version", "1.0"),
        # the boundary is "=_alt_" and hex: the policy always folds it like this
        f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n'.encode("ascii"),
    ]
    return lines, subject, boundary


def _unsubscribe_lines(mail: MailConfig, links: RecipientLinks | None) -> list[bytes]:
    """The folded bytes of `_unsubscribe_headers`. A recipient's List-Unsubscribe (new
    in every message) is folded from its text when that is plain printable ASCII: the
    policy parses such a value to the same text and folds it with `_fold_url_list`."""
    if links is None:
        return [_same_line("List-Unsubscribe", f"<{unsubscribe_url(mail)}>")]
    value = _unsubscribe_value(mail, links)
    if _PLAIN_VALUE_RE.fullmatch(value):
        return [
            _fold_url_list("List-Unsubscribe", value),
            _same_line("List-Unsubscribe-Post", ONE_CLICK),
        ]
    return [_POLICY.fold_binary(name, value) for name, value in _unsubscribe_headers(mail, links)]


@functools.lru_cache(maxsize=64)
def _date_line(value: str) -> bytes:
    return _POLICY.fold_binary("Date", _date_header(value))


@functools.lru_cache(maxsize=64)
def _date_line_at(now: dt.datetime) -> bytes:
    """The Date line for `now`: a batch of digests is built with one `now`."""
    return _date_line(format_datetime(now))


def _same_line(name: str, value: str) -> bytes:
    return _POLICY.fold_binary(name, _same_header(name, value))


@dataclass(frozen=True)
class _Headers:
    """A digest's top-level headers, in order, as parsed header objects."""

    values: list[tuple[str, Any]]
    subject: Any
    boundary: str


def _digest_headers(
    bodies: DigestBodies,
    *,
    subscriber: Subscriber,
    slot: dt.datetime,
    mail: MailConfig,
    now: dt.datetime,
    links: RecipientLinks | None,
) -> _Headers:
    """Every top-level header, each parsed by the policy as `msg[name] = value` would:
    header objects never hold a CR or LF.

    With `links`, List-Unsubscribe names the recipient's signed https link first and the
    mailto: second, and List-Unsubscribe-Post makes it one-click (RFC 8058); without,
    the mailto: (or mail.unsubscribe) alone."""
    if now.tzinfo is None:
        raise ValueError(f"now {now.isoformat()} must be timezone-aware")
    sender = parse_address(mail.from_addr, what="mail.from")
    recipient = parse_address(subscriber.email, what=f"subscriber {subscriber.email!r}")
    message_id = message_id_for(subscriber.email, slot, mail.from_addr)
    to = Address(display_name=clean_header(subscriber.name or ""),
                 username=recipient.username, domain=recipient.domain)  # fmt: skip
    subject = _parse_header("Subject", clean_header(bodies.subject, limit=250))
    boundary = "=_alt_" + message_id[len("<digest-") : message_id.index("@")]
    values = [
        ("From", _same_header("From", str(sender))),
        ("Date", _date_header(format_datetime(now))),
        ("To", _parse_header("To", to)),
        ("Subject", subject),
        ("Message-ID", _parse_header("Message-ID", message_id)),
        ("List-ID", _same_header("List-ID", f"<papers-digest.{_domain_of(sender)}>")),
        *_unsubscribe_headers(mail, links),
        ("Auto-Submitted", _same_header("Auto-Submitted", "auto-generated")),
        ("MIME-Version", _same_header("MIME-Version", "1.0")),
        ("Content-Type",
         _parse_header("Content-Type", f'multipart/alternative; boundary="{boundary}"')),
    ]  # fmt: skip
    return _Headers(values=values, subject=subject, boundary=boundary)


def _unsubscribe_headers(mail: MailConfig, links: RecipientLinks | None) -> list[tuple[str, Any]]:
    if links is None:
        value = f"<{unsubscribe_url(mail)}>"
        return [("List-Unsubscribe", _same_header("List-Unsubscribe", value))]
    value = _unsubscribe_value(mail, links)
    return [
        ("List-Unsubscribe", _parse_header("List-Unsubscribe", value)),
        ("List-Unsubscribe-Post", _same_header("List-Unsubscribe-Post", ONE_CLICK)),
    ]


def _unsubscribe_value(mail: MailConfig, links: RecipientLinks) -> str:
    """List-Unsubscribe with a recipient's links: their one-click https link, then the
    mailto: (RFC 8058)."""
    return f"<{clean_header(links.unsubscribe, limit=900)}>, <{mailto_unsubscribe(mail)}>"


def _parse_header(name: str, value: Any) -> Any:
    return _POLICY.header_store_parse(name, value)[1]


@functools.lru_cache(maxsize=64)
def _date_header(value: str) -> Any:
    """The Date header: a batch of digests is usually built with one `now`."""
    return _parse_header("Date", value)


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


def _encode_part(text: str, boundary: str, longest: int | None = None) -> tuple[str, str]:
    """(Content-Transfer-Encoding, payload) of a text/* part, encoded in C: 7bit when it
    can travel as is, else quoted-printable (whose `=3D` also keeps `boundary` out).

    (EmailMessage.set_content would pick quoted-printable for any line over 78 chars
    and encode it in pure Python: most of the cost of a digest.)
    """
    seven_bit = text.isascii() and boundary not in text  # the longest line last: a pass
    if seven_bit and (_longest_line(text) if longest is None else longest) <= 998:
        return "7bit", text
    return "quoted-printable", _quoted_printable(text)


def _quoted_printable(text: str) -> str:
    """`binascii.b2a_qp` of `text` as UTF-8 (istext: line ends kept), line by line:
    b2a_qp keeps no state across a line end (its length count restarts, and it looks
    only one character ahead and back), so each line with its line end encodes the same
    alone, and the lines of a batch's text parts (the same papers' entries) are encoded
    once (`_qp_line`). A text with a CR is encoded whole (b2a_qp picks its line ends
    from the first one). A lone surrogate (from JSON) becomes "?"."""
    if "\r" in text:
        return _b2a_qp(text)
    lines = text.split("\n")
    last = lines.pop()  # no line end after it ("" when the text ends with one)
    return "".join(map(_qp_line, lines)) + (_b2a_qp(last) if last else "")


@functools.lru_cache(maxsize=16384)
def _qp_line(line: str) -> str:
    """One line and its line end, quoted-printable (see `_quoted_printable`)."""
    return _b2a_qp(line + "\n")


def _b2a_qp(text: str) -> str:
    return binascii.b2a_qp(text.encode("utf-8", "replace"), istext=True).decode("ascii")


def _text_part(text: str, subtype: str, boundary: str, longest: int | None = None) -> EmailMessage:
    """A text/* part as an EmailMessage (see `_encode_part`; `longest`: its longest
    line, if known)."""
    cte, payload = _encode_part(text, boundary, longest)
    part = EmailMessage(policy=_POLICY)
    part.set_raw("Content-Type", _same_header("Content-Type", f'text/{subtype}; charset="utf-8"'))
    part.set_raw("Content-Transfer-Encoding", _same_header("Content-Transfer-Encoding", cte))
    part.set_payload(payload)
    return part


def _part_bytes(text: str, subtype: str, boundary: str, longest: int | None = None) -> list[bytes]:
    """What `_text_part(...)` becomes in a message's bytes: its folded headers, a blank
    line, and the payload with every line end as CRLF (as `BytesGenerator` writes it)."""
    cte, payload = _encode_part(text, boundary, longest)
    content_type = _same_header("Content-Type", f'text/{subtype}; charset="utf-8"')
    encoding = _same_header("Content-Transfer-Encoding", cte)
    return [
        _POLICY.fold_binary("Content-Type", content_type),
        _POLICY.fold_binary("Content-Transfer-Encoding", encoding),
        b"\r\n",
        _crlf(payload).encode("ascii"),
    ]


def _longest_line(text: str) -> int:
    """The longest line of `text`, splitting as `email.generator` does."""
    lines = text.split("\n") if "\r" not in text else _NL_RE.split(text)
    return max(map(len, lines))


def _crlf(text: str) -> str:
    """`text` with every line end (CRLF, CR or LF) as CRLF."""
    return text.replace("\n", "\r\n") if "\r" not in text else _NL_RE.sub("\r\n", text)


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
