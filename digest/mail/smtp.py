"""Handing messages to an SMTP server: the SmtpTransport pool.

Owns: opening connections with aiosmtplib (implicit TLS, or STARTTLS that is required,
never a plaintext fallback; plaintext only to a loopback host; certificate verification
against the system CA store plus an optional extra CA file; EHLO; AUTH), a pool of
reused connections, a messages/second cap, retries with backoff inside one send (4xx,
dropped connections, connect failures), the claim lease a drain should use, and turning
aiosmtplib's and smtp_wire's exceptions into the DeliveryError tree, once, with
``raise ... from e``. Each message itself goes through smtp_wire.py (MAIL, RCPT, DATA,
pipelined when the server offers PIPELINING) on a connection aiosmtplib set up.

Does not own: the outbox or what to do with a digest after a failure (delivery.py),
building messages (render.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import math
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

import aiosmtplib

from digest.config import SmtpConfig
from digest.errors import (
    ConfigError,
    MailServerUnavailableError,
    MaybeDeliveredError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from digest.mail.wire import (
    Dropped,
    Hold,
    Refused,
    Unanswered,
    Wire,
    envelope_address,
    to_wire,
)

Sleep = Callable[[float], Awaitable[None]]
MIN_LEASE = dt.timedelta(seconds=5)
CLAIMS_PER_CONNECTION = 8  # digests a drain claims at once, per connection
MAX_CLAIM_BATCH = 64
# waits of up to `timeout` each before the final dot: connect, greeting, EHLO, STARTTLS,
# EHLO again, AUTH, then the replies to MAIL, RCPT and DATA
HANDSHAKE_STEPS = 9
Clock = Callable[[], float]


def is_loopback(host: str) -> bool:
    """True for localhost names and loopback addresses (127.0.0.0/8, ::1)."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def build_tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Verification on: the system CA store, plus `ca_file` when given."""
    context = ssl.create_default_context()  # with cafile= it would drop the system store
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"mail.smtp.ca_file: cannot load {ca_file}: {e}") from e
    return context


class RateLimiter:
    """At most `rate` starts per second, evenly spaced (no burst); 0 or less: no cap."""

    def __init__(self, rate: float, *, clock: Clock, sleep: Sleep) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0

    async def wait(self) -> None:
        if not self._interval:
            return
        now = self._clock()
        start = max(now, self._next)
        self._next = start + self._interval  # reserved before awaiting: safe for many tasks
        if start > now:
            await self._sleep(start - now)


class _Retryable(Exception):
    """One attempt failed in a way worth another try; `error` is raised when none is left."""

    def __init__(self, error: TransientDeliveryError) -> None:
        super().__init__(str(error))
        self.error = error


