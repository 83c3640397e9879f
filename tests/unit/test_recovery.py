"""Lock recovery removes a DIY-backend lock only when its holder is provably dead (#15.8)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from runner import recovery
from runner.worker import HolderRecorder

STACK = "shop-1.staging"


@pytest.fixture
def backend(tmp_path) -> str:
    return (tmp_path / "state").as_uri()


def _lock(backend: str, pid: int, hostname: str | None = None) -> Path:
    directory = recovery.lock_dir(backend, STACK)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{uuid.uuid4()}.json"
    path.write_text(
        json.dumps(
            {
                "pid": pid,
                "username": "root",
                "hostname": hostname or socket.gethostname(),
                "timestamp": "2026-11-27T12:00:00Z",
            }
        )
    )
    return path


def _dead_pid() -> tuple[int, int]:
    """A pid that ran here (with its start time) and has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    started = recovery.start_time(proc.pid)
    proc.kill()
    proc.wait()
    return proc.pid, started


def _record(holders: Path, pids: dict[int, int], **identity) -> Path:
    path = holders / STACK / f"{uuid.uuid4().hex}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**recovery.identity(), **identity, "stack": STACK, "pids": {str(p): t for p, t in pids.items()}}
    path.write_text(json.dumps(record))
    return path


def test_a_lock_of_this_host_name_with_an_invisible_pid_is_kept(backend, tmp_path):
    """A live engine in another PID namespace (a container with the same host name):
    its pid is not running here, and nothing proves it ever ran here."""
    pid, _ = _dead_pid()
    lock = _lock(backend, pid)
    assert recovery.remove_dead_locks(backend, STACK, tmp_path / "holders") == []
    assert lock.exists()
    hint = recovery.kept_locks_hint(backend, STACK, tmp_path / "holders")
    assert "not known to have run in this PID namespace" in hint and f"rm '{lock}'" in hint


def test_a_lock_of_a_recorded_dead_engine_is_removed(backend, tmp_path):
    pid, started = _dead_pid()
    lock = _lock(backend, pid)
    record = _record(tmp_path / "holders", {pid: started})
    removed = recovery.remove_dead_locks(backend, STACK, tmp_path / "holders")
    assert len(removed) == 1 and f"dead pid {pid}" in removed[0]
    assert not lock.exists()
    assert not record.exists()  # the record of exited processes is pruned too


@pytest.mark.parametrize("identity", [{"pidns": "1"}, {"boot_id": "another-boot"}, {"hostname": "elsewhere"}])
def test_a_record_of_another_namespace_boot_or_host_proves_nothing(backend, tmp_path, identity):
    pid, started = _dead_pid()
    lock = _lock(backend, pid)
    _record(tmp_path / "holders", {pid: started}, **identity)
    assert recovery.remove_dead_locks(backend, STACK, tmp_path / "holders") == []
    assert lock.exists()


