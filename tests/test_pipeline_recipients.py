"""Planning under the recipients' own choices, which override the file: no digest for an
unsubscribed or paused address (the slot is skipped, never caught up), muted topics left
out, signed links in what goes out. SQLite and PostgreSQL, the real 2025-10-01 list."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text

from digest import pipeline, store
from digest.config import Config, Subscriber, Topic, WebConfig
from digest.schedule import parse_schedule
from digest.sources.hf_api import parse_api
from digest.store import claims, outbox, recipients
from digest.web.tokens import Purpose, Tokens
from tests.backends import Backend
from tests.store_helpers import plan_all
from tests.testdata import HF

BERLIN = ZoneInfo("Europe/Berlin")
ADA, BOB = "ada@example.org", "bob@example.org"
WEB = WebConfig(secret="s" * 32, base_url="https://digest.example.org")


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=BERLIN).astimezone(dt.UTC)


def person(email: str) -> Subscriber:
    return Subscriber(
        email=email,
        schedule=parse_schedule("daily 08:00"),
        timezone="Europe/Berlin",
        topics=(Topic("Agents", "agent*"), Topic("Video", "video")),
        send_empty=True,
    )


@pytest.fixture
def planner(tmp_path: Path, backend: Backend) -> pipeline.Planner:
    engine = backend.engine()
    body = (HF / "api-daily_papers-2025-10-01.json").read_bytes()
    for n in range(0, 40):
        day = dt.date(2026, 3, 12) + dt.timedelta(days=n)
        store.upsert_listings(engine, day, parse_api(body, day), at("2026-03-12 00:00"))
    config = Config(path=tmp_path / "digest.toml", subscribers=(person(ADA), person(BOB)),
                    web=WEB)  # fmt: skip
    return pipeline.Planner(config, engine)


def plan(planner: pipeline.Planner, now: str) -> dict[str, pipeline.PlannedDigest]:
    fresh = pipeline.Planner(planner.config, planner.engine)  # one Planner per run
    planned = plan_all(fresh, planner.config.subscribers, at(now), daemon=False)
    return {p.subscriber.email: p for p in planned}


def test_an_unsubscribed_address_gets_no_digest_and_its_slots_are_handled(
    planner: pipeline.Planner,
) -> None:
    recipients.suppress(planner.engine, ADA, "one-click", at("2026-03-13 07:00"))
    got = plan(planner, "2026-03-13 09:00")
    assert got[ADA].skipped == "unsubscribed" and got[ADA].digest_id is None
    assert got[BOB].skipped is None and got[BOB].digest_id is not None
    with planner.engine.connect() as conn:
        subscribers = conn.execute(text("SELECT subscriber FROM digests")).all()
    assert subscribers == [(BOB,)]
    # the slot counts as handled: resubscribing later does not fold the weeks back in
    recipients.resubscribe(planner.engine, ADA, at("2026-03-20 12:00"))
    later = plan(planner, "2026-03-21 09:00")
    assert later[ADA].digest_id is not None
    assert later[ADA].window[0] >= dt.date(2026, 3, 13)


def test_a_pause_skips_its_slots_and_they_are_not_caught_up(planner: pipeline.Planner) -> None:
    start = at("2026-03-13 07:00")
    recipients.set_pause(planner.engine, ADA, start + dt.timedelta(weeks=2), start)
    for day in range(13, 27):  # every daily slot inside the two weeks
        got = plan(planner, f"2026-03-{day} 09:00")
        assert got[ADA].skipped == "paused" and got[ADA].digest_id is None
        assert got[BOB].digest_id is not None
    after = plan(planner, "2026-03-27 09:00")
    assert after[ADA].digest_id is not None
    first, last = after[ADA].window  # its own window, not the two weeks
    assert (last - first).days <= 2


def test_muted_topics_are_left_out(planner: pipeline.Planner) -> None:
    recipients.set_muted(planner.engine, ADA, ["Agents"], at("2026-03-13 07:00"))
    got = plan(planner, "2026-03-13 09:00")
    assert got[ADA].matches and all(m.topics == ("Video",) for m in got[ADA].matches)
    assert any("Agents" in m.topics for m in got[BOB].matches)


def test_digests_carry_each_recipients_signed_links(planner: pipeline.Planner) -> None:
    got = plan(planner, "2026-03-13 09:00")
    keys = recipients.ensure_recipients(planner.engine, [ADA, BOB], at("2026-03-13 09:00"))
    assert keys[ADA] != keys[BOB]
    claimed = {i.id: i for i in claims.claim_due(planner.engine, at("2026-03-13 09:00"), 10)}
    for who in (ADA, BOB):
        digest_id = got[who].digest_id
        assert digest_id is not None
        item = claimed[digest_id]
        msg = email.message_from_bytes(item.message, policy=email.policy.default)
        one_click, mailto = [u.strip(" <>") for u in str(msg["List-Unsubscribe"]).split(",")]
        assert one_click.startswith("https://digest.example.org/u/")
        assert mailto == "mailto:digest@localhost?subject=unsubscribe"
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        token = one_click.rsplit("/", 1)[1]
        assert Tokens(WEB.secret).read(Purpose.UNSUBSCRIBE, token) == keys[who]
        assert who.split("@")[0] not in one_click


def test_without_web_no_link_keys_are_made(planner: pipeline.Planner) -> None:
    from dataclasses import replace

    bare = pipeline.Planner(replace(planner.config, web=None), planner.engine)
    now = at("2026-03-13 09:00")
    report = pipeline.plan_due(bare, bare.config.subscribers, now, daemon=False)
    assert report.due == report.written == 2
    assert recipients.recipients_of(planner.engine, [ADA, BOB]) == {}


def test_an_unsubscribe_that_raced_planning_is_cancelled(planner: pipeline.Planner) -> None:
    got = plan(planner, "2026-03-13 09:00")
    assert got[ADA].digest_id is not None
    # the suppression lands without its own cancel (as if committed mid-render) ...
    with planner.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO suppressions (email, suppressed_at, how) VALUES (:e, :t, 'page')"),
            {"e": ADA, "t": at("2026-03-13 09:00")},
        )
    # ... and the end of planning cancels what it missed
    assert recipients.cancel_suppressed(planner.engine, [ADA, BOB], at("2026-03-13 09:01")) == 1
    counts = outbox.outbox_counts(planner.engine)
    assert counts["cancelled"] == 1 and counts["pending"] == 1
