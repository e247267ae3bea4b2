"""Turn the dict tomllib read from the subscription file into a validated `Config`.

Owns: every rule about what a key may hold, the defaults and the [defaults]
table, and the error lines (file, line, subscriber, field). Does not own: reading
the file or TOML syntax (load.py), the meaning of a schedule (digest/schedule.py) or
a query (digest/topics/query.py): their parsers are called only to validate.

Every problem is collected, none stops the walk; `build_config` raises one
ConfigError listing them all, sorted by line.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from digest.config.chunks import Piece
from digest.config.dburl import BadURL, parse_db_url
from digest.config.lines import Path as KeyPath
from digest.config.lines import key_lines, line_of
from digest.config.schema import (
    DELIVERIES,
    THUMBNAILS,
    AlertsConfig,
    Config,
    DaemonConfig,
    DkimConfig,
    MailConfig,
    SmtpConfig,
    SourceConfig,
    StorageConfig,
    Subscriber,
    Topic,
    WebConfig,
)
from digest.config.values import (
    Invalid,
    at_least,
    boolean,
    describe,
    in_range,
    is_loopback,
    lowercase_operators,
    non_empty,
    one_of,
    parse_base_url,
    parse_duration,
    parse_email,
    parse_from,
    parse_listen,
    parse_public_url,
    parse_schedule_value,
    parse_timezone,
    parse_unsubscribe,
    positive_duration,
    positive_number,
    query_message,
    single_line,
    string,
)
from digest.errors import ConfigError, QuerySyntaxError
from digest.schedule import parse_schedule

T = TypeVar("T")

TOP_KEYS = ("source", "storage", "mail", "alerts", "daemon", "web", "defaults", "subscribers")
# the file's keys are the dataclass fields, except where noted
SOURCE_KEYS = tuple(f.name for f in dataclasses.fields(SourceConfig))
MAIL_KEYS = ("from", "transport", "maildir", "smtp", "templates", "unsubscribe", "dkim")
DKIM_KEYS = ("domain", "selector", "key_file")
WEB_KEYS = ("listen", "base_url", "secret_env", "old_secrets_env")
MIN_SECRET_CHARS = 16
SMTP_KEYS = tuple(  # the password itself comes from the environment variable password_env
    "password_env" if f.name == "password" else f.name for f in dataclasses.fields(SmtpConfig)
)
SUBSCRIBER_KEYS = tuple(f.name for f in dataclasses.fields(Subscriber))
DEFAULT_KEYS = tuple(k for k in SUBSCRIBER_KEYS if k not in ("email", "name"))
SHARED_KEYS = ("timezone", "schedule")  # one value object per distinct text, for everyone
SUBSCRIBER_VALUES: dict[str, Callable[[Any], Any]] = {  # the checks of the keys but topics
    "email": parse_email,
    "name": single_line,
    "timezone": parse_timezone,
    "schedule": parse_schedule_value,
    "max_papers": at_least(1),
    "min_upvotes": at_least(0),
    "send_empty": boolean,
    "window_days": at_least(1),
    "thumbnails": one_of(*THUMBNAILS),
    "delivery": one_of(*DELIVERIES),
}
FEED_NEEDS_WEB = '"feed" needs a [web] table: the feed is served at /f/TOKEN.atom'
DEFAULT_SCHEDULE = "daily 08:00"  # when neither the subscriber nor [defaults] gives one
SMTP_PORTS = {"tls": 465, "starttls": 587, "none": 25}  # the default port per security


def build_config(
    data: dict[str, Any],
    *,
    path: Path,
    text: str,
    env: Mapping[str, str],
    subscribers: Iterable[Piece] | None = None,
    head_end: int | None = None,
) -> Config:
    """Validate `data` (the TOML reading of `text`, the content of `path`) into a Config.

    `subscribers`: the [[subscribers]] tables, in order, in Pieces of the text, when
    they were parsed apart from `data`, which is then `text[:head_end]` (load.py reads
    a big file a chunk at a time); each Piece is turned into Subscribers before the
    next is taken. Default: data["subscribers"].
    """
    b = Builder(path, text, env, head_end)
    top = b.table((), data, TOP_KEYS)
    source = b.source(b.table(("source",), top.get("source", {}), SOURCE_KEYS))
    storage = b.storage(b.table(("storage",), top.get("storage", {}), ("url",)))
    mail = b.mail(b.table(("mail",), top.get("mail", {}), MAIL_KEYS))
    alerts_t = b.table(("alerts",), top.get("alerts", {}), ("email", "after_failed_polls"))
    alerts = AlertsConfig(
        email=b.field(alerts_t, ("alerts",), "email", None, parse_email),
        after_failed_polls=b.field(alerts_t, ("alerts",), "after_failed_polls", 3, at_least(1)),
    )
    daemon_t = b.table(("daemon",), top.get("daemon", {}), ("catch_up",))
    daemon = DaemonConfig(
        catch_up=b.field(daemon_t, ("daemon",), "catch_up", dt.timedelta(hours=24), parse_duration)
    )
    web = b.web(b.table(("web",), top["web"], WEB_KEYS)) if "web" in top else None
    chunks = [top.get("subscribers", [])] if subscribers is None else subscribers
    subscribers_ = b.subscribers(top.get("defaults", {}), chunks, web=web is not None)
    if b.problems:
        problems = [text for _, text in sorted(b.problems, key=lambda p: p[0])]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(problems[0].splitlines()[0] + more, problems=problems)
    return Config(
        path=path,
        source=source,
        storage=storage,
        mail=mail,
        subscribers=subscribers_,
        alerts=alerts,
        daemon=daemon,
        warnings=tuple(text for _, text in sorted(b.warnings, key=lambda w: w[0])),
        web=web,
    )


class Builder:
    def __init__(
        self, path: Path, text: str, env: Mapping[str, str], head_end: int | None = None
    ) -> None:
        self.path = path
        self.base = path.absolute().parent  # relative paths in the file resolve against it
        self.text = text
        self._lines: dict[KeyPath, int] | None = None
        # a file read in pieces: a problem's line is found in its own piece, or in the
        # head, never by scanning all of a 100k-subscriber file (~12 s)
        self.head_end = head_end
        self._head_lines: dict[KeyPath, int] | None = None
        self.piece: tuple[int, int, int] | None = None  # first subscriber, start, end
        self._piece_lines: dict[KeyPath, int] | None = None
        # the first Topic of each query: the query is checked (and warned about) once
        self.topic_by_query: dict[str, Topic] = {}
        # equal values shared by every subscriber that has them: one Schedule per distinct
        # schedule text, one str per time zone, one Topic per (name, query)
        self.shared: dict[tuple[str, Any], Any] = {}
        self.env = env
        self.problems: list[tuple[int, str]] = []
        self.warnings: list[tuple[int, str]] = []  # the file works, but likely not as meant
        # the subscriber being read (index, table), for labels: every problem is
        # reported while its own subscriber is read
        self.current: tuple[int, object] | None = None

    # -- reporting

    def line(self, where: KeyPath) -> int:
        """The line of `where` in the file, scanned on the first problem only (a valid
        file never pays): in the piece of the subscriber being read, or in the head."""
        if self.piece is not None and where[:1] == ("subscribers",) and len(where) > 1:
            first, start, end = self.piece
            index = where[1]
            if isinstance(index, int) and index >= first:
                if self._piece_lines is None:
                    self._piece_lines = key_lines(self.text[start:end])
                local = ("subscribers", index - first, *where[2:])
                return line_of(self._piece_lines, local) + self.text.count("\n", 0, start)
        if self.head_end is not None and where[:1] != ("subscribers",):
            if self._head_lines is None:
                self._head_lines = key_lines(self.text[: self.head_end])
            return line_of(self._head_lines, where)
        if self._lines is None:  # the whole file: it was read whole, or an earlier piece
            self._lines = key_lines(self.text)
        return line_of(self._lines, where)

    def problem(self, where: KeyPath, message: str) -> None:
        line = self.line(where)
        self.problems.append((line, f"{self.path}:{line}: {self.label(where)}: {message}"))

    def warning(self, where: KeyPath, message: str) -> None:
        line = self.line(where)
        self.warnings.append((line, f"{self.path}:{line}: {self.label(where)}: {message}"))

    def warn_lowercase_operators(self, where: KeyPath, query: str) -> None:
        """`diffusion or gan` is three words ANDed (0 papers on a day `diffusion OR gan`
        matches 341): say so, with the upper-case form when that parses."""
        words, fixed = lowercase_operators(query)
        if not words:
            return
        from digest.topics.query import parse_query  # imported late: the rare case

        shown = ", ".join(f'"{w}"' for w in dict.fromkeys(words))
        try:
            parse_query(fixed)
            hint = f"; for the operator write it in upper case: {fixed}"
        except QuerySyntaxError:
            hint = "; AND, OR and NOT are operators only in upper case"
        self.warning(where, f"{shown} is matched as a plain word here{hint}")

    def current_email(self, i: int) -> str | None:
        """The email the i-th subscriber's table gives, if it is the one being read."""
        if self.current is None or self.current[0] != i or not isinstance(self.current[1], dict):
            return None
        email = self.current[1].get("email")
        return email.strip().lower() if isinstance(email, str) else None

    def label(self, where: KeyPath) -> str:
        out = ""
        for i, part in enumerate(where):
            if isinstance(part, int):
                out += f"[{part + 1}]"  # 1-based: "the first [[subscribers]]" is [1]
                email = self.current_email(part) if where[:i] == ("subscribers",) else None
                if email is not None:
                    out += f" ({email})"
            else:
                out += f".{part}" if out else part
        return out or "(top level)"

    # -- generic readers

    def table(self, where: KeyPath, value: object, allowed: Iterable[str]) -> dict[str, Any]:
        """`value` as a table whose keys are all in `allowed`; {} (and a problem) if not."""
        if not isinstance(value, dict):
            self.problem(where, f"expected a table, got {describe(value)}")
            return {}
        allowed = tuple(allowed)
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = (
                    f'; did you mean "{close[0]}"?'
                    if close
                    else (f"; expected one of: {', '.join(allowed)}")
                )
                self.problem((*where, key), f'unknown key "{key}"{hint}')
        return {k: v for k, v in value.items() if k in allowed}

    def field(
        self,
        table: dict[str, Any],
        where: KeyPath,
        key: str,
        default: T,
        convert: Callable[[Any], T],
    ) -> T:
        """table[key] through `convert`, or `default` when absent or invalid (reported)."""
        if key not in table:
            return default
        try:
            return convert(table[key])
        except Invalid as e:
            self.problem((*where, key), str(e))
            return default

    def local_path(self, raw: str) -> Path:
        return (self.base / Path(raw).expanduser()).absolute()

    # -- sections

    def source(self, t: dict[str, Any]) -> SourceConfig:
        w: KeyPath = ("source",)
        d = SourceConfig()
        mode: str = self.field(t, w, "mode", "auto", one_of("api", "html", "auto"))
        return SourceConfig(
            base_url=self.field(t, w, "base_url", d.base_url, parse_base_url),
            mode=cast(Literal["api", "html", "auto"], mode),
            poll_interval=self.field(t, w, "poll_interval", d.poll_interval, positive_duration),
            lookback_days=self.field(t, w, "lookback_days", d.lookback_days, at_least(0)),
            timeout=self.field(t, w, "timeout", d.timeout, positive_number),
            deadline=self.field(t, w, "deadline", d.deadline, positive_number),
            poll_deadline=self.field(t, w, "poll_deadline", d.poll_deadline, positive_number),
            retries=self.field(t, w, "retries", d.retries, at_least(0)),
            max_retry_wait=self.field(t, w, "max_retry_wait", d.max_retry_wait, positive_number),
            concurrency=self.field(t, w, "concurrency", d.concurrency, at_least(1)),
            max_body_bytes=self.field(t, w, "max_body_bytes", d.max_body_bytes, at_least(1)),
        )

    def storage(self, t: dict[str, Any]) -> StorageConfig:
        url = self.field(t, ("storage",), "url", StorageConfig().url, string)
        try:
            parsed = parse_db_url(url)
        except BadURL as e:
            self.problem(("storage", "url"), f"not a database URL ({e})")
            return StorageConfig()
        db = parsed.database
        if (
            parsed.backend == "sqlite"
            and db
            and db != ":memory:"
            and not (db.startswith("file:") or Path(db).expanduser().is_absolute())
        ):  # a relative SQLite file lives next to the config, wherever we are started from
            url = parsed.with_database(str(self.local_path(db)))
        return StorageConfig(url=url)

    def mail(self, t: dict[str, Any]) -> MailConfig:
        w: KeyPath = ("mail",)
        d = MailConfig()
        smtp = None
        if "smtp" in t:
            smtp_t = self.table((*w, "smtp"), t["smtp"], SMTP_KEYS)
            smtp = self.smtp(smtp_t) if isinstance(t["smtp"], dict) else None
        transport = self.field(
            t, w, "transport", "smtp" if "smtp" in t else "maildir", one_of("maildir", "smtp")
        )
        if transport == "smtp" and "smtp" not in t:
            self.problem((*w, "transport"), 'is "smtp" but [mail] has no smtp = { host = ... }')
        templates = self.field(t, w, "templates", None, string)
        templates_dir = self.local_path(templates) if templates is not None else None
        if templates_dir is not None and not templates_dir.is_dir():
            self.problem((*w, "templates"), f'no such folder "{templates_dir}"')
        from_addr = self.field(t, w, "from", d.from_addr, parse_from)
        unsubscribe = self.field(t, w, "unsubscribe", None, parse_unsubscribe)
        maildir = self.field(t, w, "maildir", str(d.maildir), string)
        dkim = None
        if "dkim" in t:
            dkim_t = self.table((*w, "dkim"), t["dkim"], DKIM_KEYS)
            dkim = self.dkim(dkim_t) if isinstance(t["dkim"], dict) else None
        return MailConfig(
            from_addr=from_addr,
            transport=cast(Literal["maildir", "smtp"], transport),
            maildir=self.local_path(maildir),
            smtp=smtp,
            templates=templates_dir,
            unsubscribe=unsubscribe,
            dkim=dkim,
        )

    def dkim(self, t: dict[str, Any]) -> DkimConfig | None:
        w: KeyPath = ("mail", "dkim")
        for key in DKIM_KEYS:
            if key not in t:
                self.problem(w, f"missing {key}")
        domain = self.field(t, w, "domain", "", single_line).strip().lower()
        selector = self.field(t, w, "selector", "", single_line).strip()
        key_file = self.field(t, w, "key_file", None, non_empty)
        if not (domain and selector and key_file):
            return None
        path = self.local_path(key_file)
        try:
            pem = path.read_bytes()
        except OSError as e:
            self.problem((*w, "key_file"), f'cannot read "{path}": {e.strerror}')
            return None
        from digest.mail.dkim import check_private_key  # only when signing is configured

        problem = check_private_key(pem)
        if problem:
            self.problem((*w, "key_file"), f'"{path}": {problem}')
            return None
        return DkimConfig(domain=domain, selector=selector, key_file=path, private_key=pem)

    def web(self, t: dict[str, Any]) -> WebConfig | None:
        w: KeyPath = ("web",)
        d = WebConfig(secret="")
        host, port = self.field(t, w, "listen", (d.host, d.port), parse_listen)
        base_url = self.field(t, w, "base_url", f"http://{host}:{port}", parse_public_url)
        if "base_url" not in t and not is_loopback(host):
            self.problem(w, "missing base_url: the public https URL the links in emails point to")
        secret_env = self.field(t, w, "secret_env", d.secret_env, non_empty)
        old_env = self.field(t, w, "old_secrets_env", None, non_empty)
        secret = self.env.get(secret_env, "")
        if not secret:
            self.problem(
                (*w, "secret_env") if "secret_env" in t else w,
                f"the environment variable {secret_env} is not set (it should hold the "
                "secret that signs unsubscribe and preferences links)",
            )
        elif len(secret) < MIN_SECRET_CHARS:
            self.problem(
                (*w, "secret_env") if "secret_env" in t else w,
                f"the secret in {secret_env} is {len(secret)} characters; use at least "
                f"{MIN_SECRET_CHARS} (e.g. `openssl rand -hex 32`)",
            )
        old = tuple(self.env.get(old_env, "").replace(",", " ").split()) if old_env else ()
        return WebConfig(
            secret=secret,
            host=host,
            port=port,
            base_url=base_url,
            old_secrets=old,
            secret_env=secret_env,
            old_secrets_env=old_env,
        )

    def smtp(self, t: dict[str, Any]) -> SmtpConfig | None:
        w: KeyPath = ("mail", "smtp")
        if "host" not in t:
            self.problem(w, "missing host")
        host = self.field(t, w, "host", "", non_empty).strip("[]")
        security = self.field(t, w, "security", "starttls", one_of("tls", "starttls", "none"))
        if security == "none" and host and not is_loopback(host):
            self.problem(
                (*w, "security"),
                f'"none" sends mail and password in plain text; it '
                f"is only allowed for a loopback host (127.0.0.0/8, ::1, localhost), "
                f'not "{host}"',
            )
        username = self.field(t, w, "username", None, non_empty)
        password_env = self.field(t, w, "password_env", None, non_empty)
        password = None
        if password_env is not None:
            password = self.env.get(password_env)
            if password is None:
                self.problem(
                    (*w, "password_env"),
                    f"the environment variable {password_env} "
                    "is not set (it should hold the SMTP password)",
                )
        if (username is None) != (password_env is None):
            given, missing = (
                ("username", "password_env") if username else ("password_env", "username")
            )
            self.problem((*w, given), f"{given} is set but {missing} is not; AUTH needs both")
        ca = self.field(t, w, "ca_file", None, string)
        ca_file = self.local_path(ca) if ca is not None else None
        if ca_file is not None and not ca_file.is_file():
            self.problem((*w, "ca_file"), f'no such file "{ca_file}"')
        d = SmtpConfig(host=host)
        return SmtpConfig(
            host=host,
            port=self.field(t, w, "port", SMTP_PORTS[security], in_range(1, 65535)),
            security=cast(Literal["tls", "starttls", "none"], security),
            username=username,
            password=password,
            ca_file=ca_file,
            timeout=self.field(t, w, "timeout", d.timeout, positive_number),
            max_connections=self.field(t, w, "max_connections", d.max_connections, at_least(1)),
            rate_per_second=self.field(t, w, "rate_per_second", d.rate_per_second, positive_number),
            retries=self.field(t, w, "retries", d.retries, at_least(0)),
            data_timeout=self.field(t, w, "data_timeout", d.data_timeout, positive_number),
        )

    # -- subscribers

    def subscribers(
        self, defaults_raw: object, chunks: Iterable[object], *, web: bool
    ) -> tuple[Subscriber, ...]:
        """Every valid subscriber of `chunks` ([[subscribers]] tables in lists, or in the
        Pieces of the text they were read from, in order)."""
        defaults_t = self.table(("defaults",), defaults_raw, DEFAULT_KEYS)
        defaults: dict[str, Any] = {}
        for key, value in defaults_t.items():
            ok, converted = self.subscriber_key(("defaults",), key, value)
            if ok:
                defaults[key] = converted
        if not web and defaults.get("delivery") == "feed":
            self.problem(("defaults", "delivery"), FEED_NEEDS_WEB)
            web = True  # said once for the table, not again for every subscriber
        # a subscriber that does not set a key whose default is bad is not valid either
        bad_defaults = defaults_t.keys() - defaults.keys()
        out: list[Subscriber] = []
        seen: dict[str, int] = {}
        i = 0
        for chunk in chunks:
            if isinstance(chunk, Piece):
                self.piece, self._piece_lines = (i, chunk.start, chunk.end), None
                chunk = chunk.tables
            if not isinstance(chunk, list):
                self.problem(
                    ("subscribers",), f"expected [[subscribers]] tables, got {describe(chunk)}"
                )
                return ()
            for raw in chunk:
                sub = self.subscriber(i, raw, defaults, bad_defaults, seen, web)
                if sub is not None:
                    out.append(sub)
                i += 1
        self.current = self.piece = self._piece_lines = None
        return tuple(out)

    def subscriber(
        self,
        i: int,
        raw: object,
        defaults: dict[str, Any],
        bad_defaults: set[str],
        seen: dict[str, int],
        web: bool,
    ) -> Subscriber | None:
        """The i-th [[subscribers]] table as a Subscriber; None if it has a problem."""
        where: KeyPath = ("subscribers", i)
        self.current = (i, raw)
        t = self.table(where, raw, SUBSCRIBER_KEYS)
        values = dict(defaults)  # the subscriber's own keys override them
        ok = isinstance(raw, dict)
        for key, value in t.items():
            good, values[key] = self.subscriber_key(where, key, value)
            ok = ok and good
        if bad_defaults and not bad_defaults <= t.keys():
            ok = False
        email = values.get("email")
        if isinstance(raw, dict) and "email" not in t:
            self.problem(where, "missing email")
            ok = False
        elif email is not None and email in seen:
            first = seen[email]
            self.problem(
                (*where, "email"),
                f'duplicate email "{email}" (also '
                f"subscribers[{first + 1}] at line "
                f"{self.line(('subscribers', first, 'email'))})",
            )
            ok = False
        elif email is not None:
            seen[email] = i
        if isinstance(raw, dict) and (
            values.get("topics") == () or ("topics" not in values and "topics" not in bad_defaults)
        ):
            self.problem(where, "no topics; add topics = [{ name = ..., query = ... }]")
            ok = False
        if not web and t.get("delivery") == "feed":
            self.problem((*where, "delivery"), FEED_NEEDS_WEB)
            ok = False
        if not ok:
            return None
        values.setdefault("schedule", parse_schedule(DEFAULT_SCHEDULE))
        return Subscriber(**values)

    def subscriber_key(self, where: KeyPath, key: str, value: object) -> tuple[bool, Any]:
        """Validate one subscriber (or [defaults]) key; (False, None) if reported bad."""
        if key == "topics":
            topics = self.topics((*where, key), value)
            return topics is not None, topics
        shareable = key in SHARED_KEYS and isinstance(value, str)
        if shareable and (key, value) in self.shared:
            return True, self.shared[(key, value)]
        try:
            converted = SUBSCRIBER_VALUES[key](value)
        except Invalid as e:
            self.problem((*where, key), str(e))
            return False, None
        if shareable:
            self.shared[(key, value)] = converted
        return True, converted

    def topics(self, where: KeyPath, value: object) -> tuple[Topic, ...] | None:
        if not isinstance(value, list):
            self.problem(
                where, f"expected an array of {{ name, query }} tables, got {describe(value)}"
            )
            return None
        out: list[Topic] = []
        names: set[str] = set()
        ok = True
        for k, raw in enumerate(value):
            topic = self.known_topic(raw)
            if topic is None or topic.name in names:
                topic = self.topic((*where, k), raw, names)
            if topic is None:
                ok = False
                continue
            names.add(topic.name)
            out.append(topic)
        return tuple(out) if ok else None

    def known_topic(self, raw: object) -> Topic | None:
        """The Topic already built from a table equal to `raw` (exactly name and query):
        100k subscribers share many topics, and each is checked once."""
        if type(raw) is not dict or len(raw) != 2:
            return None
        query = raw.get("query")
        topic = self.topic_by_query.get(query) if type(query) is str else None
        return topic if topic is not None and topic.name == raw.get("name") else None

    def name_and_query(self, where: KeyPath, raw: object) -> tuple[str | None, str | None]:
        """A topic table's name and query, each None if missing or bad (reported)."""
        if type(raw) is dict and len(raw) == 2:  # the usual table: checked without copies
            try:
                return single_line(raw["name"]), non_empty(raw["query"])
            except (KeyError, Invalid):
                pass  # not the usual table after all: say what is wrong below
        t = self.table(where, raw, ("name", "query"))
        name = self.field(t, where, "name", None, single_line)
        query = self.field(t, where, "query", None, non_empty)
        for key in ("name", "query"):
            if key not in t and isinstance(raw, dict):
                self.problem(where, f"missing {key}")
        return name, query

    def topic(self, where: KeyPath, raw: object, names: set[str]) -> Topic | None:
        """One { name, query } table, checked; None if it has a problem (reported)."""
        from digest.topics.query import check_query  # imported late: only to validate queries

        name, query = self.name_and_query(where, raw)
        if name is not None and name in names:
            self.problem((*where, "name"), f'duplicate topic name "{name}"')
            name = None
        first = self.topic_by_query.get(query) if query is not None else None
        if query is not None and first is None:
            try:
                check_query(query)
                self.warn_lowercase_operators((*where, "query"), query)
            except QuerySyntaxError as e:
                self.problem((*where, "query"), query_message(e))
                query = None
        if name is None or query is None:
            return None
        if first is None:  # the common case: a query met for the first time
            topic = self.topic_by_query[query] = Topic(name=sys.intern(name), query=query)
            return topic
        if first.name == name:
            return first
        shared = self.shared.get(("topic", (name, query)))  # one query, several names
        if shared is None:
            shared = self.shared[("topic", (name, query))] = Topic(sys.intern(name), query)
        return cast(Topic, shared)
