from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pulumi
import pulumi_aws as aws

from components.common import Migration, migrations_hash

HANDLERS = Path(__file__).parent / "handlers"

LAMBDA_TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
)


@dataclass(frozen=True)
class BackendArgs:
    provider: pulumi.ProviderResource
    """The tenant account's provider (CloudAccount.provider)."""
    tenant_id: str
    environment: str
    release: str
    app_version: str
    tags: dict[str, str]
    migrations: list[Migration] = field(default_factory=list)
    app_files: dict[str, str] = field(default_factory=dict)
    purge_data: bool = False
    """Delete the database on destroy (default: the cluster is retained)."""
    database_name: str = "app"


class Backend(pulumi.ComponentResource):
    """Lambda function behind an HTTP API, Aurora Serverless v2 (PostgreSQL,
    Data API) in the tenant account, and the migrations run in that account by
    a migration function through an ``aws.lambda_.Invocation`` whose trigger
    is the hash of the migration set. The app function is updated only after
    the migrations ran. ``database_path`` is local-only and empty here."""

    backend_url: pulumi.Output[str]
    database_path: pulumi.Output[str]
    schema_version: pulumi.Output[str]

    def __init__(self, name: str, args: BackendArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("runner:aws:Backend", name, None, opts)

        def child(**extra) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, provider=args.provider, **extra)

        tags = args.tags
        self.role = aws.iam.Role(f"{name}-role", assume_role_policy=LAMBDA_TRUST, tags=tags, opts=child())
        self.logs = aws.iam.RolePolicyAttachment(
            f"{name}-logs",
            role=self.role.name,
            policy_arn="arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
            opts=child(),
        )
        # Protected data: the cluster outlives a destroy unless purge_data.
        keep = not args.purge_data
        self.cluster = aws.rds.Cluster(
            f"{name}-db",
            engine="aurora-postgresql",
            engine_mode="provisioned",
            engine_version="16.4",
            database_name=args.database_name,
            master_username="runner",
            manage_master_user_password=True,
            enable_http_endpoint=True,
            storage_encrypted=True,
            serverlessv2_scaling_configuration={"min_capacity": 0, "max_capacity": 2},
            skip_final_snapshot=args.purge_data,
            final_snapshot_identifier=None if args.purge_data else f"runner-{args.tenant_id}-{args.environment}-final",
            tags=tags,
            opts=child(retain_on_delete=keep),
        )
        self.instance = aws.rds.ClusterInstance(
            f"{name}-db-1",
            cluster_identifier=self.cluster.id,
            instance_class="db.serverless",
            engine=self.cluster.engine,
            engine_version=self.cluster.engine_version,
            tags=tags,
            opts=child(retain_on_delete=keep),
        )
        secret_arn = self.cluster.master_user_secrets.apply(lambda s: s[0].secret_arn if s else "")
        self.data_access = aws.iam.RolePolicy(
            f"{name}-data-api",
            role=self.role.id,
            policy=pulumi.Output.all(self.cluster.arn, secret_arn).apply(
                lambda a: json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {"Effect": "Allow", "Action": ["rds-data:*"], "Resource": a[0]},
                            {"Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"], "Resource": a[1]},
                        ],
                    }
                )
            ),
            opts=child(),
        )
        db_env = {
            "DB_CLUSTER_ARN": self.cluster.arn,
            "DB_SECRET_ARN": secret_arn,
            "DB_NAME": args.database_name,
        }
        migration_files = {f"migrations/{m.file}": pulumi.StringAsset(m.sql) for m in args.migrations}
        self.migrate_function = aws.lambda_.Function(
            f"{name}-migrate",
            runtime="python3.12",
            handler="migrate.handler",
            role=self.role.arn,
            timeout=300,
            code=pulumi.AssetArchive(
                {"migrate.py": pulumi.FileAsset(str(HANDLERS / "migrate.py")), **migration_files}
            ),
            environment={"variables": db_env},
            tags=tags,
            opts=child(depends_on=[self.logs, self.data_access]),
        )
        migration_set = migrations_hash(args.migrations)
        self.migrations = aws.lambda_.Invocation(
            f"{name}-migrations",
            function_name=self.migrate_function.name,
            input=pulumi.Output.all(self.cluster.arn, secret_arn).apply(
                lambda a: json.dumps({"cluster_arn": a[0], "secret_arn": a[1], "database": args.database_name})
            ),
            triggers={"migrations": migration_set},
            opts=child(depends_on=[self.instance]),
        )
        app_json = json.dumps(
            {
                "version": args.app_version,
                "tenant": args.tenant_id,
                "environment": args.environment,
                "release": args.release,
            },
            indent=2,
            sort_keys=True,
        )
        code = {path: pulumi.StringAsset(text) for path, text in args.app_files.items()}
        code["app.json"] = pulumi.StringAsset(app_json)
        # The new app version goes live only after its schema is in place.
        self.function = aws.lambda_.Function(
            f"{name}-app",
            runtime="python3.12",
            handler="app.handler",
            role=self.role.arn,
            code=pulumi.AssetArchive(code),
            environment={"variables": {**db_env, "RELEASE": args.release, "APP_VERSION": args.app_version}},
            tags=tags,
            opts=child(depends_on=[self.migrations]),
        )
        self.api = aws.apigatewayv2.Api(
            f"{name}-api",
            protocol_type="HTTP",
            target=self.function.arn,
            tags=tags,
            opts=child(),
        )
        self.invoke_permission = aws.lambda_.Permission(
            f"{name}-api-invoke",
            action="lambda:InvokeFunction",
            function=self.function.name,
            principal="apigateway.amazonaws.com",
            source_arn=self.api.execution_arn.apply(lambda arn: f"{arn}/*/*"),
            opts=child(),
        )
        self.backend_url = self.api.api_endpoint
        self.database_path = pulumi.Output.from_input("")
        self.schema_version = pulumi.Output.from_input(args.migrations[-1].version if args.migrations else "")
        self.register_outputs(
            {
                "backend_url": self.backend_url,
                "database_path": self.database_path,
                "schema_version": self.schema_version,
            }
        )
