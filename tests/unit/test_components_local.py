"""components.local: the component graph under Pulumi mocks, and the dynamic
providers driven directly against a temp directory (no engine)."""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pulumi
import pytest

from components.common import Migration, account_id_for
from tests.unit.conftest import use_mocks

TYPE_PREFIX = "pulumi-python:dynamic/local:"


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: dict[str, pulumi.runtime.MockResourceArgs] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources[args.name] = args
        outs = dict(args.inputs)
        if args.typ == TYPE_PREFIX + "BareRepo":
            outs.update(url=Path(outs["path"]).as_uri(), exists=True, head="abc")
        elif args.typ == TYPE_PREFIX + "Database":
            versions = [m["version"] for m in outs["migrations"]]
            outs.update(exists=True, applied=versions, schema_version=versions[-1] if versions else "")
        elif args.typ == TYPE_PREFIX + "Release":
            outs.update(release_dir=f"{outs['base']}/releases/{outs['app_version']}", content_hash="h")
        return f"{args.name}-id", outs

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}


@pytest.fixture
def mocks():
    m = RecordingMocks()
    use_mocks(m)
    return m


def _children(component: pulumi.ComponentResource) -> list[pulumi.Resource]:
    return [v for v in vars(component).values() if isinstance(v, pulumi.CustomResource)]


def _assert_parented(component, token: str, name: str):
    """Every child's URN type reads ``<token>$<child type>`` (parent=self) and
    every child name is derived from the component's name."""
    children = _children(component)
    assert children, f"{token} has no children"

    def check(urns):
        for urn in urns:
            child_type, child_name = urn.split("::")[-2:]
            # The URN type is the chain of types from the root: ...$Parent$Child.
            assert child_type.split("$")[-2] == token, urn
            assert child_name.startswith(f"{name}-"), urn

    return pulumi.Output.all(*[c.urn for c in children]).apply(check)


@pulumi.runtime.test
def test_git_repository_graph_and_url(mocks, tmp_path):
    from components.local import GitRepository, GitRepositoryArgs

    repo = GitRepository("repo-backend", GitRepositoryArgs(root=str(tmp_path), service="backend"))

    def check(args):
        urn, url = args
        assert urn.split("::")[-2].split("$")[-1] == "runner:local:GitRepository"
        assert urn.endswith("::repo-backend")
        assert url == (tmp_path / "git" / "backend.git").as_uri()
        assert mocks.resources["repo-backend-repo"].inputs["path"] == str(tmp_path / "git" / "backend.git")

    return pulumi.Output.all(
        repo.urn, repo.url, _assert_parented(repo, "runner:local:GitRepository", "repo-backend")
    ).apply(lambda a: check(a[:2]))


@pulumi.runtime.test
def test_cloud_account_id_and_dir(mocks, tmp_path):
    from components.local import CloudAccount, CloudAccountArgs

    account = CloudAccount("account", CloudAccountArgs(root=str(tmp_path), tenant_id="acme"))

    def check(args):
        account_id, account_dir, _ = args
        assert account_id == account_id_for("acme")
        assert len(account_id) == 12 and account_id.isdigit()
        assert account_dir == str(tmp_path / "accounts" / "acme")

    return pulumi.Output.all(
        account.account_id, account.account_dir, _assert_parented(account, "runner:local:CloudAccount", "account")
    ).apply(check)


def test_account_id_is_stable_and_distinct():
    assert account_id_for("acme") == account_id_for("acme")
    assert account_id_for("acme") != account_id_for("globex")


