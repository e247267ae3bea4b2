"""A big subscription file's checked subscribers kept until the file changes
(digest/config/remembered.py): the same Config from the copy as from checking, and
never a copy of other bytes, of other code, of a file with warnings, nor a damaged one.

The bar is lowered to 0 bytes here (conftest turns remembering off for every other
test), so a file of 30 subscribers is remembered; the last test runs `digest check`
as a process on a file over the real bar."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from digest.config import Config, load_config, remembered
from digest.config.subscribers import SubscriberRules
from digest.errors import ConfigError

from .test_config_chunks import HEAD, subscriber

N = 30
SMTP = """
[mail]
from = "Papers <papers@example.org>"
transport = "smtp"
smtp = { host = "127.0.0.1", port = 2525, security = "none", username = "digest", password_env = "SMTP_PASSWORD" }
"""  # noqa: E501 (one TOML line)
SECRET = "correct-horse-battery-staple"
BAR = remembered.CACHE_FROM  # as shipped (conftest raises it for every test)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setattr(remembered, "CACHE_FROM", 0)
    return {"DIGEST_CACHE_DIR": str(tmp_path / "cache"), "SMTP_PASSWORD": SECRET}


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many subscriber tables were checked, one entry per load (the last counts on)."""
    counted: list[int] = []
    real = SubscriberRules.subscriber

    def subscriber(self: SubscriberRules, *args: object, **kwargs: object) -> object:
        counted[-1] += 1
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(SubscriberRules, "subscriber", subscriber)
    return counted


def file_of(tmp_path: Path, changes: dict[int, str] | None = None, head: str = HEAD) -> Path:
    changes = changes or {}
    path = tmp_path / "digest.toml"
    path.write_text(head + "".join(changes.get(i, subscriber(i)) for i in range(N)), "utf-8")
    return path


def load(path: Path, env: dict[str, str], checks: list[int]) -> Config:
    checks.append(0)
    return load_config(path, env)


def copies(env: dict[str, str]) -> list[Path]:
    folder = Path(env["DIGEST_CACHE_DIR"])
    return sorted(folder.iterdir()) if folder.exists() else []


