"""Pulumi mocks that behave like the AWS provider where mocks can: outputs
under the provider's exact (camelCase) names only, and in a preview unknown
ids and unknown computed outputs (only the inputs are known then)."""

from __future__ import annotations

import hashlib
import json

import pulumi
from pulumi.runtime.rpc import UNKNOWN


def computed(typ: str, name: str, inputs: dict) -> tuple[str, dict]:
    """The id and the computed outputs of a created resource (camelCase)."""
    rid = f"{name}-id"
    outs: dict = {"arn": f"arn:aws:mock:::{name}"}
    if typ == "aws:organizations/account:Account":
        rid = str(int(hashlib.sha256(inputs["email"].encode()).hexdigest(), 16) % 10**12).zfill(12)
    elif typ == "aws:rds/cluster:Cluster":
        outs["masterUserSecrets"] = [{"secretArn": f"arn:aws:secretsmanager:::{name}-master"}]
    elif typ == "aws:apigatewayv2/api:Api":
        outs.update(apiEndpoint=f"https://{name}.execute-api.example", executionArn=f"arn:exec:{name}")
    elif typ == "aws:cloudfront/distribution:Distribution":
        outs.update(domainName=f"{name}.cloudfront.net", hostedZoneId="Z2FDTNDATAQYW2")
    elif typ == "aws:s3/bucket:Bucket":
        outs.update(bucket=f"{name}-bucket", bucketRegionalDomainName=f"{name}.s3.example")
    elif typ == "aws:codecommit/repository:Repository":
        outs["cloneUrlHttp"] = f"https://git-codecommit.example/v1/repos/{inputs['repositoryName']}"
    elif typ == "aws:lambda/function:Function":
        outs["name"] = f"{name}-fn"
    elif typ == "aws:iam/role:Role":
        outs["name"] = f"{name}-role"
    elif typ == "aws:route53/record:Record":
        outs["fqdn"] = str(inputs.get("name", "")).rstrip(".")
    elif typ == "aws:cloudwatch/logGroup:LogGroup":
        outs["name"] = inputs.get("name") or f"{name}-1a2b3c"  # autonamed by the provider
    elif typ == "aws:secretsmanager/secret:Secret":
        outs["arn"] = f"arn:aws:secretsmanager:::{name}"
    elif typ == "aws:acm/certificate:Certificate":
        outs["domainValidationOptions"] = [
            {
                "domainName": inputs["domainName"],
                "resourceRecordName": f"_x.{inputs['domainName']}.",
                "resourceRecordType": "CNAME",
                "resourceRecordValue": "_y.acm-validations.aws.",
            }
        ]
    return rid, outs


class AwsMocks(pulumi.runtime.Mocks):
    def __init__(self, preview: bool = False):
        self.preview = preview

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        outs = dict(args.inputs)
        if args.typ == "pulumi:pulumi:StackReference":
            outs["outputs"] = {"git_urls": {"backend": "u-backend", "frontend": "u-frontend"}}
            return args.name, outs
        rid, extra = computed(args.typ, args.name, args.inputs)
        if self.preview and args.typ.startswith("aws:"):
            return "", {**outs, **{k: UNKNOWN for k in extra}}
        return rid, {**outs, **extra}

    def call(self, args):
        return {}


def policy(doc) -> dict:
    """A policy document input, parsed (the components pass JSON strings)."""
    return json.loads(doc) if isinstance(doc, str) else doc
