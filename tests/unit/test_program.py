"""stacks.program under Pulumi mocks, for both platforms: what each kind of
stack builds, the one CloudAccount per tenant stack, repositories only in
`shared`, the frontend ordered after the backend, and StackReferences
limited to `shared`."""

from __future__ import annotations

import sys

import pulumi
import pytest

from stacks import program
from tests.unit.conftest import RecordingMonitor, use_mocks


class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        outs = dict(args.inputs)
        outs.setdefault("arn", f"arn:aws:mock:::{args.name}")
        outs.setdefault("name", args.name)
        if args.typ == "pulumi:pulumi:StackReference":
            outs["outputs"] = {"git_urls": {"backend": "u-backend", "frontend": "u-frontend"}}
        elif args.typ == "aws:rds/cluster:Cluster":
            outs["masterUserSecrets"] = [{"secretArn": "arn:secret"}]
        elif args.typ == "aws:apigatewayv2/api:Api":
            outs.update(apiEndpoint="https://api.example", executionArn="arn:exec")
        elif args.typ == "aws:cloudfront/distribution:Distribution":
            outs["domainName"] = "d1.cloudfront.net"
        elif args.typ == "aws:codecommit/repository:Repository":
            outs["cloneUrlHttp"] = f"https://codecommit/{outs['repositoryName']}"
        elif args.typ.startswith("pulumi-python:dynamic/local:"):
            kind = args.typ.rsplit(":", 1)[1]
            if kind == "BareRepo":
                outs["url"] = "file://" + outs["path"]
            elif kind == "Database":
                versions = [m["version"] for m in outs["migrations"]]
                outs["schema_version"] = versions[-1] if versions else ""
        rid = "123456789012" if args.typ == "aws:organizations/account:Account" else f"{args.name}-id"
        return rid, outs

    def call(self, args):
        return {}


def setup(stack: str, **config: str) -> RecordingMonitor:
    mon = use_mocks(Mocks(), stack)
    pulumi.runtime.set_all_config({f"runner:{k}": v for k, v in config.items()})
    return mon


def settled(deployment: program.Deployment) -> pulumi.Output:
    """Resolves once every resource of the deployment is registered."""
    urns = [
        c.urn for comp in deployment.components.values() for c in vars(comp).values() if isinstance(c, pulumi.Resource)
    ]
    urns += [c.urn for c in deployment.components.values()]
    return pulumi.Output.all(*urns)


# -- stack names --------------------------------------------------------------


@pytest.mark.parametrize("name", ["shared", "acme.staging", "customer-1.production", "testing"])
def test_valid_stack_names(name):
    program.parse_stack(name)


@pytest.mark.parametrize(
    "name",
    [
        "Acme.staging",
        "acme.staging.x",
        "a.staging",
        "acme-.staging",
        "acme/staging",
        "acme.",
        ".staging",
        "-acme.staging",
        "acme_x.staging",
    ],
)
def test_invalid_stack_names_are_refused(name):
    with pytest.raises(program.StackNameError, match="invalid stack name"):
        program.parse_stack(name)


def test_untenanted_stack():
    target = program.parse_stack("testing")
    assert (target.tenant_id, target.environment, target.tenanted) == ("untenanted", "testing", False)


def test_relative_platform_root_resolves_against_project_not_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert program.resolve(".runner/platform") == program.PROJECT_ROOT / ".runner" / "platform"
    assert (program.PROJECT_ROOT / "Pulumi.yaml").is_file()


# -- stack references ---------------------------------------------------------


@pulumi.runtime.test
def test_stack_reference_to_another_tenant_is_refused():
    setup("acme.staging")
    with pytest.raises(program.ForbiddenStackReference, match="only reference 'shared'"):
        program.stack_reference("globex.staging")
    with pytest.raises(program.ForbiddenStackReference):
        program.stack_reference("acme.production")


# -- shared -------------------------------------------------------------------


@pytest.mark.parametrize("platform", ["local", "aws"])
def test_shared_creates_one_repository_per_service(platform, tmp_path):
    mon = setup("shared", platform=platform, platform_root=str(tmp_path))

    @pulumi.runtime.test
    def run():
        dep = program.main("shared")

        def check(_):
            repos = mon.of_type(f"runner:{platform}:GitRepository")
            assert sorted(r.name for r, _ in repos) == ["repo-backend", "repo-frontend"]
            assert not mon.of_type(f"runner:{platform}:CloudAccount")
            assert not mon.of_type("pulumi:pulumi:StackReference")
            assert set(dep.outputs) == {"git_urls", "release"}

        return pulumi.Output.all(dep.outputs["git_urls"], settled(dep)).apply(check)

    run()


