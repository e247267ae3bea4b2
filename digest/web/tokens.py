"""Signed, opaque links: one itsdangerous serializer per purpose, keys that rotate.

A token carries a value (a recipient's random link key from the database, or whatever a
route signs: a digest's id for its web copy) and an HMAC over it made with the secret
and a salt per purpose, so a token made for one purpose is refused by every other.
No email address is ever in a token: the value is the random key, which only the
database maps to an address.

Rotation: `WebConfig.old_secrets` are still accepted, the current `secret` signs. Links
in old emails keep working while their secret is listed; dropping it revokes them.

Owns: the purposes, making and reading tokens, and the public URLs of a recipient's
links (`Links`). Imports no aiohttp: planning builds links without the web server.
Does not own: what a route does with a value (the route modules), the keys (the
`recipients` table, `digest/store/recipients.py`).
"""

from __future__ import annotations

__all__ = ["BadToken", "Links", "Purpose", "RecipientLinks", "Tokens", "copy_value", "read_copy"]

import datetime as dt
from enum import StrEnum

from itsdangerous import BadData, URLSafeSerializer

from digest.config import WebConfig
from digest.render.message import RecipientLinks


class Purpose(StrEnum):
    """What a token opens; each is its own salt."""

    UNSUBSCRIBE = "unsubscribe"  # /u/TOKEN: the one-click POST and the page before it
    PREFERENCES = "preferences"  # /p/TOKEN: pause, mute, unsubscribe, resubscribe
    DIGEST = "digest"  # /d/TOKEN: the web copy of a digest
    FEED = "feed"  # /f/TOKEN.atom: a recipient's feed


class BadToken(Exception):
    """A token that is tampered with, truncated, signed by a dropped secret, or made for
    another purpose. Deliberately says no more than that (callers answer 400)."""


SALT_PREFIX = "papers-digest/"


class Tokens:
    """Make and read tokens with the config's secrets."""

    def __init__(self, secret: str, old_secrets: tuple[str, ...] = ()) -> None:
        if not secret:
            raise ValueError("the web secret is empty")
        # itsdangerous signs with the last key and accepts any of them
        keys = [*old_secrets, secret]
        self._serializers = {
            p: URLSafeSerializer(keys, salt=SALT_PREFIX + p.value) for p in Purpose
        }

    @classmethod
    def from_config(cls, web: WebConfig) -> Tokens:
        return cls(web.secret, web.old_secrets)

    def make(self, purpose: Purpose, value: str) -> str:
        token = self._serializers[purpose].dumps(value)
        assert isinstance(token, str)  # URLSafeSerializer with text keys gives text
        return token

    def read(self, purpose: Purpose, token: str) -> str:
        """The value in `token`; BadToken if it was not made by us for `purpose`."""
        try:
            value = self._serializers[purpose].loads(token)
        except BadData as e:
            raise BadToken(purpose.value) from e
        if not isinstance(value, str) or not value:
            raise BadToken(purpose.value)
        return value


class Links:
    """Public URLs of a recipient's pages, from their link key."""

    def __init__(self, web: WebConfig, tokens: Tokens | None = None) -> None:
        self.base = web.base_url.rstrip("/")
        self.tokens = tokens or Tokens.from_config(web)

    def url(self, purpose: Purpose, value: str, *, prefix: str, suffix: str = "") -> str:
        return f"{self.base}/{prefix}/{self.tokens.make(purpose, value)}{suffix}"

    def for_key(self, key: str, slot: dt.datetime | None = None) -> RecipientLinks:
        """The recipient's links; with `slot`, also the web copy of their digest at it."""
        copy = None if slot is None else self.url(Purpose.DIGEST, copy_value(key, slot), prefix="d")
        return RecipientLinks(
            unsubscribe=self.url(Purpose.UNSUBSCRIBE, key, prefix="u"),
            preferences=self.url(Purpose.PREFERENCES, key, prefix="p"),
            web_copy=copy,
        )

    def feed(self, key: str) -> str:
        """The recipient's Atom feed: /f/TOKEN.atom."""
        return self.url(Purpose.FEED, key, prefix="f", suffix=".atom")


def copy_value(key: str, slot: dt.datetime) -> str:
    """What a web copy's token signs: the recipient's key and the digest's slot (whole
    seconds since the epoch, UTC), so the link exists before the digest's row does."""
    return f"{key}:{int(slot.timestamp())}"


def read_copy(value: str) -> tuple[str, dt.datetime]:
    """(key, slot) from a web copy's signed value; BadToken if it is not one."""
    key, _, seconds = value.rpartition(":")
    if not key or not seconds.isdigit():
        raise BadToken(Purpose.DIGEST.value)
    return key, dt.datetime.fromtimestamp(int(seconds), dt.UTC)
