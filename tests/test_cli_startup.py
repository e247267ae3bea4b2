"""Start-up: which modules a command loads before it answers, in a real subprocess.

Not a timing test: the import graph is what makes `digest --help` instant, so the
test pins the graph (no heavy module loaded), and benchmarks/cli.py measures the time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.configs import write_config

HEAVY = ("sqlalchemy", "sqlmodel", "jinja2", "aiohttp", "aiosmtplib", "selectolax", "httpx")

PROBE = """
import json, sys
from digest.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
loaded = sorted({name.split(".")[0] for name in sys.modules})
words = sys.modules.get("digest.topics.words")
built = bool(words and words._raw_word.cache_info().currsize)
print(json.dumps({"code": code, "loaded": loaded, "word_pattern": built}), file=sys.stderr)
"""


def probe(*argv: str, cwd: Path) -> dict[str, Any]:
    """Run `digest ARGV` in a fresh interpreter; its exit code, the top-level packages it
    had imported by the end, and whether it built the Unicode word pattern."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )
    report: dict[str, Any] = json.loads(done.stderr.strip().splitlines()[-1])
    return report


def modules_loaded(*argv: str, cwd: Path) -> tuple[int, set[str]]:
    report = probe(*argv, cwd=cwd)
    return report["code"], set(report["loaded"])


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["send", "--help"], ["--version"], ["fetch", "--date", "not-a-day"]],
)
def test_help_and_bad_usage_import_nothing_heavy(tmp_path: Path, argv: list[str]) -> None:
    code, loaded = modules_loaded(*argv, cwd=tmp_path)
    assert code in (0, 2)
    assert "digest" in loaded  # the probe ran the real CLI
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_init_imports_no_database(tmp_path: Path) -> None:
    code, loaded = modules_loaded("init", "-c", str(tmp_path / "digest.toml"), cwd=tmp_path)
    assert code == 0
    assert (tmp_path / "digest.toml").exists()
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_a_command_that_needs_the_database_still_loads_it(tmp_path: Path) -> None:
    """The other side: the probe sees imports at all (else the tests above prove nothing)."""
    config = write_config(tmp_path, "http://127.0.0.1:1")
    code, loaded = modules_loaded("match", "-c", str(config), cwd=tmp_path)
    assert code == 0
    assert "sqlalchemy" in loaded


def test_check_validates_templates_and_reads_recipients_without_sqlalchemy(
    tmp_path: Path,
) -> None:
    """The renderer needs `Paper` and `Match` (digest/records.py), not the tables: `digest
    check` loads Jinja for the templates, and the SQLite file through sqlite3."""
    config = write_config(tmp_path, "http://127.0.0.1:1")
    for before in ([], ["status"]):  # no database yet; a current one (status made it)
        if before:
            assert modules_loaded(*before, "-c", str(config), cwd=tmp_path)[0] == 0
            assert (tmp_path / "digest.db").exists()
        code, loaded = modules_loaded("check", "-c", str(config), cwd=tmp_path)
        assert code == 0
        assert "jinja2" in loaded  # the probe sees the renderer's own imports
        assert not loaded & {"sqlalchemy", "sqlmodel", "pydantic"}, before


def test_status_on_a_current_sqlite_file_reads_it_without_sqlalchemy(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:1")
    code, loaded = modules_loaded("status", "-c", str(config), cwd=tmp_path)
    assert code == 0  # the first status makes the database (through the full store)
    assert "sqlalchemy" in loaded
    code, loaded = modules_loaded("status", "-c", str(config), "--check", cwd=tmp_path)
    assert code == 1  # no poll has run yet: unhealthy, read the quick way
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_only_a_non_ascii_query_builds_the_unicode_word_pattern(tmp_path: Path) -> None:
    """Collecting the combining marks takes ~30-40 ms: `digest check` of ASCII queries
    (nearly every file) never pays it; a query with a non-ASCII word does."""
    config = write_config(tmp_path, "http://127.0.0.1:1")
    report = probe("check", "-c", str(config), cwd=tmp_path)
    assert (report["code"], report["word_pattern"]) == (0, False)
    text = config.read_text(encoding="utf-8").replace("query = '", "query = 'café OR ", 1)
    assert text != config.read_text(encoding="utf-8")
    config.write_text(text, encoding="utf-8")
    report = probe("check", "-c", str(config), cwd=tmp_path)
    assert (report["code"], report["word_pattern"]) == (0, True)


def test_the_quick_reads_know_the_current_schema() -> None:
    """A new migration makes `digest status` take the full store (correct, slower) until
    peek.KNOWN_SCHEMA says the quick reads were checked against it."""
    from digest.store import migrations, peek

    assert peek.KNOWN_SCHEMA == migrations.SCHEMA_VERSION
