"""The tenant registry: loading, validation messages (FILE:LINE: path: message),
database registries, frozen models, and the id pattern as a property."""

from __future__ import annotations

import dataclasses
import json
import os
import textwrap
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import Column, Integer, MetaData, Table, Text, create_engine

from runner.registry import (
    TENANT_ID_PATTERN,
    ConfigKey,
    Registry,
    RegistryError,
    SecretRef,
    SelectionError,
    Tenant,
    is_valid_id,
    load_config_schema,
    load_registry,
    registry_summary,
    select_targets,
    tenants_table,
    write_registry_table,
)

FIXTURES = Path(__file__).parent / "fixtures" / "registry"
PROJECT = Path(__file__).resolve().parents[2]
SCHEMA = load_config_schema(FIXTURES)
KNOWN = "(known: testing, staging, production)"
ID_RULE = "use 3-40 characters a-z, 0-9 and '-', starting with a letter, not ending with '-'"

HEAD = """\
defaults:
  platform: local
environments:
  - name: testing
  - name: staging
  - name: production
    require_tenant: true
tenants:
"""  # 8 lines: the first tenant starts on line 9


def write(tmp_path: Path, text: str, name: str = "tenants.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def errors_of(tmp_path: Path, text: str, *, schema=SCHEMA) -> list[str]:
    """Load ``text`` as tmp/tenants.yaml, named "tenants.yaml" in messages."""
    write(tmp_path, text)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(RegistryError) as info:
            load_registry("tenants.yaml", schema=schema)
    finally:
        os.chdir(cwd)
    assert str(info.value) == "\n".join(info.value.errors)
    return info.value.errors


def load_text(tmp_path: Path, text: str, *, schema=SCHEMA) -> Registry:
    return load_registry(write(tmp_path, text), schema=schema)


# --- the example registry ----------------------------------------------------


def test_example_registry_loads_against_the_real_program():
    registry = load_registry(PROJECT / "stacks" / "tenants.yaml", project_dir=PROJECT)
    assert [t.id for t in registry.tenants] == ["customer-1", "customer-2", "customer-3", "internal-qa"]
    assert registry.environment_names == ("testing", "staging", "production")
    assert registry.environment("production").require_tenant
    assert registry.tenant("customer-1").secrets["db_password"] == SecretRef(env="CUSTOMER_1_DB_PASSWORD")
    assert registry.rollout is not None and registry.rollout.waves[0].tags == {"tier": "canary"}
    assert registry.base_dir == PROJECT / "stacks"


def test_example_registry_summary_uses_the_path_as_given(monkeypatch):
    monkeypatch.chdir(PROJECT)
    registry = load_registry("stacks/tenants.yaml")
    assert registry_summary(registry) == "OK stacks/tenants.yaml: 4 tenants (4 enabled), 3 environments, 6 targets"


def test_valid_fixture_defaults_and_table():
    registry = load_registry(FIXTURES / "valid.yaml", schema=SCHEMA)
    c2 = registry.tenant("customer-2")
    assert c2.name == "customer-2"  # name defaults to the id
    assert c2.enabled is True
    assert c2.config == {"domain": "customer-2.example.com", "replicas": 2}
    assert tenants_table(registry)[2] == {
        "id": "customer-3",
        "name": "customer-3",
        "environments": ["production"],
        "tags": {"tier": "standard", "region": "us"},
        "enabled": False,
    }
    assert registry_summary(registry).endswith(": 4 tenants (3 enabled), 3 environments, 5 targets")
    assert registry.rollout.tolerance(20) == 2
    assert [w.limit(10) for w in registry.rollout.waves] == [10, 3, 10]


# --- every error of a file at once --------------------------------------------


def test_all_errors_come_at_once_sorted_by_line(tmp_path):
    errors = errors_of(
        tmp_path,
        HEAD
        + """\
  - id: customer-1
    environments: [staging, prod]
    tags: {tier: 1}
    config: {domian: x.example.com}
  - id: customer-1
    environments: []
  - id: Customer-2
    environments: [staging]
    enviroments: [staging]
""",
    )
    assert errors == [
        f"tenants.yaml:10: tenants[0].environments[1]: unknown environment 'prod' {KNOWN}",
        'tenants.yaml:11: tenants[0].tags.tier: expected a string, got a number (1); quote it: "1"',
        "tenants.yaml:12: tenants[0].config.domian: unknown config key 'domian' (did you mean 'domain'?)",
        "tenants.yaml:13: tenants[1].id: duplicate tenant id 'customer-1' (first defined at line 9)",
        "tenants.yaml:14: tenants[1].environments: a tenant needs at least one environment",
        f"tenants.yaml:15: tenants[2].id: invalid tenant id 'Customer-2': {ID_RULE}",
        "tenants.yaml:17: tenants[2].enviroments: unknown key 'enviroments' (did you mean 'environments'?)",
    ]


# --- one test per error kind ------------------------------------------------------

TENANT_ERRORS = [
    # (tenant YAML lines after "- id: customer-1", expected errors)
    pytest.param(
        "    environments: [prod]\n",
        [f"tenants.yaml:10: tenants[0].environments[0]: unknown environment 'prod' {KNOWN}"],
        id="unknown-environment",
    ),
    pytest.param(
        "    environments: [prodution]\n",
        [
            "tenants.yaml:10: tenants[0].environments[0]: unknown environment 'prodution' "
            f"(did you mean 'production'?) {KNOWN}"
        ],
        id="unknown-environment-close-match",
    ),
    pytest.param(
        "    environments: [staging, staging]\n",
        ["tenants.yaml:10: tenants[0].environments[1]: environment 'staging' listed twice"],
        id="environment-twice",
    ),
    pytest.param(
        "    environments: []\n",
        ["tenants.yaml:10: tenants[0].environments: a tenant needs at least one environment"],
        id="no-environment",
    ),
    pytest.param(
        "    name: One\n",
        ["tenants.yaml:9: tenants[0]: missing required key 'environments'"],
        id="environments-missing",
    ),
    pytest.param(
        "    environments: staging\n",
        ["tenants.yaml:10: tenants[0].environments: expected a list, got a string"],
        id="environments-not-a-list",
    ),
    pytest.param(
        "    environments: [Staging]\n",
        ["tenants.yaml:10: tenants[0].environments[0]: invalid environment name 'Staging': " + ID_RULE],
        id="environment-name-pattern",
    ),
    pytest.param(
        "    environments: [staging]\n    tags: {tier: 1}\n",
        ['tenants.yaml:11: tenants[0].tags.tier: expected a string, got a number (1); quote it: "1"'],
        id="tag-value-not-string",
    ),
    pytest.param(
        "    environments: [staging]\n    tags: {tier: ''}\n",
        ["tenants.yaml:11: tenants[0].tags.tier: must not be empty"],
        id="tag-value-empty",
    ),
    pytest.param(
        "    environments: [staging]\n    tags: {tier: [a]}\n",
        ["tenants.yaml:11: tenants[0].tags.tier: expected a string, got a list"],
        id="tag-value-list",
    ),
    pytest.param(
        "    environments: [staging]\n    enabled: yes\n",
        ["tenants.yaml:11: tenants[0].enabled: expected true or false, got a string (YAML 1.2: write true or false)"],
        id="enabled-yes",
    ),
    pytest.param(
        "    environments: [staging]\n    name: ''\n",
        ["tenants.yaml:11: tenants[0].name: must not be empty"],
        id="empty-name",
    ),
    pytest.param(
        "    environments: [staging]\n    enviroments: [staging]\n",
        ["tenants.yaml:11: tenants[0].enviroments: unknown key 'enviroments' (did you mean 'environments'?)"],
        id="unknown-tenant-key",
    ),
    pytest.param(
        "    environments: [staging]\n    secrets: {db_password: hunter2}\n",
        [
            "tenants.yaml:11: tenants[0].secrets.db_password: secrets must be references "
            "{env: VAR} or {file: PATH}, never values"
        ],
        id="plaintext-secret",
    ),
    pytest.param(
        "    environments: [staging]\n    secrets: {db_password: {env: A, file: b}}\n",
        ["tenants.yaml:11: tenants[0].secrets.db_password: a secret reference has exactly one key: env or file"],
        id="secret-two-references",
    ),
    pytest.param(
        "    environments: [staging]\n    secrets: {db_password: {enn: A}}\n",
        ["tenants.yaml:11: tenants[0].secrets.db_password.enn: unknown key 'enn' (did you mean 'env'?)"],
        id="secret-unknown-key",
    ),
    pytest.param(
        "    environments: [staging]\n    secrets: {db_password: {env: 'A-B'}}\n",
        ["tenants.yaml:11: tenants[0].secrets.db_password.env: invalid environment variable name 'A-B'"],
        id="secret-bad-env-name",
    ),
    pytest.param(
        "    environments: [staging]\n    secrets: {db_pasword: {env: A}}\n",
        [
            "tenants.yaml:11: tenants[0].secrets.db_pasword: unknown config key 'db_pasword' "
            "(did you mean 'db_password'?)"
        ],
        id="secret-unknown-config-key",
    ),
    pytest.param(
        "    environments: [staging]\n    secrets: {replicas: {env: A}}\n",
        ["tenants.yaml:11: tenants[0].secrets.replicas: 'replicas' is integer-typed; secrets can only set string keys"],
        id="secret-non-string-key",
    ),
    pytest.param(
        "    environments: [staging]\n    config: {db_password: x}\n    secrets: {db_password: {env: A}}\n",
        ["tenants.yaml:12: tenants[0].secrets.db_password: 'db_password' is set both in config and in secrets"],
        id="config-and-secret",
    ),
    pytest.param(
        "    environments: [staging]\n    config: {domian: a.example.com}\n",
        ["tenants.yaml:11: tenants[0].config.domian: unknown config key 'domian' (did you mean 'domain'?)"],
        id="unknown-config-key",
    ),
    pytest.param(
        "    environments: [staging]\n    config: {tenant_name: X}\n",
        [
            "tenants.yaml:11: tenants[0].config.tenant_name: 'tenant_name' is set by the runner "
            "and cannot be set in the registry"
        ],
        id="reserved-tenant-name",
    ),
    pytest.param(
        "    environments: [staging]\n    secrets: {release: {env: A}}\n",
        [
            "tenants.yaml:11: tenants[0].secrets.release: 'release' is set by the runner "
            "and cannot be set in the registry"
        ],
        id="reserved-release-as-secret",
    ),
    pytest.param(
        "    environments: [staging]\n    config: {app_version: 1.0}\n",
        [
            "tenants.yaml:11: tenants[0].config.app_version: app_version expects a string, "
            'got a number (1.0); quote it: "1.0"'
        ],
        id="number-for-string",
    ),
    pytest.param(
        "    environments: [staging]\n    config: {replicas: true}\n",
        ["tenants.yaml:11: tenants[0].config.replicas: replicas expects an integer, got a boolean (true)"],
        id="bool-for-integer",
    ),
    pytest.param(
        "    environments: [staging]\n    config: {debug: 1}\n",
        ["tenants.yaml:11: tenants[0].config.debug: debug expects true or false, got a number (1)"],
        id="integer-for-boolean",
    ),
    pytest.param(
        "    environments: [staging]\n    config: {features: [a, 2]}\n",
        ["tenants.yaml:11: tenants[0].config.features: features[1] expects a string, got a number (2)"],
        id="array-item-type",
    ),
    pytest.param(
        "    environments: [staging]\n    config: {platform: gcp}\n",
        ["tenants.yaml:11: tenants[0].config.platform: platform must be 'local' or 'aws', got 'gcp'"],
        id="platform-value",
    ),
    pytest.param(
        "    environments: [staging]\n    config: {license_key: abc}\n",
        [
            "tenants.yaml:11: tenants[0].config.license_key: 'license_key' is declared secret in Pulumi.yaml: "
            "give it under secrets as {env: VAR} or {file: PATH}"
        ],
        id="declared-secret-as-plaintext",
    ),
]


@pytest.mark.parametrize(("tenant", "expected"), TENANT_ERRORS)
def test_tenant_error(tmp_path, tenant, expected):
    assert errors_of(tmp_path, HEAD + "  - id: customer-1\n" + tenant) == expected


def test_plaintext_secret_value_is_never_echoed(tmp_path):
    errors = errors_of(
        tmp_path,
        HEAD + "  - id: customer-1\n    environments: [staging]\n    secrets: {db_password: hunter2-very-secret}\n",
    )
    assert "hunter2" not in "\n".join(errors)


@pytest.mark.parametrize("bad_id", ["Customer-1", "customer_1", "-customer", "customer-", "ab", "c" * 41])
def test_invalid_tenant_id(tmp_path, bad_id):
    errors = errors_of(tmp_path, HEAD + f"  - id: '{bad_id}'\n    environments: [staging]\n")
    assert errors == [f"tenants.yaml:9: tenants[0].id: invalid tenant id {bad_id!r}: {ID_RULE}"]


def test_duplicate_tenant_ids_name_both_lines(tmp_path):
    errors = errors_of(
        tmp_path,
        HEAD
        + """\
  - id: customer-1
    environments: [staging]
  - id: customer-2
    environments: [staging]
  - id: customer-1
    environments: [production]
""",
    )
    assert errors == ["tenants.yaml:13: tenants[2].id: duplicate tenant id 'customer-1' (first defined at line 9)"]


def test_duplicate_environment_names(tmp_path):
    errors = errors_of(
        tmp_path,
        """\
environments:
  - name: staging
  - name: production
  - name: staging
tenants: []
""",
    )
    assert errors == ["tenants.yaml:4: environments[2].name: duplicate environment 'staging' (first defined at line 2)"]


def test_unknown_environment_key_and_bad_require_tenant(tmp_path):
    errors = errors_of(
        tmp_path,
        """\
environments:
  - name: staging
    require_tenants: true
  - name: production
    require_tenant: 1
""",
    )
    assert errors == [
        "tenants.yaml:3: environments[0].require_tenants: unknown key 'require_tenants' "
        "(did you mean 'require_tenant'?)",
        "tenants.yaml:5: environments[1].require_tenant: expected true or false, got a number (1)",
    ]


def test_no_environments(tmp_path):
    assert errors_of(tmp_path, "environments: []\n") == ["tenants.yaml:1: environments: list at least one environment"]
    assert errors_of(tmp_path, "tenants: []\n") == ["tenants.yaml:1: missing required key 'environments'"]


def test_unknown_top_level_key_suggests(tmp_path):
    errors = errors_of(tmp_path, HEAD.replace("tenants:\n", "tenant: []\n"))
    assert errors == ["tenants.yaml:8: tenant: unknown key 'tenant' (did you mean 'tenants'?)"]


def test_defaults_are_checked_like_tenant_config(tmp_path):
    errors = errors_of(
        tmp_path,
        """\
defaults:
  platform: local
  app_version: 1.0
  release: r1
  regoin: eu-west-1
environments:
  - name: staging
""",
    )
    assert errors == [
        'tenants.yaml:3: defaults.app_version: app_version expects a string, got a number (1.0); quote it: "1.0"',
        "tenants.yaml:4: defaults.release: 'release' is set by the runner and cannot be set in the registry",
        "tenants.yaml:5: defaults.regoin: unknown config key 'regoin' (did you mean 'region'?)",
    ]


def test_required_config_keys_per_tenant(tmp_path):
    schema = load_config_schema(FIXTURES / "required")
    assert schema["domain"].required and not schema["platform"].required
    errors = errors_of(
        tmp_path,
        """\
defaults:
  api_token: {}
environments:
  - name: staging
tenants:
  - id: customer-1
    environments: [staging]
    config: {domain: a.example.com}
  - id: customer-2
    environments: [staging]
    secrets: {domain: {env: DOMAIN}}
  - id: customer-3
    environments: [staging]
""".replace("{}", "token"),
        schema=schema,
    )
    assert errors == [
        "tenants.yaml:12: tenants[2].config: missing required config key 'domain' "
        "(set it in defaults, config or secrets)"
    ]


def test_rollout_errors(tmp_path):
    errors = errors_of(
        tmp_path,
        HEAD
        + """\
  - id: customer-1
    environments: [staging]
rollout:
  waves:
    - {name: canary, tags: {tier: 1}}
    - {name: canary, max: 0}
    - {name: rest}
    - {name: late, max: "101%"}
    - {name: later, max: "0%"}
    - {name: last, max: true, tags: {tier: gold}}
  failure_tolerance: "x%"
""",
    )
    assert errors == [
        'tenants.yaml:13: rollout.waves[0].tags.tier: expected a string, got a number (1); quote it: "1"',
        "tenants.yaml:14: rollout.waves[1].max: max must be > 0, got 0",
        "tenants.yaml:14: rollout.waves[1].name: duplicate wave name 'canary' (first defined at line 13)",
        "tenants.yaml:16: rollout.waves[3].max: max must be a count or a percentage like \"10%\" (1-100), got '101%'",
        "tenants.yaml:17: rollout.waves[4].max: max must be a count or a percentage like \"10%\" (1-100), got '0%'",
        "tenants.yaml:18: rollout.waves[5]: the last wave must take the rest (no tags, no max), or tenants "
        "are left out of the rollout: add a final wave like {name: rest}",
        'tenants.yaml:18: rollout.waves[5].max: max must be a count or a percentage like "10%", got a boolean (true)',
        "tenants.yaml:19: rollout.failure_tolerance: failure_tolerance must be a count or a percentage "
        "like \"10%\" (0-100), got 'x%'",
    ]


def test_rollout_catch_all_wave_allowed_anywhere(tmp_path):
    registry = load_text(
        tmp_path,
        HEAD
        + """\
  - id: customer-1
    environments: [staging]
rollout:
  waves: [{name: all}, {name: rest}]
  failure_tolerance: 2
""",
    )
    assert [w.takes_rest for w in registry.rollout.waves] == [True, True]
    assert registry.rollout.tolerance(100) == 2


def test_rollout_needs_waves(tmp_path):
    assert errors_of(tmp_path, HEAD + "rollout: {waves: []}\n") == [
        "tenants.yaml:9: rollout.waves: a rollout needs at least one wave"
    ]


def test_null_blocks_read_as_empty(tmp_path):
    registry = load_text(
        tmp_path,
        """\
defaults:
environments:
  - name: staging
tenants:
  - id: customer-1
    environments: [staging]
    tags:
    config:
""",
    )
    assert registry.defaults == {} and registry.tenants[0].tags == {}


# --- the file itself ----------------------------------------------------------


def test_malformed_yaml_is_one_error_with_the_parser_line(tmp_path):
    errors = errors_of(tmp_path, HEAD + "  - id: customer-1\n    environments: [staging\n  - id: x\n")
    assert len(errors) == 1
    assert errors[0].startswith("tenants.yaml:11: invalid YAML: ")


def test_duplicate_yaml_key(tmp_path):
    errors = errors_of(tmp_path, HEAD + "  - id: customer-1\n    environments: [staging]\n    id: customer-2\n")
    assert errors == ["tenants.yaml:11: duplicate key 'id' (first at line 9)"]


def test_several_documents(tmp_path):
    errors = errors_of(tmp_path, HEAD + "---\nfoo: 1\n")
    assert errors == ["tenants.yaml:9: expected one YAML document, found several"]


def test_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(RegistryError) as info:
        load_registry(str(tmp_path / "nope.yaml"), schema=SCHEMA)
    assert info.value.errors == [f"{tmp_path / 'nope.yaml'}: file not found"]


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(RegistryError) as info:
        load_registry(str(tmp_path), schema=SCHEMA)
    assert info.value.errors == [f"{tmp_path}: is a directory, not a YAML file"]


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file(tmp_path, text):
    assert errors_of(tmp_path, text) == [
        "tenants.yaml:1: the registry is empty (expected the keys defaults, environments, tenants)"
    ]


def test_top_level_not_a_mapping(tmp_path):
    assert errors_of(tmp_path, "\n- id: customer-1\n") == [
        "tenants.yaml:2: the registry must be a mapping with the keys defaults, environments, tenants, got a list"
    ]


def test_not_utf8(tmp_path):
    (tmp_path / "tenants.yaml").write_bytes(b"environments:\n  - name: \xff\n")
    with pytest.raises(RegistryError) as info:
        load_registry(tmp_path / "tenants.yaml", schema=SCHEMA)
    assert info.value.errors == [f"{tmp_path / 'tenants.yaml'}:2: the file is not valid UTF-8"]


def test_anchors_and_merge_keys(tmp_path):
    registry = load_text(
        tmp_path,
        HEAD
        + """\
  - &base
    id: customer-1
    environments: [staging]
    config: {domain: a.example.com}
  - <<: *base
    id: customer-2
""",
    )
    assert registry.tenant("customer-2").config == {"domain": "a.example.com"}


# --- models ---------------------------------------------------------------------


def test_models_are_frozen():
    registry = load_registry(FIXTURES / "valid.yaml", schema=SCHEMA)
    tenant = registry.tenants[0]
    with pytest.raises(ValidationError):
        tenant.id = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        registry.tenants = ()  # type: ignore[misc]
    with pytest.raises(ValidationError):
        tenant.secrets["db_password"].env = "X"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        registry.environments[0].require_tenant = True  # type: ignore[misc]
    with pytest.raises(ValidationError):
        SCHEMA["domain"].default = "x"  # type: ignore[misc]


def test_registry_built_directly_validates_the_same():
    with pytest.raises(ValidationError) as info:
        Registry.model_validate(
            {
                "environments": [{"name": "staging"}],
                "tenants": [{"id": "a-1", "environments": ["prod"]}, {"id": "a-1", "environments": ["staging"]}],
            },
            context={"schema": SCHEMA},
        )
    messages = {e["msg"] for e in info.value.errors()}
    assert messages == {"unknown environment 'prod' (known: staging)", "duplicate tenant id 'a-1'"}


def test_config_schema_from_pulumi_yaml():
    assert set(SCHEMA) == {
        "platform",
        "app_version",
        "region",
        "domain",
        "db_password",
        "replicas",
        "debug",
        "features",
        "license_key",
        "release",
        "tenant_name",
    }
    assert SCHEMA["replicas"] == ConfigKey(name="replicas", type="integer", default=1, has_default=True)
    assert SCHEMA["license_key"].secret
    assert SCHEMA["features"].items == "string"


def test_config_schema_errors(tmp_path):
    (tmp_path / "Pulumi.yaml").write_text("name: x\nconfig:\n  size:\n    type: float\n", encoding="utf-8")
    with pytest.raises(RegistryError) as info:
        load_config_schema(tmp_path)
    assert info.value.errors == [
        f"{tmp_path / 'Pulumi.yaml'}:3: config.size.type: expected one of string, integer, boolean, array, got 'float'"
    ]
    with pytest.raises(RegistryError, match="no Pulumi project file"):
        load_config_schema(tmp_path / "missing")


# --- the id pattern as a property -----------------------------------------------

HOSTILE = [
    "..",
    ".",
    "--force",
    "-s",
    "a/b",
    "A",
    "x" * 101,
    "",
    "é",
    "a\x00b",
    "org/p/s",
    "../x",
    "abc\n",
    "customer-1 ",
    " customer-1",
    "Customer-1",
    "ab",
    "a--",
    "1abc",
]


def _tenant(tenant_id):
    return Tenant.model_validate({"id": tenant_id, "environments": ["staging"]})


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=50), st.from_regex(r"[a-z0-9./\-]{0,45}", fullmatch=True)))
@example("..")
@example(".")
@example("--force")
@example("-s")
@example("a/b")
@example("A")
@example("x" * 101)
@example("")
@example("é")
@example("a\x00b")
@example("org/p/s")
@example("../x")
@example("abc\n")
def test_no_id_outside_the_pattern_is_accepted(value):
    import re

    valid = re.fullmatch(r"[a-z][a-z0-9-]{1,38}[a-z0-9]", value) is not None
    assert is_valid_id(value) is valid
    registry = load_registry(FIXTURES / "valid.yaml", schema=SCHEMA)
    if valid:
        assert _tenant(value).id == value
    else:
        with pytest.raises(ValidationError):
            _tenant(value)
        with pytest.raises(SelectionError, match="^invalid tenant id"):
            select_targets(registry, tenants=[value])
        with pytest.raises(SelectionError, match="^invalid tenant id"):
            select_targets(registry, all_tenants=True, exclude=[value])
        with pytest.raises(SelectionError, match="^invalid tenant id"):
            registry.tenant(value)


