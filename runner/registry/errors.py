"""The registry's user-facing errors: messages for humans, never tracebacks.

The CLI maps :class:`RegistryError` and :class:`SelectionError` to exit code 2
(nothing was run) and :class:`SecretError` to a failure of the one target.
"""

from __future__ import annotations

from collections.abc import Iterable


class RegistryError(Exception):
    """An invalid registry: ``errors`` holds every problem, one line each,
    formatted ``FILE:LINE: key.path: message`` (``TABLE row ID: ...`` for a
    database registry)."""

    def __init__(self, errors: Iterable[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


class SelectionError(Exception):
    """A selector that cannot be satisfied (unknown or invalid tenant,
    unknown environment, untenanted deployment refused ...)."""


class SecretError(Exception):
    """A secret reference that cannot be resolved. The message names the
    tenant, the config key and the reference, never a value."""

    def __init__(self, tenant: str | None, key: str, reason: str) -> None:
        self.tenant = tenant
        self.key = key
        self.reason = reason
        who = f"tenant {tenant}" if tenant else "untenanted deployment"
        super().__init__(f"{who}: secret {key!r}: {reason}")