@pulumi.runtime.test
def test_backend_and_frontend_graph(mocks, tmp_path):
    from components.local import Backend, BackendArgs, Frontend, FrontendArgs

    migrations = [Migration("001_a.sql", "CREATE TABLE a(x);"), Migration("002_b.sql", "CREATE TABLE b(x);")]
    backend = Backend(
        "backend",
        BackendArgs(
            account_dir=str(tmp_path),
            tenant_id="acme",
            environment="staging",
            release="r1",
            app_version="1.2.3",
            migrations=migrations,
            app_files={"app.py": "print('$release')"},
        ),
    )
    frontend = Frontend(
        "frontend",
        FrontendArgs(
            account_dir=str(tmp_path),
            tenant_id="acme",
            tenant_name="Acme",
            environment="staging",
            domain="acme.example.com",
            release="r1",
            app_version="1.2.3",
            backend_url=backend.backend_url,
            schema_version=backend.schema_version,
        ),
        pulumi.ResourceOptions(depends_on=[backend]),
    )

    def check(args):
        backend_url, db, schema, site_dir, url = args[:5]
        base = f"{tmp_path}/staging"
        assert db == f"{base}/backend/db.sqlite3"
        assert schema == "002_b"
        assert backend_url == f"file://{base}/backend/current"
        assert site_dir == f"{base}/frontend/current"
        assert url == f"file://{base}/frontend/current/index.html"
        db_inputs = mocks.resources["backend-db"].inputs
        assert [m["file"] for m in db_inputs["migrations"]] == ["001_a.sql", "002_b.sql"]
        assert db_inputs["purge_data"] is False
        app = mocks.resources["backend-app"].inputs
        assert '"release": "r1"' in app["templates"]["app.json"]
        assert app["app_version"] == "1.2.3"
        site = mocks.resources["frontend-site"].inputs
        assert site["values"]["tenant_name"] == "Acme"
        assert site["values"]["schema_version"] == "002_b"
        assert mocks.resources["frontend-purge"].inputs["log_path"] == f"{base}/frontend/cache-purges.log"

    return pulumi.Output.all(
        backend.backend_url,
        backend.database_path,
        backend.schema_version,
        frontend.site_dir,
        frontend.frontend_url,
        _assert_parented(backend, "runner:local:Backend", "backend"),
        _assert_parented(frontend, "runner:local:Frontend", "frontend"),
    ).apply(check)


# ---------------------------------------------------------------------------
# Providers, driven directly
# ---------------------------------------------------------------------------

from components.local import providers as P  # noqa: E402


