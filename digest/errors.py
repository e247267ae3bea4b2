"""Every error papers-digest raises on purpose, and the exit code each one maps to.

Third-party exceptions (httpx, SQLAlchemy, aiosmtplib, tomllib) are wrapped once,
at the edge that calls the library, with ``raise ... from e``. Nothing else in the
program catches a bare ``Exception`` to turn it into one of these.

The tree::

    DigestError                     exit 1 unless a subclass says otherwise
    ├── UsageError                  exit 2: bad command-line arguments
    ├── ConfigError                 exit 2: the subscription file is wrong (file, line, field)
    │   └── QuerySyntaxError        a topic query that does not parse (column + caret)
    ├── SourceError                 the Daily Papers source failed
    │   ├── FetchError              network, timeout, HTTP status, oversized body
    │   │   └── UnreachableError        the host cannot be reached at all (DNS, refused)
    │   └── ParseError              the body is not what the parser expects (layout change)
    ├── StoreError                  the database failed or has an unknown schema
    └── DeliveryError               mail could not be handed over
        ├── TransientDeliveryError  4xx, dropped connection, server down: retry later
        │   ├── MailServerUnavailableError  down, TLS or AUTH refused: stop the batch
        │   └── MaybeDeliveredError  no reply to the final dot in time: resend once, later
        └── PermanentDeliveryError  5xx for a recipient: record as failed, go on
"""

from __future__ import annotations


class DigestError(Exception):
    """Base of every error the program raises on purpose."""

    exit_code = 1


class UsageError(DigestError):
    exit_code = 2


class ConfigError(DigestError):
    """The config is invalid. ``problems`` holds every problem found, one line each."""

    exit_code = 2

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems if problems is not None else [message]


class QuerySyntaxError(ConfigError):
    """A topic query that does not parse; ``column`` is 1-based."""

    def __init__(self, message: str, query: str, column: int) -> None:
        super().__init__(message)
        self.query = query
        self.column = column

    def caret(self) -> str:
        """The query on one line and a caret under the offending column on the next."""
        return f"{self.query}\n{' ' * (self.column - 1)}^"


class SourceError(DigestError):
    pass


class FetchError(SourceError):
    pass


class UnreachableError(FetchError):
    """The source's host cannot be reached at all (its name does not resolve, the
    connection is refused): retrying, or fetching another day, would fail the same way."""


class ParseError(SourceError):
    pass


class StoreError(DigestError):
    pass


class DeliveryError(DigestError):
    pass


class TransientDeliveryError(DeliveryError):
    pass


class MaybeDeliveredError(TransientDeliveryError):
    """The whole message went out but the reply to its final dot never came: the server
    may have it. Never retried at once; the outbox resends it at most once, later."""


class PermanentDeliveryError(DeliveryError):
    pass


class MailServerUnavailableError(TransientDeliveryError):
    """The server takes no mail at all right now (unreachable, TLS or AUTH refused):
    every digest stays pending and the drain stops instead of trying each one."""