@settings(max_examples=100, deadline=None)
@given(st.from_regex(TENANT_ID_PATTERN, fullmatch=True))
def test_every_id_inside_the_pattern_is_accepted(value):
    value = value.removesuffix("\n")  # hypothesis lets "$" match before a final newline
    assert is_valid_id(value)
    assert _tenant(value).id == value


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_ids_never_pass(value):
    assert not is_valid_id(value)
    with pytest.raises(ValidationError):
        _tenant(value)


# --- database registries (SQLite) -------------------------------------------------


def _db_tenants():
    return [
        {
            "id": "customer-2",
            "environments": ["staging", "production"],
            "tags": {"tier": "standard"},
            "config": {"domain": "c2.example.com"},
        },
        {
            "id": "customer-1",
            "name": "Customer One",
            "environments": ["production"],
            "secrets": {"db_password": {"env": "C1_DB"}},
            "enabled": False,
        },
    ]


def test_database_registry_loads(tmp_path):
    db = tmp_path / "registry.db"
    write_registry_table(f"sqlite:///{db}", _db_tenants())
    registry = load_registry(f"sqlite:///{db}?table=tenants", schema=SCHEMA)
    assert [t.id for t in registry.tenants] == ["customer-1", "customer-2"]  # id order
    assert registry.tenant("customer-1").enabled is False
    assert registry.tenant("customer-2").name == "customer-2"
    assert registry.environment("production").require_tenant
    assert registry.defaults == {}
    assert registry_summary(registry) == f"OK sqlite:///{db}: 2 tenants (1 enabled), 3 environments, 2 targets"


