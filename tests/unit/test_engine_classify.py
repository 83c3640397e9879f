"""engine.classify on the real CLI's failures (tests/unit/fixtures/engine_errors.json,
produced by the real engine: see its `_about`) and on transient error texts (#16, #17)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pulumi.automation import CommandResult
from pulumi.automation.errors import create_command_error

from runner import engine

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "engine_errors.json").read_text())


def _failure(name: str) -> tuple[Exception, engine._Collector]:
    """The exception the Automation API raised and the collector that saw the events."""
    fixture = FIXTURES[name]
    exc = create_command_error(CommandResult(fixture["stdout"], fixture["stderr"], fixture["code"]))
    assert type(exc).__name__ == fixture["type"]  # the SDK still maps this text to the same error class
    collector = engine._Collector(None)
    collector.errors = [tuple(e) for e in fixture["errors"]]
    collector.failed_urn = fixture.get("failed_urn")
    return exc, collector


@pytest.mark.parametrize(
    "name, error_class, kind",
    [
        ("locked", engine.LockedError, "locked"),
        ("already_exists", engine.LockedError, "locked"),  # another shard created it meanwhile: wait, then select
        ("checkpoint", engine.CheckpointUnreadable, "checkpoint"),
        ("not_found", engine.StackNotFound, "not-found"),
        ("fail", engine.OperationFailed, "failed"),
        ("throttle", engine.TransientError, "transient"),
    ],
)
def test_real_cli_failures_are_classified(name, error_class, kind):
    exc, collector = _failure(name)
    error = engine.classify(exc, collector)
    assert type(error) is error_class
    assert error.kind == kind


def test_the_checkpoint_error_keeps_the_cli_reason():
    error = engine.classify(*_failure("checkpoint"))
    assert error.message == "getting snapshot: failed to load checkpoint: place 1: unexpected end of JSON input"


@pytest.mark.parametrize(
    "name, message",
    [
        ("throttle", "Exception: ThrottlingException: Rate exceeded (simulated)"),
        ("fail", "ValueError: the platform refused: disk full (simulated)"),
    ],
)
def test_a_provider_failure_is_attributed_to_its_resource(name, message):
    error = engine.classify(*_failure(name))
    assert error.message == message
    assert error.urn.endswith("pulumi-python:dynamic:Resource::thing")


@pytest.mark.parametrize(
    "stderr",
    [
        "error: operation error S3: PutObject, https response error StatusCode: 503, api error SlowDown",
        "error: ThrottlingException: Rate exceeded",
        "error: 429 Too Many Requests",
        "error: TooManyRequestsException: too many requests",
        "error: HTTP 503: service unavailable",
        "error: read tcp 10.0.0.1:5432: connection reset by peer",
        "error: dial tcp 10.0.0.2:443: i/o timeout",
        "error: context deadline exceeded",
        "error: request timed out after 30s",
    ],
)
def test_transient_cli_failures(stderr):
    error = engine.classify(create_command_error(CommandResult("", stderr, 1)))
    assert error.kind == "transient", stderr
    assert error.message == stderr.removeprefix("error: ")


@pytest.mark.parametrize(
    "stderr",
    [
        "error: invalid value for timeout: must be a number",
        "error: AccessDenied: not authorized to perform s3:PutObject",
        "error: bucket names must be 3-63 characters; code 4290",
        "error: the platform refused: disk full",
    ],
)
def test_permanent_failures_are_not_transient(stderr):
    assert engine.classify(create_command_error(CommandResult("", stderr, 1))).kind == "failed"


def test_a_stack_created_by_another_shard_while_listing_is_a_lock_wait():
    """Seen in test_three_shards_share_postgres_state_and_ledger under load: three shards create
    the shared stack at once on a postgres:// backend; `stack init` lists the stacks while another
    shard writes them and a listed row is gone when read. A concurrent creation, not a failure: wait
    as for a lock, then select the stack (as for "already exists")."""
    stderr = "error: could not create stack: could not list bucket: blob (code=NotFound): sql: no rows in result set"
    error = engine.classify(create_command_error(CommandResult("", stderr, 1)))
    assert error.kind == "locked", error.message
    assert "created by another operation" in error.message
