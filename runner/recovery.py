"""Recovery after an interrupted run: stale locks and pending operations.

A DIY-backend lock survives `kill -9` of its holder, and `pulumi cancel`
deletes every lock, even a live holder's. So a lock is removed only when its
holder is provably dead: it names this host and its pid is gone (or is now
some other program). A lock of a live process, or of another host, is never
touched. Pending operations left in the state by an interrupted update
(pulumi/pulumi#4265) are resolved by the engine seam (`recover` operation).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

PROJECT = "runner"
STALE_AFTER_S = 2.0


def lock_dir(backend_url: str, stack: str) -> Path | None:
    """Where a file:// backend keeps the stack's locks; None for other backends."""
    if not backend_url.startswith("file://"):
        return None
    root = Path(urlparse(backend_url).path)
    return root / ".pulumi" / "locks" / "organization" / PROJECT / stack


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a reused pid that is no longer a pulumi process does not hold the lock
        return b"pulumi" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def locks(backend_url: str, stack: str) -> list[dict]:
    """Each lock of the stack: its file, holder pid and host, and whether the holder is alive here."""
    directory = lock_dir(backend_url, stack)
    if directory is None or not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob("*.json")):
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        local = content.get("hostname") == socket.gethostname()
        found.append({"path": path, "pid": content.get("pid"), "hostname": content.get("hostname"),
                      "local": local, "alive": (not local) or _alive(int(content.get("pid") or 0))})
    return found


def remove_dead_locks(backend_url: str, stack: str) -> list[str]:
    """Remove the locks whose holder is a dead process on this host; describe each."""
    removed = []
    for lock in locks(backend_url, stack):
        if lock["local"] and not lock["alive"]:
            for path in (lock["path"], lock["path"].with_name(lock["path"].name + ".attrs")):
                path.unlink(missing_ok=True)
            removed.append(f"lock of dead pid {lock['pid']} on {lock['hostname']}")
    return removed


def repair_checkpoint_files(backend_url: str, stack: str, stale_after: float = STALE_AFTER_S) -> list[str]:
    """Remove the empty `.attrs` sidecars a kill can leave in a file:// backend.

    The backend writes `<file>.attrs` before it renames the new checkpoint into
    place, not atomically: a kill between the two leaves a 0-byte `.attrs`, and
    every later command on the stack fails with `failed to load checkpoint:
    EOF`. Only done while no live process holds the stack's lock, and only for
    a sidecar empty for `stale_after` seconds (0 once the engine itself said it
    cannot read the checkpoint)."""
    if not backend_url.startswith("file://") or any(lock["alive"] for lock in locks(backend_url, stack)):
        return []
    root = Path(urlparse(backend_url).path) / ".pulumi"
    candidates = list((root / "stacks" / PROJECT).glob(f"{stack}.json*.attrs"))
    for folder in ("history", "backups"):
        candidates += (root / folder / PROJECT / stack).glob("*.attrs")
    repaired = []
    for path in candidates:
        try:
            info = path.stat()
        except OSError:
            continue
        # A live write fills its sidecar within milliseconds; an empty one that stayed empty for
        # seconds was left by a dead writer (a lock file being written may not parse yet).
        if info.st_size == 0 and time.time() - info.st_mtime >= stale_after:
            path.unlink(missing_ok=True)
            repaired.append(f"removed empty {path.name} left by an interrupted checkpoint write")
    return repaired
