"""Lease upkeep: renewing, handing back and taking over the leases on claimed digests.

A digest claimed by a drain (claims.py) is leased: ``next_attempt_at = now + lease``,
and the owner process (host, pid, start time: owner.py) in ``lease_host``,
``lease_pid``, ``lease_started``. Owns: renewing a drain's leases while it holds them
(`renew_leases`), handing unsent ones back at once (`release`), counting what others
hold or are claiming (`held_elsewhere`), and taking over at once the leases of a
process on this host that is gone (`take_over_dead_leases`: kill -9), so a rerun right
after a crash sends them; the leases of other hosts run out.

Does not own: claiming and recording outcomes (claims.py), who a process is and whether
it runs (owner.py). Every function takes ``now``; none reads the clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable

from sqlalchemy import Engine, bindparam, func, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import SQLAlchemyError

from digest.models import DigestRow
from digest.records import as_utc
from digest.store.engine import write_bind
from digest.store.outbox import NO_LEASE, PENDING, store_error
from digest.store.owner import Owner, is_running, this_process

_DIGESTS = DigestRow.__table__  # type: ignore[attr-defined]  # SQLModel types no __table__
_RELEASE = (
    update(_DIGESTS)
    .where(
        _DIGESTS.c.id.in_(bindparam("ids", expanding=True)),
        _DIGESTS.c.status == PENDING,
        _DIGESTS.c.lease_host == bindparam("host"),
        _DIGESTS.c.lease_pid == bindparam("pid"),
    )
    .values(next_attempt_at=None, **NO_LEASE)
)


def renew_leases(
    engine: Engine,
    digest_ids: Collection[int],
    now: dt.datetime,
    lease: dt.timedelta,
    owner: Owner | None = None,
) -> int:
    """Extend the leases `owner` (default: this process) holds on `digest_ids` to
    ``now + lease``: a send that goes on (a retry inside it) keeps its digest. Returns
    how many leases were renewed (a row sent, retried or taken over meanwhile is not)."""
    if not digest_ids:
        return 0
    me = owner or this_process()
    statement = (
        update(_DIGESTS)
        .where(
            _DIGESTS.c.id.in_(sorted(digest_ids)),
            _DIGESTS.c.status == PENDING,
            _DIGESTS.c.lease_host == me.host,
            _DIGESTS.c.lease_pid == me.pid,
        )
        .values(next_attempt_at=as_utc(now) + lease)
    )
    try:
        with write_bind(engine).begin() as conn:
            return int(conn.execute(statement).rowcount)
    except SQLAlchemyError as e:
        raise store_error(engine, "renew leases", e) from e


def held_elsewhere(
    engine: Engine, now: dt.datetime, owner: Owner | None = None
) -> tuple[int, int]:
    """(leased, due): how many pending digests another process (not `owner`, default this
    one) holds a lease on now (being sent there, or held by a process gone on another
    host until its lease ends), and how many are due now. Asked by a drain that claimed
    all it could: a due one it did not get is being claimed elsewhere (PostgreSQL skips
    the rows another claim has locked and not committed yet), or was handed back since."""
    me = owner or this_process()
    pending = _DIGESTS.c.status == PENDING
    query = sa_select(
        func.count().filter(
            pending,
            _DIGESTS.c.lease_pid.is_not(None),
            _DIGESTS.c.next_attempt_at > as_utc(now),
            or_(_DIGESTS.c.lease_host != me.host, _DIGESTS.c.lease_pid != me.pid),
        ),
        func.count().filter(
            pending,
            or_(_DIGESTS.c.next_attempt_at.is_(None), _DIGESTS.c.next_attempt_at <= as_utc(now)),
        ),
    )
    try:
        with engine.connect() as conn:
            leased, due = conn.execute(query).one()
    except SQLAlchemyError as e:
        raise store_error(engine, "count the digests other processes are sending", e) from e
    return int(leased), int(due)


def take_over_dead_leases(engine: Engine, now: dt.datetime, host: str | None = None) -> int:
    """Hand back at once the leases held by processes of this host that are gone (killed,
    crashed: a pid that no longer runs, or runs a younger process): those digests are due
    now, not when the lease would end. Leases of live processes and of other hosts are
    left to run out. Returns how many digests were handed back."""
    host = host if host is not None else this_process().host
    me = this_process()
    held = (
        sa_select(_DIGESTS.c.lease_pid, _DIGESTS.c.lease_started)
        .where(
            _DIGESTS.c.status == PENDING,
            _DIGESTS.c.lease_host == host,
            _DIGESTS.c.lease_pid.is_not(None),
            _DIGESTS.c.next_attempt_at > as_utc(now),
        )
        .distinct()
    )
    taken = 0
    try:
        with write_bind(engine).begin() as conn:
            for pid, started in conn.execute(held).all():
                holder = Owner(host, int(pid), started or "")
                if holder == me or is_running(holder):
                    continue
                taken += conn.execute(
                    update(_DIGESTS)
                    .where(
                        _DIGESTS.c.status == PENDING,
                        _DIGESTS.c.lease_host == host,
                        _DIGESTS.c.lease_pid == pid,
                        _DIGESTS.c.lease_started == started,
                    )
                    .values(next_attempt_at=None, **NO_LEASE)
                ).rowcount
    except SQLAlchemyError as e:
        raise store_error(engine, "take over the leases of dead processes", e) from e
    return taken


def release(engine: Engine, digest_ids: Iterable[int], owner: Owner | None = None) -> None:
    """Hand claimed but unsent digests back: due again at once (a stop before sending).
    Only the pending rows `owner` (default: this process) still holds are touched."""
    ids = sorted(digest_ids)
    if not ids:
        return
    me = owner or this_process()
    try:
        with write_bind(engine).begin() as conn:
            conn.execute(_RELEASE, {"ids": ids, "host": me.host, "pid": me.pid})
    except SQLAlchemyError as e:
        raise store_error(engine, "release claimed digests", e) from e
