"""components.aws under Pulumi mocks: the resource graph (parents), the tags on
every taggable resource, and the tenant account's provider on every tenant
resource. (The AWS provider plugin cannot run here; this is all we can test.)"""

from __future__ import annotations

import inspect
import json

import pulumi
import pulumi_aws as aws
import pytest

from components.common import Migration, standard_tags
from tests.unit.aws_mocks import AwsMocks, computed
from tests.unit.conftest import use_mocks

TAGS = standard_tags("acme", "staging", "r1")
# The member account id the mocks give this tenant's account (derived from its email).
ACCOUNT_ID = computed("aws:organizations/account:Account", "account", {"email": "aws+acme-staging@example.com"})[0]


@pytest.fixture
def monitor():
    return use_mocks(AwsMocks())


def aws_class(type_token: str):
    """pulumi_aws class of a type token, e.g. aws:lambda/function:Function."""
    _, module_path, cls = type_token.split(":")
    module = module_path.split("/")[0]
    mod = getattr(aws, module, None) or getattr(aws, f"{module}_")
    return getattr(mod, cls)


def is_taggable(type_token: str) -> bool:
    return "tags" in inspect.signature(aws_class(type_token)._internal_init).parameters


def registered(*components) -> pulumi.Output:
    """Resolves once every child resource of the components is registered, so
    the monitor's record is complete when the assertions run."""
    urns = [c.urn for comp in components for c in vars(comp).values() if isinstance(c, pulumi.Resource)]
    return pulumi.Output.all(*urns)


def check_tree(monitor, component_name: str, token: str):
    """Every resource registered under the component has it as parent (URN
    type ``...$token$Child``) and a name derived from the component's name."""
    comp_req, comp_urn = monitor.requests[component_name]
    assert comp_req.type == token
    children = [(r, u) for r, u in monitor.requests.values() if r.parent == comp_urn]
    assert children, f"{component_name} has no children"
    for req, urn in children:
        assert req.name.startswith(f"{component_name}-"), req.name
        assert urn.split("::")[-2].split("$")[-2] == token, urn
    return children


def check_tags_and_provider(children, provider_urn: str | None):
    taggable = 0
    for req, _ in children:
        if not req.custom:
            continue
        inputs = pulumi.runtime.rpc.deserialize_properties(req.object)
        if req.type.startswith("aws:") and is_taggable(req.type):
            taggable += 1
            assert inputs.get("tags") == TAGS, f"{req.name} ({req.type}) tags {inputs.get('tags')}"
        if provider_urn is not None:
            assert req.provider.startswith(provider_urn + "::"), f"{req.name} uses {req.provider!r}"
    assert taggable, "no taggable resource checked"


@pulumi.runtime.test
def test_cloud_account_member_account_and_assumed_role_provider(monitor):
    from components.aws import CloudAccount, CloudAccountArgs

    account = CloudAccount(
        "account",
        CloudAccountArgs(
            tenant_id="acme",
            environment="staging",
            email="aws+acme-staging@example.com",
            name="acme.staging",
            region="eu-west-1",
            tags=TAGS,
        ),
    )

    def check(args):
        account_id, account_dir, provider_urn = args
        assert account_id == ACCOUNT_ID and account_dir == ""
        children = check_tree(monitor, "account", "runner:aws:CloudAccount")
        types = sorted(r.type for r, _ in children)
        assert types == ["aws:organizations/account:Account", "pulumi:providers:aws", "pulumi:providers:aws"]
        prov_req, _ = monitor.requests["account-provider"]
        prov_inputs = pulumi.runtime.rpc.deserialize_properties(prov_req.object)
        # Provider config reaches the provider as JSON-encoded strings.
        roles = json.loads(prov_inputs["assumeRoles"])
        assert json.loads(prov_inputs["defaultTags"]) == {"tags": TAGS}
        assert roles[0]["roleArn"] == f"arn:aws:iam::{ACCOUNT_ID}:role/OrganizationAccountAccessRole"
        assert prov_inputs["region"] == "eu-west-1"
        acct = pulumi.runtime.rpc.deserialize_properties(monitor.requests["account-account"][0].object)
        assert acct["tags"] == TAGS and acct["email"] == "aws+acme-staging@example.com"

    return pulumi.Output.all(account.account_id, account.account_dir, account.provider.urn, registered(account)).apply(
        lambda a: check(a[:3])
    )