def test_database_registry_default_table_and_base_file(tmp_path):
    db = tmp_path / "registry.db"
    write_registry_table(f"sqlite:///{db}", _db_tenants())
    registry = load_registry(f"sqlite:///{db}?base={FIXTURES / 'base.yaml'}", schema=SCHEMA)
    assert registry.defaults == {"platform": "local"}
    assert registry.base_dir == FIXTURES


def test_database_registry_pages_through_many_rows(tmp_path):
    db = tmp_path / "registry.db"
    tenants = [{"id": f"tenant-{i:04d}", "environments": ["staging"]} for i in range(1234)]
    write_registry_table(f"sqlite:///{db}?table=fleet", tenants)
    registry = load_registry(f"sqlite:///{db}?table=fleet", schema=SCHEMA)
    assert [t.id for t in registry.tenants] == [t["id"] for t in tenants]


def test_database_registry_errors_name_the_row(tmp_path):
    db = tmp_path / "registry.db"
    write_registry_table(
        f"sqlite:///{db}",
        [
            {"id": "customer-9", "environments": ["prod"]},
            {"id": "customer-8", "environments": ["staging"], "tags": "{not json"},
            {
                "id": "customer-7",
                "environments": ["staging"],
                "config": {"domian": "x"},
                "secrets": {"db_password": "plain"},
            },
            {"id": "Bad_Id", "environments": None},
        ],
    )
    with pytest.raises(RegistryError) as info:
        load_registry(f"sqlite:///{db}?table=tenants", schema=SCHEMA)
    assert info.value.errors == [
        "tenants row 'Bad_Id': missing required key 'environments'",
        f"tenants row 'Bad_Id': id: invalid tenant id 'Bad_Id': {ID_RULE}",
        "tenants row customer-7: config.domian: unknown config key 'domian' (did you mean 'domain'?)",
        "tenants row customer-7: secrets.db_password: secrets must be references {env: VAR} or {file: PATH}, "
        "never values",
        "tenants row customer-8: tags: invalid JSON (Expecting property name enclosed in double quotes)",
        f"tenants row customer-9: environments[0]: unknown environment 'prod' {KNOWN}",
    ]
    assert "plain" not in str(info.value).replace("explain", "")


