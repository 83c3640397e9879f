"""WorkerProcess: its own session, signalled as a group, nothing of a target left running (#16)."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time

from runner.protocol import WorkerProcess, WorkerRequest, WorkerResult, session_processes

REQUEST = WorkerRequest(
    bin_dir="/nowhere",
    project_dir="/nowhere",
    backend_url="file:///nowhere",
    work_root="/nowhere",
    stack="dev",
    operation="up",
    secret_values={"token": "s3cr3t"},
)

# A stand-in for runner.worker: reads the request, starts a "plugin" in a process
# group of its own (as the engine does, Go's Setpgid) that outlives it, and an
# "engine" in its own group; both report the signals they get to the log.
FAKE_WORKER = textwrap.dedent("""
    import json, os, signal, subprocess, sys, time
    request = json.loads(sys.stdin.read())
    child = "import signal, sys, time\\n" \\
            "signal.signal(signal.SIGINT, lambda *a: print(sys.argv[1], 'SIGINT', flush=True))\\n" \\
            "print(sys.argv[1], 'ready', flush=True)\\n" \\
            "time.sleep(60)\\n"
    plugin = subprocess.Popen([sys.executable, "-c", child, "plugin"], process_group=0, stdout=sys.stderr)
    engine = subprocess.Popen([sys.executable, "-c", child, "engine"], stdout=sys.stderr)
    signal.signal(signal.SIGINT, lambda *a: print("worker SIGINT", file=sys.stderr, flush=True))
    print(json.dumps({"type": "progress", "phase": "begin", "pid": plugin.pid, "engine": engine.pid,
                      "stack": request["stack"], "secret_seen": request["secret_values"]["token"]}), flush=True)
    if os.environ.get("HOLD"):
        time.sleep(float(os.environ["HOLD"]))
    print(json.dumps({"type": "result", "ok": True}), flush=True)
""")


class FakeWorker(WorkerProcess):
    COMMAND = (sys.executable, "-c", FAKE_WORKER)


def _start(tmp_path, **env) -> tuple[FakeWorker, object]:
    log = open(tmp_path / "worker.log", "wb")
    return FakeWorker(REQUEST, env={"PATH": os.environ["PATH"], **env}, cwd=tmp_path, log=log), log


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_worker_leads_its_own_session_and_gets_the_request_on_its_pipe(tmp_path):
    proc, log = _start(tmp_path, HOLD="2")
    messages = proc.messages()
    begin = next(messages)
    assert os.getsid(proc.pid) == proc.pid == os.getpgid(proc.pid)
    assert begin["secret_seen"] == "s3cr3t" and begin["stack"] == "dev"
    assert "s3cr3t" not in open(f"/proc/{proc.pid}/cmdline", "rb").read().decode(errors="replace")
    assert set(session_processes(proc.pid)) >= {proc.pid, begin["pid"], begin["engine"]}
    assert WorkerResult.from_message(next(messages)).ok
    assert proc.wait() == 0
    log.close()


def test_wait_ends_every_process_the_target_left_in_its_session(tmp_path):
    """A plugin in a process group of its own, still running after the worker
    exited, is ended when the orchestrator waits for the worker."""
    proc, log = _start(tmp_path)
    messages = proc.messages()
    begin = next(messages)
    list(messages)
    plugin, engine = begin["pid"], begin["engine"]
    assert _alive(plugin) and _alive(engine)
    assert proc.wait() == 0
    _wait_for(lambda: not _alive(plugin) and not _alive(engine))
    assert session_processes(proc.pid) == []
    log.close()


def test_interrupt_gives_the_group_one_sigint_and_end_session_ends_everything(tmp_path):
    proc, log = _start(tmp_path, HOLD="30")
    messages = proc.messages()
    begin = next(messages)
    _wait_for(lambda: (tmp_path / "worker.log").read_text().count("ready") == 2)
    proc.interrupt()
    _wait_for(lambda: all(f"{who} SIGINT" in (tmp_path / "worker.log").read_text() for who in ("worker", "engine")))
    text = (tmp_path / "worker.log").read_text()
    assert text.count("worker SIGINT") == 1 and text.count("engine SIGINT") == 1
    assert "plugin SIGINT" not in text  # its own group: the engine cancels its plugins itself
    ended = proc.end_session()
    assert set(ended) >= {proc.pid, begin["pid"], begin["engine"]}
    assert proc.wait() == -signal.SIGKILL
    _wait_for(lambda: not _alive(begin["pid"]))
    log.close()


def test_a_warm_worker_is_forked_with_its_own_session_environment_cwd_and_pipes(tmp_path, monkeypatch):
    """runner.pool: the real worker forked from the warm parent; the engine is
    missing here, so the operation fails fast and the answer is a classified error."""
    monkeypatch.setenv("RUNNER_WARM_WORKERS", "1")
    request = WorkerRequest(
        bin_dir=str(tmp_path / "no-engine"),
        project_dir=str(tmp_path),
        backend_url="file:///nowhere",
        work_root=str(tmp_path / "work"),
        stack="dev",
        operation="outputs",
        secret_values={"token": "s3cr3t"},
    )
    env = {"PATH": "/usr/bin:/bin", "PULUMI_CONFIG_PASSPHRASE": "stack-phrase", "MARK": "mine"}
    with open(tmp_path / "worker.log", "wb") as log:
        proc = WorkerProcess(request, env=env, cwd=tmp_path, log=log)
        assert proc._proc is None  # forked by the warm parent, not started as a new interpreter
        assert os.getsid(proc.pid) == proc.pid
        messages = list(proc.messages())
        assert proc.wait() == 0 and proc.returncode == 0
    result = WorkerResult.from_message(messages[-1])
    assert not result.ok and result.error["kind"] == "failed"
    assert "No such file or directory" in result.error["message"]
    # the warm parent itself holds none of the target's environment
    from runner import pool

    parent_env = open(f"/proc/{pool._client.proc.pid}/environ", "rb").read()
    assert b"stack-phrase" not in parent_env and b"MARK" not in parent_env


def test_a_forked_worker_sees_exactly_the_environment_and_cwd_it_was_given(tmp_path):
    from runner import pool

    read_r, read_w = os.pipe()
    out_r, out_w = os.pipe()
    env = {"PATH": "/usr/bin:/bin", "MARK": "mine"}
    # the child runs runner.worker.main(): a request that is not JSON makes it fail, after the fork
    pid, exited = pool.spawn(env=env, cwd=tmp_path, stdin=read_r, stdout=out_w, stderr=out_w)
    os.close(read_r)
    os.close(out_w)
    _wait_for(lambda: os.readlink(f"/proc/{pid}/cwd") == str(tmp_path))  # before it reads its request
    os.write(read_w, b"not json")
    os.close(read_w)
    output = os.read(out_r, 65536).decode()
    os.close(out_r)
    assert exited.result(timeout=30) == 1
    assert "worker: JSONDecodeError" in output