def test_a_live_holder_keeps_its_lock_and_a_reused_pid_does_not(backend, tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock = _lock(backend, live.pid)
        record = _record(tmp_path / "holders", {live.pid: recovery.start_time(live.pid)})
        assert recovery.remove_dead_locks(backend, STACK, tmp_path / "holders") == []
        assert lock.exists() and "is running" in recovery.kept_locks_hint(backend, STACK, tmp_path / "holders")
        # the same pid number with another start time: the recorded holder exited, the pid was reused
        record.write_text(
            json.dumps({**json.loads(record.read_text()), "pids": {str(live.pid): recovery.start_time(live.pid) - 1}})
        )
        assert len(recovery.remove_dead_locks(backend, STACK, tmp_path / "holders")) == 1
        assert not lock.exists()
    finally:
        live.kill()
        live.wait()


def test_another_hosts_lock_is_kept(backend, tmp_path):
    lock = _lock(backend, 1, hostname="another-host")
    assert recovery.remove_dead_locks(backend, STACK, tmp_path / "holders") == []
    assert lock.exists() and "another host" in recovery.kept_locks_hint(backend, STACK, tmp_path / "holders")


def test_locks_of_an_s3_backend_are_said_to_be_left_alone():
    backend = "s3://bucket/state"
    assert recovery.remove_dead_locks(backend, STACK) == []
    assert "not checked or removed" in recovery.kept_locks_hint(backend, STACK)


def test_the_worker_records_its_children_with_start_times_and_removes_the_record(tmp_path):
    recorder = HolderRecorder(tmp_path / "holders", STACK)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for _ in range(500):
            record = json.loads(recorder.path.read_text())
            if str(child.pid) in record["pids"]:
                break
            time.sleep(0.02)
        assert record["pids"][str(child.pid)] == recovery.start_time(child.pid)
        assert str(os.getpid()) in record["pids"]
        assert (record["hostname"], record["pidns"], record["boot_id"]) == tuple(recovery.identity().values())
    finally:
        child.kill()
        child.wait()
        recorder.close()
    assert not recorder.path.exists()


def test_a_zombie_holder_is_dead_though_not_yet_reaped(tmp_path):
    """A killed engine whose parent died too waits for init to reap it (~1 s in some containers):
    its lock must already count as a dead holder's, or `runner recover` keeps it."""
    proc = subprocess.Popen(["sleep", "60"])
    started = recovery.start_time(proc.pid)
    assert started is not None
    proc.kill()
    deadline = time.monotonic() + 5
    while open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":  # exited, not reaped
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        assert recovery.start_time(proc.pid) is None
    finally:
        proc.wait()


def test_the_worker_records_the_processes_its_children_start(tmp_path):
    """The plugins below the CLI (started by it, in groups of their own) are recorded too:
    recovery ends them after a kill -9 (runner.recovery.end_leftovers)."""
    recorder = HolderRecorder(tmp_path / "holders", STACK)
    spawn = "import subprocess, sys, time; subprocess.Popen(['sleep', '30'], start_new_session=True); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", spawn])
    grandchildren = []
    try:
        for _ in range(500):
            record = json.loads(recorder.path.read_text())
            grandchildren = [int(p) for p in record["pids"] if _parent(int(p)) == child.pid]
            if grandchildren:
                break
            time.sleep(0.02)
        assert grandchildren and recovery._cmdline(grandchildren[0]).startswith("sleep 30")
        assert record["pids"][str(child.pid)] == recovery.start_time(child.pid)
    finally:
        for pid in grandchildren:
            os.kill(pid, signal.SIGKILL)
        child.kill()
        child.wait()
        recorder.close()


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def test_the_workers_own_provider_server_is_recorded_but_not_taken_for_the_engine(tmp_path):
    """The worker's provider server (engine.DynamicProvider) runs the whole operation: it is
    recorded, but the recorder keeps polling for the CLI every few ms instead of switching to
    the engine-running walk (a pidfd wait) because of it. In a process of its own: a test
    process has other children (a warm worker parent), which are rightly taken for engines."""
    script = f"""
import json, subprocess, time
from pathlib import Path
from runner import recovery, worker
own = subprocess.Popen(["sleep", "30"])
waits, real_select = [], worker.select.select
worker.select.select = lambda *a: waits.append(a) or real_select(*a)
recorder = worker.HolderRecorder(Path({str(tmp_path / "holders")!r}), {STACK!r}, own=(own.pid,))
for _ in range(500):
    if str(own.pid) in json.loads(recorder.path.read_text())["pids"]:
        break
    time.sleep(0.02)
recorded = json.loads(recorder.path.read_text())["pids"].get(str(own.pid)) == recovery.start_time(own.pid)
time.sleep(0.3)
print(json.dumps({{"recorded": recorded, "waits": len(waits)}}))
recorder.close()
own.kill()
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"recorded": True, "waits": 0}
