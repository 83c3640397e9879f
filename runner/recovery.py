"""Recovery after an interrupted run: stale locks and pending operations.

A DIY-backend lock survives `kill -9` of its holder, and `pulumi cancel`
deletes every lock, even a live holder's. So a lock is removed only when its
holder is provably dead. The lock file records only `pid`, `username`,
`hostname` and `timestamp`: a pid that is not running here proves nothing by
itself (a container with the same host name has its own PID namespace, and
its live engine's pid is invisible here). The proof comes from holder
records: each worker records, in the runner's state directory, its host name,
PID namespace (inode of /proc/self/ns/pid), boot id and the pid and start time
of every process it starts (the engine among them). A lock is removed only
when its host name is this host's, a record of this host, PID namespace and
boot names its pid, and no process runs with that pid and start time.
Anything else is reported as locked, with the command that clears it by hand.
Pending operations left in the state by an interrupted update
(pulumi/pulumi#4265) are resolved by the engine seam (`recover` operation).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse, urlsplit, urlunsplit

from runner.names import PROJECT

STALE_AFTER_S = 2.0


def lock_dir(backend_url: str, stack: str) -> Path | None:
    """Where a file:// backend keeps the stack's locks; None for other backends."""
    if not backend_url.startswith("file://"):
        return None
    root = Path(urlparse(backend_url).path)
    return root / ".pulumi" / "locks" / "organization" / PROJECT / stack


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, /proc/PID/stat field 22); None when not running.
    A zombie is not running: it has exited and holds nothing, though its parent (or an init that
    reaps orphans slowly, as in some containers: seen for ~1 s here) has not collected it yet."""
    stat = _read(f"/proc/{pid}/stat") if pid > 0 else None
    if not stat:
        return None
    try:
        fields = stat.rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (IndexError, ValueError):
        return None


def identity() -> dict[str, str | None]:
    """What makes a pid meaningful: host name, PID namespace and boot."""
    try:
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pidns = None
    return {"hostname": socket.gethostname(), "pidns": pidns, "boot_id": _read("/proc/sys/kernel/random/boot_id")}


def holders_dir(work_root: Path) -> Path:
    """Where workers record their processes (the runner's own state, never the backend's lock folder:
    the engine counts every file there as a lock)."""
    return Path(work_root) / "_holders"


#: Set in each worker's environment (runner.worker): every process its engine starts (the CLI,
#: the language host, the providers) inherits it, so a process the holder record has not caught
#: yet is still provably that worker's. The value: boot id, worker pid and its start time.
WORKER_MARK = "RUNNER_WORKER_MARK"


def worker_mark(boot_id: str | None, pid: int, started: int | None) -> str:
    return f"{boot_id}:{pid}:{started}"


def _marked(mark: str) -> list[int]:
    """The processes whose environment holds `WORKER_MARK=mark` (readable for this user's processes)."""
    needle = f"{WORKER_MARK}={mark}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry))
    return found


def write_holder_record(holders_dir: Path, stack: str, pids: dict[int, int]) -> Path:
    """Record (atomically) that this process and `pids` ({pid: start time}) run on
    this host, PID namespace and boot, for `stack`. Written by the worker."""
    path = holders_dir / stack / f"{os.getpid()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    me = {os.getpid(): start_time(os.getpid())}
    record = {**identity(), "stack": stack, "pids": {str(p): t for p, t in {**me, **pids}.items() if t is not None}}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)
    return path


def _holder_records(holders_dir: Path | None, stack: str) -> list[tuple[Path, dict]]:
    if holders_dir is None or not (holders_dir / stack).is_dir():
        return []
    found = []
    for path in sorted((holders_dir / stack).glob("*.json")):
        try:
            found.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return found


def holder_state(lock: dict, records: list[dict], me: dict | None = None) -> tuple[bool, str]:
    """(provably dead, why) for one lock's holder."""
    me = me or identity()
    pid, host = lock.get("pid"), lock.get("hostname")
    if host != me["hostname"]:
        return False, f"held by pid {pid} on another host ({host})"
    if not isinstance(pid, int) or pid <= 0:
        return False, f"the lock names no valid pid ({pid!r})"
    if not me["pidns"] or not me["boot_id"]:
        return False, f"pid {pid}: this system shows no PID namespace or boot id to compare"
    known = [
        r
        for r in records
        if (r.get("hostname"), r.get("pidns"), r.get("boot_id")) == (me["hostname"], me["pidns"], me["boot_id"])
        and str(pid) in (r.get("pids") or {})
    ]
    if not known:
        return False, (
            f"pid {pid} on {host} is not known to have run in this PID namespace and boot "
            f"(another container with this host name, or another runner's state directory)"
        )
    started = {r["pids"][str(pid)] for r in known}
    if start_time(pid) in started:
        return False, f"pid {pid} on {host} is running"
    return True, f"pid {pid} on {host} has exited"


