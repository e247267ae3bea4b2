"""A group commit on PostgreSQL in two round trips: claims.py's `Settler.settle` there.

Owns the PostgreSQL form of one settle: the same transaction as claims.py's portable
statements (record every outcome, tell which held digests are gone, claim and lease the
next batch), written so that no statement needs another's result first, and sent
through psycopg's pipeline mode: BEGIN and every statement go in one round trip, the
COMMIT in a second (after the results are checked: a sent digest that does not exist
rolls it all back). Each kind of outcome is ONE statement over arrays (``unnest``), not
one per row; recording "sent" writes the DeliveryRows in the same statement, from the
rows it marks (``UPDATE ... RETURNING`` feeding an INSERT), with no SELECT first; the
claim locks, leases and returns its rows in one statement (``FOR UPDATE SKIP LOCKED``
feeding ``UPDATE ... RETURNING``).

Does not own: the portable statements, the SQLite path, the connection's life and the
errors' wording (claims.py). Takes ``now`` and every value from the caller.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from digest.errors import StoreError
from digest.store.outbox import FAILED, PENDING, SENT, OutboxItem
from digest.store.owner import Owner

if TYPE_CHECKING:  # claims.py imports this module
    from digest.store.claims import Ask

RETRY, MAYBE = "retry", "maybe"  # claims.py's Outcome kinds besides SENT and FAILED

_NO_LEASE = "lease_host = NULL, lease_pid = NULL, lease_started = NULL"
# A sent digest is recorded as sent whatever happened meanwhile (it was sent), with its
# papers delivered to its subscriber (a paper sent again keeps its first delivery); a
# retry, maybe or failure changes only a pending row; every outcome clears the lease.
_SENT = (
    "WITH marked AS (UPDATE digests d SET status = 'sent', sent_at = %s, "
    f"last_reply = o.reply, next_attempt_at = NULL, {_NO_LEASE} "
    "FROM unnest(%s::integer[], %s::text[]) AS o(id, reply) WHERE d.id = o.id "
    "RETURNING d.id, d.subscriber, d.paper_ids_json), "
    "delivered AS (INSERT INTO deliveries (subscriber, paper_id, digest_id, delivered_at) "
    "SELECT m.subscriber, p.paper_id, m.id, %s FROM marked m "
    "CROSS JOIN LATERAL json_array_elements_text(m.paper_ids_json::json) AS p(paper_id) "
    "ON CONFLICT DO NOTHING) "
    "SELECT id FROM marked"
)
_PENDING_ONLY = f"WHERE d.id = o.id AND d.status = '{PENDING}'"
_RETRY = (
    "UPDATE digests d SET attempts = d.attempts + 1, last_reply = o.reply, "
    f"next_attempt_at = o.due, {_NO_LEASE} "
    "FROM unnest(%s::integer[], %s::text[], %s::timestamptz[]) AS o(id, reply, due) "
    + _PENDING_ONLY
)
_MAYBE = (
    "UPDATE digests d SET attempts = d.attempts + 1, last_reply = o.reply, "
    f"next_attempt_at = o.due, maybe_sent_at = %s, {_NO_LEASE} "
    "FROM unnest(%s::integer[], %s::text[], %s::timestamptz[]) AS o(id, reply, due) "
    + _PENDING_ONLY
)
_FAILED = (
    f"UPDATE digests d SET status = '{FAILED}', attempts = d.attempts + 1, "
    f"last_reply = o.reply, next_attempt_at = NULL, {_NO_LEASE} "
    "FROM unnest(%s::integer[], %s::text[]) AS o(id, reply) " + _PENDING_ONLY
)
_NOT_HELD = (
    f"SELECT id FROM digests WHERE id = ANY(%s::integer[]) AND (status <> '{PENDING}' "
    "OR lease_pid IS NULL OR lease_host <> %s OR lease_pid <> %s)"
)
# OutboxItem's fields, in order; ix_digests_pending walks the pending rows alone in id
# order (the primary key walked past every digest sent before: O(n^2) over a drain), and
# only a digest with its message is claimed
_CLAIM = (
    "WITH due AS (SELECT d.id FROM digests d JOIN digest_messages m ON m.digest_id = d.id "
    f"WHERE d.status = '{PENDING}' AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= %s) "
    "AND NOT (d.id = ANY(%s::integer[])) ORDER BY d.id LIMIT %s FOR UPDATE OF d SKIP LOCKED), "
    "leased AS (UPDATE digests d SET next_attempt_at = %s, lease_host = %s, lease_pid = %s, "
    "lease_started = %s FROM due WHERE d.id = due.id RETURNING d.id, d.recipient, d.sender, "
    "d.attempts, d.message_id, d.maybe_sent_at IS NOT NULL AS maybe) "
    "SELECT l.id, l.recipient, l.sender, m.message, l.attempts, l.message_id, l.maybe "
    "FROM leased l JOIN digest_messages m ON m.digest_id = l.id ORDER BY l.id"
)


class Outcome(Protocol):  # what this module reads of claims.Outcome (no import cycle)
    @property
    def digest_id(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def reply(self) -> str: ...
    @property
    def delay(self) -> dt.timedelta: ...


def settle(
    connection: Any,
    owner: Owner,
    outcomes: Sequence[Outcome],
    now: dt.datetime,
    ask: Ask,
) -> tuple[list[OutboxItem], frozenset[int]]:
    """One settle on `connection` (a psycopg Connection, in a transaction of its own):
    record `outcomes`, then do what `ask` says (claims.Ask). Returns the claimed digests
    and the held ones gone. Commits; the caller rolls back on error."""
    by_kind: dict[str, list[Outcome]] = {}
    for outcome in outcomes:
        by_kind.setdefault(outcome.kind, []).append(outcome)
    with connection.pipeline():
        sent = None
        statements: list[tuple[str, list[Any]]] = []
        if group := by_kind.get(SENT):
            sent = connection.cursor()
            ids, replies = [o.digest_id for o in group], [o.reply for o in group]
            sent.execute(_SENT, [now, ids, replies, now])
        if group := by_kind.get(RETRY):
            statements.append((_RETRY, [*_columns(group, now)]))
        if group := by_kind.get(MAYBE):
            statements.append((_MAYBE, [now, *_columns(group, now)]))
        if group := by_kind.get(FAILED):
            statements.append((_FAILED, [[o.digest_id for o in group], [o.reply for o in group]]))
        for sql, params in statements:
            connection.cursor().execute(sql, params)
        gone_cursor = claim_cursor = None
        if ask.held:
            gone_cursor = connection.cursor()
            gone_cursor.execute(_NOT_HELD, [sorted(ask.held), owner.host, owner.pid])
        if ask.claim > 0:
            claim_cursor = connection.cursor()
            until = now + ask.lease
            excluded = sorted({*ask.skip, *ask.held})
            claim_cursor.execute(
                _CLAIM, [now, excluded, ask.claim, until, owner.host, owner.pid, owner.started]
            )
        if sent is not None:
            found = {int(digest_id) for (digest_id,) in sent.fetchall()}  # the first sync
            missing = sorted({o.digest_id for o in by_kind[SENT]} - found)
            if missing:
                raise StoreError(f"outbox: digest {missing[0]} does not exist")
        gone = frozenset[int]()
        if gone_cursor is not None:
            gone = frozenset(int(digest_id) for (digest_id,) in gone_cursor.fetchall())
        claimed: list[OutboxItem] = []
        if claim_cursor is not None:
            claimed = [
                OutboxItem(int(i), r, s, bytes(m), int(a), mid, bool(maybe))
                for i, r, s, m, a, mid, maybe in claim_cursor.fetchall()
            ]
        connection.commit()
    return claimed, gone


def _columns(group: Sequence[Outcome], now: dt.datetime) -> tuple[list[Any], ...]:
    """A retry's or maybe's arrays: ids, replies, when each is due again."""
    return (
        [o.digest_id for o in group],
        [o.reply for o in group],
        [now + o.delay for o in group],
    )
