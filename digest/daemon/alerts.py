"""Admin alerts when polling keeps failing: one alert, then one recovery notice.

Owns: the alert state machine (`step_alert`, pure), keeping its state in the store's
meta table so a restart neither re-alerts nor forgets an alert that is out
(`load_alert_state`, `save_alert_state`), the alert's text (`alert_text`, pure), and
queueing it in the outbox like any digest (`queue_alert`), so it is retried and never lost.
`record_poll` is the one call the daemon makes after each poll.

Does not own: polling (polling.py), sending (drain.py drains the outbox), the
config (`[alerts] email`, `after_failed_polls`).

The state machine, with N = after_failed_polls::

    ok poll, no alert out       -> counter reset, nothing sent
    failed poll                 -> counter + 1, its errors remembered (the last few)
    the N-th failure in a row   -> ONE alert (the alert is now "out")
    more failures, alert out    -> nothing more
    ok poll, alert out          -> ONE recovery notice, counter reset

An alert is queued before its state is saved: a crash in between repeats it once at
worst, it never loses one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum

from sqlalchemy import Engine
from sqlmodel import Session

from digest import store
from digest.config import Config
from digest.humanize import count
from digest.mail.dkim import sign_message
from digest.pipeline import envelope_sender
from digest.render import render_plain_message
from digest.store import outbox

log = logging.getLogger(__name__)

KEEP_ERRORS = 10  # error lines carried into the alert
META_KEY = "alerts"  # the state as JSON: counter, whether an alert is out, errors


class AlertAction(Enum):
    ALERT = "alert"
    RECOVERY = "recovery"


@dataclass(frozen=True)
class AlertState:
    failed_polls: int = 0  # consecutive failed polls
    alert_out: bool = False  # an alert was sent and no recovery yet
    first_failed_at: dt.datetime | None = None  # the first failure of the current run
    last_errors: tuple[str, ...] = ()  # the most recent error lines, oldest first


def step_alert(
    state: AlertState,
    *,
    ok: bool,
    errors: Sequence[str],
    threshold: int,
    now: dt.datetime,
) -> tuple[AlertState, AlertAction | None]:
    """The state after one poll, and what to send (if anything). Pure.

    `threshold` < 1 turns alerts off (the counter still runs, nothing is sent)."""
    if ok:
        action = AlertAction.RECOVERY if state.alert_out else None
        return AlertState(), action
    failed = state.failed_polls + 1
    kept = (*state.last_errors, *errors)[-KEEP_ERRORS:]
    new = replace(
        state,
        failed_polls=failed,
        first_failed_at=state.first_failed_at or now,
        last_errors=kept,
    )
    if threshold >= 1 and failed >= threshold and not state.alert_out:
        return replace(new, alert_out=True), AlertAction.ALERT
    return new, None


def alert_text(
    action: AlertAction, state: AlertState, *, source: str, config_path: str, now: dt.datetime
) -> tuple[str, str]:
    """(subject, body) of an alert or a recovery notice. Pure. `state` is the state
    before a recovery (so it still holds the failures) and after an alert."""
    since = state.first_failed_at.isoformat(timespec="seconds") if state.first_failed_at else "?"
    if action is AlertAction.ALERT:
        subject = f"papers-digest: {count(state.failed_polls, 'poll')} of {source} failed in a row"
        lines = [
            f"papers-digest could not poll {source} {count(state.failed_polls, 'time')} in a row,",
            f"first at {since}, last at {now.isoformat(timespec='seconds')}.",
            "",
            "The daemon keeps running and keeps trying; digests go out with what is stored.",
            "You get one more email when a poll works again.",
            "",
            "Last errors:",
            *(f"  {e}" for e in state.last_errors),
        ]
    else:
        subject = f"papers-digest: polling {source} works again"
        lines = [
            f"A poll of {source} worked again at {now.isoformat(timespec='seconds')},",
            f"after {count(state.failed_polls, 'failed poll')} since {since}.",
        ]
    lines += ["", f"config: {config_path}"]
    return subject, "\n".join(lines) + "\n"


def load_alert_state(engine: Engine) -> AlertState:
    """The stored state (one JSON meta value, so it is saved atomically)."""
    with Session(engine) as session:
        text = store.get_meta(session, META_KEY)
    if not text:
        return AlertState()
    data = json.loads(text)
    since = data.get("first_failed_at")
    return AlertState(
        failed_polls=int(data.get("failed_polls", 0)),
        alert_out=bool(data.get("alert_out", False)),
        first_failed_at=dt.datetime.fromisoformat(since) if since else None,
        last_errors=tuple(data.get("last_errors", ())),
    )


def save_alert_state(engine: Engine, state: AlertState) -> None:
    data = {
        "failed_polls": state.failed_polls,
        "alert_out": state.alert_out,
        "first_failed_at": state.first_failed_at.isoformat() if state.first_failed_at else None,
        "last_errors": list(state.last_errors),
    }
    with Session(engine) as session:
        store.set_meta(session, META_KEY, json.dumps(data))  # commits


def queue_alert(
    engine: Engine, config: Config, action: AlertAction, state: AlertState, now: dt.datetime
) -> int | None:
    """Put the alert in the outbox for `config.alerts.email`; None without an address."""
    to_addr = config.alerts.email
    if not to_addr:
        return None
    subject, body = alert_text(
        action, state, source=config.source.base_url, config_path=str(config.path), now=now
    )
    message = render_plain_message(
        from_addr=config.mail.from_addr, to_addr=to_addr, subject=subject, body=body, now=now
    )
    data = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))  # as digests
    return outbox.add_digest(
        engine,
        subscriber=f"alert:{to_addr}",
        slot=now,
        recipient=to_addr,
        sender=envelope_sender(config.mail.from_addr),
        message_id=str(message["Message-ID"]),
        subject=subject,
        paper_ids=[],
        message=sign_message(data, config.mail.dkim),  # signed like every digest
        now=now,
    )


def record_poll(
    engine: Engine, config: Config, *, ok: bool, errors: Sequence[str], now: dt.datetime
) -> AlertAction | None:
    """Advance the stored alert state by one poll; queue an alert or recovery if due."""
    before = load_alert_state(engine)
    after, action = step_alert(
        before, ok=ok, errors=errors, threshold=config.alerts.after_failed_polls, now=now
    )
    if action is not None:
        told = before if action is AlertAction.RECOVERY else after
        queued = queue_alert(engine, config, action, told, now)
        where = f"to {config.alerts.email}" if queued else "not mailed: no [alerts] email"
        log.warning(
            "%s after %s (%s)",
            "alert" if action is AlertAction.ALERT else "recovery",
            count(told.failed_polls, "failed poll"),
            where,
        )
    if after != before:
        save_alert_state(engine, after)
    return action
