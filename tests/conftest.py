"""Shared fixtures: the real engine (built once, cached outside the repo)."""

from __future__ import annotations

import pytest

from runner.bootstrap import ensure_engine
from tests.pg import postgres_server  # noqa: F401  (the fixture, for every test module)


@pytest.fixture(scope="session")
def engine_bin():
    """The bin directory of the real Pulumi CLI at the pinned version; never a fake."""
    return ensure_engine()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """An e2e test that uses a module-scoped fixture (a fleet deployed once for its module) joins
    its module's xdist group: with `--dist loadgroup` (pyproject.toml) those tests run on one
    worker, so the fleet is deployed once, not once per worker. Other tests are spread one by one."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None or item.path.parent.name != "e2e":
            continue
        if any(d.scope == "module" for defs in info.name2fixturedefs.values() for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
