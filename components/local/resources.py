"""The dynamic resources of the local platform (one class per provider).

Each declares its outputs as attributes; ``_props`` fills the computed ones
with ``None`` so the engine's values land on the instance.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi import dynamic

from components.local import providers


def _props(inputs: dict[str, Any], computed: tuple[str, ...]) -> dict[str, Any]:
    return {**inputs, **{k: None for k in computed if k not in inputs}}


class BareRepo(dynamic.Resource, module="local", name="BareRepo"):
    url: pulumi.Output[str]
    head: pulumi.Output[str]
    exists: pulumi.Output[bool]

    def __init__(self, name: str, inputs: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(providers.BareRepoProvider(), name, _props(inputs, ("url", "head", "exists")), opts)


class AccountDir(dynamic.Resource, module="local", name="AccountDir"):
    path: pulumi.Output[str]
    account_id: pulumi.Output[str]
    mode: pulumi.Output[str]

    def __init__(self, name: str, inputs: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(
            providers.AccountDirProvider(), name, _props(inputs, ("exists", "mode", "recorded_account_id")), opts
        )


class Database(dynamic.Resource, module="local", name="Database"):
    path: pulumi.Output[str]
    schema_version: pulumi.Output[str]
    applied: pulumi.Output[list]

    def __init__(self, name: str, inputs: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(
            providers.DatabaseProvider(), name, _props(inputs, ("exists", "applied", "schema_version")), opts
        )


class Release(dynamic.Resource, module="local", name="Release"):
    base: pulumi.Output[str]
    release_dir: pulumi.Output[str]
    content_hash: pulumi.Output[str]
    env_file: pulumi.Output[str]

    def __init__(self, name: str, inputs: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(
            providers.ReleaseProvider(),
            name,
            _props(inputs, ("release_dir", "current", "content_hash", "env_file")),
            opts,
        )


class CachePurge(dynamic.Resource, module="local", name="CachePurge"):
    purged_at: pulumi.Output[str]

    def __init__(self, name: str, inputs: dict[str, Any], opts: pulumi.ResourceOptions | None = None):
        super().__init__(providers.CachePurgeProvider(), name, _props(inputs, ("purged_at",)), opts)
