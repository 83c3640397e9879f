"""Shared by the unit tests: Pulumi mocks for the component and program tests (a
monitor that records every registered (or read) resource, and the one
`set_mocks` call), and a Fleet whose workers are replaced by a script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pulumi
import pytest
from pulumi.runtime.mocks import MockMonitor

from runner import engine, protocol
from runner.fleet import Fleet
from runner.names import PROJECT


class RecordingMonitor(MockMonitor):
    """Keeps every RegisterResource/ReadResource request (parent, provider,
    dependencies, inputs) by resource name, with the URN it got."""

    def __init__(self, mocks: pulumi.runtime.Mocks):
        super().__init__(mocks)
        self.requests: dict = {}

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        self.requests[request.name] = (request, response.urn)
        return response

    def ReadResource(self, request):  # a StackReference is read, not registered
        response = super().ReadResource(request)
        self.requests[request.name] = (request, response.urn)
        return response

    def inputs(self, name: str) -> dict:
        return pulumi.runtime.rpc.deserialize_properties(self.requests[name][0].object)

    def of_type(self, token: str):
        return [(r, u) for r, u in self.requests.values() if r.type == token]


def use_mocks(mocks: pulumi.runtime.Mocks, stack: str = "acme.staging", *, preview: bool = False) -> RecordingMonitor:
    """Run the next Pulumi program of this process under ``mocks``, as ``stack`` of the
    project; return the monitor that records its resources."""
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=preview, monitor=monitor)
    return monitor


@pytest.fixture
def fleet_with_worker(tmp_path, monkeypatch):
    """A Fleet whose every worker is `python -c SCRIPT` (it reads the request on stdin and
    prints the worker's JSON lines): what is under test is the orchestrator's side."""
    real_popen = subprocess.Popen

    def make(script: str) -> Fleet:
        def fake_worker(args, **kwargs):
            assert args[-2:] == ["-m", "runner.worker"]
            return real_popen([sys.executable, "-c", script], **kwargs)

        monkeypatch.setenv("RUNNER_WARM_WORKERS", "0")  # the worker is replaced: a new process, never forked
        monkeypatch.setattr(protocol.subprocess, "Popen", fake_worker)
        monkeypatch.setattr(engine, "prepare_program_dir", lambda settings: None)
        monkeypatch.setattr(engine, "master_passphrase", lambda state_dir: "master")
        return Fleet(
            Path(tmp_path),
            state_dir=tmp_path / ".runner",
            bin_dir=tmp_path / "bin",
            backend=f"file://{tmp_path / 'state'}",
        )

    return make
