"""[web] and [mail] dkim in the subscription file: every problem with its line, secrets
from the environment, https unless loopback, the DKIM key loaded and checked."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from digest.config import load_config
from digest.errors import ConfigError

BASE = """
[mail]
from = "Papers Digest <digest@example.org>"
{mail}

[[subscribers]]
email = "ada@example.org"
topics = [{{ name = "Agents", query = 'agent*' }}]
{web}
"""
ENV = {
    "S": "a-secret-of-32-characters-or-so!!",
    "OLD": "old-one-0123456789abcdef other-0123456789abcdef",
}


def write(tmp_path: Path, web: str = "", mail: str = "") -> Path:
    path = tmp_path / "digest.toml"
    path.write_text(BASE.format(web=web, mail=mail), encoding="utf-8")
    return path


def problems(path: Path, env: dict[str, str] = ENV) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env)
    return info.value.problems




def test_web_is_read_with_its_secrets_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, web="""
[web]
listen = "0.0.0.0:8080"
base_url = "https://digest.example.org/"
secret_env = "S"
old_secrets_env = "OLD"
""")
    web = load_config(path, ENV).web
    assert web is not None
    assert (web.host, web.port, web.base_url) == ("0.0.0.0", 8080, "https://digest.example.org")
    assert web.secret == ENV["S"]
    assert web.old_secrets == ("old-one-0123456789abcdef", "other-0123456789abcdef")
    assert ENV["S"] not in repr(web)  # secrets never in a log line


def test_without_web_there_is_none(tmp_path: Path) -> None:
    assert load_config(write(tmp_path), ENV).web is None


def test_a_missing_secret_names_the_variable_and_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, web='\n[web]\nlisten = "127.0.0.1:8080"\nsecret_env = "NOPE"\n')
    (problem,) = problems(path)
    assert problem == (
        f"{path}:12: web.secret_env: the environment variable NOPE is not set (it should hold "
        "the secret that signs unsubscribe and preferences links)"
    )


def test_the_default_secret_variable_and_a_short_secret(tmp_path: Path) -> None:
    path = write(tmp_path, web='\n[web]\nlisten = "127.0.0.1:8080"\n')
    (problem,) = problems(path, {})
    assert "DIGEST_WEB_SECRET is not set" in problem
    (problem,) = problems(path, {"DIGEST_WEB_SECRET": "short"})
    assert "is 5 characters; use at least 16" in problem


@pytest.mark.parametrize(
    ("base_url", "ok"),
    [
        ("https://digest.example.org", True),
        ("http://127.0.0.1:8080", True),
        ("http://localhost:8080", True),
        ("http://[::1]:8080", True),
        ("http://digest.example.org", False),
        ("http://10.0.0.5:8080", False),
        ("ftp://digest.example.org", False),
        ("digest.example.org", False),
    ],
)
def test_base_url_is_https_unless_loopback(tmp_path: Path, base_url: str, ok: bool) -> None:
    path = write(tmp_path, web=f'\n[web]\nbase_url = "{base_url}"\nsecret_env = "S"\n')
    if ok:
        assert load_config(path, ENV).web is not None
        return
    (problem,) = problems(path)
    assert problem.startswith(f"{path}:11: web.base_url: ")
    assert "https" in problem or "not an http(s) URL" in problem


def test_a_public_listen_address_needs_a_base_url(tmp_path: Path) -> None:
    path = write(tmp_path, web='\n[web]\nlisten = "0.0.0.0:8080"\nsecret_env = "S"\n')
    (problem,) = problems(path)
    assert "web: missing base_url" in problem


@pytest.mark.parametrize("listen", ["8080", "127.0.0.1", "127.0.0.1:99999", "a b:80", ""])
def test_a_bad_listen_address(tmp_path: Path, listen: str) -> None:
    path = write(tmp_path, web=f'\n[web]\nlisten = "{listen}"\nsecret_env = "S"\n')
    assert any("web.listen" in p for p in problems(path))


def test_unknown_web_keys_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, web='\n[web]\nsecret_env = "S"\nbase_ulr = "https://x.org"\n')
    (problem,) = problems(path)
    assert 'web.base_ulr: unknown key "base_ulr"; did you mean "base_url"?' in problem


# --------------------------------------------------------------------------- dkim


def rsa_key(tmp_path: Path, bits: int = 2048) -> Path:
    key = tmp_path / "dkim.pem"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(key), str(bits)], check=True, capture_output=True
    )
    return key


def test_dkim_key_is_loaded_relative_to_the_file(tmp_path: Path) -> None:
    rsa_key(tmp_path)
    mail = 'dkim = { domain = "Example.org", selector = "digest", key_file = "dkim.pem" }'
    dkim = load_config(write(tmp_path, mail=mail), {}).mail.dkim
    assert dkim is not None
    assert (dkim.domain, dkim.selector) == ("example.org", "digest")
    assert dkim.key_file == tmp_path / "dkim.pem"
    assert dkim.private_key.startswith(b"-----BEGIN")
    assert "PRIVATE" not in repr(dkim)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read"),
        (b"not a key at all", "not an RSA private key in PEM form"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not an RSA"),
    ],
)
def test_a_bad_dkim_key_is_a_problem_on_its_line(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    if content is not None:
        (tmp_path / "dkim.pem").write_bytes(content)
    mail = 'dkim = { domain = "example.org", selector = "digest", key_file = "dkim.pem" }'
    path = write(tmp_path, mail=mail)
    (problem,) = problems(path, {})
    assert problem.startswith(f"{path}:4: mail.dkim.key_file: ")
    assert expected in problem


def test_a_short_dkim_key_is_refused(tmp_path: Path) -> None:
    rsa_key(tmp_path, 512)
    mail = 'dkim = { domain = "example.org", selector = "digest", key_file = "dkim.pem" }'
    (problem,) = problems(write(tmp_path, mail=mail), {})
    assert "a 512-bit key" in problem


def test_dkim_needs_all_three_keys(tmp_path: Path) -> None:
    mail = 'dkim = { domain = "example.org" }'
    found = problems(write(tmp_path, mail=mail), {})
    assert any("mail.dkim: missing selector" in p for p in found)
    assert any("mail.dkim: missing key_file" in p for p in found)
