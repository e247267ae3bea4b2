"""The subscription file: the example, defaults, paths, secrets, and every error message."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest

from digest.config import (
    Config,
    MailConfig,
    SmtpConfig,
    SourceConfig,
    example_config,
    load_config,
    summarize_config,
)
from digest.config.build import MAIL_KEYS, SMTP_KEYS, SOURCE_KEYS
from digest.config.lines import key_lines
from digest.config.subscribers import SUBSCRIBER_KEYS
from digest.errors import ConfigError
from digest.schedule import parse_schedule

# Line numbers matter in this file: BASE is the valid config the error tests
# edit; its line numbers are written on the right.
BASE = """\
[source]
poll_interval = "1h"

[mail]
from = "Digest <digest@example.org>"

[defaults]
timezone = "Europe/Berlin"
schedule = "daily 07:00"
max_papers = 10

[[subscribers]]
email = "Ada@Example.org"
name = "Ada"
timezone = "America/New_York"
topics = [
  { name = "Diffusion", query = "diffusion" },
  { name = "RL", query = 'title:"reward model"' },
]

[[subscribers]]
email = "grace@example.org"
schedule = "weekly fri 17:30"
max_papers = 5
topics = [{ name = "Agents", query = "agent*" }]
"""
# lines: 12 [[subscribers]], 13 email, 15 timezone, 16 topics, 17-18 the two topics,
# 21 second [[subscribers]], 22 email, 23 schedule, 24 max_papers, 25 topics


def write(tmp_path: Path, text: str, name: str = "digest.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(path, env or {})
    return e.value.problems


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from the config's folder so messages say "digest.toml:N:" as the CLI shows them."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load_base(here: Path, old: str = "", new: str = "") -> list[str]:
    assert old in BASE
    return problems_of(write(here, BASE.replace(old, new, 1)).relative_to(here))


# ---------------------------------------------------------------------------
# valid files


def test_example_loads_and_mentions_every_option(tmp_path: Path) -> None:
    text = example_config()
    config = load_config(write(tmp_path, text), {})
    assert config.mail.transport == "maildir"
    assert config.mail.maildir == tmp_path / "mail"
    assert config.storage.url == f"sqlite:///{tmp_path}/digest.db"
    (sub,) = config.subscribers
    assert sub.email == "ada@example.org"
    assert [t.name for t in sub.topics] == [
        "Language models", "Diffusion", "Consistency models", "Reward models"
    ]
    for key in (
        *SOURCE_KEYS,
        *MAIL_KEYS,
        *SMTP_KEYS,
        *SUBSCRIBER_KEYS,
        "catch_up",
        "after_failed_polls",
        "thumbnails",
    ):
        assert key in text, f"example.toml does not mention {key}"


def test_the_file_keys_are_the_ones_the_loader_reads() -> None:
    """The key lists derive from the dataclasses: a new field must be read by the builder."""
    assert set(SOURCE_KEYS) == {
        "base_url",
        "mode",
        "poll_interval",
        "lookback_days",
        "timeout",
        "deadline",
        "poll_deadline",
        "retries",
        "max_retry_wait",
        "concurrency",
        "max_body_bytes",
    }
    assert set(SMTP_KEYS) == {
        "host",
        "port",
        "security",
        "username",
        "password_env",
        "ca_file",
        "timeout",
        "max_connections",
        "rate_per_second",
        "retries",
        "data_timeout",
    }
    assert set(SUBSCRIBER_KEYS) == {
        "email",
        "name",
        "timezone",
        "schedule",
        "max_papers",
        "min_upvotes",
        "send_empty",
        "window_days",
        "thumbnails",
        "delivery",
        "topics",
    }


def test_defaults_apply_unless_overridden(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE), {})
    ada, grace = config.subscribers
    assert ada.email == "ada@example.org"  # lower-cased
    assert ada.timezone == "America/New_York"  # overrides the default
    assert ada.schedule == parse_schedule("daily 07:00")  # from [defaults]
    assert ada.max_papers == 10
    assert ada.effective_window_days == 2
    assert grace.timezone == "Europe/Berlin"  # from [defaults]
    assert grace.schedule.kind == "weekly"
    assert grace.max_papers == 5
    assert grace.effective_window_days == 8
    assert grace.min_upvotes == 0 and grace.send_empty is False  # built-in defaults
    assert config.source.poll_interval == dt.timedelta(hours=1)
    assert config.daemon.catch_up == dt.timedelta(hours=24)


def test_defaults_can_hold_topics(tmp_path: Path) -> None:
    text = (
        '[defaults]\ntopics = [{ name = "All", query = "model" }]\n\n'
        '[[subscribers]]\nemail = "a@example.org"\n'
    )
    (sub,) = load_config(write(tmp_path, text), {}).subscribers
    assert [t.query for t in sub.topics] == ["model"]
    assert sub.schedule.text == "daily 08:00" and sub.timezone == "UTC"


def test_subscribers_and_topics_carry_no_instance_dict(tmp_path: Path) -> None:
    """A Config holds one per subscriber (100k of them): slots, no per-instance dict."""
    ada, _ = load_config(write(tmp_path, BASE), {}).subscribers
    assert not hasattr(ada, "__dict__") and not hasattr(ada.topics[0], "__dict__")
    assert not hasattr(ada.topics, "__dict__") and ada.topics
    assert not ada.replace(topics=()).topics


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf" / "tpl").mkdir(parents=True)
    (tmp_path / "conf" / "ca.pem").write_text("x")
    text = (
        '[storage]\nurl = "sqlite:///data/d.db"\n'
        '[mail]\nmaildir = "box"\ntemplates = "tpl"\n'
        'smtp = { host = "127.0.0.1", port = 2525, security = "none", ca_file = "ca.pem" }\n'
    )
    path = write(tmp_path / "conf", text)
    monkeypatch.chdir(tmp_path)  # started elsewhere: paths still follow the file
    config = load_config(Path("conf/digest.toml"), {})
    assert config.storage.url == f"sqlite:///{tmp_path}/conf/data/d.db"
    assert config.mail.maildir == tmp_path / "conf" / "box"
    assert config.mail.templates == tmp_path / "conf" / "tpl"
    assert config.mail.transport == "smtp"  # an smtp table makes smtp the default
    assert config.mail.smtp is not None and config.mail.smtp.ca_file == path.parent / "ca.pem"
    absolute = load_config(write(tmp_path, '[storage]\nurl = "sqlite:////var/x.db"\n'), {})
    assert absolute.storage.url == "sqlite:////var/x.db"
    pg = 'url = "postgresql+psycopg://u@db.internal/digest"'
    assert (
        load_config(write(tmp_path, f"[storage]\n{pg}\n"), {}).storage.url
        == "postgresql+psycopg://u@db.internal/digest"
    )


def test_smtp_password_comes_from_the_environment(tmp_path: Path) -> None:
    text = (
        '[mail]\nsmtp = { host = "smtp.example.org", security = "tls", '
        'username = "digest", password_env = "DIGEST_SMTP_PASSWORD" }\n'
    )
    config = load_config(write(tmp_path, text), {"DIGEST_SMTP_PASSWORD": "s3cret"})
    smtp = config.mail.smtp
    assert smtp == SmtpConfig(
        host="smtp.example.org", port=465, security="tls", username="digest", password="s3cret"
    )
    assert "s3cret" not in repr(config)
    problems = problems_of(write(tmp_path, text))
    assert problems == [
        f"{tmp_path}/digest.toml:2: mail.smtp.password_env: the environment "
        "variable DIGEST_SMTP_PASSWORD is not set (it should hold the SMTP "
        "password)"
    ]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost"])
def test_security_none_is_allowed_on_loopback(tmp_path: Path, host: str) -> None:
    text = f'[mail]\nsmtp = {{ host = "{host}", security = "none" }}\n'
    smtp = load_config(write(tmp_path, text), {}).mail.smtp
    assert smtp is not None and smtp.port == 25 and smtp.security == "none"


@pytest.mark.parametrize("host", ["smtp.example.org", "10.0.0.1", "localhost.evil.org"])
def test_security_none_is_refused_elsewhere(here: Path, host: str) -> None:
    text = f'[mail]\ntransport = "smtp"\nsmtp = {{ host = "{host}", security = "none" }}\n'
    assert problems_of(write(here, text).relative_to(here)) == [
        f'digest.toml:3: mail.smtp.security: "none" sends mail and password in plain text; '
        f'it is only allowed for a loopback host (127.0.0.0/8, ::1, localhost), not "{host}"'
    ]


def test_summary_lines(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE), {})
    assert summarize_config(config) == [
        f"config: {tmp_path}/digest.toml",
        "source: https://huggingface.co (mode auto), poll every 1h, lookback 3 days",
        f"storage: sqlite:///{tmp_path}/digest.db",
        f"mail: maildir {tmp_path}/mail, from Digest <digest@example.org>",
        "alerts: off (no [alerts] email)",
        "2 subscribers:",
        "  ada@example.org: America/New_York, daily 07:00, 2 topics, window 2 days",
        "  grace@example.org: Europe/Berlin, weekly fri 17:30, 1 topic, window 8 days",
    ]


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE), {})
    assert isinstance(config, Config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.subscribers[0].email = "x@example.org"


# ---------------------------------------------------------------------------
# one error each: the exact text


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'timezone = "America/New_York"',
            'timezon = "America/New_York"',
            'digest.toml:15: subscribers[1] (ada@example.org).timezon: unknown key "timezon"; '
            'did you mean "timezone"?',
        ),
        (
            'timezone = "America/New_York"',
            'timezone = "Europe/Berln"',
            "digest.toml:15: subscribers[1] (ada@example.org).timezone: unknown time zone "
            '"Europe/Berln"; did you mean "Europe/Berlin"?',
        ),
        (
            'schedule = "weekly fri 17:30"',
            'schedule = "weekly fri 5pm"',
            'digest.toml:23: subscribers[2] (grace@example.org).schedule: bad time "5pm": '
            "expected HH:MM from 00:00 to 23:59",
        ),
        (
            "max_papers = 5",
            'max_papers = "5"',
            "digest.toml:24: subscribers[2] (grace@example.org).max_papers: expected an integer, "
            'got a string ("5")',
        ),
        (
            "max_papers = 5",
            "max_papers = 0",
            "digest.toml:24: subscribers[2] (grace@example.org).max_papers: must be at least 1, "
            "not 0",
        ),
        (
            'email = "grace@example.org"',
            'email = "ADA@example.org"',
            "digest.toml:22: subscribers[2] (ada@example.org).email: duplicate email "
            '"ada@example.org" (also subscribers[1] at line 13)',
        ),
        (
            'email = "grace@example.org"',
            'email = "grace at example.org"',
            'digest.toml:22: subscribers[2] (grace at example.org).email: "grace at example.org" '
            "is not an email address (expected name@example.org)",
        ),
        (
            'name = "Ada"',
            'name = "Ada\\r\\nBcc: x@evil.org"',
            "digest.toml:14: subscribers[1] (ada@example.org).name: must be one line "
            "(no line breaks)",
        ),
        (
            "max_papers = 10",
            "max_papers = 10\nsend_empty = 1",
            "digest.toml:11: defaults.send_empty: expected true or false, got a number (1)",
        ),
        (
            'poll_interval = "1h"',
            'poll_interval = "1 hour"',
            'digest.toml:2: source.poll_interval: "1 hour" is not a duration; write e.g. "90s", '
            '"30m", "1h" or "1d"',
        ),
        (
            "[source]\n",
            "[sauce]\n",
            'digest.toml:1: sauce: unknown key "sauce"; did you mean "source"?',
        ),
        (
            'topics = [{ name = "Agents", query = "agent*" }]',
            "",
            "digest.toml:21: subscribers[2] (grace@example.org): no topics; add topics = "
            "[{ name = ..., query = ... }]",
        ),
        (
            '{ name = "RL", query',
            '{ name = "Diffusion", query',
            "digest.toml:18: subscribers[1] (ada@example.org).topics[2].name: duplicate topic "
            'name "Diffusion"',
        ),
        (
            'from = "Digest <digest@example.org>"',
            'from = "Digest"',
            'digest.toml:5: mail.from: "Digest" is not an email address (expected '
            "name@example.org)",
        ),
        (
            'max_papers = 5\n',
            'max_papers = 5\nthumbnails = "huge"\n',
            'digest.toml:25: subscribers[2] (grace@example.org).thumbnails: "huge" is not one of '
            '"small", "large", "none"',
        ),
        (
            "[mail]\n",
            '[mail]\ntransport = "smtp"\n',
            'digest.toml:5: mail.transport: is "smtp" but [mail] has no smtp = { host = ... }',
        ),
    ],
)
def test_one_error(here: Path, old: str, new: str, expected: str) -> None:
    assert load_base(here, old, new) == [expected]


def test_query_error_shows_a_caret_under_the_column(here: Path) -> None:
    problems = load_base(here, 'query = "diffusion"', 'query = "diffusion AND (latent"')
    assert len(problems) == 1
    first, query, caret = problems[0].splitlines()
    assert first.startswith("digest.toml:17: subscribers[1] (ada@example.org).topics[1].query: ")
    assert "column 15" in first
    assert query == "    diffusion AND (latent"
    assert caret == "    " + " " * 14 + "^"


def test_toml_syntax_error_names_file_and_line(here: Path) -> None:
    assert load_base(here, "max_papers = 5", "max_papers = ") == [
        "digest.toml:24: invalid TOML: Invalid value (column 14)"
    ]
    assert problems_of(write(here, 'a = "open\n').relative_to(here)) == [
        "digest.toml:1: invalid TOML: Illegal character '\\n' (column 10)"
    ]


def test_missing_file_suggests_init(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "nope.toml", {})
    assert (
        str(e.value) == f"{tmp_path}/nope.toml: no such config file; run `digest init` "
        "to write an example"
    )
    assert e.value.exit_code == 2


def test_several_errors_are_reported_at_once_in_line_order(here: Path) -> None:
    text = (
        BASE.replace('poll_interval = "1h"', "poll_interval = 5")
        .replace('timezone = "America/New_York"', 'timezone = "Mars/Olympus"')
        .replace('query = "agent*"', 'query = "agent* OR"')
        .replace('email = "grace@example.org"', 'email = "ada@example.org"')
    )
    with pytest.raises(ConfigError) as e:
        load_config(write(here, text).relative_to(here), {})
    lines = [p.splitlines()[0] for p in e.value.problems]
    assert [line.split(":")[1] for line in lines] == ["2", "15", "22", "25"]
    assert lines[0] == ("digest.toml:2: source.poll_interval: expected a string, got a number (5)")
    assert lines[1] == (
        "digest.toml:15: subscribers[1] (ada@example.org).timezone: unknown time "
        'zone "Mars/Olympus"'
    )
    assert lines[2].startswith("digest.toml:22: subscribers[2] (ada@example.org).email: duplicate")
    assert lines[3].startswith("digest.toml:25: subscribers[2] (ada@example.org).topics[1].query:")
    assert str(e.value) == lines[0] + " (and 3 more)"


def test_smtp_table_errors(here: Path) -> None:
    text = (
        '[mail]\nfrom = "d@example.org"\n'  # inline tables are one line in TOML 1.0
        'smtp = { host = "smtp.example.org", port = 70000, security = "ssl", '
        'username = "digest", max_conections = 2 }\n'
    )
    assert sorted(problems_of(write(here, text).relative_to(here))) == [
        'digest.toml:3: mail.smtp.max_conections: unknown key "max_conections"; did you mean '
        '"max_connections"?',
        "digest.toml:3: mail.smtp.port: must be from 1 to 65535, not 70000",
        'digest.toml:3: mail.smtp.security: "ssl" is not one of "tls", "starttls", "none"',
        "digest.toml:3: mail.smtp.username: username is set but password_env is not; AUTH "
        "needs both",
    ]


# ---------------------------------------------------------------------------
# the line scanner


def test_key_lines_follow_every_toml_form() -> None:
    text = """\
