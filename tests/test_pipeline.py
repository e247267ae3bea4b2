"""What is due, and which days a digest covers: the pure decisions of pipeline.py, and
plan_due over a real SQLite file (new subscribers, restarts, catch-up)."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlmodel import Session

from digest import pipeline, polling, store
from digest.config import Config, DaemonConfig, Subscriber, Topic
from digest.errors import StoreError
from digest.models import DigestRow
from digest.schedule import parse_schedule
from digest.sources.hf_api import parse_api
from digest.store import claims
from tests.backends import Backend
from tests.render_helpers import Html
from tests.store_helpers import plan_all
from tests.testdata import HF

BERLIN = ZoneInfo("Europe/Berlin")
DAILY_8 = parse_schedule("daily 08:00")


def at(text: str, tz: ZoneInfo = BERLIN) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=tz).astimezone(dt.UTC)


@pytest.mark.parametrize(
    ("now", "last_slot", "not_before", "catch_up", "expected"),
    [
        # the day's slot has passed and was not handled: due
        ("2026-03-10 09:00", None, None, None, "2026-03-10 08:00"),
        ("2026-03-10 08:00", None, None, None, "2026-03-10 08:00"),  # at the slot itself
        ("2026-03-10 07:59", None, None, None, "2026-03-09 08:00"),
        # handled already: nothing, however often asked
        ("2026-03-10 09:00", "2026-03-10 08:00", None, None, None),
        # the daemon first saw the subscriber after that slot: wait for the next one
        ("2026-03-10 09:00", None, "2026-03-10 08:30", None, None),
        ("2026-03-11 08:00", None, "2026-03-10 08:30", None, "2026-03-11 08:00"),
        # after downtime: the latest missed slot once, if within catch_up
        ("2026-03-13 09:00", "2026-03-10 08:00", None, dt.timedelta(hours=24), "2026-03-13 08:00"),
        ("2026-03-13 07:00", "2026-03-10 08:00", None, dt.timedelta(hours=12), None),
    ],
)
def test_due_slot(
    now: str,
    last_slot: str | None,
    not_before: str | None,
    catch_up: dt.timedelta | None,
    expected: str | None,
) -> None:
    got = pipeline.due_slot(
        DAILY_8,
        BERLIN,
        at(now),
        last_slot=at(last_slot) if last_slot else None,
        not_before=at(not_before) if not_before else None,
        catch_up=catch_up,
    )
    assert got == (at(expected) if expected else None)


def subscriber(email: str = "ada@example.org", **kw: object) -> Subscriber:
    fields: dict[str, object] = {
        "email": email,
        "schedule": DAILY_8,
        "timezone": "Europe/Berlin",
        "topics": (Topic("Agents", "agent*"),),
    }
    fields.update(kw)
    return Subscriber(**fields)  # type: ignore[arg-type]  # test data, checked by the call


def test_digest_days_is_the_window_stretched_back_to_missed_slots() -> None:
    slot = at("2026-03-13 08:00")
    d = dt.date
    assert pipeline.digest_days(subscriber(), slot, None) == (d(2026, 3, 12), d(2026, 3, 13))
    assert pipeline.digest_days(subscriber(window_days=5), slot, None) == (
        d(2026, 3, 9),
        d(2026, 3, 13),
    )
    # the last handled slot was three days earlier: its days are folded in
    assert pipeline.digest_days(subscriber(), slot, at("2026-03-10 08:00")) == (
        d(2026, 3, 10),
        d(2026, 3, 13),
    )
    # but never more than 31 days in all
    first, last = pipeline.digest_days(subscriber(), slot, at("2025-01-01 08:00"))
    assert (last - first).days + 1 == pipeline.MAX_FOLD_DAYS == 31
    # the watermark, where the previous digest's coverage stopped, wins over the slot
    assert pipeline.digest_days(subscriber(), slot, at("2026-03-12 08:00"), d(2026, 3, 7)) == (
        d(2026, 3, 7),
        d(2026, 3, 13),
    )
    # and never narrows the window: a watermark on the slot's own day covers the window
    assert pipeline.digest_days(subscriber(), slot, slot, d(2026, 3, 13)) == (
        d(2026, 3, 12),
        d(2026, 3, 13),
    )
    first, last = pipeline.digest_days(subscriber(), slot, None, d(2025, 1, 1))
    assert (first, last) == (d(2026, 2, 11), d(2026, 3, 13))  # capped at 31 days


def test_days_to_poll_is_today_and_the_lookback_oldest_first() -> None:
    now = dt.datetime(2026, 3, 1, 0, 30, tzinfo=dt.UTC)
    assert polling.days_to_poll(now, 2) == [
        dt.date(2026, 2, 27),
        dt.date(2026, 2, 28),
        dt.date(2026, 3, 1),
    ]


# --------------------------------------------------------------------------- plan_due


@pytest.fixture
def planner(tmp_path: Path, backend: Backend) -> pipeline.Planner:
    """A store holding the real 2025-10-01 list as listed on 2026-03-12 and 13."""
    engine = backend.engine()
    body = (HF / "api-daily_papers-2025-10-01.json").read_bytes()
    for day in (dt.date(2026, 3, 12), dt.date(2026, 3, 13)):
        store.upsert_listings(engine, day, parse_api(body, day), at("2026-03-13 00:00"))
    config = Config(
        path=tmp_path / "digest.toml",
        subscribers=(subscriber(),),
        daemon=DaemonConfig(catch_up=dt.timedelta(hours=24)),
    )
    return pipeline.Planner(config, engine)


def test_windows_with_the_same_candidates_share_one_index(planner: pipeline.Planner) -> None:
    d = dt.date
    # both lists hold the same papers: as of their latest listing, 13 March either way
    two_days = planner.index_for(d(2026, 3, 12), d(2026, 3, 13))
    assert planner.index_for(d(2026, 3, 7), d(2026, 3, 13)) is two_days
    assert planner.index_for(d(2026, 3, 13), d(2026, 3, 13)) is two_days
    only_12th = planner.index_for(d(2026, 3, 12), d(2026, 3, 12))  # listed on the 12th
    assert only_12th is not two_days and len(only_12th) == len(two_days)
    assert {p.listed_on for p in only_12th.papers} == {d(2026, 3, 12)}


def sent_ids(planner: pipeline.Planner, digest_id: int, now: dt.datetime) -> list[str]:
    """Mark a digest sent (as the outbox does) and return its paper ids."""
    (item,) = [i for i in claims.claim_due(planner.engine, now, 100) if i.id == digest_id]
    claims.mark_sent(planner.engine, item.id, "250 ok", now)
    with Session(planner.engine) as session:
        row = session.get(DigestRow, digest_id)
        assert row is not None
        return list(json.loads(row.paper_ids_json))


def test_send_mode_plans_the_latest_slot_once(planner: pipeline.Planner) -> None:
    subs = planner.config.subscribers
    now = at("2026-03-13 09:00")
    (first,) = plan_all(planner, subs, now, daemon=False)
    assert first.slot == at("2026-03-13 08:00") and first.digest_id is not None
    assert first.matches and all("Agents" in m.topics for m in first.matches)
    assert plan_all(planner, subs, now, daemon=False) == []
    assert plan_all(planner, subs, now + dt.timedelta(hours=3), daemon=False) == []


def test_dry_run_writes_nothing(planner: pipeline.Planner) -> None:
    subs = planner.config.subscribers
    now = at("2026-03-13 09:00")
    (dry,) = plan_all(planner, subs, now, daemon=False, write=False)
    assert dry.digest_id is None and dry.matches
    (real,) = plan_all(planner, subs, now, daemon=False)
    assert real.digest_id is not None and real.matches == dry.matches


def test_daemon_starts_a_new_subscriber_at_their_next_slot(planner: pipeline.Planner) -> None:
    subs = planner.config.subscribers
    assert plan_all(planner, subs, at("2026-03-13 09:00"), daemon=True) == []
    (next_day,) = plan_all(planner, subs, at("2026-03-14 08:00:01"), daemon=True)
    assert next_day.slot == at("2026-03-14 08:00")


def test_a_paper_is_never_offered_twice(planner: pipeline.Planner) -> None:
    subs = planner.config.subscribers
    (first,) = plan_all(planner, subs, at("2026-03-13 09:00"), daemon=False)
    assert first.digest_id is not None
    # still pending: the next slot's digest does not repeat its papers
    (second,) = plan_all(planner, subs, at("2026-03-14 09:00"), daemon=False)
    assert not {m.paper.id for m in first.matches} & {m.paper.id for m in second.matches}
    delivered = sent_ids(planner, first.digest_id, at("2026-03-14 09:00"))
    assert delivered == [m.paper.id for m in first.matches]
    (third,) = plan_all(planner, subs, at("2026-03-15 09:00"), daemon=False)
    assert not set(delivered) & {m.paper.id for m in third.matches}


def test_matches_past_max_papers_go_along_as_links_and_count_as_delivered(
    planner: pipeline.Planner,
) -> None:
    """max_papers=2 of the day's Agents papers: the digest shows 2 in full, lists the rest
    as title links (HTML and text), and all of them are the digest's papers."""
    few = subscriber(max_papers=2)
    now = at("2026-03-13 09:00")
    (planned,) = plan_all(planner, (few,), now, daemon=False)
    assert len(planned.matches) == 2 and planned.more
    assert planned.total_matches == 2 + len(planned.more)
    assert planned.digest_id is not None
    with Session(planner.engine) as session:
        row = session.get(DigestRow, planned.digest_id)
        assert row is not None
        message = email.message_from_bytes(row.message, policy=email.policy.default)
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]  # present
    html = message.get_body(("html",)).get_content()  # type: ignore[union-attr]  # present
    n = len(planned.more)
    assert f"the best 2 of {2 + n} matches" in text
    assert f"And {n} more matches past the 2 shown:" in text
    assert f"And {n} more matches</strong> past the 2 shown" in html
    hrefs = Html(html).hrefs()
    for m in planned.more:
        assert m.paper.url in hrefs and f"  {m.paper.url}" in text.splitlines()
        assert m.paper.arxiv_url not in hrefs  # a title link, not the full card
    assert sent_ids(planner, planned.digest_id, now) == list(planned.paper_ids)
    assert len(planned.paper_ids) == 2 + n


