"""DKIM signatures with dkimpy: rsa-sha256, relaxed/relaxed, the signed headers named.

Owns: checking a private key (`digest check` loads it through `check_private_key`) and
signing a message's bytes (`sign_message`: the DKIM-Signature header put in front).
dkimpy signs a default header list that leaves `List-Unsubscribe-Post` out, and RFC 8058
section 4 wants both unsubscribe headers under the signature, so the list is ours
(`SIGNED_HEADERS`); a header the message lacks is simply not signed.

Does not own: when a message is signed (the planner signs a digest once as it enters the
outbox, so a retry sends the same bytes; alerts are signed when they are queued), the key
file's path (config), or publishing the public key in DNS (the README says how).

Cost: dkimpy's RSA is pure Python, about 35 ms of CPU per message with a 2048-bit key;
importing dkimpy takes ~0.3 s, so it is imported only when `[mail] dkim` is set.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from digest.errors import ConfigError

if TYPE_CHECKING:
    from digest.config import DkimConfig
SIGNED_HEADERS: tuple[bytes, ...] = (
    b"From", b"To", b"Subject", b"Date", b"Message-ID", b"List-Id", b"List-Unsubscribe",
    b"List-Unsubscribe-Post", b"MIME-Version", b"Content-Type",
)  # fmt: skip
CANONICALIZE = (b"relaxed", b"relaxed")
MIN_KEY_BITS = 1024  # what dkimpy's verify accepts by default; 2048 is what to use

_quiet = logging.getLogger("digest.mail.dkim.dkimpy")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def check_private_key(pem: bytes) -> str | None:
    """What is wrong with `pem` as a DKIM signing key, or None when it signs."""
    import dkim.crypto  # dkimpy takes ~0.3 s to import: only where signing is configured

    try:
        key = dkim.crypto.parse_pem_private_key(pem)
    except (dkim.crypto.UnparsableKeyError, ValueError, IndexError, TypeError) as e:
        return f"not an RSA private key in PEM form ({e or type(e).__name__})"
    bits = int(key["modulus"]).bit_length()
    if bits < MIN_KEY_BITS:
        return f"a {bits}-bit key; receivers ignore keys under {MIN_KEY_BITS} bits (use 2048)"
    return None


def sign_message(message: bytes, config: DkimConfig | None) -> bytes:
    """`message` with a DKIM-Signature header in front; unchanged without `config`."""
    if config is None:
        return message
    import dkim  # see check_private_key

    present = _present_headers(message)
    try:
        signature = dkim.sign(
            message,
            config.selector.encode("ascii"),
            config.domain.encode("ascii"),
            config.private_key,
            canonicalize=CANONICALIZE,
            signature_algorithm=b"rsa-sha256",
            include_headers=[h for h in SIGNED_HEADERS if h.lower() in present],
            logger=_quiet,
        )
    except (dkim.DKIMException, UnicodeEncodeError) as e:
        raise ConfigError(
            f"mail.dkim: cannot sign with {config.key_file} for {config.domain}: {e}"
        ) from e
    return bytes(signature) + message


def _present_headers(message: bytes) -> frozenset[bytes]:
    """The lower-cased names of the message's top-level headers."""
    end = message.find(b"\r\n\r\n")
    head = message[: end if end >= 0 else len(message)]
    return frozenset(
        line.split(b":", 1)[0].strip().lower()
        for line in head.split(b"\n")
        if line and line[:1] not in (b" ", b"\t") and b":" in line
    )
