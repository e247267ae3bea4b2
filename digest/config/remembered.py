"""A big subscription file's checked subscribers, remembered until the file changes.

    digest check (cold):  file -> parse, check 100k subscribers (~4 s) -> Config -> keep()
    digest match (warm):  file -> digest of its bytes == the kept one? -> subscribers (~0.3 s)

Owns: where the copy lives (DIGEST_CACHE_DIR, else $XDG_CACHE_HOME/papers-digest, else
$HOME/.cache/papers-digest, all read from the `env` given; DIGEST_CACHE_DIR="" turns
it off), when a copy is kept (a file of CACHE_FROM bytes or more whose subscribers
were all valid, with no warning), when one is used (its key equals the file's: a
digest of the file's bytes and of the digest package's source, so a changed file, a
changed byte of the code or another Python never reuses a copy) and its format
(marshal of plain values: strings, ints, bools and None, no pickle, so a copy can
hold no code to run). Does not own checking
(`subscribers.py`: a copy is only ever written from what it accepted) nor the
tables but the subscribers' ([source], [mail], ..., and their secrets from the
environment), which `build_config` reads from the file every time: a copy holds no
secret and nothing that depends on the environment.

Anything wrong with a copy (missing, cut short, another key, not the values
expected, a folder that cannot be written) is a miss: the file is checked as if no
copy existed, never an error of its own.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import marshal
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import cast

from digest.config.schema import (
    DELIVERIES,
    THUMBNAILS,
    Delivery,
    Subscriber,
    Thumbnails,
    _Settings,
    from_parts,
    parts_of,
)
from digest.schedule import Schedule

log = logging.getLogger(__name__)

CACHE_FROM = 4 << 20  # bytes (~12,000 subscribers): a smaller file is checked in under a second
FORMAT = 1  # what a copy holds; a new layout takes a new number
_KEY_BYTES = 32
# a _Settings as plain values: its schedule as the text it was parsed from
_Plain = tuple[str, str, int, int, bool, int | None, str, str, bool]


def cache_dir(env: Mapping[str, str]) -> Path | None:
    """Where copies are kept, or None if remembering is off (also for an `env` that
    names no folder at all: no HOME, as a test's or a benchmark's `{}`)."""
    chosen = env.get("DIGEST_CACHE_DIR")
    if chosen is not None:
        return Path(chosen).expanduser() if chosen else None
    base = env.get("XDG_CACHE_HOME") or (
        os.path.join(env["HOME"], ".cache") if env.get("HOME") else ""
    )
    return Path(base) / "papers-digest" if base else None


class Remembered:
    """The kept copy for one file, as its bytes are now: `subscribers` if the copy is
    of these bytes, `keep` to write one after checking them."""

    def __init__(self, copy: Path, key: bytes) -> None:
        self.copy, self.key = copy, key

    @classmethod
    def for_file(cls, path: Path, env: Mapping[str, str]) -> Remembered | None:
        """None when off, or for a file too small to be worth it (or unreadable: reading
        it for the check says why)."""
        folder = cache_dir(env)
        if folder is None:
            return None
        digest = hashlib.blake2b(_code_key(), digest_size=_KEY_BYTES)
        try:
            with path.open("rb") as file:
                size = os.fstat(file.fileno()).st_size
                if size < CACHE_FROM:
                    return None
                hashlib.file_digest(file, lambda: digest)
        except OSError:
            return None
        name = hashlib.blake2b(str(path.absolute()).encode(), digest_size=16).hexdigest()
        return cls(folder / f"{name}.subscribers", digest.digest())

    def subscribers(self) -> tuple[Subscriber, ...] | None:
        """The subscribers kept for these bytes, or None (a miss)."""
        try:
            with self.copy.open("rb") as file:
                if file.read(_KEY_BYTES) != self.key:
                    return None
                texts, plain, which = marshal.load(file)
            shared = [_settings(p) for p in plain]
            if len(texts) != len(which) or min(which, default=0) < 0:
                raise TypeError("not one setting per subscriber")
            if not all(type(t) is str for t in texts):
                raise TypeError("a subscriber that is not a string")
            return tuple(map(from_parts, texts, [shared[i] for i in which]))
        except Exception as e:  # any copy that is not what keep() wrote: check the file
            if not isinstance(e, FileNotFoundError):
                log.debug("not using %s: %r", self.copy, e)
            return None

    def keep(self, subscribers: tuple[Subscriber, ...]) -> None:
        """Write the copy for these bytes (atomically: a reader sees the old one or the
        new one); a folder that cannot be written only means no copy."""
        index: dict[_Settings, int] = {}
        texts, which = [], []
        for text, settings in map(parts_of, subscribers):
            texts.append(text)
            which.append(index.setdefault(settings, len(index)))
        body = marshal.dumps((texts, [_plain(settings) for settings in index], which))
        try:
            self.copy.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=self.copy.parent, prefix=".keeping-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(self.key)
                    out.write(body)
                os.replace(temporary, self.copy)
            except BaseException:
                os.unlink(temporary)
                raise
        except OSError as e:
            log.debug("could not keep %s: %s", self.copy, e)


def _plain(s: _Settings) -> _Plain:
    return (s.schedule.text, s.timezone, s.max_papers, s.min_upvotes, s.send_empty,
            s.window_days, s.thumbnails, s.delivery, s.named)  # fmt: skip


def _settings(plain: object) -> _Settings:
    """A kept _Settings back, every value of the type it had (else TypeError: a miss)."""
    if not isinstance(plain, tuple) or len(plain) != len(_Settings._fields):
        raise TypeError("not a settings tuple")
    text, zone, max_papers, min_upvotes, send_empty, window, thumbnails, delivery, named = plain
    types: tuple[type | tuple[type, ...], ...] = (str, str, int, int, bool, (int, type(None)),
                                                  str, str, bool)  # fmt: skip
    if not all(isinstance(v, t) for v, t in zip(plain, types, strict=True)):
        raise TypeError("a setting of the wrong type")
    if thumbnails not in THUMBNAILS or delivery not in DELIVERIES:
        raise TypeError("a setting with a value it cannot have")
    return _Settings(Schedule(text), zone, max_papers, min_upvotes, send_empty, window,
                     cast(Thumbnails, thumbnails), cast(Delivery, delivery), named)  # fmt: skip


@functools.cache  # once per process: ~100 files
def _code_key() -> bytes:
    """What else a copy depends on: this Python, the format, and every byte of the
    digest package's source (what a valid subscriber is may change with any of it)."""
    digest = hashlib.blake2b(f"{sys.version}|{FORMAT}".encode(), digest_size=_KEY_BYTES)
    package = Path(__file__).resolve().parent.parent
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode())
        digest.update(source.read_bytes())
    return digest.digest()
