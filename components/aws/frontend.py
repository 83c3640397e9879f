from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws

from components.aws.backend import FunctionRole
from components.common import DEFAULT_TEMPLATE

HANDLERS = Path(__file__).parent / "handlers"
CACHING_OPTIMIZED = "658327ea-f89d-4fab-a63d-7e88639e58f6"  # AWS managed cache policy
#: CloudFront's security policy for a custom certificate: TLS 1.2+ only.
MINIMUM_TLS = "TLSv1.2_2021"


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
    custom_domain: str = ""
    """Serve the site on this domain with its own ACM certificate (aliases,
    sni-only, TLS 1.2+); empty: the CloudFront domain and default certificate."""
    hosted_zone_id: str = ""
    """Route 53 zone serving ``custom_domain``: the certificate's validation
    record and the alias records are created there. Empty: create the
    validation record yourself (the first up waits for it) and point the
    domain at the distribution."""
    cert_provider: pulumi.ProviderResource | None = None
    """The tenant account's provider in us-east-1 (CloudFront's certificates)."""
    dns_provider: pulumi.ProviderResource | None = None
    """Provider of the account holding ``hosted_zone_id`` (default: ``provider``)."""


class Frontend(pulumi.ComponentResource):
    """Private S3 bucket, CloudFront distribution with origin access control,
    the rendered ``index.html``, and a cache invalidation after each change:
    an invalidation function in the tenant account run by an
    ``aws.lambda_.Invocation`` triggered by the page's content hash (the
    provider has no invalidation resource). ``site_dir`` is local-only and
    empty here."""

    site_dir: pulumi.Output[str]
    frontend_url: pulumi.Output[str]

    def __init__(self, name: str, args: FrontendArgs, opts: pulumi.ResourceOptions | None = None):
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
        self.certificate = self.certificate_validation = self.validation_record = None
        self.alias_records: list[aws.route53.Record] = []
        if args.custom_domain:
            cert_opts = pulumi.ResourceOptions(parent=self, provider=args.cert_provider or args.provider)
            dns_opts = pulumi.ResourceOptions(parent=self, provider=args.dns_provider or args.provider)
            self.certificate = aws.acm.Certificate(
                f"{name}-cert",
                domain_name=args.custom_domain,
                validation_method="DNS",
                tags=tags,
                opts=cert_opts,
            )
            fqdns: list = []
            if args.hosted_zone_id:
                option = self.certificate.domain_validation_options.apply(lambda o: o[0])
                self.validation_record = aws.route53.Record(
                    f"{name}-cert-validation",
                    zone_id=args.hosted_zone_id,
                    name=option.resource_record_name,
                    type=option.resource_record_type,
                    records=[option.resource_record_value],
                    ttl=300,
                    allow_overwrite=True,
                    opts=dns_opts,
                )
                fqdns = [self.validation_record.fqdn]
            self.certificate_validation = aws.acm.CertificateValidation(
                f"{name}-cert-issued",
                certificate_arn=self.certificate.arn,
                validation_record_fqdns=fqdns or None,
                opts=cert_opts,
            )
            viewer_certificate: dict = {
                "acm_certificate_arn": self.certificate_validation.certificate_arn,
                "ssl_support_method": "sni-only",
                "minimum_protocol_version": MINIMUM_TLS,
            }
            aliases: list[str] | None = [args.custom_domain]
        else:
            # CloudFront's default certificate (*.cloudfront.net); its TLS
            # policy cannot be raised, see the README.
            viewer_certificate = {"cloudfront_default_certificate": True}
            aliases = None
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
            aliases=aliases,
            viewer_certificate=viewer_certificate,
            http_version="http2and3",
            is_ipv6_enabled=True,
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
            tags={**tags, "release": args.release},  # the page is what a release changes
            opts=child(depends_on=[self.bucket_policy]),
        )
        self.invalidator = FunctionRole(
            f"{name}-invalidate",
            self.distribution.arn.apply(
                lambda arn: [{"Effect": "Allow", "Action": ["cloudfront:CreateInvalidation"], "Resource": arn}]
            ),
            tags,
            child(),
        )
        self.invalidate_role, self.invalidate_logs, self.invalidate_policy = (
            self.invalidator.role,
            self.invalidator.log_group,
            self.invalidator.policy,
        )
        self.invalidate_function = aws.lambda_.Function(
            f"{name}-invalidate",
            runtime="python3.12",
            handler="invalidate.handler",
            role=self.invalidate_role.arn,
            timeout=60,
            code=pulumi.AssetArchive({"invalidate.py": pulumi.FileAsset(str(HANDLERS / "invalidate.py"))}),
            logging_config=self.invalidator.logging_config,
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
        if args.custom_domain and args.hosted_zone_id:
            dns_opts = pulumi.ResourceOptions(parent=self, provider=args.dns_provider or args.provider)
            for record_type in ("A", "AAAA"):
                self.alias_records.append(
                    aws.route53.Record(
                        f"{name}-alias-{record_type.lower()}",
                        zone_id=args.hosted_zone_id,
                        name=args.custom_domain,
                        type=record_type,
                        aliases=[
                            {
                                "name": self.distribution.domain_name,
                                "zone_id": self.distribution.hosted_zone_id,
                                "evaluate_target_health": False,
                            }
                        ],
                        opts=dns_opts,
                    )
                )
        self.site_dir = pulumi.Output.from_input("")
        if args.custom_domain and args.hosted_zone_id:
            self.frontend_url = pulumi.Output.all(*[r.fqdn for r in self.alias_records]).apply(
                lambda _: f"https://{args.custom_domain}/"
            )
        else:
            self.frontend_url = self.distribution.domain_name.apply(lambda d: f"https://{d}/")
        self.register_outputs({"site_dir": self.site_dir, "frontend_url": self.frontend_url})
