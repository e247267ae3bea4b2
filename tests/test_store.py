"""Tests of the listing upsert and queries, on SQLite and PostgreSQL (tests/backends.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

import pytest
from sqlalchemy import Engine, event, select, text
from sqlmodel import Session

from digest import store
from digest.errors import StoreError
from digest.models import DeliveryRow, DigestRow
from digest.records import Paper, as_utc
from digest.store.listings import LISTINGS, PAPERS
from tests.backends import Backend
from tests.store_helpers import (
    D1,
    D2,
    D3,
    D4,
    D5,
    NOW,
    corpus_day,
    dump,
    ids,
    paper,
)


@pytest.fixture
def engine(backend: Backend) -> Engine:
    return backend.engine()


# --------------------------------------------------------------------------- upsert


def test_new_updated_unchanged_classification(engine: Engine) -> None:
    initial = [paper(pid) for pid in ("a", "b", "c", "d", "f", "g")]
    first = store.upsert_listings(engine, D1, initial, NOW)
    assert (ids(first.new), first.updated, first.unchanged) == (ids(initial), [], 0)

    later = NOW + dt.timedelta(hours=3)
    second = store.upsert_listings(
        engine,
        D1,
        [
            paper("a", upvotes=40),  # more upvotes: updated
            paper("b", github_repo="https://github.com/x/b", github_stars=3),  # updated
            paper("c", thumbnail="https://cdn/c.png"),  # stored, but not a reported field
            paper("d"),  # same: unchanged
            paper("e"),  # new
            paper("f", title="Paper f, revised"),  # updated
            paper("g", ai_summary="Now with a summary."),  # updated
        ],
        later,
    )
    assert ids(second.new) == ["e"]
    assert ids(second.updated) == ["a", "b", "f", "g"]
    assert second.unchanged == 2
    by_id = {p.id: p for p in second.updated}
    assert by_id["a"].upvotes == 40 and by_id["a"].listed_on == D1
    assert by_id["b"].github_repo == "https://github.com/x/b" and by_id["b"].github_stars == 3
    with Session(engine) as session:
        stored = {p.id: p for p in store.candidate_papers(session, D1, D1)}
    assert stored["c"].thumbnail == "https://cdn/c.png"
    assert stored["a"].upvotes == 40
    with engine.connect() as conn:
        rows = conn.execute(select(PAPERS.c.id, PAPERS.c.updated_at)).all()
    times = {pid: as_utc(at) for pid, at in rows}
    assert times["a"] == later and times["d"] == NOW


def test_the_same_day_twice_is_nothing_new_and_nothing_updated(engine: Engine) -> None:
    papers = corpus_day(D1)
    first = store.upsert_listings(engine, D1, papers, NOW)
    assert len(first.new) == len(papers) == 37 and first.updated == []
    before = dump(engine)
    again = store.upsert_listings(engine, D1, papers, NOW + dt.timedelta(minutes=30))
    assert (again.new, again.updated, again.unchanged) == ([], [], len(papers))
    after = dump(engine)
    assert after["papers"] == before["papers"]  # not even updated_at moves
    assert len(after["listings"]) == len(papers)
    with engine.connect() as conn:
        query = select(LISTINGS.c.first_seen_at, LISTINGS.c.last_seen_at).distinct()
        seen = [(as_utc(first), as_utc(last)) for first, last in conn.execute(query)]
    assert seen == [(NOW, NOW + dt.timedelta(minutes=30))]


def test_new_papers_come_back_as_given(engine: Engine) -> None:
    papers = corpus_day(D2)
    report = store.upsert_listings(engine, D2, papers, NOW)
    assert {p.id: p for p in report.new} == {p.id: p for p in papers}
    with Session(engine) as session:
        assert {p.id: p for p in store.candidate_papers(session, D2, D2)} == {
            p.id: p for p in papers
        }


def test_the_same_paper_on_two_days_is_one_paper_two_listings_new_once(engine: Engine) -> None:
    r1 = store.upsert_listings(engine, D1, [paper("p", D1, upvotes=2, submitter="taesiri")], NOW)
    r2 = store.upsert_listings(engine, D4, [paper("p", D4, upvotes=2, submitter="woody")], NOW)
    assert ids(r1.new) == ["p"]
    assert (r2.new, r2.updated, r2.unchanged) == ([], [], 1)  # relisted, fields unchanged
    r3 = store.upsert_listings(engine, D5, [paper("p", D5, upvotes=1, submitter="x")], NOW)
    assert (r3.new, r3.updated, r3.unchanged) == ([], [], 1)  # fewer upvotes: max stays 2
    r4 = store.upsert_listings(engine, D4, [paper("p", D4, upvotes=27, submitter="woody")], NOW)
    assert ids(r4.updated) == ["p"] and r4.updated[0].upvotes == 27
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, upvotes FROM papers")).all() == [("p", 27)]
        listings = conn.execute(
            select(LISTINGS.c.listed_on, LISTINGS.c.upvotes, LISTINGS.c.submitter).order_by(
                LISTINGS.c.listed_on
            )
        ).all()
    assert listings == [(D1, 2, "taesiri"), (D4, 27, "woody"), (D5, 1, "x")]


def test_an_abstract_less_card_never_clears_what_the_api_gave(engine: Engine) -> None:
    full = paper(
        "2510.1",
        ai_summary="One sentence.",
        github_repo="https://github.com/a/b",
        github_stars=10,
        project_page="https://a.github.io",
        organization="ByteDance-Seed",
        thumbnail="https://cdn/t.png",
    )
    store.upsert_listings(engine, D1, [full], NOW)
    card = Paper(id="2510.1", title="Paper 2510.1", listed_on=D1, upvotes=5, submitter=None)
    report = store.upsert_listings(engine, D1, [card], NOW)
    assert (report.new, report.updated, report.unchanged) == ([], [], 1)
    with Session(engine) as session:
        (stored,) = store.candidate_papers(session, D1, D1)
    assert stored == full  # abstract, authors, keywords, links, submitter, counts all kept


def test_an_error_mid_upsert_rolls_back_and_loses_nothing(engine: Engine) -> None:
    store.upsert_listings(engine, D1, [paper("a"), paper("b")], NOW)
    with Session(engine) as session:
        store.save_day(session, D1, "api", '"etag-1"', None, 2, NOW)
    before = dump(engine)
    broken = paper("c", title=None)  # violates papers.title NOT NULL
    batch = [paper("a", upvotes=99), paper("new-1"), broken, paper("new-2"), paper("b", D2)]
    with pytest.raises(StoreError) as info:
        store.upsert_listings(engine, D1, batch, NOW)
    assert str(info.value).startswith(
        f"saving the listings of {D1} failed on {store.mask_url(engine.url)}:"
    )
    # SQLite: "IntegrityError: NOT NULL constraint failed: papers.title";
    # PostgreSQL: "NotNullViolation: null value in column "title" of relation "papers" ..."
    assert re.search(
        r"(IntegrityError|NotNullViolation): .*(papers\.title|\"title\")", str(info.value)
    )
    assert "\n" not in str(info.value)
    assert dump(engine) == before
    # and the store keeps working afterwards
    assert ids(store.upsert_listings(engine, D1, batch[:2], NOW).new) == ["new-1"]


def test_a_paper_twice_in_one_list_is_one_paper(engine: Engine) -> None:
    report = store.upsert_listings(engine, D1, [paper("a", upvotes=3), paper("a", upvotes=8)], NOW)
    assert [(p.id, p.upvotes) for p in report.new] == [("a", 8)]


def test_a_paper_without_an_id_is_refused(engine: Engine) -> None:
    with pytest.raises(StoreError, match="a paper without an id"):
        store.upsert_listings(engine, D1, [paper("")], NOW)


def test_an_empty_list_changes_nothing(engine: Engine) -> None:
    assert store.upsert_listings(engine, D1, [], NOW) == store.UpsertReport([], [], 0)


# --------------------------------------------------------------------------- queries


def test_candidate_papers_one_per_id_with_the_latest_listing_in_range(engine: Engine) -> None:
    store.upsert_listings(engine, D1, [paper("x", D1, submitter="s1"), paper("y", D1)], NOW)
    store.upsert_listings(engine, D2, [paper("z", D2, upvotes=50)], NOW)
    store.upsert_listings(engine, D3, [paper("x", D3, submitter="s3", upvotes=9)], NOW)
    store.upsert_listings(engine, D5, [paper("x", D5), paper("late", D5)], NOW)
    with Session(engine) as session:
        found = store.candidate_papers(session, D1, D4)
        only_d2 = store.candidate_papers(session, D2, D2)
        none = store.candidate_papers(session, D4, D4)
    assert [(p.id, p.listed_on, p.submitter) for p in found] == [
        ("x", D3, "s3"),  # newest listing first, and its submitter
        ("z", D2, "akhaliq"),
        ("y", D1, "akhaliq"),
    ]
    x = found[0]
    assert x.upvotes == 9 and x.authors == ("Ada Lovelace", "Alan Turing")
    assert x.ai_keywords == ("diffusion", "distillation")
    assert x.published_at == dt.datetime(2025, 9, 29, 21, 55, tzinfo=dt.UTC)
    assert ids(only_d2) == ["z"] and none == []


def test_candidate_papers_over_real_days_dedupes_by_id(engine: Engine) -> None:
    days = [dt.date(2025, 10, d) for d in (1, 2, 3, 6, 7, 8)]
    listed: dict[str, dt.date] = {}
    for day in days:
        papers = corpus_day(day)
        store.upsert_listings(engine, day, papers, NOW)
        listed.update({p.id: day for p in papers})
    with Session(engine) as session:
        found = store.candidate_papers(session, days[0], days[-1])
    assert len(found) == len({p.id for p in found}) == len(listed)
    assert {p.id: p.listed_on for p in found} == listed


def test_day_state_round_trip(engine: Engine) -> None:
    with Session(engine) as session:
        assert store.get_day(session, D1) is None
        store.save_day(session, D1, "api", '"e1"', "Wed, 01 Oct 2025 08:00:00 GMT", 37, NOW)
        store.save_day(session, D1, "html", None, None, 39, NOW + dt.timedelta(hours=1))
    with Session(engine) as session:
        row = store.get_day(session, D1)
    assert row is not None
    assert (row.source, row.etag, row.last_modified, row.paper_count) == ("html", None, None, 39)
    assert row.fetched_at == NOW + dt.timedelta(hours=1)


def test_poll_log(engine: Engine) -> None:
    berlin = dt.timezone(dt.timedelta(hours=2))
    with Session(engine) as session:
        assert store.last_poll(session) is None
        first = store.start_poll(session, NOW)
        store.finish_poll(session, first, now=NOW, ok=False, source="api", error="HTTP 503")
        second = store.start_poll(session, NOW.astimezone(berlin) + dt.timedelta(minutes=30))
    with Session(engine) as session:
        running = store.last_poll(session)
        assert running is not None and running.id == second and running.finished_at is None
        assert running.started_at == NOW + dt.timedelta(minutes=30)  # stored as UTC
        store.finish_poll(session, second, now=NOW, ok=True, days=3, new=4, updated=1, source="api")
        done = store.last_poll(session)
        assert done is not None
        assert (done.ok, done.days, done.new, done.updated, done.error) == (True, 3, 4, 1, None)
        with pytest.raises(StoreError, match="poll 999 is not in the poll log"):
            store.finish_poll(session, 999, now=NOW, ok=True)


def test_subscriber_state_and_meta(engine: Engine) -> None:
    slot = dt.datetime(2025, 10, 2, 6, 0, tzinfo=dt.UTC)
    with Session(engine) as session:
        assert store.get_subscriber_state(session, "ada@example.org") is None
        with pytest.raises(StoreError, match=r"ada@example\.org has no saved state"):
            store.save_subscriber_state(session, "ada@example.org", last_slot=slot)
        store.save_subscriber_state(session, "ada@example.org", first_seen_at=NOW)
        store.save_subscriber_state(session, "ada@example.org", last_slot=slot)
        assert store.get_meta(session, "failed_polls") is None
        store.set_meta(session, "failed_polls", "1")
        store.set_meta(session, "failed_polls", "2")
    with Session(engine) as session:
        state = store.get_subscriber_state(session, "ada@example.org")
        assert store.get_meta(session, "failed_polls") == "2"
    assert state is not None and (state.first_seen_at, state.last_slot) == (NOW, slot)


def add_digest(session: Session, subscriber: str, hour: int, status: str) -> int:
    row = DigestRow(
        subscriber=subscriber,
        slot=NOW.replace(hour=hour),
        status=status,
        message_id=f"<{hour}@x>",
        recipient=subscriber,
        sender="digest@x",
        message=b"",
        created_at=NOW,
    )
    session.add(row)
    session.commit()
    assert row.id is not None
    return row.id


def test_delivered_ids_and_stats(engine: Engine) -> None:
    with Session(engine) as session:
        empty = store.store_stats(session)
    counts = {"pending": 0, "sent": 0, "failed": 0, "cancelled": 0}
    assert dataclasses.astuple(empty)[:6] == (0, 0, 0, None, None, counts)
    assert empty.lines()[0] == "last poll: never"

    store.upsert_listings(engine, D1, [paper("a", D1), paper("b", D1)], NOW)
    store.upsert_listings(engine, D4, [paper("a", D4), paper("c", D4)], NOW)
    with Session(engine) as session:
        store.save_day(session, D1, "api", None, None, 2, NOW)
        store.save_day(session, D4, "api", None, None, 2, NOW)
        poll_id = store.start_poll(session, NOW)
        store.finish_poll(session, poll_id, now=NOW, ok=True, days=2, new=3, source="api")
        sent = add_digest(session, "ada@example.org", 6, "sent")
        for hour, status in ((7, "pending"), (8, "pending"), (9, "failed")):
            add_digest(session, "ada@example.org", hour, status)
        session.add_all(
            DeliveryRow(subscriber="ada@example.org", paper_id=pid, digest_id=sent,
                        delivered_at=NOW)
            for pid in ("a", "b")
        )  # fmt: skip
        session.commit()
        assert store.delivered_ids(session, "ada@example.org") == {"a", "b"}
        assert store.delivered_ids(session, "bob@example.org") == set()
        stats = store.store_stats(session)
    assert (stats.papers, stats.listings, stats.days_fetched) == (3, 4, 2)
    assert (stats.first_day, stats.last_day) == (D1, D4)
    assert stats.digests == {"pending": 2, "sent": 1, "failed": 1, "cancelled": 0}
    assert stats.last_poll is not None and stats.last_poll.id == poll_id
    assert stats.as_dict()["last_poll"]["new"] == 3
    assert stats.lines() == [
        "last poll: 2026-11-22 12:00 UTC, ok (api, 2 days, 3 new, 0 updated)",
        "papers: 3 stored, 4 listings, 2 days fetched, 2025-10-01 to 2025-10-06",
        "digests: 2 pending, 1 sent, 1 failed, 0 cancelled",
    ]


def test_papers_taken_reads_deliveries_and_pending_digests_for_the_given_ids(
    engine: Engine,
) -> None:
    from digest.store import claims, outbox

    now = dt.datetime(2026, 3, 2, 8, tzinfo=dt.UTC)

    def digest(subscriber: str, slot_hour: int, ids: list[str]) -> int:
        digest_id = outbox.add_digest(
            engine,
            subscriber=subscriber,
            slot=now.replace(hour=slot_hour),
            recipient=subscriber,
            sender="d@example.org",
            message_id=f"<{subscriber}{slot_hour}>",
            subject="s",
            paper_ids=ids,
            message=b"Subject: s\r\n\r\nx\r\n",
            now=now,
        )
        assert digest_id is not None
        return digest_id

    sent = digest("ada@example.org", 8, ["p1", "p2"])
    (item,) = claims.claim_due(engine, now, 10)
    claims.mark_sent(engine, item.id, "250 ok", now)
    assert item.id == sent
    digest("ada@example.org", 9, ["p3", "outside"])  # pending
    failed = digest("bob@example.org", 8, ["p1"])
    claims.mark_failed(engine, failed, "550 no", now)  # failed: may be offered again

    with Session(engine) as session:
        taken = store.papers_taken(session, ["p1", "p2", "p3", "p4"])
    assert taken == {"ada@example.org": {"p1", "p2", "p3"}}
    # a chunk of subscribers reads only theirs (planning reads per chunk)
    cy = digest("cy@example.org", 8, ["p4"])  # pending, and another one sent
    claims.mark_sent(engine, digest("cy@example.org", 7, ["p2"]), "250 ok", now)
    assert cy is not None
    with Session(engine) as session:
        only_cy = store.papers_taken(session, ["p1", "p2", "p3", "p4"], ["cy@example.org"])
        neither = store.papers_taken(session, ["p1", "p2"], ["bob@example.org", "x@y.org"])
        both = store.papers_taken(session, ["p2", "p4"], ["ada@example.org", "cy@example.org"])
    assert only_cy == {"cy@example.org": {"p2", "p4"}}
    assert neither == {}
    assert both == {"ada@example.org": {"p2"}, "cy@example.org": {"p2", "p4"}}


def test_papers_taken_sees_a_digest_marked_sent_between_its_reads(
    engine: Engine, backend: Backend
) -> None:
    """Another process marks a digest sent while a planner reads what is taken (injected
    right after the planner's first statement): its papers are still taken, as pending or
    as delivered, never neither (on PostgreSQL each statement sees a new snapshot; read
    in the wrong order, the papers fell between and went out twice)."""
    from digest.store import claims, outbox

    now = dt.datetime(2026, 3, 2, 8, tzinfo=dt.UTC)
    digest_id = outbox.add_digest(
        engine, subscriber="ada@example.org", slot=now, recipient="ada@example.org",
        sender="d@example.org", message_id="<m1>", subject="s", paper_ids=["p1", "p2"],
        message=b"Subject: s\r\n\r\nx\r\n", now=now,
    )  # fmt: skip
    assert digest_id is not None
    (item,) = claims.claim_due(engine, now, 10)
    other = backend.engine()  # the sending process: its own engine and connection
    statements: list[str] = []

    def after_execute(*args: object) -> None:
        if str(args[2]).startswith("BEGIN"):  # SQLite's BEGIN, sent by our hook
            return
        statements.append(str(args[2]))
        if len(statements) == 1:  # between the planner's first and second read
            claims.mark_sent(other, item.id, "250 ok", now)

    planner = store.open_engine(engine.url.render_as_string(hide_password=False))
    event.listen(planner, "after_cursor_execute", after_execute)
    try:
        with Session(planner) as session:
            taken = store.papers_taken(session, ["p1", "p2", "p3"])
    finally:
        planner.dispose()
    assert len(statements) >= 2  # the injection came between two reads
    assert taken == {"ada@example.org": {"p1", "p2"}}
