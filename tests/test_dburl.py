"""The config's own database-URL split agrees with SQLAlchemy's `make_url` on every URL
here: what it accepts, the backend, the database part, the masked text."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from digest.config.dburl import BadURL, parse_db_url

GOOD = [
    "sqlite:///digest.db",
    "sqlite:////var/lib/papers-digest/digest.db",
    "sqlite://",
    "sqlite:///:memory:",
    "sqlite:///file:x.db?mode=ro&uri=true",
    "sqlite+pysqlite:///data/d%20b.db",
    "postgresql+psycopg://digest:s3cr%40t@db.example.org:5433/digest?sslmode=require",
    "postgresql+psycopg://digest@localhost/digest",
    "postgresql://u:p@[::1]:5432/d",
    "postgresql+psycopg:///digest?host=/run/postgresql",
    "mysql+pymysql://u:@h/d",
]
BAD = ["::nope", "digest.db", "", "sqlite:/x.db", "postgresql://h:port/d"]


@pytest.mark.parametrize("text", GOOD)
def test_a_url_splits_as_sqlalchemy_splits_it(text: str) -> None:
    ours, theirs = parse_db_url(text), make_url(text)
    assert ours.backend == theirs.get_backend_name()
    assert ours.drivername == theirs.drivername
    assert ours.database == theirs.database
    assert ours.host == theirs.host
    assert ours.port == theirs.port
    assert make_url(ours.masked()).password in (None, "***")
    assert make_url(ours.masked()).database == theirs.database
    assert make_url(ours.with_database("/abs/x y.db")).database == "/abs/x y.db"
    assert make_url(ours.with_database("/abs/x.db")).query == theirs.query


@pytest.mark.parametrize("text", BAD)
def test_what_sqlalchemy_refuses_is_refused(text: str) -> None:
    with pytest.raises((ArgumentError, ValueError)):
        make_url(text)
    with pytest.raises(BadURL):
        parse_db_url(text)