def test_a_file_checked_once_is_read_from_its_copy_as_it_was_checked(
    tmp_path: Path, env: dict[str, str], checks: list[int]
) -> None:
    path = file_of(tmp_path, head=HEAD + SMTP)
    checked = load(path, env, checks)
    (copy,) = copies(env)
    assert oct(copy.parent.stat().st_mode & 0o777) == "0o700"
    again = load(path, env, checks)
    assert checks == [N, 0]  # the second load checked no subscriber
    assert again == checked
    assert [s.schedule.kind for s in again.subscribers] == ["daily", "weekly"] * (N // 2)
    assert again.mail.smtp is not None and again.mail.smtp.password == SECRET
    assert SECRET.encode() not in copy.read_bytes()  # secrets come from the environment


def test_a_changed_file_is_checked_again_and_its_problems_said(
    tmp_path: Path, env: dict[str, str], checks: list[int]
) -> None:
    path = file_of(tmp_path)
    load(path, env, checks)
    file_of(tmp_path, {7: subscriber(7, extra='timezone = "Mars/Olympus"\n')})
    with pytest.raises(ConfigError) as e:
        load(path, env, checks)
    assert "Mars/Olympus" in str(e.value) and "(user7@example.org).timezone" in str(e.value)
    assert checks[-1] == N
    file_of(tmp_path, {7: subscriber(7, query="transformer*")})
    assert load(path, env, checks).subscribers[7].topics[0].query == "transformer*"
    assert checks[-1] == N
    assert load(path, env, checks).subscribers[7].topics[0].query == "transformer*"
    assert checks[-1] == 0


def test_the_environment_is_read_every_time(
    tmp_path: Path, env: dict[str, str], checks: list[int]
) -> None:
    path = file_of(tmp_path, head=HEAD + SMTP)
    load(path, env, checks)
    with pytest.raises(ConfigError, match="SMTP_PASSWORD"):
        load(path, {"DIGEST_CACHE_DIR": env["DIGEST_CACHE_DIR"]}, checks)


def test_a_copy_made_by_other_code_is_not_used(
    tmp_path: Path, env: dict[str, str], checks: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = file_of(tmp_path)
    load(path, env, checks)
    monkeypatch.setattr(remembered, "_code_key", lambda: b"another version".ljust(32))
    load(path, env, checks)
    assert checks == [N, N]


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[: len(raw) // 2],  # cut short
        lambda raw: raw[:32] + b"not marshal at all",
        lambda raw: raw[:32],  # the key alone
        lambda raw: raw[:32] + __import__("marshal").dumps(([1, 2], [], [0, 0])),
        lambda raw: raw[:32] + __import__("marshal").dumps((["a"], [("x",)], [0])),
        lambda raw: raw[:32] + __import__("marshal").dumps((["a\x1fb\x1f"], [], [-1])),
    ],
    ids=["cut", "garbage", "empty", "not-strings", "bad-settings", "bad-index"],
)
def test_a_damaged_copy_is_checked_over_and_written_anew(
    tmp_path: Path, env: dict[str, str], checks: list[int], damage: object
) -> None:
    path = file_of(tmp_path)
    checked = load(path, env, checks)
    (copy,) = copies(env)
    copy.write_bytes(damage(copy.read_bytes()))  # type: ignore[operator]
    assert load(path, env, checks) == checked
    assert load(path, env, checks) == checked
    assert checks == [N, N, 0]  # the damaged copy was written anew


def test_a_file_with_warnings_is_never_remembered(
    tmp_path: Path, env: dict[str, str], checks: list[int]
) -> None:
    path = file_of(tmp_path, {3: subscriber(3, query="diffusion or gan")})
    first = load(path, env, checks)
    again = load(path, env, checks)
    assert copies(env) == []
    assert checks == [N, N]
    assert first.warnings == again.warnings and "OR" in again.warnings[0]


def test_off_small_or_unwritable_means_checked_every_time(
    tmp_path: Path, env: dict[str, str], checks: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = file_of(tmp_path)
    for _ in range(2):
        load(path, {**env, "DIGEST_CACHE_DIR": ""}, checks)
    blocked = tmp_path / "a-file-not-a-folder"
    blocked.write_text("")
    for _ in range(2):
        load(path, {**env, "DIGEST_CACHE_DIR": str(blocked / "cache")}, checks)
    monkeypatch.setattr(remembered, "CACHE_FROM", path.stat().st_size + 1)
    for _ in range(2):
        load(path, env, checks)
    assert checks == [N] * 6
    assert copies(env) == []


def test_the_default_folder_is_the_users_cache() -> None:
    assert remembered.cache_dir({"HOME": "/home/ada"}) == Path("/home/ada/.cache/papers-digest")
    assert remembered.cache_dir({"HOME": "/home/ada", "XDG_CACHE_HOME": "/var/cache/ada"}) == (
        Path("/var/cache/ada/papers-digest")
    )
    assert remembered.cache_dir({"DIGEST_CACHE_DIR": "/srv/digest"}) == Path("/srv/digest")
    assert remembered.cache_dir({"DIGEST_CACHE_DIR": "", "HOME": "/home/ada"}) is None
    assert remembered.cache_dir({}) is None  # no folder named: not the process's own HOME


def test_digest_check_says_the_same_from_the_copy(tmp_path: Path) -> None:
    """Over the real bar (4 MiB: ~16,000 of these subscribers), as a process."""
    path = tmp_path / "digest.toml"
    count = BAR // len(subscriber(999)) + 100
    path.write_text(HEAD + "".join(subscriber(i) for i in range(count)), "utf-8")
    assert path.stat().st_size >= BAR
    env = {**os.environ, "DIGEST_CACHE_DIR": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "digest.cli", "check", "-c", str(path)]
    said = [
        subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        for _ in range(2)
    ]
    assert said[0].stdout == said[1].stdout and said[0].stderr == said[1].stderr == ""
    assert f"\n{count} subscribers:\n" in said[1].stdout
    assert len(list((tmp_path / "cache").iterdir())) == 1
