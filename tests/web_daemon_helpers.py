"""`digest run` with [web] as a real subprocess, for the end-to-end tests of the endpoint.

A config with HFServer as the source, a real aiosmtpd server as the relay, an SQLite
file, and [web] on a free port of 127.0.0.1 (the links in the emails point there); the
web secret comes through the environment, as in production. Helpers read what arrived
at the SMTP server: each recipient's messages and the links they carry.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import re
from email.message import EmailMessage
from pathlib import Path

from tests.daemons import MATCH_ALL
from tests.hfserver import HFServer
from tests.smtpd_helpers import SmtpServer, free_port
from tests.web_helpers import ENV, web_table

SECRET_ENV = ENV


def person(email: str, schedule: str = "every 2s", *, send_empty: bool = True) -> str:
    return (
        f'[[subscribers]]\nemail = "{email}"\ntimezone = "UTC"\nschedule = "{schedule}"\n'
        f"send_empty = {'true' if send_empty else 'false'}\n"
        f'topics = [{{ name = "Everything", query = \'{MATCH_ALL}\' }}, '
        f"{{ name = \"Agents\", query = 'agent*' }}]\n"
    )


def web_daemon_config(
    folder: Path, hf: HFServer, smtp: SmtpServer, people: list[str], *, extra: str = ""
) -> tuple[Path, int]:
    """digest.toml for a daemon with [web] on a free port; (path, port)."""
    port = free_port()
    path = folder / "digest.toml"
    path.write_text(
        f'[source]\nbase_url = "{hf.base_url}"\nmode = "api"\npoll_interval = "1s"\n'
        f"lookback_days = 1\nretries = 0\ntimeout = 5\n\n"
        f'[storage]\nurl = "sqlite:///digest.db"\n\n'
        f'[mail]\nfrom = "Papers Digest <digest@example.org>"\ntransport = "smtp"\n'
        f'smtp = {{ host = "127.0.0.1", port = {smtp.port}, security = "none", '
        f"max_connections = 2, rate_per_second = 1000 }}\n{extra}\n"
        f"{web_table(port)}\n" + "\n".join(people),
        encoding="utf-8",
    )
    return path, port


def messages_to(smtp: SmtpServer, email_address: str) -> list[EmailMessage]:
    return [r.parsed() for r in smtp.handler.by_recipient().get(email_address, [])]


def one_click_url(message: EmailMessage) -> str:
    """The https (here: loopback http) URL of List-Unsubscribe, the first of its <...>."""
    urls = re.findall(r"<([^>]+)>", str(message["List-Unsubscribe"]))
    assert urls and urls[0].startswith("http"), message["List-Unsubscribe"]
    assert urls[1].startswith("mailto:")
    return urls[0]


def preferences_url(message: EmailMessage) -> str:
    text = message.get_body(("plain",))
    assert text is not None
    found = re.findall(r"Manage preferences \(pause, mute a topic\):\s+(\S+)", text.get_content())
    assert len(found) == 1
    return str(found[0])


def sent_at(message: EmailMessage) -> dt.datetime:
    """When the digest was rendered (its Date header)."""
    return email.utils.parsedate_to_datetime(str(message["Date"]))
