"""/p/TOKEN: the preferences page. Pause for 1, 2 or 4 weeks, mute a topic, unsubscribe,
resubscribe; plain forms that POST `action` to the same URL, no JavaScript.

A POST answers 200 with the page as it now is and a line saying what changed (no
redirect needed: there is nothing to re-submit by accident that would do harm, each
action sets a state rather than toggling it). A bad token is 400, an unknown action,
pause length or topic is 400, and nothing changes.

Owns these handlers and the words of their notices. Does not own what a pause or a
muted topic does to planning (`digest/pipeline.py`) or their SQL (`store/recipients.py`).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from aiohttp import web

from digest.store import recipients
from digest.web.context import CONTEXT, WebContext
from digest.web.tokens import Purpose
from digest.web.unsubscribe import read_form

log = logging.getLogger("digest.web")

PAUSE_WEEKS = (1, 2, 4)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/p/{token}", show, allow_head=False)
    app.router.add_post("/p/{token}", change)


async def show(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    recipient = await context.recipient_for(Purpose.PREFERENCES, request.match_info["token"])
    return page(context, recipient, notice=None)


async def change(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    recipient = await context.recipient_for(Purpose.PREFERENCES, request.match_info["token"])
    form = await read_form(request)
    action = form.get("action", "")
    email, engine, now = recipient.email, context.engine, context.clock()
    subscriber = context.subscriber(email)
    topics = [t.name for t in subscriber.topics] if subscriber else []
    if action == "pause":
        weeks = _weeks(form.get("weeks", ""))
        until = now + dt.timedelta(weeks=weeks)
        await context.db(recipients.set_pause, engine, email, until, now)
        plural = "" if weeks == 1 else "s"
        notice = f"Paused for {weeks} week{plural}, until {_day(context, email, until)}."
    elif action == "resume":
        await context.db(recipients.set_pause, engine, email, None, now)
        notice = "Resumed: your next digest comes at its usual time."
    elif action in ("mute", "unmute"):
        topic = form.get("topic", "")
        if topic not in topics:
            raise web.HTTPBadRequest(reason="no such topic")
        muted = set(recipient.muted) & set(topics)
        muted = muted | {topic} if action == "mute" else muted - {topic}
        await context.db(recipients.set_muted, engine, email, muted, now)
        notice = f"{'Muted' if action == 'mute' else 'Unmuted'} “{topic}”."
    elif action == "unsubscribe":
        await context.db(recipients.suppress, engine, email, "page", now)
        notice = "Unsubscribed: no more digests go to this address."
    elif action == "resubscribe":
        await context.db(recipients.resubscribe, engine, email, now)
        notice = "Resubscribed: digests start again with the next one on your schedule."
    else:
        raise web.HTTPBadRequest(reason="unknown action")
    log.info("web: %s %s", email, action)
    fresh = await context.db(recipients.recipient_by_key, engine, recipient.key)
    return page(context, fresh or recipient, notice=notice)


def _weeks(text: str) -> int:
    if not text.isdigit() or int(text) not in PAUSE_WEEKS:
        raise web.HTTPBadRequest(reason="pause for 1, 2 or 4 weeks")
    return int(text)


def _day(context: WebContext, email: str, instant: dt.datetime) -> str:
    subscriber = context.subscriber(email)
    local = instant.astimezone(subscriber.zone) if subscriber else instant
    return f"{local:%a %-d %b %Y}"


def page(
    context: WebContext, recipient: recipients.Recipient, *, notice: str | None
) -> web.Response:
    subscriber = context.subscriber(recipient.email)
    now = context.clock()
    extra: dict[str, Any] = {}
    if subscriber is None:
        extra["schedule"] = "this address is no longer on the list"
        extra["topics"] = []
    else:
        extra["schedule"] = f"{subscriber.schedule.text} ({subscriber.timezone})"
        extra["topics"] = [
            {"name": t.name, "muted": t.name in recipient.muted} for t in subscriber.topics
        ]
    paused = recipient.paused_until if recipient.paused_at(now) else None
    suppressed = None
    if recipient.suppressed_at is not None:
        suppressed = _day(context, recipient.email, recipient.suppressed_at)
    return context.page(
        "preferences.html.j2",
        title="Your digest preferences",
        email=recipient.email,
        notice=notice,
        suppressed=suppressed,
        paused_until=_day(context, recipient.email, paused) if paused else None,
        weeks=PAUSE_WEEKS,
        unsubscribe_url=context.links.for_key(recipient.key).unsubscribe,
        feed_url=context.links.feed(recipient.key),
        feed_only=subscriber is not None and subscriber.delivery == "feed",
        **extra,
    )
