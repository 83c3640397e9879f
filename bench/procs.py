"""Process measurements for the benchmarks (Linux /proc, no extra dependencies).

:func:`run_measured` runs one command to completion and returns:

* ``cpu_s``: the CPU time (user + system) of the whole process tree, exact:
  the ``getrusage(RUSAGE_CHILDREN)`` delta, which holds every waited-for
  descendant (a process's rusage includes the children it waited for).
* ``peak_rss_mb``: the peak of the summed RSS of the tree, sampled every
  ``interval`` (shared pages are counted once per process: an upper bound,
  which counts a forked worker's pages shared with its warm parent again);
* ``peak_pss_mb``: the same for the PSS (``/proc/<pid>/smaps_rollup``: each
  shared page divided among the processes sharing it), the tree's memory;
* ``cpu_by_class``: that CPU split by who spent it, from the same samples:
  each process's last seen ``utime + stime`` (``/proc/<pid>/stat``), classed
  as ``engine`` (a ``pulumi`` CLI and everything under it: language host,
  program, providers, git), ``root`` (the command itself, e.g. the runner's
  orchestrator) or ``other`` (every other process: the runner's workers, the
  ``xargs``/``sh`` of a shell loop). A process's last ``interval`` and very
  short processes are missed: ``unattributed`` is the exact total minus the
  sampled classes (it belongs to any of them).
* ``peak_engines``: the most ``pulumi`` CLI processes alive at once (how many
  targets really ran concurrently).
"""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from runner.worker import descendants  # the /proc walk the worker's holder records use

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process itself) from /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


def _argv(pid: int) -> list[str]:
    try:
        return [a for a in Path(f"/proc/{pid}/cmdline").read_text(errors="replace").split("\0") if a]
    except OSError:
        return []


def is_engine_cli(argv: list[str]) -> bool:
    return bool(argv) and os.path.basename(argv[0]) == "pulumi"


def _is_engine(argv: list[str]) -> bool:
    text = " ".join(argv[:3])
    return bool(argv) and (
        os.path.basename(argv[0]).startswith("pulumi")
        or "pulumi-language-python" in text
        or "pulumi.dynamic" in text
        or "pulumi-resource-" in text
    )


class TreeSampler(threading.Thread):
    """Samples a process tree until stopped: peak RSS, CPU per process, engines alive."""

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.root, self.interval = pid, interval
        self.peak_rss = self.peak_pss = 0
        self.peak_engines = 0
        self.parent: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.argv: dict[int, list[str]] = {}
        self._stop_event = threading.Event()

    def sample(self) -> None:
        rss, pss, engines = 0, 0, 0
        for pid in [self.root, *descendants(self.root)]:
            stat = _stat(pid)
            if stat is None:
                continue
            if pid not in self.argv or not self.argv[pid]:
                self.argv[pid] = _argv(pid)  # a forked child may exec later: looked at again while empty
            self.parent[pid], self.cpu[pid] = stat
            rss += _rss(pid)
            pss += _pss(pid)
            if is_engine_cli(self.argv[pid]) and not is_engine_cli(self.argv.get(stat[0], [])):
                engines += 1
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_engines = max(self.peak_engines, engines)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def kind(self, pid: int) -> str:
        seen = set()
        current: int | None = pid
        while current is not None and current not in seen:
            seen.add(current)
            if _is_engine(self.argv.get(current, [])):
                return "engine"
            if current == self.root:
                break
            current = self.parent.get(current)
        return "root" if pid == self.root else "other"

    def cpu_by_class(self) -> dict[str, float]:
        out = {"root": 0.0, "engine": 0.0, "other": 0.0}
        for pid, cpu in self.cpu.items():
            out[self.kind(pid)] += cpu
        return out


@dataclass
class Measured:
    argv: list[str]
    returncode: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    peak_pss_mb: float
    peak_engines: int
    cpu_by_class: dict[str, float] = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""
    load1: float = 0.0  # the higher 1-minute load average of start and end (other work on the machine)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_measured(
    argv: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None, interval: float = 0.05
) -> Measured:
    """Run one command to completion (one at a time: the CPU delta is per process)."""
    load_start = os.getloadavg()[0]
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    sampler = TreeSampler(proc.pid, interval)
    sampler.start()
    try:
        out, err = proc.communicate()
    finally:
        sampler.stop()
    wall = time.perf_counter() - t0
    total = _children_cpu() - cpu0
    by_class = sampler.cpu_by_class()
    by_class["unattributed"] = max(0.0, total - sum(by_class.values()))
    return Measured(
        argv=list(argv),
        returncode=proc.returncode,
        wall_s=wall,
        cpu_s=total,
        peak_rss_mb=sampler.peak_rss / 2**20,
        peak_pss_mb=sampler.peak_pss / 2**20,
        peak_engines=sampler.peak_engines,
        cpu_by_class=by_class,
        stdout=out,
        stderr=err,
        load1=max(load_start, os.getloadavg()[0]),
    )
