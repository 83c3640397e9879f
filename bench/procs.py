"""Process measurements for the benchmarks (Linux, no extra dependencies).

* :func:`run_measured` runs one command and returns its wall time, the CPU
  time of the whole (waited-for) process tree from ``getrusage(RUSAGE_CHILDREN)``
  deltas, and the peak RSS of the whole process tree, sampled from ``/proc``
  every ~50 ms in a thread (sum of the RSS of the process and every
  descendant found through ``/proc/<pid>/task/*/children``; shared pages are
  counted once per process, so this is an upper bound of real memory use).
* :func:`trace` runs one command under ``strace -f`` (execve, process exit,
  renames) and :func:`process_tree` turns the log into one record per
  executed process: what it ran, its parent, when it started and ended.
  :func:`classify` names each process (``pulumi up``, ``language host``,
  ``program``, ``provider``, ``runner worker``, ``git``, ...).
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from runner.worker import descendants  # noqa: E402  (one /proc walker for the runner and the bench)

PAGE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- /proc sampling


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def tree_rss(pid: int) -> tuple[int, int]:
    """(RSS of pid and all its descendants in bytes, number of processes)."""
    pids = [pid, *descendants(pid)]
    return sum(rss_bytes(p) for p in pids), len(pids)


class TreeSampler(threading.Thread):
    """Samples the RSS of a process tree until stopped; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_rss = 0
        self.peak_procs = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss, procs = tree_rss(self.pid)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_procs = max(self.peak_procs, procs)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@dataclass
class Measured:
    argv: list[str]
    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    peak_procs: int
    stdout: str = ""
    stderr: str = ""
    started: float = 0.0  # time.time() at start
    ended: float = 0.0
    load1: float = 0.0  # the higher 1-minute load average of start and end (other work on the machine)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_measured(argv: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
                 input: str | None = None, check: bool = False, ok_codes: tuple[int, ...] = (0,)) -> Measured:
    """Run one command to completion (one at a time: the CPU delta is not thread-safe)."""
    load_start = os.getloadavg()[0]
    cpu0 = _children_cpu()
    started = time.time()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, text=True, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sampler = TreeSampler(proc.pid)
    sampler.start()
    try:
        out, err = proc.communicate(input)
    finally:
        sampler.stop()
    wall = time.perf_counter() - t0
    result = Measured(argv=list(argv), returncode=proc.returncode, wall_s=wall, cpu_s=_children_cpu() - cpu0,
                      peak_rss_mb=sampler.peak_rss / 2**20, peak_procs=sampler.peak_procs,
                      stdout=out, stderr=err, started=started, ended=time.time(),
                      load1=max(load_start, os.getloadavg()[0]))
    if check and proc.returncode not in ok_codes:
        raise subprocess.CalledProcessError(proc.returncode, argv, out, err)
    return result


# --------------------------------------------------------------------------- strace


@dataclass
class Proc:
    pid: int
    parent: int | None
    forked: float
    exec_at: float | None = None
    exe: str | None = None
    args: list[str] = field(default_factory=list)
    ended: float | None = None
    execs: list[tuple[float, str, list[str]]] = field(default_factory=list)
    kind: str = ""

    @property
    def duration(self) -> float:
        start = self.exec_at if self.exec_at is not None else self.forked
        return (self.ended or start) - start

    @property
    def command(self) -> str:
        return " ".join(self.args)


_LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")
_EXECVE = re.compile(r'^execve\("([^"]*)", \[(.*?)\](?:, 0x[0-9a-f]+ /\*.*?\*/)?')
_STR = re.compile(r'"((?:[^"\\]|\\.)*)"')
_RET = re.compile(r"\)\s+=\s+(\d+)\s*$")
_RENAME = re.compile(r'^rename(?:at2?)?\((?:[^,]*, )?"([^"]*)", (?:[^,]*, )?"([^"]*)"')


def trace(argv: list[str], log: Path, *, env: dict[str, str] | None = None, cwd: str | Path | None = None) -> Measured:
    """Run argv under strace -f (process lifecycle and renames), log in `log`."""
    strace = shutil.which("strace")
    if not strace:
        raise RuntimeError("strace is not installed (apt-get install strace)")
    cmd = [strace, "-f", "-ttt", "-s", "256", "--seccomp-bpf",
           "-e", "trace=execve,clone,clone3,fork,vfork,exit_group,rename,renameat,renameat2",
           "-o", str(log), *argv]
    return run_measured(cmd, env=env, cwd=cwd, ok_codes=(0, 3))


