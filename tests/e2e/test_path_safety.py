"""#15.3 on the real engine: a registry value that would become a path outside
its tenant's directory is refused before anything runs.

The reproduction: `app_version: "../../../../customer-2"` in customer-1's
config made customer-1's backend release step rmtree accounts/customer-2
(customer-2's database included)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.e2e.conftest import tenant

pytestmark = pytest.mark.e2e


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + str(path.readlink())
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def test_app_version_escaping_into_another_tenant_is_refused(sandbox):
    sandbox.write_registry([tenant("customer-1"), tenant("customer-2")])
    first = sandbox.run("up", "--all-tenants", "--yes", "--json")
    assert first.code == 0, first.stderr
    victim = sandbox.platform / "accounts" / "customer-2"
    before = _tree(victim)
    assert "staging/backend/db.sqlite3" in before
    logs_before = sorted(p.name for p in (sandbox.state / "logs").iterdir())

    sandbox.write_registry(
        [tenant("customer-1", config={"app_version": "../../../../customer-2"}), tenant("customer-2")]
    )
    for args in (("tenants", "validate"), ("up", "--all-tenants", "--yes"), ("up", "--tenant", "customer-1", "--yes")):
        result = sandbox.run(*args)
        assert result.code == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.startswith(f"error: {sandbox.registry_path}:")
        assert "tenants[0].config.app_version: invalid app_version '../../../../customer-2'" in result.stderr

    assert _tree(victim) == before, "customer-2's account was touched"
    assert sorted(p.name for p in (sandbox.state / "logs").iterdir()) == logs_before, "something ran"
