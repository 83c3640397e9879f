"""stacks.program on the aws platform under mocks that behave like the
provider where mocks can (tests/unit/aws_mocks.py): several tenants and
environments, previews with unknown ids, exact output names (#21.1, #21.6,
#21.8)."""

from __future__ import annotations

import pulumi
import pytest

from stacks import program
from tests.unit.aws_mocks import AwsMocks
from tests.unit.conftest import use_mocks

DOMAIN = "ops.example.org"
OUTPUTS = {
    "tenant",
    "environment",
    "platform",
    "app_version",
    "release",
    "account_id",
    "account_dir",
    "git_urls",
    "backend_url",
    "database_path",
    "schema_version",
    "site_dir",
    "frontend_url",
    "health_checks",
}


def run_stack(stack: str, *, preview: bool = False, **config: str):
    """Run the program for ``stack``; return the monitor and the resolved
    outputs (None for an unknown one)."""
    mon = use_mocks(AwsMocks(preview=preview), stack, preview=preview)
    cfg = {"platform": "aws", "account_email_domain": DOMAIN, "release": "r7", **config}
    pulumi.runtime.set_all_config({f"runner:{k}": v for k, v in cfg.items() if v is not None})
    result: dict = {}

    @pulumi.runtime.test
    def run():
        dep = program.main(stack)
        result["names"] = set(dep.outputs)
        urns = [
            c.urn for comp in dep.components.values() for c in vars(comp).values() if isinstance(c, pulumi.Resource)
        ]

        async def collect(_):
            for key, value in dep.outputs.items():
                out = pulumi.Output.from_input(value)
                result[key] = (await out.future()) if await out.is_known() else None

        return pulumi.Output.all(*urns).apply(collect)

    run()
    return mon, result


STACKS = [
    "customer-1.staging",
    "customer-1.production",
    "customer-2.staging",
    "testing",
    "staging",
    f"{'t' * 40}.{'e' * 40}",
    f"{'t' * 40}.{'e' * 39}f",
]


def test_one_account_per_tenant_and_environment_without_collisions():
    emails, names = {}, {}
    for stack in STACKS:
        mon, outs = run_stack(stack)
        assert outs["names"] == OUTPUTS, stack
        acct = mon.inputs("account-account")
        assert len(acct["email"]) <= 64 and len(acct["name"]) <= 50, acct
        assert acct["email"].endswith(f"@{DOMAIN}")
        emails[acct["email"]] = stack
        names[acct["name"]] = stack
        assert outs["account_id"].isdigit() and len(outs["account_id"]) == 12
    assert len(emails) == len(STACKS) and len(names) == len(STACKS), (emails, names)
    assert "aws+customer-1-production@ops.example.org" in emails
    assert "aws+customer-1-staging@ops.example.org" in emails
    assert "aws+untenanted-testing@ops.example.org" in emails


def test_account_under_ou_on_an_explicit_management_provider_without_release_tag():
    mon, _ = run_stack("customer-1.staging", organizational_unit_id="ou-ab12-cdefgh34", region="eu-west-1")
    req, _ = mon.requests["account-account"]
    acct = mon.inputs("account-account")
    assert acct["parentId"] == "ou-ab12-cdefgh34"
    assert acct["closeOnDeletion"] is False and req.retainOnDelete is True
    assert {"email", "roleName", "iamUserAccessToBilling"} <= set(req.ignoreChanges)
    assert "release" not in acct["tags"]
    mgmt_urn = mon.requests["management"][1]
    assert req.provider.startswith(mgmt_urn + "::"), req.provider
    assert mon.inputs("management")["region"] == "eu-west-1"
    for prov in ("account-provider", "account-provider-us-east-1"):
        assert "release" not in mon.inputs(prov)["defaultTags"]
    assert mon.inputs("account-provider")["region"] == "eu-west-1"
    assert mon.inputs("account-provider-us-east-1")["region"] == "us-east-1"


def test_shared_repositories_on_the_management_provider():
    mon, _ = run_stack("shared", region="eu-west-1")
    mgmt_urn = mon.requests["management"][1]
    for name in ("repo-backend-repo", "repo-frontend-repo"):
        req, _ = mon.requests[name]
        assert req.provider.startswith(mgmt_urn + "::")
        assert "release" not in mon.inputs(name)["tags"]


ADOPTED = '["staging=210987654321", "production=310987654321"]'


