"""Target selection: selectors, tags, exclusion, disabled tenants, untenanted
deployments, and secret resolution that never shows a value."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.registry import (
    Registry,
    SecretError,
    SecretRef,
    SelectionError,
    Target,
    load_config_schema,
    load_registry,
    resolve_secrets,
    select_targets,
)

FIXTURES = Path(__file__).parent / "fixtures" / "registry"
SCHEMA = load_config_schema(FIXTURES)


@pytest.fixture(scope="module")
def registry() -> Registry:
    # customer-1: staging+production premium; customer-2: production+staging
    # standard/eu; customer-3: production standard/us, disabled; internal-qa:
    # testing canary, a file secret.
    return load_registry(FIXTURES / "valid.yaml", schema=SCHEMA)


def stacks(selection) -> list[str]:
    return [t.stack for t in selection.targets]


def test_all_tenants_in_registry_then_promotion_order(registry):
    selection = select_targets(registry, all_tenants=True)
    # customer-2 lists [production, staging]: targets still follow promotion order
    assert stacks(selection) == [
        "customer-1.staging",
        "customer-1.production",
        "customer-2.staging",
        "customer-2.production",
        "internal-qa.testing",
    ]


def test_disabled_tenants_are_skipped_with_a_reason(registry):
    selection = select_targets(registry, all_tenants=True)
    assert [(t.stack, reason) for t, reason in selection.skipped] == [("customer-3.production", "tenant disabled")]
    named = select_targets(registry, tenants=["customer-3"])
    assert named.targets == [] and [t.stack for t, _ in named.skipped] == ["customer-3.production"]


def test_tenant_selector_and_env(registry):
    selection = select_targets(registry, tenants=["customer-2", "customer-1"], envs=["production"])
    assert stacks(selection) == ["customer-1.production", "customer-2.production"]


def test_envs_restrict(registry):
    assert stacks(select_targets(registry, all_tenants=True, envs=["staging", "testing"])) == [
        "customer-1.staging",
        "customer-2.staging",
        "internal-qa.testing",
    ]


def test_tags_all_must_match(registry):
    assert stacks(select_targets(registry, all_tenants=True, tags=["tier=standard"])) == [
        "customer-2.staging",
        "customer-2.production",
    ]
    assert stacks(select_targets(registry, all_tenants=True, tags=["tier=standard", "region=us"])) == []
    assert stacks(select_targets(registry, all_tenants=True, tags=["tier=premium", "region=eu"])) == []


@pytest.mark.parametrize("bad", ["tier", "=x", "tier=", 5])
def test_invalid_tag_selector(registry, bad):
    with pytest.raises(SelectionError, match="invalid tag selector .*use key=value"):
        select_targets(registry, all_tenants=True, tags=[bad])


def test_exclude(registry):
    assert stacks(select_targets(registry, all_tenants=True, exclude=["customer-1", "internal-qa"])) == [
        "customer-2.staging",
        "customer-2.production",
    ]


def test_exclude_unknown_tenant_is_an_error(registry):
    with pytest.raises(SelectionError, match=r"^unknown tenant 'customer-9'"):
        select_targets(registry, all_tenants=True, exclude=["customer-9"])


def test_unknown_tenant_suggests(registry):
    with pytest.raises(SelectionError) as info:
        select_targets(registry, tenants=["custmer-1"])
    assert str(info.value) == "unknown tenant 'custmer-1' (did you mean 'customer-1'?)"
    with pytest.raises(SelectionError) as info:
        select_targets(registry, tenants=["zzz-zzz"])
    assert str(info.value) == "unknown tenant 'zzz-zzz'"


def test_unknown_environment(registry):
    with pytest.raises(SelectionError) as info:
        select_targets(registry, all_tenants=True, envs=["prod"])
    assert str(info.value) == "unknown environment 'prod' (known: testing, staging, production)"


def test_named_tenant_not_in_env(registry):
    with pytest.raises(SelectionError) as info:
        select_targets(registry, tenants=["internal-qa"], envs=["production"])
    assert str(info.value) == "tenant 'internal-qa' is not deployed to production (its environments: testing)"


def test_a_selection_is_required(registry):
    with pytest.raises(SelectionError) as info:
        select_targets(registry)
    assert str(info.value) == "select tenants with --tenant T or --all-tenants (or --tag KEY=VALUE)"
    with pytest.raises(SelectionError, match="^select tenants with"):
        select_targets(registry, envs=["staging"])  # an environment alone selects no tenant
    with pytest.raises(SelectionError, match="not both"):
        select_targets(registry, tenants=["customer-1"], all_tenants=True)


@pytest.mark.parametrize("hostile", ["../x", "--force", "a/b", "a\x00b", "x" * 500, "é", "", ".", "-s", "A"])
def test_hostile_selector_ids_are_refused_before_use(registry, hostile):
    with pytest.raises(SelectionError) as info:
        select_targets(registry, tenants=[hostile])
    message = str(info.value)
    assert message.startswith("invalid tenant id ")
    assert "\x00" not in message and len(message) < 250


def test_hostile_env_selector(registry):
    with pytest.raises(SelectionError, match="^invalid environment name '../prod'"):
        select_targets(registry, all_tenants=True, envs=["../prod"])


def test_target_config_merges_defaults_tenant_config_and_name(registry):
    target = select_targets(registry, tenants=["customer-2"], envs=["staging"]).targets[0]
    assert target == Target(
        tenant="customer-2",
        environment="staging",
        stack="customer-2.staging",
        config={
            "platform": "local",
            "app_version": "1.0.0",
            "domain": "customer-2.example.com",
            "replicas": 2,
            "tenant_name": "customer-2",
        },
        secrets={},
        tags={"tier": "standard", "region": "eu"},
    )
    with pytest.raises(TypeError):
        target.config["domain"] = "evil.example.com"  # type: ignore[index]


def test_secret_keys_are_not_in_config(tmp_path):
    (tmp_path / "tenants.yaml").write_text(
        "defaults: {db_password: ''}\nenvironments: [{name: staging}]\n"
        "tenants:\n  - id: customer-1\n    environments: [staging]\n"
        "    secrets: {db_password: {env: C1_DB}}\n",
        encoding="utf-8",
    )
    target = select_targets(load_registry(tmp_path / "tenants.yaml", schema=SCHEMA), all_tenants=True).targets[0]
    assert "db_password" not in target.config
    assert target.secrets == {"db_password": SecretRef(env="C1_DB")}


# --- untenanted deployments ---------------------------------------------------------


def test_untenanted_deployment(registry):
    selection = select_targets(registry, untenanted=True, envs=["staging"])
    assert selection.targets == [
        Target(
            tenant=None,
            environment="staging",
            stack="staging",
            config={"platform": "local", "app_version": "1.0.0"},
            secrets={},
            tags={},
        )
    ]
    assert selection.skipped == []


def test_untenanted_refused_where_a_tenant_is_required(registry):
    with pytest.raises(SelectionError) as info:
        select_targets(registry, untenanted=True, envs=["production"])
    assert str(info.value) == "environment 'production' requires a tenant"


@pytest.mark.parametrize("kwargs", [{}, {"envs": ["testing", "staging"]}])
def test_untenanted_needs_exactly_one_env(registry, kwargs):
    with pytest.raises(SelectionError, match="exactly one --env"):
        select_targets(registry, untenanted=True, **kwargs)


def test_untenanted_takes_no_tenant_selectors(registry):
    with pytest.raises(SelectionError, match="no tenant selectors"):
        select_targets(registry, untenanted=True, envs=["staging"], all_tenants=True)


# --- secrets --------------------------------------------------------------------------


def _target(secrets: dict[str, SecretRef], tenant: str | None = "customer-1") -> Target:
    return Target(tenant=tenant, environment="staging", stack="customer-1.staging", config={}, secrets=secrets, tags={})


def test_resolve_env_and_file_secrets(tmp_path, monkeypatch, registry):
    monkeypatch.setenv("CUSTOMER_1_DB_PASSWORD", "pw-from-env")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "qa.txt").write_text("pw-from-file\n", encoding="utf-8")
    c1 = select_targets(registry, tenants=["customer-1"], envs=["staging"]).targets[0]
    assert resolve_secrets(c1, tmp_path) == {"db_password": "pw-from-env"}
    qa = select_targets(registry, tenants=["internal-qa"]).targets[0]
    assert resolve_secrets(qa, tmp_path) == {"db_password": "pw-from-file"}  # relative to base_dir
    assert registry.base_dir == FIXTURES


def test_missing_env_var_names_tenant_and_reference(monkeypatch):
    monkeypatch.delenv("C1_MISSING", raising=False)
    with pytest.raises(SecretError) as info:
        resolve_secrets(_target({"db_password": SecretRef(env="C1_MISSING")}), ".")
    assert str(info.value) == "tenant customer-1: secret 'db_password': environment variable C1_MISSING is not set"
    assert (info.value.tenant, info.value.key) == ("customer-1", "db_password")


def test_secret_errors_never_contain_a_value(tmp_path, monkeypatch):
    monkeypatch.setenv("C1_SET", "s3cr3t-value-123")
    monkeypatch.setenv("C1_EMPTY", "")
    secrets = {"region": SecretRef(env="C1_SET"), "db_password": SecretRef(env="C1_EMPTY")}
    with pytest.raises(SecretError) as info:
        resolve_secrets(_target(secrets), tmp_path)
    assert "s3cr3t" not in str(info.value)
    assert str(info.value) == "tenant customer-1: secret 'db_password': environment variable C1_EMPTY is empty"


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        (lambda d: None, "file {d}/missing.txt not found"),
        (lambda d: (d / "missing.txt").mkdir(), "file {d}/missing.txt is a directory"),
        (lambda d: (d / "missing.txt").write_text("\n"), "file {d}/missing.txt is empty"),
        (lambda d: (d / "missing.txt").write_bytes(b"\xffpw"), "file {d}/missing.txt is not UTF-8 text"),
    ],
)
def test_file_secret_errors(tmp_path, setup, reason):
    setup(tmp_path)
    with pytest.raises(SecretError) as info:
        resolve_secrets(_target({"db_password": SecretRef(file="missing.txt")}, tenant=None), tmp_path)
    assert str(info.value) == "untenanted deployment: secret 'db_password': " + reason.format(d=tmp_path)


def test_registry_tenant_lookup(registry):
    assert registry.tenant("customer-1").name == "Customer One"
    with pytest.raises(SelectionError, match=r"did you mean 'internal-qa'"):
        registry.tenant("internal-q")
    with pytest.raises(SelectionError, match="^invalid tenant id"):
        registry.tenant("../etc")


def test_a_tag_alone_selects_the_tenants_with_that_tag(registry):
    """#22.10: `--tag tier=standard` without --all-tenants was refused."""
    selection = select_targets(registry, tags=["tier=standard"])
    assert stacks(selection) == ["customer-2.staging", "customer-2.production"]
    assert [(t.stack, why) for t, why in selection.skipped] == [("customer-3.production", "tenant disabled")]
    assert stacks(select_targets(registry, tags=["tier=standard"], envs=["production"])) == ["customer-2.production"]
    assert stacks(select_targets(registry, tags=["tier=standard", "region=eu"])) == stacks(selection)
    assert stacks(select_targets(registry, tags=["tier=standard"], exclude=["customer-2"])) == []
    # the same as --all-tenants --tag
    assert select_targets(registry, tags=["tier=premium"]) == select_targets(
        registry, all_tenants=True, tags=["tier=premium"]
    )


def test_a_tag_alone_that_no_tenant_has_is_an_error(registry):
    with pytest.raises(SelectionError) as info:
        select_targets(registry, tags=["tier=gold"])
    assert (
        str(info.value) == "no tenant has the tag tier=gold (known: region=eu, region=us, tier=canary, "
        "tier=premium, tier=standard)"
    )


def test_default_all_tenants_selects_the_fleet_when_nothing_is_named(registry):
    """#22.10: `runner recover` with no selector means the whole fleet."""
    everyone = select_targets(registry, default_all_tenants=True)
    assert everyone == select_targets(registry, all_tenants=True)
    assert stacks(select_targets(registry, default_all_tenants=True, envs=["production"])) == [
        "customer-1.production",
        "customer-2.production",
    ]
    # a selector given still decides
    assert stacks(select_targets(registry, default_all_tenants=True, tenants=["internal-qa"])) == [
        "internal-qa.testing"
    ]
    assert stacks(select_targets(registry, default_all_tenants=True, tags=["tier=canary"])) == ["internal-qa.testing"]
