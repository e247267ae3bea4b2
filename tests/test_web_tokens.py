"""Signed, opaque tokens: a salt per purpose, rotation through old secrets, nothing readable."""

from __future__ import annotations

import pytest

from digest.store.recipients import new_key
from digest.web.tokens import BadToken, Purpose, Tokens

NEW, OLD = "new-secret-0123456789abcdef", "old-secret-0123456789abcdef"


def test_a_token_reads_back_for_its_purpose_only() -> None:
    tokens = Tokens(NEW)
    key = new_key()
    for purpose in Purpose:
        token = tokens.make(purpose, key)
        assert tokens.read(purpose, token) == key
        for other in Purpose:
            if other is not purpose:
                with pytest.raises(BadToken):
                    tokens.read(other, token)


def test_tokens_are_url_safe_and_differ_per_purpose() -> None:
    tokens = Tokens(NEW)
    made = {tokens.make(p, "k3y") for p in Purpose}
    assert len(made) == len(Purpose)
    for token in made:
        assert all(c.isalnum() or c in "-_." for c in token)


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_truncated_and_tampered_tokens_are_refused(cut: int) -> None:
    tokens = Tokens(NEW)
    token = tokens.make(Purpose.UNSUBSCRIBE, new_key())
    with pytest.raises(BadToken):
        tokens.read(Purpose.UNSUBSCRIBE, token[:-cut])
    for i in range(len(token)):
        if token[i] == ".":
            continue
        changed = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
        try:
            value = tokens.read(Purpose.UNSUBSCRIBE, changed)
        except BadToken:
            continue
        # base64's last character can carry unused bits: the same bytes, the same value
        assert value == tokens.read(Purpose.UNSUBSCRIBE, token)


def test_rotation_old_secret_accepted_while_listed_new_one_signs() -> None:
    key = new_key()
    before = Tokens(OLD).make(Purpose.PREFERENCES, key)
    rotated = Tokens(NEW, (OLD,))
    assert rotated.read(Purpose.PREFERENCES, before) == key
    after = rotated.make(Purpose.PREFERENCES, key)
    assert Tokens(NEW).read(Purpose.PREFERENCES, after) == key  # signed with the new one
    with pytest.raises(BadToken):
        Tokens(NEW).read(Purpose.PREFERENCES, before)  # old one dropped: revoked


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        Tokens("")


def test_keys_are_random_and_unrelated_to_anything() -> None:
    keys = {new_key() for _ in range(1000)}
    assert len(keys) == 1000
    assert all(len(k) == 22 for k in keys)