@pytest.mark.parametrize(
    ("stack", "account"), [("customer-1.staging", "210987654321"), ("customer-1.production", "310987654321")]
)
def test_adopted_account_per_environment_is_not_created_and_its_role_is_assumed(stack, account):
    mon, outs = run_stack(stack, account_ids=ADOPTED)
    assert not mon.of_type("aws:organizations/account:Account")
    assert outs["account_id"] == account
    for prov in ("account-provider", "account-provider-us-east-1"):
        assert f'"roleArn":"arn:aws:iam::{account}:role/OrganizationAccountAccessRole"' in mon.inputs(prov)[
            "assumeRoles"
        ].replace(" ", "")


def test_environment_without_adopted_account_creates_one():
    mon, _ = run_stack("customer-1.testing", account_ids='["staging=210987654321"]')
    assert mon.inputs("account-account")["email"] == "aws+customer-1-testing@ops.example.org"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"account_email_domain": None}, "account_email_domain is required on the aws platform"),
        ({"account_email_domain": "x" * 41 + ".org"}, "at most 40 characters"),
        ({"db_password": "hunter2"}, "db_password is not used on the aws platform"),
        ({"account_ids": '["staging=12345"]'}, "'staging=12345' is not '<environment>=<12-digit account id>'"),
    ],
)
def test_aws_config_errors(config, message):
    with pytest.raises(ValueError, match=message):
        run_stack("customer-1.staging", **config)


def test_preview_with_unknown_ids_registers_everything():
    """A first preview: every id and computed output is unknown."""
    mon, outs = run_stack("customer-1.staging", preview=True, domain="shop.example.org", hosted_zone_id="Z123")
    assert outs["names"] == OUTPUTS
    assert outs["backend_url"] is None and outs["frontend_url"] is None and outs["account_id"] is None
    assert outs["tenant"] == "customer-1"
    created = {r.name for r, _ in mon.requests.values()}
    assert {
        "account-account",
        "backend-db",
        "backend-migrate",
        "backend-app",
        "frontend-cdn",
        "frontend-cert",
        "frontend-cert-validation",
        "frontend-cert-issued",
        "frontend-alias-a",
        "frontend-alias-aaaa",
        "frontend-invalidate",
        "frontend-invalidation",
        "backend-migrations",
    } <= created


def test_exact_resource_types_of_a_tenant_stack():
    """Exact, not a subset: a resource added or lost shows here."""
    mon, _ = run_stack("customer-1.staging")
    types = sorted(r.type for r, _ in mon.requests.values() if r.type.startswith("aws:"))
    assert types == sorted(
        [
            "aws:organizations/account:Account",
            "aws:rds/cluster:Cluster",
            "aws:rds/clusterInstance:ClusterInstance",
            "aws:secretsmanager/secret:Secret",
            "aws:iam/role:Role",
            "aws:iam/role:Role",
            "aws:iam/role:Role",
            "aws:iam/rolePolicy:RolePolicy",
            "aws:iam/rolePolicy:RolePolicy",
            "aws:iam/rolePolicy:RolePolicy",
            "aws:cloudwatch/logGroup:LogGroup",
            "aws:cloudwatch/logGroup:LogGroup",
            "aws:cloudwatch/logGroup:LogGroup",
            "aws:lambda/function:Function",
            "aws:lambda/function:Function",
            "aws:lambda/function:Function",
            "aws:lambda/invocation:Invocation",
            "aws:lambda/invocation:Invocation",
            "aws:lambda/permission:Permission",
            "aws:apigatewayv2/api:Api",
            "aws:s3/bucket:Bucket",
            "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
            "aws:s3/bucketPolicy:BucketPolicy",
            "aws:s3/bucketObjectv2:BucketObjectv2",
            "aws:cloudfront/originAccessControl:OriginAccessControl",
            "aws:cloudfront/distribution:Distribution",
        ]
    )
    providers = sorted(r.name for r, _ in mon.requests.values() if r.type == "pulumi:providers:aws")
    assert providers == ["account-provider", "account-provider-us-east-1", "management"]


def test_postgresql_and_sqlite_migration_sets_have_the_same_versions():
    root = program.PROJECT_ROOT / "stacks" / "migrations"
    sqlite = [p.stem for p in sorted(root.glob("*.sql"))]
    postgres = [p.stem for p in sorted((root / program.POSTGRESQL_MIGRATIONS).glob("*.sql"))]
    assert sqlite and postgres == sqlite
