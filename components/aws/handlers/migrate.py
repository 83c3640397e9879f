"""Runs the backend's SQL migrations inside the tenant account (Aurora Data API).

Event: {"database": name, "cluster_arn": ..., "secret_arn": ...}. The SQL files
are packaged next to this file under ``migrations/``; each is applied once, in
name order, in its own transaction, and recorded in ``schema_migrations``.
"""

import hashlib
import os
from datetime import datetime, timezone

import boto3  # provided by the Lambda runtime


def handler(event, _context):
    rds = boto3.client("rds-data")
    common = {
        "resourceArn": event["cluster_arn"],
        "secretArn": event["secret_arn"],
        "database": event["database"],
    }
    rds.execute_statement(
        sql="CREATE TABLE IF NOT EXISTS schema_migrations("
        "version TEXT PRIMARY KEY, checksum TEXT, applied_at TEXT)",
        **common,
    )
    rows = rds.execute_statement(sql="SELECT version FROM schema_migrations", **common)["records"]
    done = {r[0]["stringValue"] for r in rows}
    folder = os.path.join(os.path.dirname(__file__), "migrations")
    applied = []
    for name in sorted(os.listdir(folder)):
        version = name[:-4]
        if not name.endswith(".sql") or version in done:
            continue
        sql = open(os.path.join(folder, name), encoding="utf-8").read()
        tx = rds.begin_transaction(**common)["transactionId"]
        try:
            for statement in [s for s in sql.split(";") if s.strip()]:
                rds.execute_statement(sql=statement, transactionId=tx, **common)
            rds.execute_statement(
                sql="INSERT INTO schema_migrations VALUES (:v, :c, :t)",
                parameters=[
                    {"name": "v", "value": {"stringValue": version}},
                    {"name": "c", "value": {"stringValue": hashlib.sha256(sql.encode()).hexdigest()}},
                    {"name": "t", "value": {"stringValue": datetime.now(timezone.utc).isoformat()}},
                ],
                transactionId=tx,
                **common,
            )
            rds.commit_transaction(resourceArn=common["resourceArn"], secretArn=common["secretArn"], transactionId=tx)
        except Exception as exc:
            rds.rollback_transaction(resourceArn=common["resourceArn"], secretArn=common["secretArn"], transactionId=tx)
            raise RuntimeError(f"migration {name} failed: {exc}") from None
        applied.append(version)
    return {"applied": applied}
