"""runner.recovery.end_leftovers: a dead run's processes are ended only when a
holder record proves them ours (this host, PID namespace, boot; pid and start
time) and the worker that wrote the record has exited (#18)."""

from __future__ import annotations

import json
import os
import subprocess
import time

from runner import recovery

STACK = "t-1.staging"


def _record(holders, worker: int, pids: dict[int, int]) -> None:
    path = holders / STACK / f"{worker}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({**recovery.identity(), "stack": STACK, "pids": {str(p): t for p, t in {**pids}.items()}})
    )


def _exited(proc: subprocess.Popen) -> bool:
    for _ in range(100):
        if proc.poll() is not None:
            return True
        time.sleep(0.02)
    return False


def test_a_dead_workers_leftover_plugin_is_ended(tmp_path):
    # the worker must be running when its start time is read: a `true` may already be a zombie,
    # which start_time reports as not running (this made the test flaky under load)
    worker = subprocess.Popen(["sleep", "60"])
    worker_started = recovery.start_time(worker.pid)
    assert worker_started is not None
    worker.kill()
    worker.wait()  # the worker (and its engine) died with the runner
    plugin = subprocess.Popen(["sleep", "60"], start_new_session=True)  # a plugin in a group of its own
    try:
        _record(tmp_path, worker.pid, {worker.pid: worker_started, plugin.pid: recovery.start_time(plugin.pid)})
        done = recovery.end_leftovers(tmp_path, STACK)
        assert _exited(plugin)
        assert done == [f"ended process {plugin.pid} (sleep 60) left running by a dead run"]
    finally:
        plugin.kill()
        plugin.wait()


def test_a_live_workers_processes_and_unrecorded_ones_are_kept(tmp_path):
    worker = subprocess.Popen(["sleep", "60"])
    plugin = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        _record(
            tmp_path,
            worker.pid,
            {worker.pid: recovery.start_time(worker.pid), plugin.pid: recovery.start_time(plugin.pid)},
        )
        assert recovery.end_leftovers(tmp_path, STACK) == []  # its worker runs: a live operation
        worker.kill()
        worker.wait()
        # the same pid with another start time is not the recorded process (pid reuse)
        _record(tmp_path, worker.pid, {worker.pid: 1, plugin.pid: recovery.start_time(plugin.pid) + 1})
        assert recovery.end_leftovers(tmp_path, STACK) == []
        assert plugin.poll() is None
    finally:
        for proc in (worker, plugin):
            proc.kill()
            proc.wait()


def test_a_plugin_the_record_missed_is_ended_by_its_workers_mark(tmp_path):
    """A plugin started just before the kill may not be in the holder record yet (the tree is
    walked every 100 ms): it carries its worker's mark in its environment (inherited from the
    worker through the engine), which proves it is that worker's. A process with another
    worker's mark is kept (failed in a kill -9 loop under load before the mark existed)."""
    worker = subprocess.Popen(["sleep", "60"])
    worker_started = recovery.start_time(worker.pid)
    assert worker_started is not None
    boot = recovery.identity()["boot_id"]
    ours = recovery.worker_mark(boot, worker.pid, worker_started)
    theirs = recovery.worker_mark(boot, worker.pid, worker_started + 1)
    worker.kill()
    worker.wait()
    env = dict(os.environ)
    plugin = subprocess.Popen(["sleep", "61"], start_new_session=True, env={**env, recovery.WORKER_MARK: ours})
    other = subprocess.Popen(["sleep", "62"], start_new_session=True, env={**env, recovery.WORKER_MARK: theirs})
    try:
        _record(tmp_path, worker.pid, {worker.pid: worker_started})  # the plugin is not in it
        done = recovery.end_leftovers(tmp_path, STACK)
        assert _exited(plugin)
        assert done == [f"ended process {plugin.pid} (sleep 61) left running by a dead run"]
        assert other.poll() is None
    finally:
        for proc in (plugin, other):
            proc.kill()
            proc.wait()
