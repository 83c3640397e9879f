"""The local platform end to end: the real Pulumi engine (Automation API), a
file:// backend and a platform root in a temp dir, the project's program
(stacks/) through a temp copy of Pulumi.yaml. Nothing is written into the
repository."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

PROJECT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def env(tmp_path_factory, engine_bin):
    from pulumi import automation as auto

    tmp = tmp_path_factory.mktemp("local-platform")
    bin_dir = engine_bin
    work = tmp / "work"
    work.mkdir()
    project = yaml.safe_load((PROJECT / "Pulumi.yaml").read_text())
    project["main"] = str(PROJECT / "stacks")
    project.pop("stackConfigDir", None)  # stack config beside this copy, not in the project
    for spec in project["config"].values():  # as the runner's generated copy (pulumi/pulumi#21865)
        if isinstance(spec, dict):
            spec.pop("secret", None)
    (work / "Pulumi.yaml").write_text(yaml.safe_dump(project, sort_keys=False))
    root = tmp / "platform"
    env_vars = {
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PULUMI_BACKEND_URL": (tmp / "state").as_uri(),
        "PULUMI_CONFIG_PASSPHRASE": "e2e-passphrase",
        "PULUMI_HOME": str(tmp / "home"),
        "PULUMI_PYTHON_CMD": str(PROJECT / ".venv" / "bin" / "python"),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    (tmp / "state").mkdir()
    ws = auto.LocalWorkspace(
        work_dir=str(work),
        env_vars=env_vars,
        pulumi_command=auto.PulumiCommand(root=str(bin_dir.parent)),
    )

    def stack(name: str, **config: str):
        st = auto.Stack.create_or_select(name, ws)
        st.set_all_config(
            {"platform_root": auto.ConfigValue(str(root)), **{k: auto.ConfigValue(v) for k, v in config.items()}}
        )
        return st

    return {"root": root, "stack": stack, "auto": auto}


def _tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        digest.update(str(p.relative_to(path)).encode())
        if p.is_symlink():
            digest.update(os.readlink(p).encode())
        elif p.is_file():
            digest.update(p.read_bytes())
    return digest.hexdigest()


def _changed_resources(stack, **kwargs) -> set[str]:
    """Names of the resources a refresh preview reports as changed."""
    changed: set[str] = set()

    def on_event(event):
        # Every resource is announced with op "refresh"; the outcome
        # ("same" or "update") arrives with its outputs.
        ev = event.res_outputs_event
        if ev and ev.metadata.op.value != "same":
            changed.add(ev.metadata.urn.split("::")[-1])

    stack.preview_refresh(on_event=on_event, show_secrets=False, **kwargs)
    return changed


def test_local_platform_lifecycle(env):
    root: Path = env["root"]
    shared = env["stack"]("shared")
    up = shared.up(show_secrets=False)
    assert up.summary.result == "succeeded"
    git_urls = up.outputs["git_urls"].value
    for service in ("backend", "frontend"):
        repo = root / "git" / f"{service}.git"
        assert git_urls[service] == repo.as_uri()
        assert (repo / "HEAD").is_file() and (repo / "objects").is_dir() and not (repo / ".git").exists()
        assert (repo / "refs" / "heads" / "main").is_file() or (repo / "packed-refs").is_file()

    tenants = {"acme": "Acme Corp", "globex": "Globex Inc"}
    stacks, outputs = {}, {}
    for tenant, name in tenants.items():
        st = env["stack"](f"{tenant}.staging", tenant_name=name, release="rel-1")
        res = st.up(show_secrets=False)
        assert res.summary.result == "succeeded"
        stacks[tenant], outputs[tenant] = st, {k: v.value for k, v in res.outputs.items()}

    n_migrations = len(list((PROJECT / "stacks" / "migrations").glob("*.sql")))
    for tenant, name in tenants.items():
        out = outputs[tenant]
        account = root / "accounts" / tenant
        assert out["account_dir"] == str(account)
        assert account.stat().st_mode & 0o777 == 0o700
        assert len(out["account_id"]) == 12 and out["account_id"].isdigit()
        assert out["git_urls"] == git_urls
        db = Path(out["database_path"])
        assert db.parent.parent.parent == account
        rows = sqlite3.connect(db).execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        assert len(rows) == n_migrations > 0
        page = (Path(out["site_dir"]) / "index.html").read_text()
        assert name in page and "rel-1" in page
        assert os.readlink(account / "staging" / "frontend" / "current") == "releases/1.0.0"
        assert os.readlink(account / "staging" / "backend" / "current") == "releases/1.0.0"
        checks = {c["name"]: c for c in out["health_checks"]}
        assert checks["database"]["expect"] == str(n_migrations)
        assert checks["site"]["text"] in page
    assert outputs["acme"]["account_id"] != outputs["globex"]["account_id"]

    # A second up changes nothing.
    again = stacks["acme"].up(show_secrets=False)
    assert set(again.summary.resource_changes) == {"same"}

    # Out-of-band edits are seen by a refresh preview, on exactly that resource.
    acme_site = Path(outputs["acme"]["site_dir"]) / "index.html"
    acme_site.write_text(acme_site.read_text() + "<!-- defaced -->")
    assert _changed_resources(stacks["acme"]) == {"frontend-site"}
    Path(outputs["globex"]["database_path"]).unlink()
    assert _changed_resources(stacks["globex"]) == {"backend-db"}
    # ...and an up with refresh repairs them.
    repaired = stacks["globex"].up(refresh=True, show_secrets=False)
    assert repaired.summary.result == "succeeded"
    assert Path(outputs["globex"]["database_path"]).is_file()

    # A new app version: new release directories, `current` moved, one more cache purge.
    acme = root / "accounts" / "acme" / "staging"
    purges_before = (acme / "frontend" / "cache-purges.log").read_text().splitlines()
    stacks["acme"].set_config("app_version", env["auto"].ConfigValue("2.0.0"))
    stacks["acme"].set_config("release", env["auto"].ConfigValue("rel-2"))
    res = stacks["acme"].up(show_secrets=False)
    assert res.summary.result == "succeeded"
    for part in ("backend", "frontend"):
        assert os.readlink(acme / part / "current") == "releases/2.0.0"
        assert (acme / part / "releases" / "1.0.0").is_dir()
    assert '"version": "2.0.0"' in (acme / "backend" / "current" / "app.json").read_text()
    assert "rel-2" in (acme / "frontend" / "current" / "index.html").read_text()
    purges = (acme / "frontend" / "cache-purges.log").read_text().splitlines()
    assert len(purges) == len(purges_before) + 1 and "release=rel-2" in purges[-1]

    # Destroying one tenant leaves the other untouched and keeps its own database.
    acme_before = _tree_digest(root / "accounts" / "acme")
    globex_db = Path(outputs["globex"]["database_path"])
    destroyed = stacks["globex"].destroy(show_secrets=False)
    assert destroyed.summary.result == "succeeded"
    assert globex_db.is_file(), "purge_data is false: the database survives destroy"
    assert not (globex_db.parent / "releases").exists()
    assert not (root / "accounts" / "globex" / "staging" / "frontend").exists()
    assert _tree_digest(root / "accounts" / "acme") == acme_before
