"""Shared pytest fixtures. `hf_server`: a started `tests.hfserver.HFServer` on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hfserver import HFServer


@pytest.fixture
def hf_server() -> Iterator[HFServer]:
    """A real HTTP server playing huggingface.co from the captures in tests/data."""
    with HFServer() as server:
        yield server