top = 1
[a]
b.c = "x"          # a dotted key
[[subscribers]]
email = "a@x.org"
[[subscribers]]
email = '''b@x.org'''
[[subscribers.topics]]
name = "T1"
[[subscribers.topics]]
query = "has # no comment"
[[subscribers]]
topics = [
  { name = "one", query = "q" },

  # a comment between elements
  { name = "two", query = "r" },
]
"""
    lines = key_lines(text)
    assert lines[("top",)] == 1
    assert lines[("a", "b", "c")] == 3
    assert lines[("subscribers", 1, "email")] == 7
    assert lines[("subscribers", 1, "topics", 0, "name")] == 9
    assert lines[("subscribers", 1, "topics", 1, "query")] == 11
    assert lines[("subscribers", 2)] == 12
    assert lines[("subscribers", 2, "topics", 0, "query")] == 14
    assert lines[("subscribers", 2, "topics", 1, "name")] == 17


def test_errors_in_array_of_tables_topics_point_at_their_line(here: Path) -> None:
    text = (
        '[[subscribers]]\nemail = "a@example.org"\n'
        '[[subscribers.topics]]\nname = "ok"\nquery = "x"\n'
        '[[subscribers.topics]]\nname = "bad"\nquery = "x AND"\n'
    )
    (problem,) = problems_of(write(here, text).relative_to(here))
    assert problem.startswith("digest.toml:8: subscribers[1] (a@example.org).topics[2].query:")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'subscribers = ["x"]',
            ['digest.toml:1: subscribers[1]: expected a table, got a string ("x")'],
        ),
        (
            "subscribers = { a = 1 }",
            ["digest.toml:1: subscribers: expected [[subscribers]] tables, got a table"],
        ),
        ("[mail]\nsmtp = 5", ["digest.toml:2: mail.smtp: expected a table, got a number (5)"]),
        ("[mail]\nsmtp = {}", ["digest.toml:2: mail.smtp: missing host"]),
        (
            '[storage]\nurl = "::nope"',
            [
                "digest.toml:2: storage.url: not a database URL (Could "
                "not parse SQLAlchemy URL from given URL string)"
            ],
        ),
        (
            '[[subscribers]]\nemail = "a@example.org"\ntopics = [5, {}]',
            [
                "digest.toml:3: subscribers[1] (a@example.org).topics[1]: expected a table, got a "
                "number (5)",
                "digest.toml:3: subscribers[1] (a@example.org).topics[2]: missing name",
                "digest.toml:3: subscribers[1] (a@example.org).topics[2]: missing query",
            ],
        ),
        (
            "[[subscribers]]\nname = 'x'",
            [
                "digest.toml:1: subscribers[1]: missing email",
                "digest.toml:1: subscribers[1]: no topics; add topics = "
                "[{ name = ..., query = ... }]",
            ],
        ),
    ],
)
def test_odd_shapes_are_reported_not_crashed_on(here: Path, text: str, expected: list[str]) -> None:
    assert problems_of(write(here, text).relative_to(here)) == expected


def test_every_key_is_read(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "tpl").mkdir()
    text = """\