def test_a_slot_whose_days_failed_to_fetch_is_held_then_planned(planner: pipeline.Planner) -> None:
    subs = planner.config.subscribers
    email = subs[0].email
    now = at("2026-03-13 09:00")
    held: list[str] = []
    # the poll failed for the slot's own day: nothing planned, nothing closed
    unfed = {dt.date(2026, 3, 13)}
    assert plan_all(planner, subs, now, daemon=False, unfed=unfed, held=held) == []
    assert held == [email]
    with Session(planner.engine) as session:
        state = store.get_subscriber_state(session, email)
    assert state is not None and state.last_slot is None and state.covered_until is None
    # a day outside the digest's days does not hold it
    (planned,) = plan_all(planner, subs, now, daemon=False, unfed={dt.date(2026, 3, 9)})
    assert planned.slot == at("2026-03-13 08:00") and planned.window == (
        dt.date(2026, 3, 12), dt.date(2026, 3, 13))  # fmt: skip
    with Session(planner.engine) as session:
        state = store.get_subscriber_state(session, email)
    assert state is not None and state.covered_until == dt.date(2026, 3, 13)  # the watermark


def test_coverage_runs_on_from_the_watermark_across_held_and_missed_slots(
    planner: pipeline.Planner,
) -> None:
    subs = planner.config.subscribers
    (first,) = plan_all(planner, subs, at("2026-03-13 09:00"), daemon=False)
    # the next four slots: two failed polls, then nobody ran it; then it works again
    for day in (14, 15):
        now = at(f"2026-03-{day} 09:00")
        unfed = {now.date()}
        assert plan_all(planner, subs, now, daemon=False, unfed=unfed) == []
    (later,) = plan_all(planner, subs, at("2026-03-18 09:00"), daemon=False)
    assert later.slot == at("2026-03-18 08:00")
    assert later.window == (dt.date(2026, 3, 13), dt.date(2026, 3, 18))  # no day skipped
    assert first.window[1] == later.window[0]