def test_database_registry_duplicate_ids_without_primary_key(tmp_path):
    db = tmp_path / "registry.db"
    engine = create_engine(f"sqlite:///{db}")
    table = Table(
        "tenants",
        MetaData(),
        Column("id", Text),
        Column("environments", Text),
        Column("enabled", Integer),
        Column("updated_at", Text),
    )
    table.create(engine)
    with engine.begin() as conn:
        conn.execute(
            table.insert(),
            [
                {"id": "customer-1", "environments": json.dumps(["staging"]), "enabled": 1},
                {"id": "customer-1", "environments": json.dumps(["production"]), "enabled": 1},
                {"id": "customer-2", "environments": json.dumps(["staging"]), "enabled": 2},
                {"id": None, "environments": "[]", "enabled": 1},
            ],
        )
    engine.dispose()
    with pytest.raises(RegistryError) as info:
        load_registry(f"sqlite:///{db}", schema=SCHEMA)
    assert info.value.errors == [
        "tenants: 1 row(s) without an id",
        "tenants row customer-1: id: duplicate tenant id 'customer-1' (2 rows)",
        "tenants row customer-2: enabled: expected true or false, got a number (2)",
    ]


def test_database_registry_base_errors_use_the_base_file(tmp_path):
    base = write(tmp_path, "environments:\n  - name: staging\n  - name: staging\n", "base.yaml")
    db = tmp_path / "registry.db"
    write_registry_table(f"sqlite:///{db}", [{"id": "customer-1", "environments": ["staging"]}])
    with pytest.raises(RegistryError) as info:
        load_registry(f"sqlite:///{db}?base={base}", schema=SCHEMA)
    assert info.value.errors == [
        f"{base}:3: environments[1].name: duplicate environment 'staging' (first defined at line 2)"
    ]
    tenants_in_base = write(tmp_path, "environments: [{name: staging}]\ntenants: []\n", "base2.yaml")
    with pytest.raises(RegistryError, match="cannot list tenants"):
        load_registry(f"sqlite:///{db}?base={tenants_in_base}", schema=SCHEMA)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///{tmp}/missing.db", "sqlite:///{tmp}/missing.db: database file not found"),
        ("sqlite:///{tmp}/registry.db?table=other", "sqlite:///{tmp}/registry.db: table 'other' not found"),
        ("sqlite:///{tmp}/registry.db?table=x;drop", "sqlite:///{tmp}/registry.db: invalid table name 'x;drop'"),
        (
            "mysql://u@h/db",
            "mysql://...: unsupported registry URL (use a YAML path, sqlite:///PATH or postgresql://USER@HOST/DB)",
        ),
    ],
)
def test_database_registry_source_errors(tmp_path, url, message):
    write_registry_table(f"sqlite:///{tmp_path}/registry.db", [])
    with pytest.raises(RegistryError) as info:
        load_registry(url.format(tmp=tmp_path), schema=SCHEMA)
    assert info.value.errors == [message.format(tmp=tmp_path)]


