"""Safety of destructive commands (#15.1, #15.2, #22.7): what `sync --prune`
and `destroy` may remove is decided from the whole registry, only registry
names are pruned, and the blast radius is listed, confirmed and limited.
No engine here: every test asserts that nothing reached it."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from components.local import providers
from runner import cli, ops
from runner import registry as reg


def _never(*a, **k):
    raise AssertionError("nothing may reach the engine")


@pytest.fixture
def no_engine(monkeypatch):
    monkeypatch.setattr("runner.engine.list_stacks", _never)
    monkeypatch.setattr("runner.fleet.Fleet.__init__", _never)
    monkeypatch.setattr("runner.fleet.Fleet.run_batch", _never)
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    monkeypatch.delenv("JOB_COMPLETION_COUNT", raising=False)


def _registry(tmp_path, tenants: str) -> str:
    path = tmp_path / "tenants.yaml"
    path.write_text(
        "defaults: {platform: local}\n"
        "environments: [{name: staging}, {name: production, require_tenant: true}]\n"
        f"tenants:{tenants}\n"
    )
    return str(path)


@pytest.mark.parametrize("how", ["env", "option"])
def test_sync_prune_with_a_shard_is_refused_before_anything_runs(no_engine, monkeypatch, how):
    """#15.1: a shard of the registry made every other shard's stacks orphans."""
    args = ["sync", "--prune", "--yes"]
    if how == "env":
        monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
        monkeypatch.setenv("JOB_COMPLETION_COUNT", "2")
    else:
        args += ["--shard", "1/2"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "shard" in errors[0] and "whole registry" in errors[0], result.stderr
    assert "Traceback" not in result.output


def test_sync_prune_on_an_empty_registry_is_refused(no_engine, tmp_path):
    """#15.2: `tenants: []` made every stack an orphan."""
    result = CliRunner().invoke(cli.main, ["sync", "--prune", "--yes", "--registry", _registry(tmp_path, " []")])
    assert result.exit_code == 2, result.output
    assert "no tenants" in result.stderr and "Traceback" not in result.output


def test_only_registry_names_can_be_pruned(tmp_path):
    """#15.2: hand-made stacks (`scratch`, `Foo.bar`, unknown environments) are never pruned."""
    registry = reg.load_registry(
        _registry(
            tmp_path,
            "\n  - {id: alpha, name: A, environments: [staging]}\n"
            "  - {id: gone-off, name: G, environments: [staging], enabled: false}\n",
        )
    )
    existing = [
        "shared",
        "alpha.staging",
        "gone-off.staging",
        "beta.staging",
        "beta.production",
        "scratch",
        "Foo.bar",
        "Foo.staging",
        "beta.qa",
        "staging",
        "a.staging",
        "beta.staging.x",
        "-x.staging",
    ]
    orphans, unmanaged = ops.offboard_candidates(registry, existing)
    assert orphans == ["beta.production", "beta.staging", "gone-off.staging"]
    assert unmanaged == ["-x.staging", "Foo.bar", "Foo.staging", "a.staging", "beta.qa", "beta.staging.x", "scratch"]


def test_guard_lists_limits_and_needs_yes_or_a_confirmation():
    """#15 blast radius, in the core: plain arguments, no click."""
    said = []
    stacks = [f"t{i}.staging" for i in range(6)]
    with pytest.raises(ops.UsageProblem, match="--max-destroy 5"):
        ops.guard_destroy(stacks, "sync --prune", ops.RunSettings("up", yes=True), announce=said.append)
    assert all(s in "\n".join(said) for s in stacks)  # listed before refusing
    ops.guard_destroy(stacks, "sync --prune", ops.RunSettings("up", yes=True, max_destroy=6))
    with pytest.raises(ops.UsageProblem, match="--yes"):
        ops.guard_destroy(stacks[:2], "destroy", ops.RunSettings("destroy"))
    with pytest.raises(ops.UsageProblem, match="nothing was destroyed"):
        ops.guard_destroy(stacks[:2], "destroy", ops.RunSettings("destroy"), confirm=lambda s: False)
    ops.guard_destroy(stacks[:2], "destroy", ops.RunSettings("destroy"), confirm=lambda s: True)
    ops.guard_destroy([], "destroy", ops.RunSettings("destroy"))  # nothing to destroy, nothing to ask


def test_destroy_lists_its_stacks_and_needs_yes_off_a_terminal(no_engine):
    result = CliRunner().invoke(cli.main, ["destroy", "--all-tenants", "--env", "production"])
    assert result.exit_code == 2, result.output
    for stack in ("customer-1.production", "customer-2.production", "customer-3.production"):
        assert stack in result.stderr
    assert "--yes" in result.stderr


def test_destroy_above_max_destroy_is_refused_unless_raised(no_engine):
    result = CliRunner().invoke(
        cli.main, ["destroy", "--all-tenants", "--env", "production", "--yes", "--max-destroy", "2"]
    )
    assert result.exit_code == 2 and "--max-destroy 2" in result.stderr, result.output
    assert "customer-3.production" in result.stderr  # listed before refusing


def test_destroy_with_a_shard_is_refused(no_engine):
    result = CliRunner().invoke(
        cli.main, ["destroy", "--all-tenants", "--env", "production", "--yes", "--shard", "0/2"]
    )
    assert result.exit_code == 2 and "whole registry" in result.stderr, result.output


def test_destroy_on_a_terminal_asks_with_the_list(no_engine, monkeypatch):
    monkeypatch.setattr(cli, "_on_terminal", lambda: True)
    result = CliRunner().invoke(cli.main, ["destroy", "--tenant", "customer-2", "--env", "staging"], input="n\n")
    assert result.exit_code != 0
    assert "customer-2.staging" in result.stderr and "[y/N]" in result.stderr


def test_account_delete_survives_the_other_environment_removing_it(tmp_path, monkeypatch):
    """#22.7: a tenant's two environments share its account directory; their
    destroys run at once and the second rmtree found it gone (ENOENT)."""
    account = tmp_path / "accounts" / "t1"
    account.mkdir(parents=True)
    (account / "account.json").write_text("{}")
    real = shutil.rmtree

    def other_environment_first(path, *a, **k):
        real(path)  # the other environment's destroy removes it in between
        return real(path, *a, **k)

    monkeypatch.setattr(providers.shutil, "rmtree", other_environment_first)
    providers.AccountDirProvider().delete("acct", {"path": str(account), "tenant_id": "t1", "account_id": "1"})
    assert not account.exists()


def test_two_environments_delete_their_shared_account_at_once(tmp_path):
    """#22.7, the real race: both destroys reach the account directory together."""
    import threading

    for i in range(30):
        account = tmp_path / str(i) / "accounts" / "t1"
        for env in ("staging", "production"):
            for part in ("backend/releases/1.0.0", "frontend/releases/1.0.0"):
                (account / env / part).mkdir(parents=True)
        (account / "account.json").write_text("{}")
        errors, start = [], threading.Barrier(2)

        def destroy(start, account, errors):
            start.wait()
            try:
                providers.AccountDirProvider().delete("acct", {"path": str(account)})
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=destroy, args=(start, account, errors)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and not account.exists(), errors


def test_one_shard_of_one_is_the_whole_registry(no_engine):
    ops.refuse_shard("destroy", "0/1")
    with pytest.raises(ops.UsageProblem, match="shard 1/2"):
        ops.refuse_shard("destroy", "1/2")
