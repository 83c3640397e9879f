"""Shared fixtures: the real engine (built once, cached outside the repo)."""

from __future__ import annotations

import pytest

from runner.bootstrap import ensure_engine
from tests.pg import postgres_server  # noqa: F401  (the fixture, for every test module)


@pytest.fixture(scope="session")
def engine_bin():
    """The bin directory of the real Pulumi CLI at the pinned version; never a fake."""
    return ensure_engine()
