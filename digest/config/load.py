"""Read the subscription file: bytes -> TOML -> `build_config`; the summary `digest check` prints.

    lines -> head + chunks of [[subscribers]] (chunks.py, toml-rs)
          -> build_config, chunk by chunk -> Config
             (a big file: the chunks after its middle in a child process, halves.py;
              a big file checked before, unchanged: its subscribers as kept, remembered.py)
    (a file that cannot be split: parsed whole; one that does not parse: tomllib's
    error, as "file:LINE: invalid TOML: ...")

Owns: file and encoding errors, TOML syntax errors as "file:LINE: ...", the example
file `digest init` writes, and the one-screen summary of a valid config. Does not
own: what a key may hold (`build.py`) or the types (`schema.py`).
"""

from __future__ import annotations

import contextlib
import gc
import importlib.resources
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from digest.config.build import build_config
from digest.config.chunks import Unsplittable, fast_loads, split_subscribers
from digest.config.dburl import parse_db_url
from digest.config.halves import middle_of
from digest.config.remembered import Remembered
from digest.config.schema import Config
from digest.errors import ConfigError
from digest.humanize import count, duration


def load_config(path: Path, env: Mapping[str, str]) -> Config:
    """Read and validate `path`; raise ConfigError listing every problem found.

    `env` is where secrets come from (mail.smtp.password_env names a variable in it).
    """
    # Nothing here makes reference cycles: a collection would only walk the thousands
    # of objects the parse and the Subscribers create (2.5 s of 9 at 100k subscribers).
    with _collector_paused():
        remembered = Remembered.for_file(path, env)  # a big file checked before
        with _opened(path) as lines:
            middle = middle_of(path)  # a big file: read on two cores
            split = split_subscribers(lines, middle=middle)
            if split is not None:
                head, head_text, pieces = split
                kept = remembered.subscribers() if remembered is not None else None
                try:
                    config = build_config(
                        head, path=path, text=None, env=env, head_text=head_text,
                        subscribers=pieces if kept is None else None, middle=middle,
                        checked=kept,
                    )  # fmt: skip
                except Unsplittable:
                    pass  # read it whole: tomllib says what is wrong, and where
                else:
                    if remembered is not None and kept is None and not config.warnings:
                        remembered.keep(config.subscribers)
                    return config
        text = _read_text(path)
        data = fast_loads(text)
        if data is None:
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(_toml_error(path, text, e)) from e
        return build_config(data, path=path, text=text, env=env)


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[BinaryIO]:
    """`path` open for reading its lines, or the ConfigError saying why it cannot be."""
    try:
        file = path.open("rb")
    except OSError as e:
        raise _unreadable(path, e) from e
    with file:
        yield file


def _read_text(path: Path) -> str:
    """The whole file's text (a file that is not split, or did not split cleanly)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise _unreadable(path, e) from e
    try:
        # utf-8-sig: a byte-order mark at the start (Windows editors write one) is not text
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: the config file is not UTF-8 text") from e


def _unreadable(path: Path, e: OSError) -> ConfigError:
    if isinstance(e, FileNotFoundError):
        return ConfigError(f"{path}: no such config file; run `digest init` to write an example")
    return ConfigError(f"{path}: cannot read the config file: {e.strerror}")


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _toml_error(path: Path, text: str, e: tomllib.TOMLDecodeError) -> str:
    """tomllib's "Invalid value (at line 3, column 8)" as "file:3: invalid TOML: ..."."""
    message = str(e)
    m = re.match(r"^(.*) \(at line (\d+), column (\d+)\)$", message)
    if m:
        return f"{path}:{m.group(2)}: invalid TOML: {m.group(1)} (column {m.group(3)})"
    m = re.match(r"^(.*) \(at end of document\)$", message)
    if m:
        last = text.count("\n") + (0 if text.endswith("\n") else 1)
        return f"{path}:{max(last, 1)}: invalid TOML: {m.group(1)} (at the end of the file)"
    return f"{path}: invalid TOML: {message}"


def summarize_config(config: Config) -> list[str]:
    """The lines `digest check` prints when the config is valid."""
    s, mail = config.source, config.mail
    lines = [
        f"config: {config.path}",
        f"source: {s.base_url} (mode {s.mode}), poll every {duration(s.poll_interval)}, "
        f"lookback {count(s.lookback_days, 'day')}",
        f"storage: {parse_db_url(config.storage.url).masked()}",
    ]
    if mail.transport == "smtp" and mail.smtp is not None:
        smtp = mail.smtp
        auth = f", user {smtp.username}" if smtp.username else ", no AUTH"
        lines.append(
            f"mail: smtp {smtp.host}:{smtp.port} ({smtp.security}{auth}), "
            f"{smtp.max_connections} connections, {smtp.rate_per_second:g}/s, from {mail.from_addr}"
        )
    else:
        lines.append(f"mail: maildir {mail.maildir}, from {mail.from_addr}")
    if mail.templates is not None:
        lines.append(f"templates: {mail.templates}")
    alerts = config.alerts
    lines.append(
        f"alerts: to {alerts.email} after {count(alerts.after_failed_polls, 'failed poll')}"
        if alerts.email
        else "alerts: off (no [alerts] email)"
    )
    lines.append(f"{count(len(config.subscribers), 'subscriber')}:")
    tails: dict[tuple[object, ...], str] = {}  # a few dozen distinct ones at 100k
    for sub in config.subscribers:
        key = (sub.timezone, sub.schedule, len(sub.topics), sub.window_days)
        if (tail := tails.get(key)) is None:
            tail = tails[key] = (
                f"{sub.timezone}, {sub.schedule.text}, {count(len(sub.topics), 'topic')}, "
                f"window {count(sub.effective_window_days, 'day')}"
            )
        lines.append(f"  {sub.email}: {tail}")
    return lines


def example_config() -> str:
    """The commented example config `digest init` writes (digest/config/example.toml)."""
    return importlib.resources.files("digest.config").joinpath("example.toml").read_text("utf-8")