# -- tenant stacks -------------------------------------------------------------


@pytest.mark.parametrize("platform", ["local", "aws"])
def test_tenant_stack_graph(platform, tmp_path):
    mon = setup(
        "acme.staging",
        platform=platform,
        platform_root=str(tmp_path),
        release="r9",
        tenant_name="Acme Corp",
        app_version="2.0.0",
        account_email_domain="ops.example.org",
    )

    @pulumi.runtime.test
    def run():
        dep = program.main("acme.staging")
        outs = dep.outputs

        def check(values):
            git_urls, health = values[:2]
            accounts = mon.of_type(f"runner:{platform}:CloudAccount")
            assert len(accounts) == 1, "exactly one CloudAccount per tenant stack"
            assert not mon.of_type(f"runner:{platform}:GitRepository"), "repositories live only in shared"
            refs = mon.of_type("pulumi:pulumi:StackReference")
            assert len(refs) == 1
            ref_request = refs[0][0]
            assert ref_request.id == "organization/runner/shared"
            assert git_urls == {"backend": "u-backend", "frontend": "u-frontend"}
            # Frontend after Backend: depends_on the component expands to all its resources.
            backend_urn = mon.requests["backend"][1]
            backend_children = {
                u for r, u in mon.requests.values() if getattr(r, "custom", False) and r.parent == backend_urn
            }
            assert backend_children and backend_children <= set(mon.requests["frontend"][0].dependencies)
            # Backend and Frontend hang off the account (its outputs feed them).
            assert set(outs) >= {
                "account_id",
                "account_dir",
                "git_urls",
                "backend_url",
                "database_path",
                "site_dir",
                "frontend_url",
                "release",
                "health_checks",
            }
            assert outs["release"] == "r9" and outs["tenant"] == "acme" and outs["environment"] == "staging"
            kinds = {h["name"]: h for h in health}
            if platform == "local":
                assert kinds["site"]["kind"] == "file_contains" and kinds["site"]["text"] == "r9"
                assert kinds["site"]["path"].endswith("/accounts/acme/staging/frontend/current/index.html")
                assert kinds["database"]["kind"] == "sqlite_query"
                n = len(list((program.PROJECT_ROOT / "stacks" / "migrations").glob("*.sql")))
                assert kinds["database"]["expect"] == str(n)
                site = pulumi.runtime.rpc.deserialize_properties(mon.requests["frontend-site"][0].object)
                assert site["values"]["tenant_name"] == "Acme Corp" and site["app_version"] == "2.0.0"
            else:
                assert kinds["backend"] == {
                    "name": "backend",
                    "kind": "http",
                    "url": "https://api.example",
                    "expect_status": 200,
                }
                provider = mon.requests["account-provider"][1]
                tenant_resources = [
                    r
                    for r, _ in mon.requests.values()
                    if getattr(r, "custom", False)
                    and r.type.startswith("aws:")
                    and r.type != "aws:organizations/account:Account"
                ]
                assert tenant_resources
                for r in tenant_resources:
                    assert r.provider.startswith(provider + "::"), f"{r.name} not on the tenant provider"

        return pulumi.Output.all(outs["git_urls"], outs["health_checks"], settled(dep)).apply(check)

    run()


def test_untenanted_stack_uses_untenanted_paths(tmp_path):
    mon = setup("testing", platform="local", platform_root=str(tmp_path))

    @pulumi.runtime.test
    def run():
        dep = program.main("testing")

        def check(values):
            account_dir = values[0]
            assert account_dir == str(tmp_path / "accounts" / "untenanted")
            site = pulumi.runtime.rpc.deserialize_properties(mon.requests["frontend-site"][0].object)
            assert site["values"]["tenant_name"] == "Untenanted"

        return pulumi.Output.all(dep.outputs["account_dir"], settled(dep)).apply(check)

    run()


def test_local_platform_does_not_import_pulumi_aws(tmp_path):
    import subprocess

    code = (
        "import sys, pulumi\n"
        "from stacks import program\n"
        "program.platform_module('local')\n"
        "assert 'pulumi_aws' not in sys.modules, 'local platform imported pulumi_aws'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
