"""`digest match` in bulk (digest/listmatches.py) against the one-subscriber recipe it
replaced: for every subscriber, `commands.match.next_digest` (the planner's matches, with
explanations) and one `json.dumps` per record, or the text lines; the same bytes, in
one process or two (a forked child writing the second half)."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import Session

from digest import listmatches, pipeline, store
from digest.cli import main
from digest.commands import open_store
from digest.commands.match import next_digest
from digest.config import load_config
from digest.humanize import count
from digest.store import outbox
from tests.backends import Backend
from tests.configs import write_config
from tests.hfserver import HFServer
from tests.testdata import HF

CAPTURE = HF / "api-daily_papers-2025-10-01.json"
Stored = tuple[Path, dt.datetime, dict[str, set[str]]]

# schedules, zones, cuts, upvote floors, overlapping topics (papers several topics
# match), a topic that matches nothing, hyphenated words, a NOT, fields, phrases
KINDS = [
    ("daily 00:00", "UTC", 25, 0, ["agent*", 'video OR "image generation"']),
    ("daily 23:30", "Asia/Tokyo", 2, 0, ["model*", "language -survey", "reasoning"]),
    ("weekdays 07:30", "America/New_York", 3, 5, ["title:model* OR diffusion", "llm*"]),
    ("weekly mon 09:00", "Europe/Berlin", 1, 0, ["zzzunmatched", "(agent OR robot*) -video"]),
    ("every 6h", "UTC", 4, 2, ["text-to-image OR multi-modal", '"large language" OR vision']),
    ("daily 12:00", "Asia/Kolkata", 25, 0, ["benchmark*", "benchmark* data*", "keyword:llm"]),
]


def subscribers(n: int, first: int = 0) -> str:
    blocks = []
    for k in range(first, first + n):
        schedule, zone, most, floor, queries = KINDS[k % len(KINDS)]
        topics = ", ".join(
            f"{{ name = {json.dumps(f'T{j} {k % 4}')}, query = {json.dumps(q)} }}"
            for j, q in enumerate(queries[k % 2 :] if k % 5 == 4 else queries)
        )
        blocks.append(
            f'[[subscribers]]\nemail = "user{k}@example.org"\nschedule = "{schedule}"\n'
            f'timezone = "{zone}"\nmax_papers = {most}\nmin_upvotes = {floor}\n'
            f"topics = [{topics}]\n"
        )
    return "\n".join(blocks)


def reference(config_path: Path, now: dt.datetime, since: dt.date | None, as_json: bool) -> str:
    """What `digest match` printed before listmatches.py: one subscriber at a time."""
    config = load_config(config_path, {})
    planner = pipeline.Planner(config, open_store(config))
    with Session(planner.engine) as session:
        states = store.get_subscriber_states(session, [s.email for s in config.subscribers])
    lines = []
    for subscriber in config.subscribers:
        state = states.get(subscriber.email)
        slot, matches, total = next_digest(planner, subscriber, state, now, since)
        if as_json:
            papers = [
                {
                    "id": m.paper.id,
                    "title": m.paper.title,
                    "topics": list(m.topics),
                    "score": m.score,
                    "upvotes": m.paper.upvotes,
                    "listed_on": m.paper.listed_on.isoformat(),
                }
                for m in matches
            ]
            record = {"subscriber": subscriber.email, "slot": slot.isoformat(),
                      "total": total, "papers": papers}  # fmt: skip
            lines.append(json.dumps(record, ensure_ascii=False) + "\n")
            continue
        local = slot.astimezone(ZoneInfo(subscriber.timezone))
        lines.append(
            f"{subscriber.email}: {len(matches)} of {count(total, 'matching paper')} "
            f"for {local:%a %Y-%m-%d %H:%M %Z}\n"
        )
        for m in matches:
            lines.append(
                f"  {m.paper.id:<12} {m.paper.upvotes:>4}  {m.paper.title[:70]:<70}  "
                f"[{', '.join(m.topics)}]\n"
            )
    planner.engine.dispose()
    return "".join(lines)


@pytest.fixture
def stored(tmp_path: Path, hf_server: HFServer, backend: Backend) -> Stored:
    """30 subscribers, most with a state and delivered papers (a `digest send`), the
    last six added after it (no state yet), some with a pending digest, on
    SQLite and PostgreSQL (whose times and dates the plain reads get as datetime
    objects, not text); the moment both sides run at, and the pending papers."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    body = CAPTURE.read_bytes()
    for day in (now.date(), now.date() - dt.timedelta(days=1)):
        hf_server.set_api_body(day, body)
    db = backend.url(migrated=False)
    config = write_config(tmp_path, hf_server.base_url, subscribers=subscribers(24), db=db)
    assert main(["send", "-c", str(config)]) == 0
    text = config.read_text(encoding="utf-8")
    config.write_text(text + subscribers(6, first=24), encoding="utf-8")
    # a pending digest for some, holding the best paper their next digest would list
    # (and a paper in no window): it is left out now
    records = [json.loads(line) for line in reference(config, now, None, True).splitlines()]
    waiting = [
        outbox.NewDigest(
            subscriber=r["subscriber"],
            slot=now - dt.timedelta(days=3),
            recipient=r["subscriber"],
            sender="digest@example.org",
            message_id=f"<{k}@digest.example.org>",
            subject="s",
            paper_ids=(r["papers"][0]["id"], "2001.00001"),
            message=b"x",
        )
        for k, r in enumerate(records)
        if k % 3 == 0 and r["papers"]
    ]
    assert len(waiting) >= 2
    engine = store.open_engine(db)
    outbox.add_digests(engine, waiting, now=now)
    engine.dispose()
    return config, now, {d.subscriber: set(d.paper_ids) for d in waiting}


