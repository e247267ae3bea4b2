"""Value converters for the config: one raw TOML value in, a checked value out.

Owns: what a duration, an email address, a time zone, a URL or a bounded number
may look like. Each converter raises `Invalid` with a message that reads after
"file:line: field: "; `reader.py` adds the file, line and field. Does not own:
which key uses which converter (`build.py`, `subscribers.py`).
"""

from __future__ import annotations

import datetime as dt
import difflib
import email.utils
import functools
import ipaddress
import re
import zoneinfo
from collections.abc import Callable
from typing import cast

import idna

from digest.config.schema import TOPIC_SEPARATOR
from digest.errors import QuerySyntaxError
from digest.schedule import Schedule, parse_schedule

_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDR_RE = re.compile(rf"^({_LOCAL})@({_LABEL}(?:\.{_LABEL})*)$")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([dhms])")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


class Invalid(Exception):
    """A value is wrong; the message says how. Caught by `Builder.field`."""


def describe(value: object) -> str:
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f'a string ("{value}")'
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def string(value: object) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {describe(value)}")
    return value


def non_empty(value: object) -> str:
    if not string(value).strip():
        raise Invalid("must not be empty")
    return cast(str, value)


def single_line(value: object) -> str:
    text = non_empty(value)
    if "\n" in text or "\r" in text or "\0" in text:
        raise Invalid("must be one line (no line breaks)")
    return text


def name_value(value: object) -> str:
    """A subscriber's or a topic's name."""
    return _no_separator(single_line(value))


def topic_query(value: object) -> str:
    return _no_separator(non_empty(value))


def _no_separator(text: str) -> str:
    """A subscriber's name, a topic's name or query never holds U+001F: a subscriber's
    email, name and topics are kept joined by it (schema.Subscriber, schema.Topics)."""
    if TOPIC_SEPARATOR in text:
        raise Invalid("must not contain the control character U+001F")
    return text


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {describe(value)}")
    return value


def integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"expected an integer, got {describe(value)}")
    return value