def test_postgres_url_is_converted_to_psycopg_and_password_hidden():
    from runner.registry.database import _Target

    target = _Target("postgresql://runner:s3cret@127.0.0.1:5432/fleet?table=tenants&sslmode=disable")
    assert target.url == "postgresql+psycopg://runner:s3cret@127.0.0.1:5432/fleet?sslmode=disable"
    assert "s3cret" not in target.display
    assert target.table == "tenants"


# --- #15.3: values that become paths stay under their roots ------------------

ESCAPE = HEAD + "  - id: customer-1\n    environments: [staging]\n"  # config goes on line 11
PATH_SCHEMA = {
    **SCHEMA,
    **{k: ConfigKey(name=k, type="string", default="", has_default=True) for k in ("platform_root", "migrations_dir")},
}


@pytest.fixture
def confined(tmp_path, monkeypatch):
    """A project dir and a registry dir inside tmp; no roots or secrets dir configured."""
    for var in ("RUNNER_PLATFORM_ROOTS", "RUNNER_SECRETS_DIR", "RUNNER_STATE_DIR"):
        monkeypatch.delenv(var, raising=False)
    project = tmp_path / "project"
    (project / ".runner").mkdir(parents=True)
    (project / ".runner" / "passphrase").write_text("master\n")
    (project / "stacks").mkdir()
    monkeypatch.chdir(project / "stacks")

    def errors(text: str) -> list[str]:
        write(project / "stacks", text)
        with pytest.raises(RegistryError) as info:
            load_registry("tenants.yaml", schema=PATH_SCHEMA, project_dir=project)
        return info.value.errors

    def loads(text: str) -> Registry:
        write(project / "stacks", text)
        return load_registry("tenants.yaml", schema=PATH_SCHEMA, project_dir=project)

    return project, errors, loads


