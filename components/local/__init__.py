"""The local platform: real artifacts on disk through Python dynamic providers.

No network, no plugin download. Same class names and outputs as
``components.aws``.
"""

from components.local.account import CloudAccount, CloudAccountArgs
from components.local.backend import Backend, BackendArgs
from components.local.frontend import Frontend, FrontendArgs
from components.local.git import GitRepository, GitRepositoryArgs
from components.local.providers import THROTTLE_MESSAGE, simulation_settings

__all__ = [
    "Backend",
    "BackendArgs",
    "CloudAccount",
    "CloudAccountArgs",
    "Frontend",
    "FrontendArgs",
    "GitRepository",
    "GitRepositoryArgs",
    "THROTTLE_MESSAGE",
    "simulation_settings",
]
