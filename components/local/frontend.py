from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components.common import DEFAULT_TEMPLATE
from components.local.resources import CachePurge, Release


@dataclass(frozen=True)
class FrontendArgs:
    account_dir: pulumi.Input[str]
    tenant_id: str
    tenant_name: str
    environment: str
    domain: str
    release: str
    app_version: str
    backend_url: pulumi.Input[str] = ""
    schema_version: pulumi.Input[str] = ""
    template: str = DEFAULT_TEMPLATE
    """``index.html`` as a ``string.Template``."""


class Frontend(pulumi.ComponentResource):
    """The tenant's static site: ``<account_dir>/<env>/frontend/releases/<app_version>/index.html``
    with a ``current`` link, and a cache purge (a line in ``cache-purges.log``)
    after each change of the site."""

    site_dir: pulumi.Output[str]
    frontend_url: pulumi.Output[str]

    def __init__(self, name: str, args: FrontendArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("runner:local:Frontend", name, None, opts)
        base = pulumi.Output.from_input(args.account_dir).apply(lambda d: f"{d}/{args.environment}/frontend")
        values = {
            "tenant_id": args.tenant_id,
            "tenant_name": args.tenant_name,
            "environment": args.environment,
            "domain": args.domain,
            "release": args.release,
            "app_version": args.app_version,
            "backend_url": args.backend_url,
            "schema_version": args.schema_version,
        }
        self.site = Release(
            f"{name}-site",
            {
                "base": base,
                "app_version": args.app_version,
                "templates": {"index.html": args.template},
                "values": values,
            },
            pulumi.ResourceOptions(parent=self),
        )
        self.purge = CachePurge(
            f"{name}-purge",
            {
                "log_path": base.apply(lambda b: f"{b}/cache-purges.log"),
                "release": args.release,
                "app_version": args.app_version,
                "trigger": self.site.content_hash,
            },
            pulumi.ResourceOptions(parent=self),
        )
        self.site_dir = self.site.base.apply(lambda b: f"{b}/current")
        self.frontend_url = self.site_dir.apply(lambda d: f"file://{d}/index.html")
        self.register_outputs({"site_dir": self.site_dir, "frontend_url": self.frontend_url})
