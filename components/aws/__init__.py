"""The aws platform: the same components as ``components.local`` on pulumi-aws.

Importing this package imports ``pulumi_aws``; the program imports it only
when ``platform`` is ``aws``, so the local platform never loads it.
"""

from components.aws.account import CloudAccount, CloudAccountArgs, management_provider
from components.aws.backend import Backend, BackendArgs
from components.aws.frontend import Frontend, FrontendArgs
from components.aws.git import GitRepository, GitRepositoryArgs

__all__ = [
    "Backend",
    "BackendArgs",
    "CloudAccount",
    "CloudAccountArgs",
    "Frontend",
    "FrontendArgs",
    "GitRepository",
    "GitRepositoryArgs",
    "management_provider",
]