def test_app_version_escaping_the_tenant_dir_is_refused(confined):
    """The reproduction: customer-1's app_version pointed its release step at accounts/customer-2."""
    _, errors, _ = confined
    assert errors(ESCAPE + '    config: {app_version: "../../../../customer-2"}\n') == [
        "tenants.yaml:11: tenants[0].config.app_version: invalid app_version '../../../../customer-2': use "
        "1-128 characters: letters, digits, '.', '-', '_' and '+', starting with a letter or digit, no '..'"
    ]


@pytest.mark.parametrize(
    "bad", ["a/b", "..", "1..2", ".hidden", "-rf", "/abs", "a b", "v1\\n", "", "x" * 129, "ünï", "a\\\\b", "~root"]
)
def test_label_pattern_refuses(confined, bad):
    _, errors, _ = confined
    lines = errors(
        f'defaults: {{platform: local, app_version: "{bad}"}}\n' + ESCAPE[len("defaults:\n  platform: local\n") :]
    )
    assert len(lines) == 1 and lines[0].startswith("tenants.yaml:1: defaults.app_version: invalid app_version"), lines


@pytest.mark.parametrize("good", ["1.0.0", "v2", "2.0.0-rc.1+build.7", "R4", "abc123def456-dirty", "x" * 128, "1_2"])
def test_label_pattern_accepts(confined, good):
    _, _, loads = confined
    assert loads(ESCAPE + f'    config: {{app_version: "{good}"}}\n').tenants[0].config["app_version"] == good


