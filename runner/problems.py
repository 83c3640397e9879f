"""Exceptions shared by the core modules that the CLI maps to exit codes.

Kept in a module of its own (no imports) so that low-level modules such as
runner.engine can raise a usage problem without importing runner.ops.
"""


class UsageProblem(Exception):
    """Bad input: a usage error, an invalid registry or selection (exit 2)."""
