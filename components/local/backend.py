from __future__ import annotations

import json
from dataclasses import dataclass, field

import pulumi

from components.common import Migration
from components.local.resources import Database, Release


@dataclass(frozen=True)
class BackendArgs:
    account_dir: pulumi.Input[str]
    """The tenant's account directory (CloudAccount.account_dir)."""
    tenant_id: str
    environment: str
    release: str
    app_version: str
    migrations: list[Migration] = field(default_factory=list)
    app_files: dict[str, str] = field(default_factory=dict)
    """The backend app's files ({relative path: text}; ``$name`` placeholders
    are filled with version, tenant, environment, release)."""
    purge_data: bool = False
    """Delete the database on destroy (default: keep it)."""
    db_password: pulumi.Input[str] | None = None
    """The app's database password (a secret Output): written to the release's
    ``backend.env`` (``DB_PASSWORD=...``, mode 0600), where the app reads it."""


class Backend(pulumi.ComponentResource):
    """The backend of one tenant and environment.

    ``<account_dir>/<env>/backend/db.sqlite3`` with the migrations applied,
    then ``releases/<app_version>/`` (app.json + app files, and ``backend.env``
    with the database password when one is given) with a ``current`` link.
    ``backend_url`` is the ``file://`` URL of the ``current`` release
    directory (there is no server on the local platform).
    """

    backend_url: pulumi.Output[str]
    database_path: pulumi.Output[str]
    schema_version: pulumi.Output[str]

    def __init__(self, name: str, args: BackendArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("runner:local:Backend", name, None, opts)
        base = pulumi.Output.from_input(args.account_dir).apply(lambda d: f"{d}/{args.environment}/backend")
        self.database = Database(
            f"{name}-db",
            {
                "path": base.apply(lambda b: f"{b}/db.sqlite3"),
                "migrations": [m.as_dict() for m in args.migrations],
                "purge_data": args.purge_data,
            },
            pulumi.ResourceOptions(parent=self),
        )
        values = {
            "version": args.app_version,
            "tenant": args.tenant_id,
            "environment": args.environment,
            "release": args.release,
        }
        templates = {**args.app_files, "app.json": json.dumps(values, indent=2, sort_keys=True) + "\n"}
        # The app is released only after its schema is in place.
        release = {"base": base, "app_version": args.app_version, "templates": templates, "values": values}
        if args.db_password is not None:
            # a secret input: the engine keeps it (and the output of the same name) encrypted in the state
            # (an empty password, the config default, writes no file)
            release["env"] = pulumi.Output.secret(args.db_password).apply(lambda p: {"DB_PASSWORD": p} if p else {})
        self.app = Release(
            f"{name}-app",
            release,
            pulumi.ResourceOptions(parent=self, depends_on=[self.database]),
        )
        self.backend_url = self.app.base.apply(lambda b: f"file://{b}/current")
        self.database_path = self.database.path
        self.schema_version = self.database.schema_version
        self.register_outputs(
            {
                "backend_url": self.backend_url,
                "database_path": self.database_path,
                "schema_version": self.schema_version,
            }
        )