def _args(text: str) -> list[str]:
    return [bytes(m, "utf-8").decode("unicode_escape") if "\\" in m else m for m in _STR.findall(text)]


def process_tree(log: Path) -> tuple[dict[int, Proc], list[tuple[float, int, str]]]:
    """Processes (by pid) and checkpoint-like renames (time, pid, target path) from a strace log."""
    procs: dict[int, Proc] = {}
    tgid: dict[int, int] = {}  # thread id -> process id
    pending_exec: dict[int, tuple[float, str, list[str]]] = {}
    pending_clone: dict[int, str] = {}
    renames: list[tuple[float, int, str]] = []
    root: int | None = None
    for raw in log.read_text(errors="replace").splitlines():
        match = _LINE.match(raw)
        if not match:
            continue
        pid, ts, rest = int(match[1]), float(match[2]), match[3]
        if root is None:
            root = pid
            procs[pid] = Proc(pid, None, ts)
            tgid[pid] = pid
        owner = tgid.get(pid, pid)
        if rest.startswith("execve("):
            found = _EXECVE.match(rest)
            if found:
                entry = (ts, found[1], _args(found[2]))
                if rest.rstrip().endswith("= 0"):
                    _record_exec(procs, owner, pid, entry)
                elif "<unfinished" in rest:
                    pending_exec[pid] = entry
        elif rest.startswith("<... execve resumed>"):
            entry = pending_exec.pop(pid, None)
            if entry and rest.rstrip().endswith("= 0"):
                _record_exec(procs, owner, pid, (ts, entry[1], entry[2]))
        elif rest.startswith(("clone(", "clone3(", "fork(", "vfork(")) or rest.startswith(
                ("<... clone resumed", "<... clone3 resumed", "<... fork resumed", "<... vfork resumed")):
            if rest.startswith("<..."):
                flags = pending_clone.pop(pid, "")
            elif "<unfinished" in rest:
                pending_clone[pid] = rest
                continue
            else:
                flags = rest
            ret = _RET.search(rest)
            if not ret:
                continue
            child = int(ret[1])
            if "CLONE_THREAD" in flags:
                tgid[child] = owner
            else:
                tgid[child] = child
                procs[child] = Proc(child, owner, ts)
        elif rest.startswith("+++ exited") or rest.startswith("+++ killed"):
            if pid in procs and tgid.get(pid, pid) == pid:
                procs[pid].ended = ts
        elif rest.startswith("rename"):
            found = _RENAME.match(rest)
            if found and rest.rstrip().endswith("= 0"):
                renames.append((ts, owner, found[2]))
    for proc in procs.values():
        proc.kind = classify(proc)
    return procs, renames


def _record_exec(procs: dict[int, Proc], owner: int, pid: int, entry) -> None:
    proc = procs.setdefault(owner, Proc(owner, None, entry[0]))
    proc.execs.append(entry)
    proc.exec_at, proc.exe, proc.args = entry


def classify(proc: Proc) -> str:
    args = proc.args
    exe = os.path.basename(proc.exe or "")
    text = " ".join(args)
    if not args:
        return "fork (no exec)"
    if exe == "pulumi":
        words = [a for a in args[1:] if not a.startswith("-")]
        sub = " ".join(words[:2]) if words and words[0] in ("stack", "config", "plugin") else (words[0] if words else "")
        return f"pulumi {sub}".strip()
    if exe == "pulumi-language-python":
        return "language host (pulumi-language-python)"
    if "pulumi-language-python-exec" in text:
        return "program (python exec shim + stacks/)"
    if exe == "pulumi-resource-pulumi-python":
        return "provider launcher (pulumi-resource-pulumi-python sh)"
    if "pulumi.dynamic" in text:
        return "provider (python -m pulumi.dynamic)"
    if "runner.worker" in text:
        return "runner worker (python -m runner.worker)"
    if "bench.runner_shim" in text or "runner.cli" in text or exe == "runner":
        return "runner CLI (orchestrator)"
    if exe == "git" or exe.startswith("git-"):
        sub = args[1] if len(args) > 1 else ""
        return f"git {sub}".strip()
    if exe in ("python", "python3") or exe.startswith("python3"):
        return f"python {' '.join(args[1:3])}"
    return exe


def ancestors(procs: dict[int, Proc], pid: int) -> list[int]:
    chain, seen = [], set()
    current = procs.get(pid)
    while current is not None and current.parent is not None and current.parent not in seen:
        seen.add(current.parent)
        chain.append(current.parent)
        current = procs.get(current.parent)
    return chain
