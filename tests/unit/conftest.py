"""Pulumi mocks shared by the component and program unit tests: a monitor that
records every registered (or read) resource, and the one `set_mocks` call."""

from __future__ import annotations

import pulumi
from pulumi.runtime.mocks import MockMonitor

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