def _file_locks(backend_url: str, stack: str) -> list[dict]:
    directory = lock_dir(backend_url, stack)
    if directory is None or not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob("*.json")):
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError):
            continue

        def remove(path=path) -> None:
            for each in (path, path.with_name(path.name + ".attrs")):
                each.unlink(missing_ok=True)

        found.append({"path": path, "content": content, "remove": remove, "manual": f"rm '{path}'"})
    return found


def _postgres_table(backend_url: str) -> tuple[str, str]:
    """The connection URL (without the engine's own `table` parameter) and the state table."""
    parts = urlsplit(backend_url)
    query = parse_qs(parts.query)
    table = (query.pop("table", None) or ["pulumi_state"])[0]
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", table):
        raise ValueError(f"unexpected state table name {table!r}")
    return urlunsplit(parts._replace(query=urlencode(query, doseq=True))), table


def _postgres_locks(backend_url: str, stack: str) -> list[dict]:
    """The lock rows of a postgres:// DIY backend: one row per lock, key
    `<database>/.pulumi/locks/organization/<project>/<stack>/<id>.json` (the engine
    prefixes every key with the URL's path), data {"data": base64}."""
    import psycopg

    url, table = _postgres_table(backend_url)
    root = urlsplit(backend_url).path.strip("/")
    prefix = (f"{root}/" if root else "") + f".pulumi/locks/organization/{PROJECT}/{stack}/"
    with psycopg.connect(url, connect_timeout=10) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0]
        if exists is None:  # the engine creates its table on first use
            return []
        rows = conn.execute(
            f"SELECT key, data FROM {table} WHERE key LIKE %s ORDER BY key",  # noqa: S608
            (prefix.replace("_", "\\_") + "%",),
        ).fetchall()
    found = []
    for key, data in rows:
        if not key.endswith(".json") or "/" in key[len(prefix) :]:
            continue
        try:
            data = json.loads(data) if isinstance(data, str) else data
            content = json.loads(base64.b64decode(data["data"]))
        except (ValueError, KeyError, TypeError):
            continue

        def remove(key=key) -> None:
            with psycopg.connect(url, connect_timeout=10) as conn:
                conn.execute(f"DELETE FROM {table} WHERE key = %s", (key,))  # noqa: S608

        found.append(
            {
                "path": key,
                "content": content,
                "remove": remove,
                "manual": f"DELETE FROM {table} WHERE key = '{key}'; (in the state database)",
            }
        )
    return found


def _raw_locks(backend_url: str, stack: str) -> list[dict] | None:
    """The stack's locks, or None for a backend whose locks the runner cannot read."""
    if backend_url.startswith("file://"):
        return _file_locks(backend_url, stack)
    if backend_url.startswith("postgres://"):
        return _postgres_locks(backend_url, stack)
    return None


def locks(backend_url: str, stack: str, holders_dir: Path | None = None) -> list[dict]:
    """Each lock of the stack: where it is, holder pid and host, and whether its holder
    may be alive (`alive`: not provably dead) with the reason."""
    try:
        raw = _raw_locks(backend_url, stack) or []
    except Exception:  # noqa: BLE001 - unreadable (database down): nothing is removed; the engine will say
        raw = []
    records = [r for _, r in _holder_records(holders_dir, stack)]
    me = identity()
    found = []
    for lock in raw:
        content = lock["content"]
        dead, why = holder_state(content, records, me)
        found.append(
            {
                **lock,
                "pid": content.get("pid"),
                "hostname": content.get("hostname"),
                "timestamp": content.get("timestamp"),
                "local": content.get("hostname") == me["hostname"],
                "alive": not dead,
                "why": why,
            }
        )
    return found