def listed(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert main(["match", "-c", str(config), *args]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("parallel", [False, True], ids=["one process", "two processes"])
def test_match_lists_what_the_one_subscriber_recipe_lists(
    stored: Stored,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    parallel: bool,
) -> None:
    config, now, waiting = stored
    monkeypatch.setattr("digest.commands.match.utcnow", lambda: now)
    monkeypatch.setattr(listmatches, "PARALLEL_FROM", 2 if parallel else 10**9)
    since = now.date() - dt.timedelta(days=1)
    for args, day, as_json in [
        (["--json"], None, True),
        ([], None, False),
        (["--json", "--since", since.isoformat()], since, True),
        (["--since", since.isoformat()], since, False),
    ]:
        expected = reference(config, now, day, as_json)
        assert listed(config, capsys, *args) == expected, args
    records = [json.loads(line) for line in listed(config, capsys, "--json").splitlines()]
    assert len(records) == 30
    assert any(len(p["topics"]) > 1 for r in records for p in r["papers"])  # several topics
    assert any(r["total"] > len(r["papers"]) > 0 for r in records)  # a cut
    assert any(r["total"] == 0 for r in records)
    for r in records:  # what a pending digest holds is not listed again
        assert not {p["id"] for p in r["papers"]} & waiting.get(r["subscriber"], set())
    one = listed(config, capsys, "--json", "--subscriber", "USER7@example.org")
    assert [json.loads(one)] == [r for r in records if r["subscriber"] == "user7@example.org"]


def test_a_failing_second_half_is_worked_out_again_by_the_parent(
    stored: Stored,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The forked child's half is redone in the command's own process when the child
    fails (its exit status is all the parent learns): the output is still whole."""
    config, now, _ = stored
    monkeypatch.setattr("digest.commands.match.utcnow", lambda: now)
    monkeypatch.setattr(listmatches, "PARALLEL_FROM", 2)
    expected = reference(config, now, None, True)
    real = listmatches._Page._json
    parent = os.getpid()

    def fails_in_the_child(self: listmatches._Page, *args: object) -> str:
        if os.getpid() != parent:
            raise RuntimeError("the child fails")
        return real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(listmatches._Page, "_json", fails_in_the_child)
    assert listed(config, capsys, "--json") == expected