def test_providers_pickle_by_reference():
    """dill must import the provider from components.local.providers in the
    provider process (not embed a copy of __main__ state)."""
    from pulumi.dynamic.dynamic import serialize_provider

    blob = base64.b64decode(serialize_provider(P.DatabaseProvider()))
    assert b"components.local.providers" in blob
    code = (
        "import base64, dill, sys; p = dill.loads(base64.b64decode(sys.argv[1])); "
        "print(type(p).__module__, type(p).__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, base64.b64encode(blob).decode()],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    assert out.stdout.split() == ["components.local.providers", "DatabaseProvider"]


def test_bare_repo_create_read_drift_delete(tmp_path):
    prov = P.BareRepoProvider()
    props = {"path": str(tmp_path / "git" / "backend.git"), "service": "backend", "readme": "# backend\n"}
    created = prov.create(dict(props))
    repo = Path(props["path"])
    assert (repo / "HEAD").is_file() and not (repo / ".git").exists()
    readme = subprocess.run(
        ["git", "--git-dir", str(repo), "show", "main:README.md"], capture_output=True, text=True, check=True
    ).stdout
    assert readme == "# backend\n"
    assert created.outs["url"] == repo.as_uri() and created.outs["exists"] is True
    assert prov.diff(created.id, created.outs, props).changes is False

    import shutil

    shutil.rmtree(repo)
    seen = prov.read(created.id, created.outs)
    assert seen.id == created.id and seen.outs["exists"] is False
    assert prov.diff(created.id, seen.outs, props).changes is True
    prov.update(created.id, seen.outs, props)
    assert (repo / "HEAD").is_file()
    prov.delete(created.id, created.outs)
    assert not repo.exists()


def test_account_dir_mode_and_retained_data(tmp_path):
    prov = P.AccountDirProvider()
    props = {"path": str(tmp_path / "accounts" / "acme"), "tenant_id": "acme", "account_id": "123456789012"}
    created = prov.create(dict(props))
    path = Path(props["path"])
    assert path.stat().st_mode & 0o777 == 0o700
    assert '"123456789012"' in (path / "account.json").read_text()
    assert prov.diff(created.id, created.outs, props).changes is False
    os.chmod(path, 0o755)
    drifted = prov.read(created.id, created.outs)
    assert drifted.outs["mode"] == "0o755"
    assert prov.diff(created.id, drifted.outs, props).changes is True
    (path / "staging" / "backend").mkdir(parents=True)
    (path / "staging" / "backend" / "db.sqlite3").write_text("data")
    prov.delete(created.id, created.outs)
    assert (path / "staging" / "backend" / "db.sqlite3").exists(), "retained data must survive"
    (path / "staging" / "backend" / "db.sqlite3").unlink()
    prov.delete(created.id, created.outs)
    assert not path.exists()


def _db_props(tmp_path, *files: tuple[str, str], purge=False):
    return {
        "path": str(tmp_path / "db.sqlite3"),
        "migrations": [Migration(n, s).as_dict() for n, s in files],
        "purge_data": purge,
    }


def test_database_applies_migrations_once_in_order(tmp_path):
    prov = P.DatabaseProvider()
    props = _db_props(tmp_path, ("002_b.sql", "CREATE TABLE b(x);"), ("001_a.sql", "CREATE TABLE a(x);"))
    created = prov.create(dict(props))
    assert created.outs["applied"] == ["001_a", "002_b"] and created.outs["schema_version"] == "002_b"
    conn = sqlite3.connect(props["path"])
    rows = conn.execute("SELECT version, checksum, applied_at FROM schema_migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == ["001_a", "002_b"] and all(r[1] and r[2] for r in rows)
    conn.close()
    assert prov.diff(created.id, created.outs, props).changes is False
    # Applying again changes nothing (each migration at most once).
    assert P.apply_migrations(Path(props["path"]), props["migrations"]) == []


def test_failing_migration_names_file_and_keeps_previous_version(tmp_path):
    prov = P.DatabaseProvider()
    good = ("001_a.sql", "CREATE TABLE a(x);")
    created = prov.create(_db_props(tmp_path, good))
    broken = _db_props(
        tmp_path, good, ("002_c.sql", "CREATE TABLE c(x);"), ("003_broken.sql", "CREATE TABLE d(x);\nSELEC 1;")
    )
    with pytest.raises(P.MigrationError, match=r'^migration 003_broken.sql failed: near "SELEC": syntax error$'):
        prov.update(created.id, created.outs, broken)
    seen = prov.read(created.id, created.outs).outs
    assert seen["applied"] == ["001_a", "002_c"]
    tables = {r[0] for r in sqlite3.connect(broken["path"]).execute("SELECT name FROM sqlite_master")}
    assert "d" not in tables, "the failed migration's statements must be rolled back"


def test_changed_migration_is_refused(tmp_path):
    prov = P.DatabaseProvider()
    created = prov.create(_db_props(tmp_path, ("001_a.sql", "CREATE TABLE a(x);")))
    with pytest.raises(P.MigrationError, match="001_a.sql was changed"):
        prov.update(created.id, created.outs, _db_props(tmp_path, ("001_a.sql", "CREATE TABLE a(y);")))


def test_database_deleted_out_of_band_is_drift_and_kept_unless_purged(tmp_path):
    prov = P.DatabaseProvider()
    props = _db_props(tmp_path, ("001_a.sql", "CREATE TABLE a(x);"))
    created = prov.create(dict(props))
    Path(props["path"]).unlink()
    seen = prov.read(created.id, created.outs)
    assert seen.id == created.id and seen.outs["exists"] is False
    assert prov.diff(created.id, seen.outs, props).changes is True
    prov.update(created.id, seen.outs, props)
    prov.delete(created.id, {**props})
    assert Path(props["path"]).exists(), "purge_data false keeps the database"
    prov.delete(created.id, {**props, "purge_data": True})
    assert not Path(props["path"]).exists()


def _release_props(tmp_path, version="1.0.0", text="hello $release", release="r1"):
    return {
        "base": str(tmp_path / "frontend"),
        "app_version": version,
        "templates": {"index.html": text},
        "values": {"release": release},
    }


def test_release_current_link_and_drift(tmp_path):
    prov = P.ReleaseProvider()
    props = _release_props(tmp_path)
    created = prov.create(dict(props))
    base = Path(props["base"])
    assert os.readlink(base / "current") == "releases/1.0.0"
    assert (base / "current" / "index.html").read_text() == "hello r1"
    assert prov.diff(created.id, created.outs, props).changes is False
    (base / "current" / "index.html").write_text("defaced")
    seen = prov.read(created.id, created.outs)
    assert seen.outs["content_hash"] != created.outs["content_hash"]
    assert prov.diff(created.id, seen.outs, props).changes is True
    v2 = _release_props(tmp_path, version="2.0.0")
    updated = prov.update(created.id, seen.outs, v2)
    assert os.readlink(base / "current") == "releases/2.0.0"
    assert (base / "releases" / "1.0.0").is_dir(), "old releases stay for rollback"
    assert updated.outs["current"] == "releases/2.0.0"
    prov.delete(created.id, updated.outs)
    assert not base.exists()


@pytest.mark.parametrize("version", ["../../../../customer-2", "..", "a/b", "/abs", "", ".hidden"])
def test_release_never_replaces_anything_outside_its_own_releases(tmp_path, version):
    """#15.3 defence in depth: customer-1's release step with app_version
    ../../../../customer-2 used to rmtree accounts/customer-2 (database included)."""
    accounts = tmp_path / "accounts"
    victim = accounts / "customer-2"
    (victim / "staging" / "backend").mkdir(parents=True)
    (victim / "staging" / "backend" / "db.sqlite3").write_text("customer-2 data")
    prov = P.ReleaseProvider()
    props = {
        "base": str(accounts / "customer-1" / "staging" / "backend"),
        "app_version": version,
        "templates": {"app.json": "{}"},
        "values": {},
    }
    with pytest.raises(ValueError, match="app_version|refusing"):
        prov.create(dict(props))
    assert (victim / "staging" / "backend" / "db.sqlite3").read_text() == "customer-2 data"


def test_write_files_refuses_a_target_outside_its_root(tmp_path):
    from components.local import _fs

    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "f").write_text("x")
    with pytest.raises(ValueError, match="outside"):
        _fs.write_files(
            tmp_path / "root" / "releases" / ".." / ".." / "keep", {"a": "b"}, within=tmp_path / "root" / "releases"
        )
    assert (tmp_path / "keep" / "f").read_text() == "x"


def test_cache_purge_appends_a_line_per_change(tmp_path):
    prov = P.CachePurgeProvider()
    props = {"log_path": str(tmp_path / "cache-purges.log"), "release": "r1", "app_version": "1", "trigger": "aaa"}
    created = prov.create(dict(props))
    assert prov.diff(created.id, created.outs, props).changes is False
    news = {**props, "release": "r2", "trigger": "bbb"}
    assert prov.diff(created.id, created.outs, news).changes is True
    prov.update(created.id, created.outs, news)
    lines = Path(props["log_path"]).read_text().splitlines()
    assert len(lines) == 2 and "release=r1" in lines[0] and "release=r2" in lines[1]


# ---------------------------------------------------------------------------
# The simulated cloud API (simulated_latency_ms, simulated_throttle_rate)
# ---------------------------------------------------------------------------

from pulumi.dynamic import Config as DynamicConfig  # noqa: E402
from pulumi.dynamic import ConfigureRequest  # noqa: E402


def _configured(provider, **config):
    """``provider`` configured as the engine does: with the whole stack config."""
    provider.configure(ConfigureRequest(DynamicConfig({f"runner:{k}": v for k, v in config.items()}, "runner")))
    return provider


def test_simulated_latency_delays_each_crud_call_but_not_diff(tmp_path, monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(P.time, "sleep", slept.append)
    prov = _configured(P.CachePurgeProvider(), simulated_latency_ms="250")
    props = {"log_path": str(tmp_path / "purges.log"), "release": "r1", "app_version": "1", "trigger": "a"}
    created = prov.create(dict(props))
    prov.diff(created.id, created.outs, props)
    prov.read(created.id, created.outs)
    prov.update(created.id, created.outs, {**props, "release": "r2"})
    prov.delete(created.id, created.outs)
    assert slept == [0.25] * 4
    assert set(created.outs) == {*props, "purged_at"}, "the settings must never reach the state"


def test_no_simulation_without_config(tmp_path, monkeypatch):
    monkeypatch.setattr(P.time, "sleep", lambda s: pytest.fail("slept without simulated_latency_ms"))
    for prov in (P.AccountDirProvider(), _configured(P.AccountDirProvider())):
        props = {"path": str(tmp_path / "acme"), "tenant_id": "acme", "account_id": "123456789012"}
        prov.delete(prov.create(dict(props)).id, props)


def test_simulated_throttling_fails_before_changing_anything_and_is_reproducible(tmp_path):
    prov = _configured(P.AccountDirProvider(), simulated_throttle_rate="1")
    path = tmp_path / "accounts" / "acme"
    props = {"path": str(path), "tenant_id": "acme", "account_id": "123456789012"}
    with pytest.raises(P.ThrottlingError, match=r"ThrottlingException: Rate exceeded \(simulated\): create"):
        prov.create(dict(props))
    assert not path.exists()

    def pattern(seed):
        prov = P.AccountDirProvider()
        prov.simulate(0, 0.3, seed=seed)
        outcome = []
        for i in range(200):
            try:
                prov.read(str(i), dict(props))
                outcome.append(False)
            except P.ThrottlingError:
                outcome.append(True)
        return outcome

    first = pattern(7)
    assert first == pattern(7), "the same seed throttles the same calls"
    assert 30 <= sum(first) <= 90, f"about 30% of 200 calls throttled, got {sum(first)}"


@pytest.mark.parametrize(
    "latency, rate, message",
    [
        ("-1", "0", "simulated_latency_ms: expected 0 to 600000"),
        ("fast", "0", "simulated_latency_ms: expected a whole number"),
        ("0", "1.5", "simulated_throttle_rate: expected a fraction between 0 and 1"),
        ("0", "5%", "simulated_throttle_rate: expected a fraction"),
    ],
)
def test_invalid_simulation_settings_name_the_key(latency, rate, message):
    with pytest.raises(ValueError, match=message):
        P.simulation_settings(latency, rate)
    with pytest.raises(ValueError, match=message):
        _configured(P.ReleaseProvider(), simulated_latency_ms=latency, simulated_throttle_rate=rate)


def test_simulation_settings_defaults_and_units():
    assert P.simulation_settings(None, None) == (0, 0)
    assert P.simulation_settings("", "") == (0, 0)
    assert P.simulation_settings("1500", "0.05") == (1.5, 0.05)
    assert P.simulation_settings(200, 0.5) == (0.2, 0.5)


def test_configured_provider_serializes_as_before():
    """Configuring happens in the provider process, after deserializing: the
    serialized provider (stored in the state) never carries the settings."""
    from pulumi.dynamic.dynamic import serialize_provider

    before = serialize_provider(P.ReleaseProvider())
    configured = _configured(P.ReleaseProvider(), simulated_latency_ms="100")
    assert configured._latency_s == 0.1
    assert serialize_provider(P.ReleaseProvider()) == before
