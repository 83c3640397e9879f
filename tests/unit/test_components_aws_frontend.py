"""components.aws.Frontend under provider-like mocks: TLS and custom domain
(#21.5), the invalidation function's timeout, logs and policy (#21.3), the
release tag only on the page (#21.6)."""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from components.common import resource_tags
from tests.unit.aws_mocks import AwsMocks
from tests.unit.conftest import use_mocks

TAGS = resource_tags("acme", "staging")


def build(**extra):
    mon = use_mocks(AwsMocks())
    result: dict = {}

    @pulumi.runtime.test
    def run():
        from components.aws import Frontend, FrontendArgs

        provider = aws.Provider("tenant", region="eu-west-1")
        cert_provider = aws.Provider("tenant-us-east-1", region="us-east-1")
        dns_provider = aws.Provider("management", region="eu-west-1")
        fe = Frontend(
            "frontend",
            FrontendArgs(
                provider=provider,
                cert_provider=cert_provider,
                dns_provider=dns_provider,
                tenant_id="acme",
                tenant_name="Acme",
                environment="staging",
                domain="shop.example.org",
                release="r1",
                app_version="1",
                tags=TAGS,
                backend_url="https://api",
                schema_version="002",
                **extra,
            ),
        )
        res = [r for r in vars(fe).values() if isinstance(r, pulumi.Resource)]
        res += [r for r in fe.alias_records]
        return pulumi.Output.all(
            fe.frontend_url, *[r.urn for r in res], provider.urn, cert_provider.urn, dns_provider.urn
        ).apply(lambda a: result.update(url=a[0], providers=a[-3:]))

    run()
    return mon, result


def uses(mon, name: str, provider_urn: str) -> bool:
    return mon.requests[name][0].provider.startswith(provider_urn + "::")


def test_without_domain_the_cloudfront_default():
    mon, res = build()
    dist = mon.inputs("frontend-cdn")
    assert dist["viewerCertificate"] == {"cloudfrontDefaultCertificate": True}
    assert not dist.get("aliases")
    assert not mon.of_type("aws:acm/certificate:Certificate") and not mon.of_type("aws:route53/record:Record")
    assert res["url"] == "https://frontend-cdn.cloudfront.net/"


def test_domain_with_zone_certificate_aliases_tls12_and_dns():
    mon, res = build(custom_domain="shop.example.org", hosted_zone_id="Z0123")
    tenant, us_east_1, management = res["providers"]
    cert = mon.inputs("frontend-cert")
    assert cert["domainName"] == "shop.example.org" and cert["validationMethod"] == "DNS"
    assert uses(mon, "frontend-cert", us_east_1) and uses(mon, "frontend-cert-issued", us_east_1)
    rec = mon.inputs("frontend-cert-validation")
    assert rec["zoneId"] == "Z0123" and rec["type"] == "CNAME" and rec["name"] == "_x.shop.example.org."
    assert rec["records"] == ["_y.acm-validations.aws."]
    assert uses(mon, "frontend-cert-validation", management)
    assert mon.inputs("frontend-cert-issued")["validationRecordFqdns"] == ["_x.shop.example.org"]
    dist = mon.inputs("frontend-cdn")
    assert dist["aliases"] == ["shop.example.org"]
    assert dist["viewerCertificate"] == {
        "acmCertificateArn": "arn:aws:mock:::frontend-cert",
        "sslSupportMethod": "sni-only",
        "minimumProtocolVersion": "TLSv1.2_2021",
    }
    assert uses(mon, "frontend-cdn", tenant)
    for kind in ("a", "aaaa"):
        alias = mon.inputs(f"frontend-alias-{kind}")
        assert alias["type"] == kind.upper() and alias["name"] == "shop.example.org" and alias["zoneId"] == "Z0123"
        assert alias["aliases"] == [
            {"name": "frontend-cdn.cloudfront.net", "zoneId": "Z2FDTNDATAQYW2", "evaluateTargetHealth": False}
        ]
        assert uses(mon, f"frontend-alias-{kind}", management)
    assert res["url"] == "https://shop.example.org/"


def test_domain_without_zone_certificate_but_no_records():
    mon, res = build(custom_domain="shop.example.org")
    assert mon.inputs("frontend-cdn")["aliases"] == ["shop.example.org"]
    assert "validationRecordFqdns" not in mon.inputs("frontend-cert-issued")
    assert not mon.of_type("aws:route53/record:Record")
    assert res["url"] == "https://frontend-cdn.cloudfront.net/"


def test_invalidation_function_timeout_logs_and_policy():
    mon, _ = build()
    fn = mon.inputs("frontend-invalidate")
    assert 30 <= fn["timeout"] <= 300
    assert fn["role"] == "arn:aws:mock:::frontend-invalidate-role"
    assert fn["loggingConfig"]["logGroup"] == "frontend-invalidate-logs-1a2b3c"
    doc = json.loads(mon.inputs("frontend-invalidate-policy")["policy"])
    logs = "arn:aws:mock:::frontend-invalidate-logs"
    assert sorted(doc["Statement"], key=lambda s: s["Action"][0]) == [
        {"Effect": "Allow", "Action": ["cloudfront:CreateInvalidation"], "Resource": "arn:aws:mock:::frontend-cdn"},
        {"Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"], "Resource": [logs, f"{logs}:*"]},
    ]
    inv = json.loads(mon.inputs("frontend-invalidation")["input"])
    assert inv["distribution_id"] == "frontend-cdn-id" and inv["paths"] == ["/*"]


def test_release_tag_only_on_the_page():
    mon, _ = build(custom_domain="shop.example.org", hosted_zone_id="Z0123")
    tagged = {
        r.name: mon.inputs(r.name)["tags"]
        for r, _ in mon.requests.values()
        if r.custom and "tags" in mon.inputs(r.name)
    }
    assert tagged.pop("frontend-index") == {**TAGS, "release": "r1"}
    assert tagged and all(t == TAGS for t in tagged.values()), tagged