@pytest.mark.parametrize(
    "key,value",
    [
        ("platform_root", "/etc"),
        ("platform_root", "../../outside"),
        ("platform_root", "~"),
        ("migrations_dir", "/tmp"),
        ("migrations_dir", "../.."),
    ],
)
def test_paths_outside_the_project_are_refused(confined, key, value):
    project, errors, _ = confined
    lines = errors(ESCAPE + f'    config: {{{key}: "{value}"}}\n')
    assert len(lines) == 1 and lines[0].startswith(
        f"tenants.yaml:11: tenants[0].config.{key}: {key} '{value}' resolves to "
    ), lines
    assert "outside the project" in lines[0] and "RUNNER_PLATFORM_ROOTS" in lines[0]


def test_paths_in_defaults_are_checked_too(confined):
    _, errors, _ = confined
    lines = errors(
        "defaults: {platform: local, platform_root: /var}\n" + ESCAPE[len("defaults:\n  platform: local\n") :]
    )
    assert lines[0].startswith("tenants.yaml:1: defaults.platform_root: platform_root '/var' resolves to")


def test_a_symlink_out_of_the_project_is_refused(confined, tmp_path):
    project, errors, _ = confined
    (tmp_path / "elsewhere").mkdir()
    (project / "link").symlink_to(tmp_path / "elsewhere")
    assert "outside the project" in errors(ESCAPE + "    config: {platform_root: link/platform}\n")[0]


