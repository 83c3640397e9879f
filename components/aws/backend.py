from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
import pulumi_aws as aws

from components.common import Migration, migrations_hash

HANDLERS = Path(__file__).parent / "handlers"

#: Data API actions a function needs to run SQL (no management actions).
DATA_API_ACTIONS = [
    "rds-data:ExecuteStatement",
    "rds-data:BatchExecuteStatement",
    "rds-data:BeginTransaction",
    "rds-data:CommitTransaction",
    "rds-data:RollbackTransaction",
]
LOG_RETENTION_DAYS = 30
BACKUP_RETENTION_DAYS = 7

LAMBDA_TRUST = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
)


def policy_document(statements: list[dict]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


class FunctionRole:
    """A function's own role: trust for Lambda, its own log group (retention
    set) and the right to write there only, plus ``statements``."""

    def __init__(self, name: str, statements: pulumi.Input[list], tags: dict, opts: pulumi.ResourceOptions):
        self.role = aws.iam.Role(f"{name}-role", assume_role_policy=LAMBDA_TRUST, tags=tags, opts=opts)
        self.log_group = aws.cloudwatch.LogGroup(
            f"{name}-logs", retention_in_days=LOG_RETENTION_DAYS, tags=tags, opts=opts
        )
        self.policy = aws.iam.RolePolicy(
            f"{name}-policy",
            role=self.role.id,
            policy=pulumi.Output.all(self.log_group.arn, statements).apply(
                lambda a: policy_document(
                    [
                        {
                            "Effect": "Allow",
                            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                            "Resource": [a[0], f"{a[0]}:*"],
                        },
                        *a[1],
                    ]
                )
            ),
            opts=opts,
        )
        self.logging_config = {"log_format": "Text", "log_group": self.log_group.name}


@dataclass(frozen=True)
class BackendArgs:
    provider: pulumi.ProviderResource
    """The tenant account's provider (CloudAccount.provider)."""
    tenant_id: str
    environment: str
    release: str
    app_version: str
    tags: dict[str, str]
    """Tags of every resource (no ``release``: only the app function carries it)."""
    migrations: list[Migration] = field(default_factory=list)
    """The PostgreSQL migration set."""
    app_files: dict[str, str] = field(default_factory=dict)
    purge_data: bool = False
    """Delete the database on destroy. Default: the cluster is protected
    (Pulumi ``protect`` and RDS deletion protection) and retained."""
    database_name: str = "app"


class Backend(pulumi.ComponentResource):
    """Lambda function behind an HTTP API, Aurora Serverless v2 (PostgreSQL,
    Data API) in the tenant account, and the migrations run in that account by
    a migration function through an ``aws.lambda_.Invocation`` whose trigger
    is the hash of the migration set. The app function is updated only after
    the migrations ran. The migrator (master secret, DDL) and the app (its own
    DML-only database user, created by the migrator, whose secret it alone
    reads) have separate roles. ``database_path`` is local-only and empty here."""

    backend_url: pulumi.Output[str]
    database_path: pulumi.Output[str]
    schema_version: pulumi.Output[str]

    def __init__(self, name: str, args: BackendArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("runner:aws:Backend", name, None, opts)

        def child(**extra) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, provider=args.provider, **extra)

        tags = args.tags
        # Protected data: unless purge_data, the cluster can neither be deleted
        # by Pulumi (protect) nor by RDS (deletion_protection), and a destroy
        # after unprotecting keeps it (retain_on_delete).
        keep = not args.purge_data
        data_opts = dict(retain_on_delete=keep, protect=keep)
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
            deletion_protection=keep,
            backup_retention_period=BACKUP_RETENTION_DAYS,
            copy_tags_to_snapshot=True,
            serverlessv2_scaling_configuration={"min_capacity": 0, "max_capacity": 2, "seconds_until_auto_pause": 3600},
            skip_final_snapshot=args.purge_data,
            final_snapshot_identifier=None if args.purge_data else f"runner-{args.tenant_id}-{args.environment}-final",
            tags=tags,
            # AWS applies minor upgrades itself; never try to downgrade after one.
            opts=child(ignore_changes=["engine_version"], **data_opts),
        )
        self.instance = aws.rds.ClusterInstance(
            f"{name}-db-1",
            cluster_identifier=self.cluster.id,
            instance_class="db.serverless",
            engine=self.cluster.engine,
            engine_version=self.cluster.engine_version,
            tags=tags,
            opts=child(ignore_changes=["engine_version"], **data_opts),
        )
        master_secret = self.cluster.master_user_secrets.apply(lambda s: s[0].secret_arn if s else "")
        # The app's database user: created and given its password by the migrator.
        self.app_secret = aws.secretsmanager.Secret(
            f"{name}-app-db",
            description=f"Database user of the {args.tenant_id} {args.environment} app (written by the migrator)",
            tags=tags,
            opts=child(),
        )
        data_api = {"Effect": "Allow", "Action": DATA_API_ACTIONS}
        self.migrator = FunctionRole(
            f"{name}-migrate",
            pulumi.Output.all(self.cluster.arn, master_secret, self.app_secret.arn).apply(
                lambda a: [
                    {**data_api, "Resource": a[0]},
                    {"Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"], "Resource": a[1]},
                    {
                        "Effect": "Allow",
                        "Action": ["secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"],
                        "Resource": a[2],
                    },
                ]
            ),
            tags,
            child(),
        )
        self.app_role = FunctionRole(
            f"{name}-app",
            pulumi.Output.all(self.cluster.arn, self.app_secret.arn).apply(
                lambda a: [
                    {**data_api, "Resource": a[0]},
                    {"Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"], "Resource": a[1]},
                ]
            ),
            tags,
            child(),
        )
        # Plain attributes, so that everything registered is reachable from the component.
        self.migrate_role, self.migrate_logs, self.migrate_policy = (
            self.migrator.role,
            self.migrator.log_group,
            self.migrator.policy,
        )
        self.app_role_, self.app_logs, self.app_policy = (
            self.app_role.role,
            self.app_role.log_group,
            self.app_role.policy,
        )
        migration_files = {f"migrations/{m.file}": pulumi.StringAsset(m.sql) for m in args.migrations}
        self.migrate_function = aws.lambda_.Function(
            f"{name}-migrate",
            runtime="python3.12",
            handler="migrate.handler",
            role=self.migrator.role.arn,
            timeout=900,  # a paused cluster is waited for (DatabaseResumingException)
            code=pulumi.AssetArchive({"migrate.py": pulumi.FileAsset(str(HANDLERS / "migrate.py")), **migration_files}),
            logging_config=self.migrator.logging_config,
            tags=tags,
            opts=child(depends_on=[self.migrator.policy]),
        )
        migration_set = migrations_hash(args.migrations)
        self.migrations = aws.lambda_.Invocation(
            f"{name}-migrations",
            function_name=self.migrate_function.name,
            input=pulumi.Output.all(self.cluster.arn, master_secret, self.app_secret.arn).apply(
                lambda a: json.dumps(
                    {"cluster_arn": a[0], "secret_arn": a[1], "app_secret_arn": a[2], "database": args.database_name},
                    sort_keys=True,
                )
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
            role=self.app_role.role.arn,
            timeout=30,
            code=pulumi.AssetArchive(code),
            environment={
                "variables": {
                    "DB_CLUSTER_ARN": self.cluster.arn,
                    "DB_SECRET_ARN": self.app_secret.arn,
                    "DB_NAME": args.database_name,
                    "RELEASE": args.release,
                    "APP_VERSION": args.app_version,
                }
            },
            logging_config=self.app_role.logging_config,
            # The one resource whose release tag means something: what runs.
            tags={**tags, "release": args.release},
            opts=child(depends_on=[self.migrations, self.app_role.policy]),
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
