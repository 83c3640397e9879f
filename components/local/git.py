from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pulumi

from components.local.resources import BareRepo


@dataclass(frozen=True)
class GitRepositoryArgs:
    root: str
    """Absolute platform root; the repository is ``<root>/git/<service>.git``."""
    service: str
    description: str = ""


class GitRepository(pulumi.ComponentResource):
    """A bare Git repository for one service, with an initial commit on main."""

    url: pulumi.Output[str]

    def __init__(self, name: str, args: GitRepositoryArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("runner:local:GitRepository", name, None, opts)
        readme = f"# {args.service}\n\n{args.description or 'Source of the ' + args.service + ' service.'}\n"
        self.repo = BareRepo(
            f"{name}-repo",
            {"path": str(Path(args.root) / "git" / f"{args.service}.git"), "service": args.service, "readme": readme},
            pulumi.ResourceOptions(parent=self),
        )
        self.url = self.repo.url
        self.register_outputs({"url": self.url})
