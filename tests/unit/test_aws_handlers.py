"""The aws platform's invalidation handler run against moto's CloudFront
(#21.3, #21.8): a rollback A -> B -> A issues three distinct invalidations."""

from __future__ import annotations

import hashlib
import importlib.util
import uuid
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from moto import mock_aws

HANDLERS = Path(__file__).resolve().parents[2] / "components" / "aws" / "handlers"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_{uuid.uuid4().hex}", HANDLERS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cloudfront(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(var, "testing")
    with mock_aws():
        client = boto3.client("cloudfront")
        dist = client.create_distribution(
            DistributionConfig={
                "CallerReference": "site",
                "Comment": "acme staging",
                "Enabled": True,
                "Origins": {
                    "Quantity": 1,
                    "Items": [
                        {
                            "Id": "site",
                            "DomainName": "site.s3.amazonaws.com",
                            "S3OriginConfig": {"OriginAccessIdentity": ""},
                        }
                    ],
                },
                "DefaultCacheBehavior": {
                    "TargetOriginId": "site",
                    "ViewerProtocolPolicy": "redirect-to-https",
                    "CachePolicyId": "658327ea-f89d-4fab-a63d-7e88639e58f6",
                },
            }
        )["Distribution"]["Id"]
        yield client, dist


def test_rollback_a_b_a_issues_three_invalidations(cloudfront):
    client, dist = cloudfront
    handler = load("invalidate").handler
    pages = ["<p>release A</p>", "<p>release B</p>", "<p>release A</p>"]
    ids = []
    for n, page in enumerate(pages):
        event = {"distribution_id": dist, "paths": ["/*"], "reference": hashlib.sha256(page.encode()).hexdigest()}
        ids.append(handler(event, SimpleNamespace(aws_request_id=f"req-{n}"))["invalidation_id"])
    listed = client.list_invalidations(DistributionId=dist)["InvalidationList"].get("Items", [])
    refs = [
        client.get_invalidation(DistributionId=dist, Id=i)["Invalidation"]["InvalidationBatch"]["CallerReference"]
        for i in ids
    ]
    assert len(set(ids)) == 3 and len(listed) == 3
    assert len(set(refs)) == 3, f"CallerReference repeated: {refs}"
    batch = client.get_invalidation(DistributionId=dist, Id=ids[0])["Invalidation"]["InvalidationBatch"]
    assert batch["Paths"]["Items"] == ["/*"]


def test_same_request_id_still_unique(cloudfront):
    """A Lambda retry of one request must not be deduplicated into nothing new either."""
    client, dist = cloudfront
    mod = load("invalidate")
    event = {"distribution_id": dist, "paths": ["/*"], "reference": "a" * 64}
    ctx = SimpleNamespace(aws_request_id="same")
    assert mod.caller_reference(event, ctx) != mod.caller_reference(event, ctx)
