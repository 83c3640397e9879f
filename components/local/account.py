from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pulumi

from components.common import account_id_for
from components.local.resources import AccountDir


@dataclass(frozen=True)
class CloudAccountArgs:
    root: str
    """Absolute platform root; the account is ``<root>/accounts/<tenant_id>``."""
    tenant_id: str


class CloudAccount(pulumi.ComponentResource):
    """A tenant's account: a 0700 directory with ``account.json``; every other
    resource of the tenant lives inside it."""

    account_id: pulumi.Output[str]
    account_dir: pulumi.Output[str]

    def __init__(self, name: str, args: CloudAccountArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("runner:local:CloudAccount", name, None, opts)
        account_id = account_id_for(args.tenant_id)
        self.directory = AccountDir(
            f"{name}-dir",
            {
                "path": str(Path(args.root) / "accounts" / args.tenant_id),
                "tenant_id": args.tenant_id,
                "account_id": account_id,
            },
            pulumi.ResourceOptions(parent=self),
        )
        # Outputs of the child, so dependents wait until the directory exists.
        self.account_id = self.directory.account_id
        self.account_dir = self.directory.path
        self.register_outputs({"account_id": self.account_id, "account_dir": self.account_dir})
