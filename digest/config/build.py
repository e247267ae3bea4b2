"""Turn the TOML data of the subscription file into a validated `Config`.

Owns: `build_config`, and the rules of every table but the subscribers' ([source],
[storage], [mail] with its smtp and dkim, [alerts], [daemon], [web]). Does not own:
reading the file or TOML syntax (load.py, chunks.py), [defaults] and
[[subscribers]] (subscribers.py), reporting a problem with its line (reader.py), the
meaning of a schedule (digest/schedule.py) or a query (digest/topics/query.py):
their parsers are called only to validate.

    Builder = Reader (lines, problems) <- SubscriberRules (people) <- the other tables

Every problem is collected, none stops the walk; `build_config` raises one
ConfigError listing them all, sorted by line.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from digest.config.dburl import BadURL, parse_db_url
from digest.config.lines import Path as KeyPath
from digest.config.schema import (
    AlertsConfig,
    Config,
    DaemonConfig,
    DkimConfig,
    MailConfig,
    SmtpConfig,
    SourceConfig,
    StorageConfig,
    Subscriber,
    WebConfig,
)
from digest.config.subscribers import SubscriberRules
from digest.config.values import (
    at_least,
    in_range,
    is_loopback,
    non_empty,
    one_of,
    parse_base_url,
    parse_duration,
    parse_email,
    parse_from,
    parse_listen,
    parse_public_url,
    parse_unsubscribe,
    positive_duration,
    positive_number,
    single_line,
    string,
)
from digest.errors import ConfigError

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
SMTP_PORTS = {"tls": 465, "starttls": 587, "none": 25}  # the default port per security


def build_config(
    data: dict[str, Any],
    *,
    path: Path,
    text: str | None,
    env: Mapping[str, str],
    subscribers: Iterable[object] | None = None,
    head_text: str | None = None,
    middle: int | None = None,
    checked: tuple[Subscriber, ...] | None = None,
) -> Config:
    """Validate `data` (the TOML reading of `text`, the content of `path`) into a Config.

    `subscribers`: the [[subscribers]] tables, in order, in Pieces of the file, when
    they were parsed apart from `data`, which is then the reading of `head_text`, the
    file up to them (load.py reads a big file a chunk at a time; `text` is then None);
    each Piece is turned into Subscribers before the next is taken. Default:
    data["subscribers"]. `middle`: where a child process takes over the pieces
    (`halves.py`; they then hold chunks.MIDDLE there). `checked`: the subscribers of
    these very bytes, checked before (`remembered.py`), which are then not read again.
    """
    b = Builder(path, text, env, head_text)
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
    if checked is not None:
        subscribers_ = checked
    else:
        chunks = [top.get("subscribers", [])] if subscribers is None else subscribers
        subscribers_ = b.subscribers(
            top.get("defaults", {}), chunks, web=web is not None, middle=middle
        )
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


class Builder(SubscriberRules):
    """The rules of every table but the subscribers'."""

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
