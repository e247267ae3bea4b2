"""Where digests go: the Transport contract, the Maildir transport, and choosing a
transport from the config.

Owns: what a transport promises the drain (`send` with its `hold` before the final
hand-over, `pool_size`, `claim_lease`, `claim_batch`), writing messages into a Maildir
folder, and `make_transport`. Does not own: SMTP itself (smtp.py), draining the outbox
and the retry policy (drain.py), rendering (render/). The caller owns a transport's
lifetime (``async with``).
"""

from __future__ import annotations

import datetime as dt
import mailbox
from pathlib import Path
from types import TracebackType
from typing import Protocol

from digest.config import MailConfig
from digest.errors import ConfigError, MailServerUnavailableError
from digest.mail.smtp import SmtpTransport
from digest.mail.wire import Hold


class Transport(Protocol):
    """Where messages go. ``send`` returns the server's reply text, or raises
    PermanentDeliveryError / TransientDeliveryError (MailServerUnavailableError: none
    can go now)."""

    @property
    def pool_size(self) -> int: ...

    @property
    def claim_lease(self) -> dt.timedelta:
        """How long a claimed digest stays invisible to other drains: longer than one
        `send` can take, short enough that a crash delays the in-flight ones by seconds."""
        ...

    @property
    def claim_batch(self) -> int:
        """How many digests a drain claims at once (a claim per message would cost a
        transaction each): a few per connection, and no more than about a second of
        sending at the transport's rate cap."""
        ...

    async def __aenter__(self) -> Transport: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def send(
        self,
        sender: str,
        recipient: str,
        message: bytes,
        hold: Hold | None = None,
    ) -> str:
        """`hold`: called just before the message is handed over for good (SMTP's final
        dot, the Maildir file), and what it returns (None: nothing to wait for) awaited
        first; if either raises, nothing is delivered and the exception propagates (the
        drain: its previous outcome could not be recorded)."""
        ...


class MaildirTransport:
    """Every message into one Maildir folder (``mutt -f DIR``), with the local line
    ending: the outbox holds SMTP's CRLF, but a Maildir file is a local file, and mail
    clients and Python's `mailbox` expect LF there (mutt shows a stray ``^M`` otherwise).
    Nothing else of the bytes changes."""

    pool_size = 1
    claim_lease = dt.timedelta(seconds=5)  # a local file write
    claim_batch = 32  # a fraction of a second of file writes

    def __init__(self, path: Path) -> None:
        self.path = path
        self._box: mailbox.Maildir | None = None

    async def __aenter__(self) -> MaildirTransport:
        return self  # the folder is made on the first send, whose error the drain reports

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._box = None

    async def send(
        self,
        sender: str,
        recipient: str,
        message: bytes,
        hold: Hold | None = None,
    ) -> str:
        if hold is not None and (waiting := hold()) is not None:
            await waiting
        box = self._open()
        try:
            key = box.add(message.replace(b"\r\n", b"\n"))
        except OSError as e:
            raise MailServerUnavailableError(f"maildir {self.path}: cannot write: {e}") from e
        return f"250 delivered to maildir {self.path} as {key}"

    def _open(self) -> mailbox.Maildir:
        if self._box is None:
            try:
                for sub in ("tmp", "new", "cur"):  # also inside an existing, empty folder
                    (self.path / sub).mkdir(parents=True, exist_ok=True)
                self._box = mailbox.Maildir(self.path, factory=None, create=True)
            except OSError as e:
                raise MailServerUnavailableError(f"maildir {self.path}: cannot create: {e}") from e
        return self._box


def make_transport(mail: MailConfig) -> Transport:
    """The transport the config asks for: SMTP when configured, else the Maildir folder."""
    if mail.transport == "smtp":
        if mail.smtp is None:
            raise ConfigError('mail.transport = "smtp" but there is no [mail.smtp] host')
        return SmtpTransport(mail.smtp)
    return MaildirTransport(mail.maildir)
