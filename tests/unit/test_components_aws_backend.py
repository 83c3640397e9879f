"""components.aws.Backend under provider-like mocks: data protection (#21.4),
separate least-privilege roles with parsed policy documents (#21.6), the
release tag only on what runs (#21.6), the PostgreSQL set packaged (#21.2)."""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws
import pytest

from components.common import Migration, resource_tags
from tests.unit.aws_mocks import AwsMocks
from tests.unit.conftest import use_mocks

TAGS = resource_tags("acme", "staging")
MIGRATIONS = [Migration("001_a.sql", "CREATE TABLE a(id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY);")]


def build(purge_data: bool = False):
    mon = use_mocks(AwsMocks())
    result: dict = {}

    @pulumi.runtime.test
    def run():
        from components.aws import Backend, BackendArgs

        provider = aws.Provider("tenant-provider", region="eu-west-1")
        backend = Backend(
            "backend",
            BackendArgs(
                provider=provider,
                tenant_id="acme",
                environment="staging",
                release="r1",
                app_version="1",
                tags=TAGS,
                migrations=MIGRATIONS,
                app_files={"app.py": "x"},
                purge_data=purge_data,
            ),
        )
        urns = [r.urn for r in vars(backend).values() if isinstance(r, pulumi.Resource)]
        return pulumi.Output.all(*urns).apply(lambda _: result.setdefault("done", True))

    run()
    assert result["done"]
    return mon


def statements(mon, name: str) -> list[dict]:
    doc = json.loads(mon.inputs(name)["policy"])
    assert doc["Version"] == "2012-10-17"
    return doc["Statement"]


def test_database_is_protected_backed_up_and_not_downgraded():
    mon = build()
    for name in ("backend-db", "backend-db-1"):
        req, _ = mon.requests[name]
        assert req.protect is True and req.retainOnDelete is True, name
        assert "engineVersion" in req.ignoreChanges, name
    db = mon.inputs("backend-db")
    assert db["deletionProtection"] is True
    assert db["backupRetentionPeriod"] >= 7
    assert db["skipFinalSnapshot"] is False and db["finalSnapshotIdentifier"]


def test_purge_data_lifts_every_protection():
    mon = build(purge_data=True)
    for name in ("backend-db", "backend-db-1"):
        req, _ = mon.requests[name]
        assert req.protect is False and req.retainOnDelete is False
    assert mon.inputs("backend-db")["deletionProtection"] is False


def test_app_and_migrator_have_separate_least_privilege_roles():
    mon = build()
    app, migrate = mon.inputs("backend-app"), mon.inputs("backend-migrate")
    assert app["role"] != migrate["role"]
    assert app["role"] == "arn:aws:mock:::backend-app-role"
    assert migrate["role"] == "arn:aws:mock:::backend-migrate-role"
    master = "arn:aws:secretsmanager:::backend-db-master"
    app_secret = "arn:aws:secretsmanager:::backend-app-db"
    cluster = "arn:aws:mock:::backend-db"
    by_resource = lambda sts: {json.dumps(s["Resource"]): sorted(s["Action"]) for s in sts}  # noqa: E731
    app_st = by_resource(statements(mon, "backend-app-policy"))
    mig_st = by_resource(statements(mon, "backend-migrate-policy"))
    for sts in (statements(mon, "backend-app-policy"), statements(mon, "backend-migrate-policy")):
        for st in sts:
            assert st["Effect"] == "Allow" and all("*" not in a for a in st["Action"]), st
            assert st["Resource"] != "*"
    assert app_st[json.dumps(app_secret)] == ["secretsmanager:GetSecretValue"]
    assert json.dumps(master) not in app_st, "the app must not read the master secret"
    assert mig_st[json.dumps(master)] == ["secretsmanager:GetSecretValue"]
    assert mig_st[json.dumps(app_secret)] == ["secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"]
    assert (
        app_st[json.dumps(cluster)]
        == mig_st[json.dumps(cluster)]
        == sorted(
            [
                "rds-data:ExecuteStatement",
                "rds-data:BatchExecuteStatement",
                "rds-data:BeginTransaction",
                "rds-data:CommitTransaction",
                "rds-data:RollbackTransaction",
            ]
        )
    )
    # Each function writes logs to its own group only.
    for fn, prefix in (("backend-app", "backend-app"), ("backend-migrate", "backend-migrate")):
        logs = mon.inputs(fn)["loggingConfig"]["logGroup"]
        assert logs == f"{prefix}-logs-1a2b3c", logs
        log_arn = f"arn:aws:mock:::{prefix}-logs"
        assert by_resource(statements(mon, f"{prefix}-policy"))[json.dumps([log_arn, f"{log_arn}:*"])] == [
            "logs:CreateLogStream",
            "logs:PutLogEvents",
        ]
        assert mon.inputs(f"{prefix}-logs")["retentionInDays"] >= 1
    assert app["environment"]["variables"]["DB_SECRET_ARN"] == app_secret
    inv = json.loads(mon.inputs("backend-migrations")["input"])
    assert inv == {"cluster_arn": cluster, "secret_arn": master, "app_secret_arn": app_secret, "database": "app"}
    assert mon.inputs("backend-migrate")["timeout"] == 900
    trust = json.loads(mon.inputs("backend-app-role")["assumeRolePolicy"])
    assert trust["Statement"] == [
        {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ]


def test_release_tag_only_on_the_app_function():
    mon = build()
    tagged = {
        r.name: mon.inputs(r.name).get("tags")
        for r, _ in mon.requests.values()
        if r.custom and r.type.startswith("aws:") and "tags" in mon.inputs(r.name)
    }
    assert tagged.pop("backend-app") == {**TAGS, "release": "r1"}
    assert tagged and all(t == TAGS for t in tagged.values()), tagged


@pytest.mark.parametrize("platform_dir", ["postgresql"])
def test_program_packages_the_postgresql_set(platform_dir):
    from stacks import program

    mon = use_mocks(AwsMocks())
    pulumi.runtime.set_all_config({"runner:platform": "aws", "runner:account_email_domain": "ops.example.org"})

    @pulumi.runtime.test
    def run():
        dep = program.main("acme.staging")
        return pulumi.Output.all(
            *[c.urn for c in vars(dep.components["backend"]).values() if isinstance(c, pulumi.Resource)]
        )

    run()
    code = mon.inputs("backend-migrate")["code"]
    files = {k: v.text for k, v in code.assets.items() if k.startswith("migrations/")}
    expected = sorted((program.PROJECT_ROOT / "stacks" / "migrations" / platform_dir).glob("*.sql"))
    assert expected and sorted(files) == [f"migrations/{p.name}" for p in expected]
    assert all("INTEGER PRIMARY KEY" not in sql for sql in files.values())
