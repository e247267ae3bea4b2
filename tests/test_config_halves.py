"""A big subscription file read on two cores (digest/config/halves.py): the same Config,
warnings and error messages as reading it on one, whatever the child does.

The bar is lowered to 1 KiB here, so a file of 40 subscribers (~8 KB) is cut in two;
chunks are 3 subscribers long, so each half is several pieces."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import psutil
import pytest

from digest.config import Config, halves, load_config
from digest.config import chunks as chunks_module
from digest.config import subscribers as subscribers_module
from digest.errors import ConfigError

from .test_config_chunks import HEAD, subscriber

N = 40


def file_of(tmp_path: Path, changes: dict[int, str] | None = None) -> Path:
    """HEAD and N subscribers; `changes` maps i to the text of subscriber i instead."""
    changes = changes or {}
    path = tmp_path / "digest.toml"
    text = HEAD + "".join(changes.get(i, subscriber(i)) for i in range(N))
    path.write_text(text, encoding="utf-8")
    return path


def read(path: Path) -> Config | list[str]:
    try:
        return load_config(path, {})
    except ConfigError as e:
        return e.problems


def one_core(path: Path, monkeypatch: pytest.MonkeyPatch) -> Config | list[str]:
    with monkeypatch.context() as m:
        m.setattr(halves, "HALVES_FROM", 1 << 60)
        return read(path)


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[halves.Half | None]:
    """Two cores from 1 KiB on; what the parent got from each child, in order."""
    monkeypatch.setattr(halves, "HALVES_FROM", 1024)
    monkeypatch.setattr(halves, "_threads_running", lambda: False)
    monkeypatch.setattr(chunks_module, "CHUNK", 3)
    got: list[halves.Half | None] = []
    real = halves.SecondHalf.take

    def take(self: halves.SecondHalf) -> halves.Half | None:
        got.append(real(self))
        return got[-1]

    monkeypatch.setattr(halves.SecondHalf, "take", take)
    return got


def test_the_second_half_is_read_by_a_child_into_the_same_config(
    tmp_path: Path, taken: list[halves.Half | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = file_of(tmp_path)
    config = read(path)
    assert isinstance(config, Config)
    assert config == one_core(path, monkeypatch)
    assert [s.email for s in config.subscribers] == [f"user{i}@example.org" for i in range(N)]
    [half] = taken
    assert half is not None and 0 < half.first < N  # the child read from the middle on
    assert half.subscribers == list(config.subscribers[half.first :])
    assert psutil.Process().children() == []  # reaped


@pytest.mark.parametrize(
    "changes",
    [
        {35: subscriber(35, query="diffusion OR")},  # a bad query in the child's half
        {36: subscriber(2)},  # an email of the first half again
        {38: subscriber(37)},  # an email of the second half again
        {34: subscriber(34, extra="max_papers = 0\nwindow = 3\n")},
    ],
    ids=["bad query", "duplicate across the middle", "duplicate in the second half", "bad keys"],
)
def test_problems_in_the_second_half_read_as_on_one_core(
    tmp_path: Path,
    taken: list[halves.Half | None],
    monkeypatch: pytest.MonkeyPatch,
    changes: dict[int, str],
) -> None:
    path = file_of(tmp_path, changes)
    problems = read(path)
    assert isinstance(problems, list) and problems
    assert problems == one_core(path, monkeypatch)
    assert len(taken) == 1  # there was a child: the parent read its half again


def test_a_warning_in_the_second_half_is_said_as_on_one_core(
    tmp_path: Path, taken: list[halves.Half | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    lowercase = "diffusion or gan"
    path = file_of(
        tmp_path, {3: subscriber(3, query=lowercase), 33: subscriber(33, query=lowercase)}
    )
    config = read(path)
    assert isinstance(config, Config) and config == one_core(path, monkeypatch)
    assert len(config.warnings) == 1 and "subscribers[4]" in config.warnings[0]
    assert taken == [None]  # the child gave up its half: it could not know the first's


def test_a_child_that_dies_leaves_the_parent_to_read_its_half(
    tmp_path: Path, taken: list[halves.Half | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = file_of(tmp_path)
    expected = one_core(path, monkeypatch)
    monkeypatch.setattr(subscribers_module._Read, "second_half", lambda *_: os._exit(3))
    assert read(path) == expected
    assert taken == [None]
    assert psutil.Process().children() == []


def test_a_child_is_stopped_and_reaped_when_the_parent_stops_early(
    tmp_path: Path, taken: list[halves.Half | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a multi-line string in the first half: the file is read whole, by tomllib
    path = file_of(tmp_path, {1: subscriber(1, extra='name = """A\nB"""\n')})
    slow = threading.Event()
    monkeypatch.setattr(subscribers_module._Read, "second_half", lambda *_: slow.wait(60))
    problems = read(path)
    assert isinstance(problems, list) and problems  # name given twice
    assert taken == []  # never waited for
    assert psutil.Process().children() == []


def test_one_core_reads_while_other_threads_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(halves, "HALVES_FROM", 1024)
    path = file_of(tmp_path)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert halves.middle_of(path) is None
    finally:
        stop.set()
        thread.join()