@pulumi.runtime.test
def test_backend_and_frontend_use_tenant_provider_and_tags(monitor):
    from components.aws import Backend, BackendArgs, Frontend, FrontendArgs

    provider = aws.Provider("tenant-provider", region="eu-west-1")
    migrations = [Migration("001_a.sql", "CREATE TABLE a(x);"), Migration("002_b.sql", "CREATE TABLE b(x);")]
    common = dict(
        provider=provider, tenant_id="acme", environment="staging", release="r1", app_version="1.0.0", tags=TAGS
    )
    backend = Backend("backend", BackendArgs(migrations=migrations, app_files={"app.py": "x"}, **common))
    frontend = Frontend(
        "frontend",
        FrontendArgs(
            tenant_name="Acme",
            domain="acme.example.com",
            backend_url=backend.backend_url,
            schema_version=backend.schema_version,
            **common,
        ),
        pulumi.ResourceOptions(depends_on=[backend]),
    )

    def check(args):
        provider_urn, backend_url, schema, frontend_url = args
        assert backend_url == "https://backend-api.execute-api.example"
        assert schema == "002_b"
        assert frontend_url == "https://frontend-cdn.cloudfront.net/"
        back = check_tree(monitor, "backend", "runner:aws:Backend")
        front = check_tree(monitor, "frontend", "runner:aws:Frontend")
        check_tags_and_provider(back, provider_urn)
        check_tags_and_provider(front, provider_urn)
        types = {r.type for r, _ in back}
        assert {
            "aws:lambda/function:Function",
            "aws:apigatewayv2/api:Api",
            "aws:rds/cluster:Cluster",
            "aws:lambda/invocation:Invocation",
        } <= types
        inv = pulumi.runtime.rpc.deserialize_properties(monitor.requests["backend-migrations"][0].object)
        from components.common import migrations_hash

        assert inv["triggers"] == {"migrations": migrations_hash(migrations)}
        # The app goes live after the migrations ran.
        app_req, _ = monitor.requests["backend-app"]
        assert monitor.requests["backend-migrations"][1] in app_req.dependencies
        # The database is retained on destroy unless purge_data.
        assert monitor.requests["backend-db"][0].retainOnDelete is True
        ftypes = {r.type for r, _ in front}
        assert {
            "aws:s3/bucket:Bucket",
            "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
            "aws:cloudfront/originAccessControl:OriginAccessControl",
            "aws:cloudfront/distribution:Distribution",
            "aws:lambda/invocation:Invocation",
        } <= ftypes
        dist = pulumi.runtime.rpc.deserialize_properties(monitor.requests["frontend-cdn"][0].object)
        assert dist["origins"][0]["originAccessControlId"] == "frontend-oac-id"
        block = pulumi.runtime.rpc.deserialize_properties(monitor.requests["frontend-site-private"][0].object)
        assert all(
            block[k] for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
        )
        inval = pulumi.runtime.rpc.deserialize_properties(monitor.requests["frontend-invalidation"][0].object)
        assert set(inval["triggers"]) == {"content", "release"}
        # Frontend waits for the whole backend: the SDK expands depends_on a
        # component into every resource of it.
        deps = set(monitor.requests["frontend"][0].dependencies)
        assert {u for r, u in back if r.custom} <= deps

    return pulumi.Output.all(
        provider.urn, backend.backend_url, backend.schema_version, frontend.frontend_url, registered(backend, frontend)
    ).apply(lambda a: check(a[:4]))


@pulumi.runtime.test
def test_purge_data_drops_retention(monitor):
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
            purge_data=True,
        ),
    )

    def check(_):
        assert monitor.requests["backend-db"][0].retainOnDelete is False
        assert monitor.requests["backend-db-1"][0].retainOnDelete is False

    return registered(backend).apply(check)


@pulumi.runtime.test
def test_git_repository_is_codecommit(monitor):
    from components.aws import GitRepository, GitRepositoryArgs

    repo = GitRepository("repo-backend", GitRepositoryArgs(service="backend", tags={"managed-by": "runner"}))

    def check(url):
        assert url == "https://git-codecommit.example/v1/repos/backend"
        children = check_tree(monitor, "repo-backend", "runner:aws:GitRepository")
        assert [r.type for r, _ in children] == ["aws:codecommit/repository:Repository"]

    return repo.url.apply(check)
