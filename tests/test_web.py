"""The endpoint over real HTTP: one-click unsubscribe (RFC 8058), the page before it, the
preferences page, and every refusal. The real aiohttp app on 127.0.0.1, over SQLite and
PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from digest.store import outbox, recipients
from digest.web.tokens import Purpose, Tokens
from tests.backends import Backend
from tests.configs import write_config
from tests.smtpd_helpers import add_digests
from tests.web_helpers import OLD_SECRET, SECRET, Endpoint, web_table

ADA, BOB = "ada@example.org", "bob@example.org"
PEOPLE = f"""
[[subscribers]]
email = "{ADA}"
timezone = "Europe/Berlin"
topics = [
  {{ name = "Agents", query = 'agent*' }},
  {{ name = "Video", query = 'video' }},
]

[[subscribers]]
email = "{BOB}"
topics = [{{ name = "Agents", query = 'agent*' }}]
"""
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def config_file(tmp_path: Path, backend: Backend, *, old: bool = True) -> Path:
    path = write_config(
        tmp_path,
        "http://127.0.0.1:9",
        subscribers=PEOPLE,
        mail='maildir = "mail"\n' + web_table(0, old=old),
    )
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace('url = "sqlite:///digest.db"', f'url = "{backend.url()}"'))
    return path


@pytest.fixture
def endpoint(tmp_path: Path, backend: Backend) -> Iterator[Endpoint]:
    with Endpoint(config_file(tmp_path, backend)) as e:
        yield e


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10, follow_redirects=False) as c:
        yield c


def suppressed(e: Endpoint) -> list[tuple[str, str]]:
    return [(s.email, s.how) for s in recipients.suppressions(e.engine)]


def u_url(e: Endpoint, email: str) -> str:
    return e.links.for_key(e.key(email)).unsubscribe.replace(e.config.web.base_url, e.base)  # type: ignore[union-attr]


def p_url(e: Endpoint, email: str) -> str:
    return e.links.for_key(e.key(email)).preferences.replace(e.config.web.base_url, e.base)  # type: ignore[union-attr]


# --------------------------------------------------------------------------- /u/TOKEN


def test_get_shows_a_button_that_posts_and_changes_nothing(
    endpoint: Endpoint, client: httpx.Client
) -> None:
    add_digests(endpoint.engine, [ADA])
    for _ in range(3):  # a mail scanner, a preview, the person
        r = client.get(u_url(endpoint, ADA))
        assert r.status_code == 200
        assert '<form method="post">' in r.text
        assert 'name="List-Unsubscribe" value="One-Click"' in r.text
        assert ADA not in r.text and "a**@example.org" in r.text
    assert suppressed(endpoint) == []
    assert outbox.outbox_counts(endpoint.engine)["pending"] == 1


def test_one_click_post_unsubscribes_at_once_answers_200_no_redirect_no_cookie(
    endpoint: Endpoint, client: httpx.Client
) -> None:
    add_digests(endpoint.engine, [ADA, BOB])
    r = client.post(u_url(endpoint, ADA), data=ONE_CLICK)
    assert r.status_code == 200
    assert "No more digests go to" in r.text
    assert "location" not in r.headers and "set-cookie" not in r.headers
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert suppressed(endpoint) == [(ADA, "one-click")]
    counts = outbox.outbox_counts(endpoint.engine)
    assert counts["pending"] == 1 and counts["cancelled"] == 1  # Bob's stays
    with endpoint.engine.connect() as conn:
        pending = conn.execute(text("SELECT subscriber FROM digests WHERE status = 'pending'"))
        assert pending.all() == [(BOB,)]


def test_one_click_as_multipart_form_data(endpoint: Endpoint, client: httpx.Client) -> None:
    r = client.post(u_url(endpoint, ADA), files={"List-Unsubscribe": (None, "One-Click")})
    assert r.status_code == 200
    assert suppressed(endpoint) == [(ADA, "one-click")]


def test_the_page_button_is_recorded_as_page_and_a_second_post_keeps_the_first(
    endpoint: Endpoint, client: httpx.Client
) -> None:
    url = u_url(endpoint, ADA)
    assert client.post(url, data={**ONE_CLICK, "via": "page"}).status_code == 200
    again = client.post(url, data=ONE_CLICK)
    assert again.status_code == 200 and "was already unsubscribed" in again.text
    assert suppressed(endpoint) == [(ADA, "page")]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"List-Unsubscribe": "one-click"},
        {"List-Unsubscribe": ""},
        {"unsubscribe": "One-Click"},
    ],
)
def test_a_post_without_the_one_click_body_is_400_and_changes_nothing(
    endpoint: Endpoint, client: httpx.Client, body: dict[str, str]
) -> None:
    r = client.post(u_url(endpoint, ADA), data=body)
    assert r.status_code == 400
    assert suppressed(endpoint) == []


def test_a_body_over_the_cap_is_413_and_changes_nothing(
    endpoint: Endpoint, client: httpx.Client
) -> None:
    r = client.post(u_url(endpoint, ADA), data={**ONE_CLICK, "pad": "x" * 20_000})
    assert r.status_code == 413
    assert suppressed(endpoint) == []


def bad_tokens(e: Endpoint) -> dict[str, str]:
    key = e.key(ADA)
    good = e.tokens().make(Purpose.UNSUBSCRIBE, key)
    value, _, sig = good.partition(".")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    return {
        "tampered signature": f"{value}.{flipped}",
        "tampered value": e.tokens().make(Purpose.UNSUBSCRIBE, key[:-1] + "x").split(".")[0]
        + "."
        + sig,
        "truncated": good[:-5],
        "no signature": value,
        "wrong purpose": e.tokens().make(Purpose.PREFERENCES, key),
        "another secret": Tokens("an-attackers-secret-000000").make(Purpose.UNSUBSCRIBE, key),
        "unknown key": e.tokens().make(Purpose.UNSUBSCRIBE, "no-such-key"),
        "garbage": "%00%0d%0a<script>",
    }


def test_bad_tokens_are_400_on_get_and_post_and_change_nothing(
    endpoint: Endpoint, client: httpx.Client
) -> None:
    add_digests(endpoint.engine, [ADA])
    for why, token in bad_tokens(endpoint).items():
        for method in ("GET", "POST"):
            r = client.request(method, f"{endpoint.base}/u/{token}", data=ONE_CLICK)
            assert r.status_code == 400, (why, method, r.status_code)
            assert "This link does not work" in r.text
    assert suppressed(endpoint) == []
    assert outbox.outbox_counts(endpoint.engine)["pending"] == 1


def test_an_old_secret_works_while_listed_and_is_revoked_when_dropped(
    tmp_path: Path, backend: Backend, client: httpx.Client
) -> None:
    config = config_file(tmp_path, backend)
    with Endpoint(config) as e:
        old_token = Tokens(OLD_SECRET).make(Purpose.UNSUBSCRIBE, e.key(ADA))
        assert client.get(f"{e.base}/u/{old_token}").status_code == 200
    dropped = config_file(tmp_path, backend, old=False)
    with Endpoint(dropped, {"DIGEST_WEB_SECRET": SECRET}) as e:
        assert client.post(f"{e.base}/u/{old_token}", data=ONE_CLICK).status_code == 400
        assert suppressed(e) == []
        new_token = Tokens(SECRET).make(Purpose.UNSUBSCRIBE, e.key(ADA))
        assert client.post(f"{e.base}/u/{new_token}", data=ONE_CLICK).status_code == 200


@pytest.mark.parametrize(
    "path", ["/", "/u/", "/u", "/x/abc", "/u/abc/def", "/p/", "/favicon.ico", "/admin"]
)
def test_unknown_paths_are_404(endpoint: Endpoint, client: httpx.Client, path: str) -> None:
    r = client.get(endpoint.base + path)
    assert r.status_code == 404
    assert "Page not found" in r.text


def test_no_email_address_is_readable_in_a_link(endpoint: Endpoint) -> None:
    import base64

    links = endpoint.links.for_key(endpoint.key(ADA))
    for url in (links.unsubscribe, links.preferences):
        token = url.rsplit("/", 1)[1]
        payload = token.split(".")[0]
        decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        assert b"ada" not in decoded.lower() and "ada" not in url.lower()
        assert b"example" not in decoded


# --------------------------------------------------------------------------- /p/TOKEN


def state(e: Endpoint, email: str) -> recipients.Recipient:
    return recipients.recipients_of(e.engine, [email])[email]


def test_preferences_pause_resume_mute_unmute_unsubscribe_resubscribe(
    endpoint: Endpoint, client: httpx.Client
) -> None:
    url = p_url(endpoint, ADA)
    page = client.get(url)
    assert page.status_code == 200
    assert "Agents" in page.text and "Video" in page.text and "2 weeks" in page.text
    assert "<script" not in page.text

    before = dt.datetime.now(dt.UTC)
    r = client.post(url, data={"action": "pause", "weeks": "2"})
    assert r.status_code == 200 and "Paused for 2 weeks" in r.text and "Resume now" in r.text
    until = state(endpoint, ADA).paused_until
    assert until is not None
    two_weeks = dt.timedelta(days=14)
    assert before + two_weeks <= until <= dt.datetime.now(dt.UTC) + two_weeks

    assert "Resumed" in client.post(url, data={"action": "resume"}).text
    assert state(endpoint, ADA).paused_until is None

    r = client.post(url, data={"action": "mute", "topic": "Video"})
    assert r.status_code == 200 and "Unmute" in r.text
    assert state(endpoint, ADA).muted == {"Video"}
    client.post(url, data={"action": "unmute", "topic": "Video"})
    assert state(endpoint, ADA).muted == frozenset()

    r = client.post(url, data={"action": "unsubscribe"})
    assert r.status_code == 200 and "Resubscribe" in r.text
    assert suppressed(endpoint) == [(ADA, "page")]
    r = client.post(url, data={"action": "resubscribe"})
    assert r.status_code == 200 and "Resubscribed" in r.text
    assert suppressed(endpoint) == []
    assert not state(endpoint, ADA).suppressed


@pytest.mark.parametrize(
    "body",
    [
        {"action": "pause", "weeks": "3"},
        {"action": "pause", "weeks": "-1"},
        {"action": "pause"},
        {"action": "mute", "topic": "Not a topic of hers"},
        {"action": "explode"},
        {},
    ],
)
def test_preferences_refuse_what_they_do_not_offer(
    endpoint: Endpoint, client: httpx.Client, body: dict[str, str]
) -> None:
    url = p_url(endpoint, ADA)
    assert client.post(url, data=body).status_code == 400
    ada = recipients.recipients_of(endpoint.engine, [ADA])[ADA]
    assert ada.paused_until is None and ada.muted == frozenset() and not ada.suppressed


def test_preferences_tokens_are_not_unsubscribe_tokens(
    endpoint: Endpoint, client: httpx.Client
) -> None:
    key = endpoint.key(ADA)
    as_unsubscribe = endpoint.tokens().make(Purpose.UNSUBSCRIBE, key)
    r = client.post(f"{endpoint.base}/p/{as_unsubscribe}", data={"action": "unsubscribe"})
    assert r.status_code == 400
    assert suppressed(endpoint) == []