def remove_dead_locks(backend_url: str, stack: str, holders_dir: Path | None = None) -> list[str]:
    """End the leftovers of dead runs, then remove the locks whose holder is
    provably dead (see the module doc); describe each."""
    done = end_leftovers(holders_dir, stack)
    for lock in locks(backend_url, stack, holders_dir):
        if not lock["alive"]:
            lock["remove"]()
            done.append(f"lock of dead pid {lock['pid']} on {lock['hostname']} ({lock['why']})")
    _prune_holder_records(holders_dir, stack)
    return done


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def end_leftovers(holders_dir: Path | None, stack: str) -> list[str]:
    """Kill the processes a dead run left running: the engine starts its plugins
    (language host, dynamic provider) in process groups of their own, so a
    kill -9 of the runner's process group leaves them running. A process is
    ended only when it is provably ours and its run is dead: the worker that
    wrote a holder record of this host, PID namespace and boot (the record's file
    name) has exited, and the record names the process with its start time, or
    the process carries that worker's mark (WORKER_MARK) in its environment."""
    me = identity()
    ended = []
    for path, record in _holder_records(holders_dir, stack):
        if (record.get("hostname"), record.get("pidns"), record.get("boot_id")) != (
            me["hostname"],
            me["pidns"],
            me["boot_id"],
        ):
            continue
        pids = {int(p): t for p, t in (record.get("pids") or {}).items()}
        worker = int(path.stem) if path.stem.isdigit() else None
        if worker is None or worker not in pids or start_time(worker) == pids[worker]:
            continue  # not a worker's record, or its worker still runs: a live operation
        marked = {pid: start_time(pid) for pid in _marked(worker_mark(record.get("boot_id"), worker, pids[worker]))}
        for pid, started in {**pids, **marked}.items():
            if start_time(pid) != started:
                continue  # exited (or the pid was reused)
            command = _cmdline(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            ended.append(f"ended process {pid} ({command[:80]}) left running by a dead run")
    return ended


def _prune_holder_records(holders_dir: Path | None, stack: str) -> None:
    """Drop records of this namespace and boot whose processes have all exited."""
    me = identity()
    for path, record in _holder_records(holders_dir, stack):
        if (record.get("hostname"), record.get("pidns"), record.get("boot_id")) != (
            me["hostname"],
            me["pidns"],
            me["boot_id"],
        ):
            continue
        if all(start_time(int(p)) != t for p, t in (record.get("pids") or {}).items()):
            path.unlink(missing_ok=True)


def kept_locks_hint(backend_url: str, stack: str, holders_dir: Path | None = None) -> str:
    """For a target reported `locked`: who holds the lock, why it was kept, and how to
    clear it by hand once sure no operation runs (never `pulumi cancel`, which
    deletes every lock of the stack)."""
    try:
        raw = _raw_locks(backend_url, stack)
    except Exception as exc:  # noqa: BLE001 - a hint must not turn a locked target into a crash
        return f"the locks could not be read ({type(exc).__name__})"
    if raw is None:
        scheme = backend_url.split(":", 1)[0]
        return (
            f"locks of a {scheme}:// backend are not checked or removed by the runner; once sure no "
            f"operation runs on {stack}, remove its lock by hand (`pulumi cancel --stack "
            f"organization/{PROJECT}/{stack}` removes every lock of the stack)"
        )
    held = locks(backend_url, stack, holders_dir)
    return "; ".join(
        f"{lock['why']}, since {lock['timestamp']}; if no operation runs there, remove it with `{lock['manual']}`"
        for lock in held
    )


def repair_checkpoint_files(
    backend_url: str, stack: str, stale_after: float = STALE_AFTER_S, holders_dir: Path | None = None
) -> list[str]:
    """Remove the empty `.attrs` sidecars a kill can leave in a file:// backend.

    The backend writes `<file>.attrs` before it renames the new checkpoint into
    place, not atomically: a kill between the two leaves a 0-byte `.attrs`, and
    every later command on the stack fails with `failed to load checkpoint:
    EOF`. Only done while no live process holds the stack's lock, and only for
    a sidecar empty for `stale_after` seconds (0 once the engine itself said it
    cannot read the checkpoint)."""
    if not backend_url.startswith("file://") or any(lock["alive"] for lock in locks(backend_url, stack, holders_dir)):
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


def checkpoint_readable(backend_url: str, stack: str) -> bool:
    """Whether a file:// backend's checkpoint of the stack reads whole now: its
    JSON parses and every `.attrs` sidecar is filled. After the engine said it
    could not read it, True means a concurrent write has completed since (the
    engine reads the checkpoint before it takes the lock): a retry will read it."""
    if not backend_url.startswith("file://"):
        return False
    folder = Path(urlparse(backend_url).path) / ".pulumi" / "stacks" / PROJECT
    try:
        json.loads((folder / f"{stack}.json").read_text())
        return all(path.stat().st_size > 0 for path in folder.glob(f"{stack}.json*.attrs"))
    except (OSError, ValueError):
        return False
