"""Deterministic, stable assignment of stacks to shards (``--shard I/N``).

N machines (CI matrix jobs, Kubernetes Indexed Jobs) each run the targets of
one shard.  The assignment uses rendezvous (highest-random-weight) hashing:
a stack belongs to the shard ``s`` in ``0..N-1`` with the highest weight
``sha256(f"{s}:{stack}")``.  So it:

* depends only on the stack name and N (every machine computes the same split
  without talking to the others, whatever the order of the registry);
* is stable: adding or removing a tenant moves only that tenant's stacks, and
  going from N to N+1 shards moves only the stacks the new shard wins
  (about 1/(N+1) of them), all of them to the new shard.

Shard indexes are 0-based, like ``JOB_COMPLETION_INDEX``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

__all__ = [
    "shard_of",
    "select_shard",
    "parse_shard",
    "format_shard",
    "shard_from_env",
    "validate_shard",
]

T = TypeVar("T")

_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def _weight(shard: int, stack: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{shard}:{stack}".encode()).digest(), "big")


def validate_shard(index: int, count: int) -> None:
    """Raise ValueError unless ``0 <= index < count`` and ``count >= 1``."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"invalid shard count {count!r}: need at least 1 shard")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise ValueError(
            f"invalid shard index {index!r} for {count} shard(s): shard indexes are 0-based, 0 <= I < {count}"
        )


def shard_of(stack: str, count: int) -> int:
    """The shard (0-based) that owns ``stack`` when there are ``count`` shards."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"invalid shard count {count!r}: need at least 1 shard")
    if count == 1:
        return 0
    # Ties are practically impossible with 256-bit weights; the lower index
    # wins if one ever happens, so the result is still deterministic.
    return max(range(count), key=lambda s: (_weight(s, stack), -s))


def select_shard(
    items: Iterable[T],
    index: int,
    count: int,
    key: Callable[[T], str] = lambda t: t.stack,  # type: ignore[attr-defined]
) -> list[T]:
    """The items of shard ``index`` of ``count``, in their original order."""
    validate_shard(index, count)
    return [item for item in items if shard_of(key(item), count) == index]


def parse_shard(value: str) -> tuple[int, int]:
    """``"1/3"`` -> ``(1, 3)``; ValueError with a clear message otherwise."""
    match = _SHARD_RE.match(value or "")
    if not match:
        raise ValueError(
            f"invalid shard {value!r}: expected I/N with a 0-based index, 0 <= I < N (for example 0/3, 1/3, 2/3)"
        )
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise ValueError(f"invalid shard {value!r}: N must be at least 1")
    if index >= count:
        raise ValueError(f"invalid shard {value!r}: the index is 0-based, so it must be below N (0..{count - 1})")
    return index, count


def format_shard(index: int, count: int) -> str:
    validate_shard(index, count)
    return f"{index}/{count}"


def shard_from_env(environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """The shard of a Kubernetes Indexed Job, or None outside one.

    Kubernetes sets ``JOB_COMPLETION_INDEX`` itself; the Job spec must pass the
    number of completions as ``JOB_COMPLETION_COUNT`` (for example
    ``value: "3"`` next to ``completions: 3``).
    """
    env: Mapping[str, Any] = os.environ if environ is None else environ
    raw_index = (env.get("JOB_COMPLETION_INDEX") or "").strip()
    raw_count = (env.get("JOB_COMPLETION_COUNT") or "").strip()
    if not raw_index and not raw_count:
        return None
    if not raw_index:
        raise ValueError(
            "JOB_COMPLETION_COUNT is set but JOB_COMPLETION_INDEX is not: "
            "run as a Kubernetes Indexed Job (completionMode: Indexed) or unset it"
        )
    if not raw_count:
        raise ValueError(
            f"JOB_COMPLETION_INDEX={raw_index} is set but JOB_COMPLETION_COUNT is not: "
            "add JOB_COMPLETION_COUNT (the Job's completions) to the pod's environment"
        )
    return parse_shard(f"{raw_index}/{raw_count}")
