from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

#: The region CloudFront reads its ACM certificates from.
CLOUDFRONT_CERT_REGION = "us-east-1"


@dataclass(frozen=True)
class CloudAccountArgs:
    tenant_id: str
    environment: str
    email: str
    """The member account's root email (unique per tenant and environment)."""
    name: str
    """The member account's name (at most 50 characters)."""
    region: str
    tags: dict[str, str] = field(default_factory=dict)
    """Tags of the account and default tags of its provider (no ``release``)."""
    role_name: str = "OrganizationAccountAccessRole"
    parent_id: str | None = None
    """Organizational unit (or root) id; default: the organization root."""
    account_id: str | None = None
    """Adopt this existing member account (created ahead of the fleet run):
    no Organizations resource is managed by the stack then."""
    management_provider: pulumi.ProviderResource | None = None
    """Provider of the organization's management account (explicit region)."""


def management_provider(region: str, name: str = "management") -> aws.Provider:
    """The provider of the organization's management account (where the
    runner's credentials are), with the configured region given explicitly
    instead of whatever the ambient environment says."""
    return aws.Provider(name, region=region)


class CloudAccount(pulumi.ComponentResource):
    """An AWS Organizations member account for one tenant and environment (or
    an adopted existing one), and ``provider``: an ``aws.Provider`` that
    assumes ``OrganizationAccountAccessRole`` in it; ``provider_us_east_1``
    does the same in us-east-1 (CloudFront's ACM certificates). Every other
    resource of the tenant is created through these.

    A created account is retained on destroy (closing an account is limited by
    AWS and suspends it for 90 days): adopt it again with ``account_id``.
    ``account_dir`` is local-only and empty here.
    """

    account_id: pulumi.Output[str]
    account_dir: pulumi.Output[str]
    provider: aws.Provider
    provider_us_east_1: aws.Provider

    def __init__(self, name: str, args: CloudAccountArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("runner:aws:CloudAccount", name, None, opts)
        if args.account_id:
            self.account = None
            account_id: pulumi.Output[str] = pulumi.Output.from_input(args.account_id)
        else:
            self.account = aws.organizations.Account(
                f"{name}-account",
                name=args.name,
                email=args.email,
                role_name=args.role_name,
                parent_id=args.parent_id,
                iam_user_access_to_billing="DENY",
                close_on_deletion=False,
                tags=args.tags,
                # Removing a tenant never closes its account by accident. Email,
                # role name and billing access only apply at creation: a later
                # change (a new account_email_domain) must not replace the
                # account, i.e. create an empty new one.
                opts=pulumi.ResourceOptions(
                    parent=self,
                    provider=args.management_provider,
                    retain_on_delete=True,
                    ignore_changes=["email", "role_name", "iam_user_access_to_billing"],
                ),
            )
            account_id = self.account.id
        role_arn = account_id.apply(lambda account: f"arn:aws:iam::{account}:role/{args.role_name}")
        session = f"runner-{args.tenant_id}-{args.environment}"[:64]

        def provider(suffix: str, region: str) -> aws.Provider:
            return aws.Provider(
                f"{name}-{suffix}",
                region=region,
                assume_roles=[aws.ProviderAssumeRoleArgs(role_arn=role_arn, session_name=session)],
                default_tags=aws.ProviderDefaultTagsArgs(tags=args.tags),
                # A new account's role is not assumable at once: retry.
                max_retries=25,
                opts=pulumi.ResourceOptions(parent=self),
            )

        self.provider = provider("provider", args.region)
        self.provider_us_east_1 = provider("provider-us-east-1", CLOUDFRONT_CERT_REGION)
        self.account_id = account_id
        self.account_dir = pulumi.Output.from_input("")
        self.register_outputs({"account_id": self.account_id, "account_dir": self.account_dir})
