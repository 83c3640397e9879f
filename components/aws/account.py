from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pulumi
import pulumi_aws as aws


@dataclass(frozen=True)
class CloudAccountArgs:
    tenant_id: str
    email: str
    """The member account's root email (unique per account)."""
    region: str
    tags: dict[str, str] = field(default_factory=dict)
    role_name: str = "OrganizationAccountAccessRole"
    parent_id: Optional[str] = None
    """Organizational unit (or root) id; default: the organization root."""


class CloudAccount(pulumi.ComponentResource):
    """An AWS Organizations member account for one tenant, and ``provider``:
    an ``aws.Provider`` that assumes ``OrganizationAccountAccessRole`` in it.
    Every other resource of the tenant is created through ``provider``.

    ``account_dir`` is local-only and empty here.
    """

    account_id: pulumi.Output[str]
    account_dir: pulumi.Output[str]
    provider: aws.Provider

    def __init__(self, name: str, args: CloudAccountArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("runner:aws:CloudAccount", name, None, opts)
        self.account = aws.organizations.Account(
            f"{name}-account",
            name=f"runner-{args.tenant_id}",
            email=args.email,
            role_name=args.role_name,
            parent_id=args.parent_id,
            iam_user_access_to_billing="DENY",
            close_on_deletion=False,
            tags=args.tags,
            # Removing a tenant never closes its account by accident.
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True),
        )
        role_arn = self.account.id.apply(lambda account: f"arn:aws:iam::{account}:role/{args.role_name}")
        self.provider = aws.Provider(
            f"{name}-provider",
            region=args.region,
            assume_roles=[aws.ProviderAssumeRoleArgs(role_arn=role_arn, session_name=f"runner-{args.tenant_id}")],
            default_tags=aws.ProviderDefaultTagsArgs(tags=args.tags),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.account_id = self.account.id
        self.account_dir = pulumi.Output.from_input("")
        self.register_outputs({"account_id": self.account_id, "account_dir": self.account_dir})
