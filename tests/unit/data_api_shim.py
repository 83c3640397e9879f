"""A thin stand-in for the RDS Data API client (``boto3.client("rds-data")``)
over a real PostgreSQL connection: the calls, arguments and result shapes the
migrate handler uses, nothing more. ``resuming`` makes the first N calls fail
the way a paused Aurora Serverless v2 cluster does."""

from __future__ import annotations

import re
import uuid

import psycopg


class DataApiError(Exception):
    """Shaped like botocore's ClientError (``.response["Error"]["Code"]``)."""

    def __init__(self, code: str, message: str = ""):
        super().__init__(f"An error occurred ({code}): {message}")
        self.response = {"Error": {"Code": code, "Message": message}}


_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def _field(value) -> dict:
    if value is None:
        return {"isNull": True}
    if isinstance(value, bool):
        return {"booleanValue": value}
    if isinstance(value, int):
        return {"longValue": value}
    return {"stringValue": str(value)}


class DataApiShim:
    def __init__(self, url: str, *, resuming: int = 0):
        self.url = url
        self.resuming = resuming
        self.calls: list[tuple[str, dict]] = []
        self.transactions: dict[str, psycopg.Connection] = {}
        self._auto = psycopg.connect(url, autocommit=True)

    def _enter(self, method: str, kwargs: dict) -> None:
        for key in ("resourceArn", "secretArn"):
            if not kwargs.get(key):
                raise DataApiError("BadRequestException", f"{key} is required")
        self.calls.append((method, kwargs))
        if self.resuming:
            self.resuming -= 1
            raise DataApiError("DatabaseResumingException", "The database is resuming after being auto-paused.")

    def begin_transaction(self, **kwargs):
        self._enter("begin_transaction", kwargs)
        tx = uuid.uuid4().hex
        self.transactions[tx] = psycopg.connect(self.url)
        return {"transactionId": tx}

    def commit_transaction(self, **kwargs):
        self._enter("commit_transaction", kwargs)
        conn = self.transactions.pop(kwargs["transactionId"])
        conn.commit()
        conn.close()
        return {"transactionStatus": "Transaction Committed"}

    def rollback_transaction(self, **kwargs):
        self._enter("rollback_transaction", kwargs)
        conn = self.transactions.pop(kwargs["transactionId"])
        conn.rollback()
        conn.close()
        return {"transactionStatus": "Rollback Complete"}

    def execute_statement(self, **kwargs):
        self._enter("execute_statement", kwargs)
        # Always the extended protocol (parameters, even none): like the Data
        # API, one statement per call; a multi-statement string is refused.
        params = {p["name"]: next(iter(p["value"].values())) for p in kwargs.get("parameters") or []}
        sql = _PARAM.sub(r"%(\1)s", kwargs["sql"].replace("%", "%%"))
        conn = self.transactions[kwargs["transactionId"]] if kwargs.get("transactionId") else self._auto
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params, prepare=True)
                rows = cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            raise DataApiError("BadRequestException", str(exc)) from None
        return {"records": [[_field(v) for v in row] for row in rows], "numberOfRecordsUpdated": 0}

    def close(self):
        for conn in self.transactions.values():
            conn.close()
        self._auto.close()