def at_least(low: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if integer(value) < low:
            raise Invalid(f"must be at least {low}, not {value}")
        return cast(int, value)

    return check


def in_range(low: int, high: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if not low <= integer(value) <= high:
            raise Invalid(f"must be from {low} to {high}, not {value}")
        return cast(int, value)

    return check


def positive_number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(f"expected a number, got {describe(value)}")
    if not value > 0:
        raise Invalid(f"must be more than 0, not {value}")
    return float(value)


def one_of(*choices: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if string(value) not in choices:
            names = ", ".join(f'"{c}"' for c in choices)
            raise Invalid(f'"{value}" is not one of {names}')
        return cast(str, value)

    return check


def parse_duration(value: object) -> dt.timedelta:
    """ "30m", "1h", "90s", "2d", "1h30m" -> timedelta."""
    text = string(value).strip().lower()
    parts = _DURATION_RE.findall(text)
    if not parts or _DURATION_RE.sub("", text).strip():
        raise Invalid(f'"{value}" is not a duration; write e.g. "90s", "30m", "1h" or "1d"')
    return dt.timedelta(seconds=sum(float(n) * _UNITS[unit] for n, unit in parts))


def positive_duration(value: object) -> dt.timedelta:
    duration = parse_duration(value)
    if duration <= dt.timedelta(0):
        raise Invalid(f'must be longer than 0, not "{value}"')
    return duration


def parse_base_url(value: object) -> str:
    url = non_empty(value).strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url):
        raise Invalid(f'"{value}" is not an http(s) URL')
    return url


def parse_listen(value: object) -> tuple[str, int]:
    """ "127.0.0.1:8080", "[::1]:8080", "localhost:8080", ":8080" -> (host, port)."""
    text = non_empty(value).strip()
    m = re.match(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]*):(\d{1,5})$", text)
    if not m or not 0 <= int(m.group(2)) <= 65535:  # 0: any free port (tests)
        raise Invalid(f'"{text}" is not host:port, e.g. "127.0.0.1:8080"')
    return (m.group(1).strip("[]") or "0.0.0.0"), int(m.group(2))


def parse_public_url(value: object) -> str:
    """The public URL of the endpoint: https, or http on a loopback host (tests, a laptop)."""
    url = parse_base_url(value)
    m = re.match(r"^(https?)://(\[[^\]]+\]|[^/:?#]+)(?::\d+)?(/[^?#]*)?$", url)
    if not m:
        raise Invalid(f'"{url}" is not a URL like "https://digest.example.org"')
    if m.group(1) != "https" and not is_loopback(m.group(2).strip("[]")):
        raise Invalid(
            f'"{url}" is not https: the links in every email point here, and mail clients '
            "post unsubscribes to it (http is only allowed for a loopback host)"
        )
    return url


def check_address(addr: str) -> str:
    """A sane addr-spec, lower-cased, its domain in display (Unicode) form; Invalid if not.

    The local part is ASCII (an address with a non-ASCII local part needs SMTPUTF8 on
    every hop); the domain may be internationalized (`ada@bücher.example`, or as
    `xn--bcher-kva.example`): both spellings give the same address, and `ascii_address`
    turns it into what SMTP and the headers carry.
    """
    if any(c in addr for c in "\r\n"):
        raise Invalid("must not contain a line break")
    bad = Invalid(f'"{addr}" is not an email address (expected name@example.org)')
    local, at, domain = addr.strip().rpartition("@")
    try:
        ascii_domain = _idna_domain(domain) if at else ""
    except Invalid as e:
        raise Invalid(f'"{addr}" is not an email address: {e}') from None
    m = _ADDR_RE.match(f"{local}@{ascii_domain}")
    if not m or len(m.group(1)) > 64 or len(m.group(0)) > 254:
        raise bad
    if ascii_domain.isascii() and "xn--" not in ascii_domain:
        return m.group(0).lower()
    return f"{local.lower()}@{idna.decode(ascii_domain)}"


def ascii_address(addr: str) -> str:
    """`addr` with its domain IDNA-encoded (`ada@xn--bcher-kva.example`), as MAIL FROM,
    RCPT TO and address headers carry it; an ASCII address (or one this cannot encode,
    left for the caller's own check to refuse) comes back unchanged."""
    local, at, domain = addr.rpartition("@")
    if not at or domain.isascii():
        return addr
    try:
        return f"{local}@{_idna_domain(domain)}"
    except Invalid:
        return addr


@functools.lru_cache(maxsize=1024)
def _idna_domain(domain: str) -> str:
    """A domain as ASCII (IDNA 2008 with UTS #46 mapping); Invalid if it cannot be one."""
    if domain.isascii() and "xn--" not in domain.lower():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as e:  # also a UnicodeError
        raise Invalid(f"the domain {domain!r} is not a valid internationalized name ({e})") from e


# outside quotes, a whole run between spaces or parentheses: the spots where `OR` would be
_OPERATOR_WORD = re.compile(r'"[^"]*"|(?<![^\s(])(and|or|not)(?![^\s)])', re.IGNORECASE)
# the same spots, quotes or not, holding a not-all-upper-case and/or/not: when none is
# there (nearly every query), there is nothing to report and no substitution to run
_MAYBE_LOWERCASE = re.compile(
    r"(?<![^\s(])(?!(?-i:AND|OR|NOT)(?![^\s)]))(?:and|or|not)(?![^\s)])", re.IGNORECASE
)


def lowercase_operators(query: str) -> tuple[list[str], str]:
    """The words of `query` that read as AND/OR/NOT but are not upper case (so the query
    language takes them as plain words), and the query with them upper-cased."""
    if _MAYBE_LOWERCASE.search(query) is None:
        return [], query
    found: list[str] = []

    def upper(m: re.Match[str]) -> str:
        word = m.group(1)
        if word is None or word.isupper():
            return m.group(0)
        found.append(word)
        return word.upper()

    return found, _OPERATOR_WORD.sub(upper, query)


def parse_email(value: object) -> str:
    return check_address(string(value))


def parse_from(value: object) -> str:
    """A From header value: "Name <addr>" or a bare addr; validated, kept as written."""
    text = single_line(value)
    _, addr = email.utils.parseaddr(text)
    if not addr:
        raise Invalid(f'"{text}" is not an address like "Papers Digest <digest@example.org>"')
    check_address(addr)
    return text.strip()


def parse_unsubscribe(value: object) -> str:
    text = single_line(value).strip()
    if not re.match(r"^(mailto:|https?://)\S+$", text):
        raise Invalid(f'"{text}" must be a mailto: or https:// URL')
    return text


def parse_timezone(value: object) -> str:
    name = non_empty(value)
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(name, zoneinfo.available_timezones(), n=1)
        hint = f'; did you mean "{close[0]}"?' if close else ""
        raise Invalid(f'unknown time zone "{name}"{hint}') from None
    return name


def parse_schedule_value(value: object) -> Schedule:
    try:
        return parse_schedule(non_empty(value))
    except ValueError as e:
        raise Invalid(str(e)) from None


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def query_message(e: QuerySyntaxError) -> str:
    """The query error's message, then the query and a caret under the column."""
    message = str(e)
    if "column" not in message:
        message += f" (column {e.column})"
    caret = "\n".join(f"    {line}" for line in e.caret().splitlines())
    return f"{message}\n{caret}"
