from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pulumi
import pulumi_aws as aws

from components.aws.backend import LAMBDA_TRUST
from components.common import DEFAULT_TEMPLATE

HANDLERS = Path(__file__).parent / "handlers"
CACHING_OPTIMIZED = "658327ea-f89d-4fab-a63d-7e88639e58f6"  # AWS managed cache policy


@dataclass(frozen=True)
class FrontendArgs:
    provider: pulumi.ProviderResource
    tenant_id: str
    tenant_name: str
    environment: str
    domain: str
    release: str
    app_version: str
    tags: dict[str, str]
    backend_url: pulumi.Input[str] = ""
    schema_version: pulumi.Input[str] = ""
    template: str = DEFAULT_TEMPLATE


class Frontend(pulumi.ComponentResource):
    """Private S3 bucket, CloudFront distribution with origin access control,
    the rendered ``index.html``, and a cache invalidation after each change:
    an invalidation function in the tenant account run by an
    ``aws.lambda_.Invocation`` triggered by the page's content hash (the
    provider has no invalidation resource). ``site_dir`` is local-only and
    empty here."""

    site_dir: pulumi.Output[str]
    frontend_url: pulumi.Output[str]

    def __init__(self, name: str, args: FrontendArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("runner:aws:Frontend", name, None, opts)

        def child(**extra) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, provider=args.provider, **extra)

        tags = args.tags
        self.bucket = aws.s3.Bucket(f"{name}-site", force_destroy=True, tags=tags, opts=child())
        self.public_access_block = aws.s3.BucketPublicAccessBlock(
            f"{name}-site-private",
            bucket=self.bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child(),
        )
        self.oac = aws.cloudfront.OriginAccessControl(
            f"{name}-oac",
            origin_access_control_origin_type="s3",
            signing_behavior="always",
            signing_protocol="sigv4",
            opts=child(),
        )
        self.distribution = aws.cloudfront.Distribution(
            f"{name}-cdn",
            enabled=True,
            default_root_object="index.html",
            comment=f"{args.tenant_id} {args.environment} ({args.domain})",
            origins=[
                {
                    "domain_name": self.bucket.bucket_regional_domain_name,
                    "origin_id": "site",
                    "origin_access_control_id": self.oac.id,
                }
            ],
            default_cache_behavior={
                "target_origin_id": "site",
                "viewer_protocol_policy": "redirect-to-https",
                "allowed_methods": ["GET", "HEAD"],
                "cached_methods": ["GET", "HEAD"],
                "cache_policy_id": CACHING_OPTIMIZED,
            },
            restrictions={"geo_restriction": {"restriction_type": "none"}},
            viewer_certificate={"cloudfront_default_certificate": True},
            tags=tags,
            opts=child(),
        )
        self.bucket_policy = aws.s3.BucketPolicy(
            f"{name}-site-policy",
            bucket=self.bucket.id,
            policy=pulumi.Output.all(self.bucket.arn, self.distribution.arn).apply(
                lambda a: json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Effect": "Allow",
                                "Principal": {"Service": "cloudfront.amazonaws.com"},
                                "Action": "s3:GetObject",
                                "Resource": f"{a[0]}/*",
                                "Condition": {"StringEquals": {"AWS:SourceArn": a[1]}},
                            }
                        ],
                    }
                )
            ),
            opts=child(depends_on=[self.public_access_block]),
        )
        page = pulumi.Output.all(backend_url=args.backend_url, schema_version=args.schema_version).apply(
            lambda v: string.Template(args.template).safe_substitute(
                tenant_id=args.tenant_id,
                tenant_name=args.tenant_name,
                environment=args.environment,
                domain=args.domain,
                release=args.release,
                app_version=args.app_version,
                backend_url=v["backend_url"],
                schema_version=v["schema_version"],
            )
        )
        self.index = aws.s3.BucketObjectv2(
            f"{name}-index",
            bucket=self.bucket.id,
            key="index.html",
            content=page,
            content_type="text/html; charset=utf-8",
            tags=tags,
            opts=child(depends_on=[self.bucket_policy]),
        )
        self.invalidate_role = aws.iam.Role(
            f"{name}-invalidate-role", assume_role_policy=LAMBDA_TRUST, tags=tags, opts=child()
        )
        self.invalidate_policy = aws.iam.RolePolicy(
            f"{name}-invalidate-policy",
            role=self.invalidate_role.id,
            policy=self.distribution.arn.apply(
                lambda arn: json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [{"Effect": "Allow", "Action": "cloudfront:CreateInvalidation", "Resource": arn}],
                    }
                )
            ),
            opts=child(),
        )
        self.invalidate_function = aws.lambda_.Function(
            f"{name}-invalidate",
            runtime="python3.12",
            handler="invalidate.handler",
            role=self.invalidate_role.arn,
            code=pulumi.AssetArchive({"invalidate.py": pulumi.FileAsset(str(HANDLERS / "invalidate.py"))}),
            tags=tags,
            opts=child(depends_on=[self.invalidate_policy]),
        )
        content_hash = page.apply(lambda text: hashlib.sha256(text.encode()).hexdigest())
        self.invalidation = aws.lambda_.Invocation(
            f"{name}-invalidation",
            function_name=self.invalidate_function.name,
            input=pulumi.Output.all(self.distribution.id, content_hash).apply(
                lambda a: json.dumps({"distribution_id": a[0], "paths": ["/*"], "reference": a[1]})
            ),
            triggers={"content": content_hash, "release": args.release},
            opts=child(depends_on=[self.index]),
        )
        self.site_dir = pulumi.Output.from_input("")
        self.frontend_url = self.distribution.domain_name.apply(lambda d: f"https://{d}/")
        self.register_outputs({"site_dir": self.site_dir, "frontend_url": self.frontend_url})
