"""Registry rules of the aws platform (#21.1, #21.7), against this project's
own Pulumi.yaml: exit 2 with file:line before anything runs."""

from __future__ import annotations

import textwrap

from click.testing import CliRunner

from runner import cli

HEAD = """\
defaults:
  platform: aws
environments:
  - name: staging
  - name: production
tenants:
"""  # the first tenant starts on line 7


def validate(tmp_path, tenants: str):
    path = tmp_path / "tenants.yaml"
    path.write_text(HEAD + textwrap.dedent(tenants), encoding="utf-8")
    result = CliRunner().invoke(cli.main, ["tenants", "validate", "--registry", str(path)])
    return result.exit_code, result.output


def test_aws_without_account_email_domain_is_exit_2_with_line(tmp_path):
    code, out = validate(tmp_path, "  - id: shop-1\n    environments: [staging]\n")
    assert code == 2, out
    assert "tenants.yaml:7: tenants[0].id: the aws platform needs account_email_domain" in out


def test_aws_with_bad_account_email_domain_names_its_line(tmp_path):
    code, out = validate(
        tmp_path, "  - id: shop-1\n    environments: [staging]\n    config:\n      account_email_domain: Example\n"
    )
    assert code == 2, out
    assert (
        "tenants.yaml:10: tenants[0].config.account_email_domain: account_email_domain 'Example' must be "
        "a lower-case domain name"
    ) in out


def test_aws_refuses_db_password(tmp_path):
    code, out = validate(
        tmp_path,
        "  - id: shop-1\n    environments: [staging]\n"
        "    config: {account_email_domain: ops.example.org}\n"
        "    secrets: {db_password: {env: PW}}\n",
    )
    assert code == 2, out
    assert "tenants.yaml:10: tenants[0].secrets.db_password: db_password is not used on the aws platform" in out


def test_aws_with_domain_is_valid_and_local_needs_none(tmp_path):
    code, out = validate(
        tmp_path,
        "  - id: shop-1\n    environments: [staging, production]\n"
        "    config: {account_email_domain: ops.example.org, organizational_unit_id: ou-ab12-cdefgh34,"
        " account_ids: [staging=123456789012, production=223456789012]}\n"
        "  - id: shop-2\n    environments: [staging]\n"
        "    config: {platform: local}\n"
        "    secrets: {db_password: {env: PW}}\n",
    )
    assert code == 0, out


def test_adopted_accounts_are_checked(tmp_path):
    code, out = validate(
        tmp_path,
        "  - id: shop-1\n    environments: [staging, production]\n"
        "    config:\n      account_email_domain: ops.example.org\n"
        "      account_ids: [staging=123456789012, testing=223456789012, production=1]\n"
        "  - id: shop-2\n    environments: [staging]\n"
        "    config:\n      account_email_domain: ops.example.org\n"
        "      account_ids: [staging=123456789012]\n",
    )
    assert code == 2, out
    assert (
        "tenants.yaml:11: tenants[0].config.account_ids[1]: account_ids entry 'testing=223456789012': "
        "the tenant has no environment 'testing'" in out
    )
    assert "tenants.yaml:11: tenants[0].config.account_ids[2]: account_ids entry 'production=1': expected" in out
    assert "tenants.yaml:16: tenants[1].config.account_ids[0]: account 123456789012 is adopted twice" in out


def test_untenanted_aws_deployment_needs_the_domain_in_defaults(tmp_path):
    import pytest

    from runner.registry import SelectionError, load_registry, select_targets

    path = tmp_path / "tenants.yaml"
    path.write_text(
        HEAD + "  - id: shop-1\n    environments: [staging]\n    config: {account_email_domain: ops.example.org}\n",
        encoding="utf-8",
    )
    registry = load_registry(str(path))
    with pytest.raises(SelectionError, match="defaults, which lack account_email_domain"):
        select_targets(registry, untenanted=True, envs=["staging"])
    path.write_text(
        HEAD.replace("platform: aws", "platform: aws\n  account_email_domain: ops.example.org")
        + "  - id: shop-1\n    environments: [staging]\n",
        encoding="utf-8",
    )
    assert [t.stack for t in select_targets(load_registry(str(path)), untenanted=True, envs=["staging"]).targets] == [
        "staging"
    ]