[source]
base_url = "http://127.0.0.1:8080/"
mode = "html"
poll_interval = "1h30m"
lookback_days = 0
timeout = 5
retries = 0
max_retry_wait = 9.5
concurrency = 7
max_body_bytes = 1000
[storage]
url = "sqlite:///:memory:"
[mail]
from = "x@example.org"
transport = "smtp"
maildir = "/var/mail/x"
templates = "tpl"
unsubscribe = "https://example.org/u"
[mail.smtp]
host = "mx.example.org"
port = 2465
security = "tls"
username = "u"
password_env = "P"
ca_file = "ca.pem"
timeout = 3
max_connections = 2
rate_per_second = 0.5
retries = 1
[alerts]
email = "Admin@Example.org"
after_failed_polls = 9
[daemon]
catch_up = "2d"
[[subscribers]]
email = "a@example.org"
name = "A"
timezone = "Asia/Kolkata"
schedule = "0 9 * * 1-5"
max_papers = 3
min_upvotes = 4
send_empty = true
window_days = 6
thumbnails = "none"
topics = [{ name = "t", query = "q" }]
"""
    c = load_config(write(tmp_path, text), {"P": "pw"})
    assert c.source == SourceConfig(
        base_url="http://127.0.0.1:8080",
        mode="html",
        poll_interval=dt.timedelta(minutes=90),
        lookback_days=0,
        timeout=5.0,
        retries=0,
        max_retry_wait=9.5,
        concurrency=7,
        max_body_bytes=1000,
    )
    assert c.storage.url == "sqlite:///:memory:"
    assert c.mail == MailConfig(
        from_addr="x@example.org",
        transport="smtp",
        maildir=Path("/var/mail/x"),
        templates=tmp_path / "tpl",
        unsubscribe="https://example.org/u",
        smtp=SmtpConfig(
            host="mx.example.org",
            port=2465,
            security="tls",
            username="u",
            password="pw",
            ca_file=tmp_path / "ca.pem",
            timeout=3.0,
            max_connections=2,
            rate_per_second=0.5,
            retries=1,
        ),
    )
    assert c.alerts.email == "admin@example.org" and c.alerts.after_failed_polls == 9
    assert c.daemon.catch_up == dt.timedelta(days=2)
    (sub,) = c.subscribers
    assert (
        sub.name,
        sub.timezone,
        sub.schedule.text,
        sub.max_papers,
        sub.min_upvotes,
        sub.send_empty,
        sub.window_days,
        sub.thumbnails,
    ) == ("A", "Asia/Kolkata", "0 9 * * 1-5", 3, 4, True, 6, "none")


def test_a_byte_order_mark_is_not_part_of_the_file(here: Path) -> None:
    path = here / "digest.toml"
    path.write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    config = load_config(path, {})
    assert [s.email for s in config.subscribers] == ["ada@example.org", "grace@example.org"]


def test_internationalized_domains_are_accepted_in_display_form(here: Path) -> None:
    text = BASE.replace("Ada@Example.org", "Ada@BÜCHER.example").replace(
        "digest@example.org", "digest@例え.テスト"
    )
    config = load_config(write(here, text), {})
    assert config.subscribers[0].email == "ada@bücher.example"
    assert config.mail.from_addr == "Digest <digest@例え.テスト>"
    # the A-label spelling is the same address
    twice = BASE.replace("grace@example.org", "ada@xn--bcher-kva.example").replace(
        "Ada@Example.org", "ada@bücher.example"
    )
    (problem,) = problems_of(write(here, twice).relative_to(here))
    assert 'duplicate email "ada@bücher.example"' in problem


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("ada@bü cher.example", "not a valid internationalized name"),
        ("ada@xn--zz.example", "not a valid internationalized name"),
        ("adä@example.org", "is not an email address"),  # a non-ASCII local part needs SMTPUTF8
        ("ada@bücher..example", "is not an email address"),
    ],
)
def test_bad_internationalized_addresses_are_refused(here: Path, address: str, why: str) -> None:
    path = write(here, BASE.replace("Ada@Example.org", address)).relative_to(here)
    (problem,) = problems_of(path)
    assert problem.startswith("digest.toml:13: subscribers[1]") and why in problem, problem