def test_planning_in_chunks_writes_one_digest_per_subscriber_and_returns_counts(
    planner: pipeline.Planner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seven subscribers, three to a chunk and two to a transaction: every one gets
    exactly one digest (its handled slot saved with it), the papers each already has
    are read per chunk, and a second run finds nothing due."""
    monkeypatch.setattr(pipeline, "PLAN_CHUNK", 3)
    monkeypatch.setattr(pipeline, "SAVE_EVERY", 2)
    subs = tuple(subscriber(f"user{i}@example.org") for i in range(7))
    now = at("2026-03-13 09:00")
    report = pipeline.plan_due(planner, subs, now, daemon=False)
    assert isinstance(report, pipeline.PlanReport)
    assert (report.due, report.written, report.empty, report.held) == (7, 7, 0, 0)
    with planner.engine.connect() as conn:
        rows = conn.execute(text("SELECT subscriber, paper_ids_json FROM digests")).all()
        handled = conn.execute(text("SELECT email FROM subscribers WHERE last_slot IS NOT NULL"))
        assert sorted(e for (e,) in handled) == sorted(s.email for s in subs)
    assert sorted(r.subscriber for r in rows) == sorted(s.email for s in subs)
    assert len({r.paper_ids_json for r in rows}) == 1  # the same topic: the same papers
    assert pipeline.plan_due(planner, subs, now, daemon=False).due == 0
    # the next day, each chunk's read of what they already have (pending) leaves those out
    later = plan_all(planner, subs, at("2026-03-14 09:00"), daemon=False)
    first = set(json.loads(rows[0].paper_ids_json))
    assert len(later) == 7 and all(not first & set(p.paper_ids) for p in later)


def test_a_new_subscribers_first_sight_is_saved_with_their_digest(
    planner: pipeline.Planner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planning stops (the database fails) after the first transaction of a chunk: the
    new subscribers whose digests were not written are not recorded as seen either, so
    the daemon, which starts a subscriber at their first sight, still owes them the
    slot."""
    monkeypatch.setattr(pipeline, "SAVE_EVERY", 2)
    subs = tuple(subscriber(f"user{i}@example.org") for i in range(5))
    real_save = pipeline.Planner.save
    calls = 0

    def save_once(self: pipeline.Planner, *args: object, **kw: object) -> object:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise StoreError("the database went away")
        return real_save(self, *args, **kw)  # type: ignore[arg-type]  # the real arguments

    monkeypatch.setattr(pipeline.Planner, "save", save_once)
    with pytest.raises(StoreError):
        pipeline.plan_due(planner, subs, at("2026-03-13 09:00"), daemon=False)
    with planner.engine.connect() as conn:
        seen = sorted(e for (e,) in conn.execute(text("SELECT email FROM subscribers")))
        written = sorted(e for (e,) in conn.execute(text("SELECT subscriber FROM digests")))
    assert written == ["user0@example.org", "user1@example.org"]
    assert seen == written
