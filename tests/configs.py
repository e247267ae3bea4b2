"""Subscription files for end-to-end tests: a fixture server as the source, a database
(an SQLite file beside the config unless told otherwise), the given mail settings, then
the subscribers."""

from __future__ import annotations

from pathlib import Path

ADA = """
[[subscribers]]
email = "ada@example.org"
name = "Ada"
schedule = "daily 00:00"
topics = [
  { name = "Agents", query = 'agent*' },
  { name = "Video", query = 'video OR "image generation"' },
]
"""


def write_config(
    tmp_path: Path,
    base_url: str,
    *,
    subscribers: str = ADA,
    mail: str = 'maildir = "mail"',
    db: str = "sqlite:///digest.db",
) -> Path:
    """digest.toml in `tmp_path`, polling `base_url` for today and yesterday, no retries
    to speak of (tests inject their failures on purpose), storing in `db` (a URL; by
    default an SQLite file beside the config)."""
    path = tmp_path / "digest.toml"
    path.write_text(
        f"""
[source]
base_url = "{base_url}"
mode = "api"
retries = 1
timeout = 5.0
lookback_days = 1

[storage]
url = "{db}"

[mail]
from = "Papers Digest <digest@example.org>"
{mail}
{subscribers}
""",
        encoding="utf-8",
    )
    return path