class SmtpTransport:
    """An SMTP relay as a Transport: ``async with`` it, then ``await send(...)`` from many
    tasks; at most ``max_connections`` connections, each reused for the next message."""

    def __init__(
        self,
        config: SmtpConfig,
        *,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.monotonic,
        backoff: float = 1.0,  # seconds before the first retry inside a send; doubles
    ) -> None:
        if config.security == "none" and not is_loopback(config.host):
            raise ConfigError(
                f'mail.smtp.security = "none" would send mail and passwords in plaintext to '
                f'{config.host!r}: allowed only for a loopback host; use "tls" or "starttls"'
            )
        if config.max_connections < 1:
            raise ConfigError(
                f"mail.smtp.max_connections must be >= 1, not {config.max_connections}"
            )
        self.config = config
        self._where = f"{config.host}:{config.port}"
        self._tls = build_tls_context(config.ca_file) if config.security != "none" else None
        self._sleep = sleep
        self._backoff = backoff
        self._rate = RateLimiter(config.rate_per_second, clock=clock, sleep=sleep)
        self._slots = asyncio.Semaphore(config.max_connections)
        self._idle: list[Wire] = []
        self.connections_opened = 0  # for status and benchmarks

    @property
    def pool_size(self) -> int:
        return self.config.max_connections

    @property
    def claim_lease(self) -> dt.timedelta:
        """As long as one message can take, not a whole retry ladder (a drain renews the
        lease while a send goes on): the rate cap's wait for a whole pool, connecting
        (TCP, greeting, EHLO, STARTTLS, AUTH), the envelope's replies, each within
        `timeout`, and the final reply within `data_timeout`; at least 5 s."""
        rate = self.config.rate_per_second
        queue = self.config.max_connections / rate if rate > 0 else 0.0
        worst = queue + self.config.timeout * HANDSHAKE_STEPS + self.config.data_timeout
        return max(MIN_LEASE, dt.timedelta(seconds=worst))

    @property
    def claim_batch(self) -> int:
        """How many digests a drain holds claimed at once: CLAIMS_PER_CONNECTION for each
        connection, at most MAX_CLAIM_BATCH, and under a rate cap no more than a second of
        sending; never fewer than two per connection (one being sent, the next ready)."""
        pool = self.config.max_connections
        batch = min(MAX_CLAIM_BATCH, pool * CLAIMS_PER_CONNECTION)
        rate = self.config.rate_per_second
        if rate > 0:
            batch = min(batch, math.ceil(rate))
        return max(2 * pool, batch)

    async def __aenter__(self) -> SmtpTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """QUIT every idle connection (best effort: the server may be gone)."""
        idle, self._idle = self._idle, []
        for wire in idle:
            await wire.aclose()

    async def send(
        self,
        sender: str,
        recipient: str,
        message: bytes,
        hold: Hold | None = None,
    ) -> str:
        """Hand one message over; return the server's reply to DATA. The final dot waits
        for `hold()` (see Wire.transact): if it raises, so does this, nothing delivered.

        Raises PermanentDeliveryError (5xx for this message), MailServerUnavailableError
        (cannot connect, TLS or AUTH refused), MaybeDeliveredError (the final reply never
        came: not retried here, the server may have it) or TransientDeliveryError (4xx or
        dropped connections on every try).
        """
        async with self._slots:
            last: _Retryable | None = None
            for attempt in range(self.config.retries + 1):
                if attempt:
                    await self._sleep(self._backoff * 2 ** (attempt - 1))
                await self._rate.wait()
                try:
                    return await self._send_once(sender, recipient, message, hold)
                except _Retryable as retry:
                    last = retry
            assert last is not None  # the loop runs at least once
            raise last.error from last.__cause__

    async def _send_once(
        self, sender: str, recipient: str, message: bytes, hold: Hold | None
    ) -> str:
        try:
            envelope = envelope_address(sender), envelope_address(recipient)
        except ValueError as e:
            raise PermanentDeliveryError(f"{recipient}: {self._where} cannot take it: {e}") from e
        wire = await self._checkout()
        try:
            reply = await wire.transact(*envelope, to_wire(message), hold)
        except Refused as e:
            if e.code == 421 or not wire.is_connected:  # 421: the server is closing
                wire.close()
            else:
                self._idle.append(wire)  # the envelope was reset; the connection is fine
            raise self._classify(e.code, e.text, recipient) from e
        except asyncio.CancelledError:
            wire.close()  # mid-transaction: this connection cannot carry another message
            raise
        except Unanswered as e:  # closed: its late reply must not answer the next message
            wire.close()
            raise MaybeDeliveredError(
                f"{recipient}: {self._where} took the whole message but gave {e}; "
                "it may have been delivered"
            ) from e
        except Dropped as e:  # the wire closed itself
            raise _Retryable(
                TransientDeliveryError(
                    f"{self._where} dropped the connection sending to {recipient}: {e}"
                )
            ) from e
        self._idle.append(wire)
        return f"250 {reply}"

    def _classify(self, code: int, text: str, recipient: str) -> Exception:
        reply = f"{recipient}: {self._where} replied {code} {text}"
        if 500 <= code < 600:
            return PermanentDeliveryError(reply)
        return _Retryable(TransientDeliveryError(reply))

    async def _checkout(self) -> Wire:
        """A connected client: an idle one from the pool, or a new one."""
        while self._idle:
            wire = self._idle.pop()
            if wire.is_connected:
                return wire
            wire.close()  # the server closed it while idle
        return await self._connect()

    async def _connect(self) -> Wire:
        """A new connection, through TLS, EHLO and AUTH (aiosmtplib), handed to a Wire."""
        config = self.config
        client = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            use_tls=config.security == "tls",
            start_tls=config.security == "starttls",  # True: required, no plaintext fallback
            tls_context=self._tls,
            timeout=config.timeout,
        )
        try:
            await client.connect()
            if config.username is not None:
                await client.login(config.username, config.password or "")
            if client.is_ehlo_or_helo_needed:  # no STARTTLS or AUTH made it greet yet
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()  # an SMTP server from before ESMTP
        except aiosmtplib.SMTPAuthenticationError as e:
            client.close()
            raise MailServerUnavailableError(
                f"{self._where} refused AUTH as {config.username!r}: {e.code} {e.message}"
            ) from e
        except (
            aiosmtplib.SMTPConnectError,
            aiosmtplib.SMTPTimeoutError,
            aiosmtplib.SMTPServerDisconnected,
            OSError,
        ) as e:
            client.close()
            if _tls_failure(e) is not None:
                raise MailServerUnavailableError(
                    f"TLS with {self._where} failed: {_tls_failure(e)}"
                ) from e
            raise _Retryable(
                MailServerUnavailableError(f"cannot connect to {self._where}: {e}")
            ) from e
        except aiosmtplib.SMTPException as e:  # STARTTLS or AUTH not offered, ...
            client.close()
            raise MailServerUnavailableError(f"{self._where}: {e}") from e
        try:
            wire = Wire.take_over(client, config.timeout, config.data_timeout)
        except Dropped as e:
            client.close()
            raise _Retryable(
                MailServerUnavailableError(f"cannot connect to {self._where}: {e}")
            ) from e
        self.connections_opened += 1
        return wire


def _tls_failure(error: BaseException) -> ssl.SSLError | None:
    """The ssl error somewhere in `error`'s cause chain (certificate not trusted, ...)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