def test_paths_inside_the_project_or_an_allowed_root_pass(confined, tmp_path, monkeypatch):
    project, errors, loads = confined
    loads(ESCAPE + f"    config: {{platform_root: .runner/platform, migrations_dir: {project}/stacks/m}}\n")
    allowed = tmp_path / "platforms"
    monkeypatch.setenv("RUNNER_PLATFORM_ROOTS", f"/nonexistent-root:{allowed}")
    loads(ESCAPE + f"    config: {{platform_root: {allowed}/a, migrations_dir: {allowed}}}\n")
    assert errors(ESCAPE + f"    config: {{platform_root: {allowed}/../x}}\n")[0].startswith(
        "tenants.yaml:11: tenants[0].config.platform_root: "
    )
    monkeypatch.setenv("RUNNER_PLATFORM_ROOTS", "relative/root")
    assert errors(ESCAPE + "    config: {platform_root: .runner/platform}\n") == [
        "tenants.yaml:11: tenants[0].config.platform_root: RUNNER_PLATFORM_ROOTS: 'relative/root' is not an "
        "absolute path"
    ]


@pytest.mark.parametrize(
    "file,why",
    [
        ("../.runner/passphrase", "is inside the runner's state directory"),
        ("../../x", "resolves outside the secrets directory"),
        ("/etc/passwd", "resolves outside the secrets directory"),
    ],
)
def test_file_secrets_outside_the_secrets_dir_are_refused(confined, file, why):
    _, errors, _ = confined
    lines = errors(ESCAPE + f'    secrets: {{db_password: {{file: "{file}"}}}}\n')
    assert len(lines) == 1 and lines[0].startswith(
        f"tenants.yaml:11: tenants[0].secrets.db_password.file: file '{file}' {why}"
    ), lines


def test_file_secrets_never_under_the_state_dir(confined, monkeypatch):
    """Even when the secrets dir (here: the project) holds the state dir."""
    project, errors, _ = confined
    monkeypatch.setenv("RUNNER_SECRETS_DIR", str(project))
    lines = errors(ESCAPE + '    secrets: {db_password: {file: "../.runner/passphrase"}}\n')
    assert lines == [
        "tenants.yaml:11: tenants[0].secrets.db_password.file: file '../.runner/passphrase' is inside "
        f"the runner's state directory {project / '.runner'}"
    ]
    state = project / "stacks" / "state"
    monkeypatch.setenv("RUNNER_STATE_DIR", str(state))
    assert "state directory" in errors(ESCAPE + '    secrets: {db_password: {file: "state/passphrase"}}\n')[0]


def test_file_secrets_under_the_secrets_dir_resolve(confined, tmp_path, monkeypatch):
    from runner.registry import resolve_secrets

    project, errors, loads = confined
    (project / "stacks" / "pw.txt").write_text("s3cret\n")
    registry = loads(ESCAPE + "    secrets: {db_password: {file: pw.txt}}\n")
    target = select_targets(registry, all_tenants=True).targets[0]
    assert resolve_secrets(target, registry.base_dir) == {"db_password": "s3cret"}
    vault = tmp_path / "vault"
    vault.mkdir()
    (vault / "pw").write_text("v\n")
    monkeypatch.setenv("RUNNER_SECRETS_DIR", str(vault))
    registry = loads(ESCAPE + f"    secrets: {{db_password: {{file: {vault}/pw}}}}\n")
    assert resolve_secrets(select_targets(registry, all_tenants=True).targets[0], registry.base_dir) == {
        "db_password": "v"
    }
    assert "outside the secrets directory" in errors(ESCAPE + "    secrets: {db_password: {file: pw.txt}}\n")[0]


def test_file_secret_escape_is_refused_when_read_too(confined, monkeypatch):
    """Defence in depth: a target built from a registry loaded under another policy."""
    from runner.registry import SecretError, resolve_secrets

    project, _, loads = confined
    (project / "stacks" / "pw.txt").write_text("s3cret\n")
    registry = loads(ESCAPE + "    secrets: {db_password: {file: pw.txt}}\n")
    target = select_targets(registry, all_tenants=True).targets[0]
    bad = dataclasses.replace(target, secrets={"db_password": SecretRef(file="../.runner/passphrase")})
    with pytest.raises(SecretError, match="outside the secrets directory"):
        resolve_secrets(bad, registry.base_dir)


# --- #15.7: config keys declared `secret: true` in Pulumi.yaml ----------------


def test_db_password_is_declared_secret_in_the_real_program():
    assert load_config_schema(PROJECT)["db_password"].secret is True


@pytest.mark.parametrize(
    "where,line,path", [("tenant", 11, "tenants[0].config.db_password"), ("defaults", 1, "defaults.db_password")]
)
def test_plaintext_db_password_is_refused_pointing_to_secrets(tmp_path, monkeypatch, where, line, path):
    monkeypatch.chdir(tmp_path)
    body = HEAD[len("defaults:\n  platform: local\n") :] + "  - id: customer-1\n    environments: [staging]\n"
    if where == "tenant":
        text = "defaults: {platform: local}\n" + body + "    config: {db_password: hunter2-plain}\n"
        line = 10
    else:
        text = "defaults: {platform: local, db_password: hunter2-plain}\n" + body
    write(tmp_path, text)
    with pytest.raises(RegistryError) as info:
        load_registry("tenants.yaml", project_dir=PROJECT)
    assert info.value.errors == [
        f"tenants.yaml:{line}: {path}: 'db_password' is declared secret in Pulumi.yaml: "
        "give it under secrets as {env: VAR} or {file: PATH}"
    ]
    assert "hunter2" not in str(info.value)
