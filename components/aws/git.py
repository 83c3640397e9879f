from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws


@dataclass(frozen=True)
class GitRepositoryArgs:
    service: str
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    provider: pulumi.ProviderResource | None = None
    """The management account's provider (explicit region)."""


class GitRepository(pulumi.ComponentResource):
    """A CodeCommit repository for one service (in the organization's account)."""

    url: pulumi.Output[str]

    def __init__(self, name: str, args: GitRepositoryArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("runner:aws:GitRepository", name, None, opts)
        self.repository = aws.codecommit.Repository(
            f"{name}-repo",
            repository_name=args.service,
            description=args.description or f"Source of the {args.service} service.",
            default_branch="main",
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider),
        )
        self.url = self.repository.clone_url_http
        self.register_outputs({"url": self.url})
