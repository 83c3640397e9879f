"""How fast is `runner up --all-tenants` compared to a hand-written loop and to the engine's floor?

    python -m bench.fleet --tenants 10,50 --concurrency 1,2,4 [--out PATH]

Everything runs on the local platform with ``file://`` backends in a temporary
directory (nothing under the project's ``.runner`` is touched), and all three
ways of deploying are measured in the same run:

* naive: what users write by hand, a sequential loop of the plain ``pulumi``
  CLI over every target with the same program and config (``stack init`` +
  ``config set`` per key + ``pulumi up --yes --non-interactive --stack S``;
  redeploy = the ``up`` only; drift = ``refresh --preview-only`` + ``preview``).
  The shared stack is deployed first, as the runner does on every ``up``.
* runner: ``runner up --all-tenants`` (and ``runner drift --all-tenants``) at
  each ``--concurrency``, each concurrency in a fresh backend.
* floor: the engine's own minimum per stack, the same operations on an empty
  Python program (``import pulumi``) with ``--skip-preview`` on the same kind
  of backend, median per stack x N / cores.

for three operations: first deploy, no-change redeploy, drift check (plus a
no-change redeploy with ``--skip-unchanged`` when ``runner up --help`` lists
it). For each it reports wall time, total CPU time of the process tree
(``getrusage(RUSAGE_CHILDREN)``), peak RSS of the whole process tree (sampled
from /proc every 50 ms), per-target median and p95, and the ratios to naive
and floor. Then one target's three operations run under ``strace -f`` and the
breakdown shows every process the runner starts for it (CLI calls of the
Automation API, language host, program, providers), the time in each, the
checkpoint writes, and the runner's own overhead per target.

Results: a table on stdout and ``bench/results/<date>-<host>.json``. Asserts
nothing; the targets of the issue are evaluated and printed as PASS/FAIL.
Never run two benchmarks at once: the figures are per machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procs

PROJECT_DIR = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
RUNNER_BIN = str(Path(PYTHON).parent / "runner")
RELEASE = "bench"
OPERATIONS = ("first-deploy", "redeploy", "drift")
SKIP_OP = "redeploy-skip-unchanged"
CORES = os.cpu_count() or 1


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def stats(per_target: list[float]) -> dict[str, Any]:
    return {"per_target_median_s": _r(pct(per_target, 0.5)), "per_target_p95_s": _r(pct(per_target, 0.95)),
            "per_target_n": len(per_target)}


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def tenant_ids(n: int) -> list[str]:
    return [f"bench-{n}-{i}" for i in range(n)]


def tenant_config(tenant: str, platform_root: Path) -> dict[str, str]:
    """The config the runner gives a tenant stack (checked against its generated stack file)."""
    return {"platform": "local", "app_version": "1.0.0", "platform_root": str(platform_root),
            "domain": f"{tenant}.example.com", "tenant_name": f"Tenant {tenant}", "release": RELEASE}


def shared_config(platform_root: Path) -> dict[str, str]:
    return {"platform": "local", "app_version": "1.0.0", "platform_root": str(platform_root), "release": RELEASE}


def write_registry(path: Path, tenants: list[str], platform_root: Path) -> None:
    lines = ["defaults:", "  platform: local", '  app_version: "1.0.0"', f"  platform_root: {platform_root}",
             "environments:", "  - name: staging", "tenants:"]
    for tenant in tenants:
        lines += [f"  - id: {tenant}", f"    name: Tenant {tenant}", "    environments: [staging]",
                  f"    config: {{domain: {tenant}.example.com}}"]
    path.write_text("\n".join(lines) + "\n")


def engine_env(bin_dir: Path, backend: Path, home: Path) -> dict[str, str]:
    venv_bin = Path(PYTHON).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "RUNNER_"))}
    env.update({
        "PATH": os.pathsep.join([str(bin_dir), str(venv_bin), env.get("PATH", "/usr/bin:/bin")]),
        "PULUMI_BACKEND_URL": backend.as_uri(),
        "PULUMI_CONFIG_PASSPHRASE": "bench",
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PULUMI_PYTHON_CMD": PYTHON,
        "PULUMI_HOME": str(home),
    })
    backend.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    return env


@dataclass
class Sample:
    """One measured operation over a fleet (or a sequence of commands)."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    per_target: list[float] = field(default_factory=list)
    failures: int = 0
    notes: list[str] = field(default_factory=list)
    load1_max: float = 0.0

    def add(self, m: procs.Measured) -> None:
        self.load1_max = max(self.load1_max, m.load1)
        self.cpu_s += m.cpu_s
        self.peak_rss_mb = max(self.peak_rss_mb, m.peak_rss_mb)

    def to_dict(self) -> dict[str, Any]:
        return {"wall_s": _r(self.wall_s), "cpu_s": _r(self.cpu_s), "peak_rss_mb": _r(self.peak_rss_mb, 1),
                **stats(self.per_target), "failures": self.failures,
                "load1_max": round(self.load1_max, 2), **({"notes": self.notes} if self.notes else {})}


# --------------------------------------------------------------------------- naive loop


class Naive:
    """The plain `pulumi` CLI in a sequential loop, in its own backend."""

    def __init__(self, root: Path, bin_dir: Path, n: int):
        self.root, self.n = root, n
        self.work = root / "project"
        self.work.mkdir(parents=True)
        self.platform_root = root / "platform"
        self.pulumi = str(bin_dir / "pulumi")
        self.env = engine_env(bin_dir, root / "naive-state", root / "home")
        text = (PROJECT_DIR / "Pulumi.yaml").read_text().splitlines()
        out = []
        for line in text:
            if line.startswith("main:"):
                line = f"main: {PROJECT_DIR / 'stacks'}"
            elif line.startswith("stackConfigDir:"):
                continue
            out.append(line)
        (self.work / "Pulumi.yaml").write_text("\n".join(out) + "\n")
        self.tenants = tenant_ids(n)

    def _run(self, args: list[str], sample: Sample, ok: tuple[int, ...] = (0,)) -> procs.Measured:
        m = procs.run_measured([self.pulumi, *args], env=self.env, cwd=self.work)
        sample.add(m)
        if m.returncode not in ok:
            sample.failures += 1
            sample.notes.append(f"{' '.join(args[:4])}: exit {m.returncode}: {m.stderr.strip()[-300:]}")
        return m

    def _setup_and_up(self, stack: str, config: dict[str, str], sample: Sample) -> float:
        t0 = time.perf_counter()
        self._run(["stack", "init", stack, "--non-interactive"], sample)
        for key, value in config.items():
            self._run(["config", "set", f"runner:{key}", value, "--stack", stack, "--non-interactive"], sample)
        self._run(["up", "--yes", "--non-interactive", "--stack", stack], sample)
        return time.perf_counter() - t0

    def _up(self, stack: str, sample: Sample) -> float:
        m = self._run(["up", "--yes", "--non-interactive", "--stack", stack], sample)
        return m.wall_s

    def first_deploy(self) -> Sample:
        sample = Sample()
        t0 = time.perf_counter()
        self._setup_and_up("shared", shared_config(self.platform_root), sample)
        for tenant in self.tenants:
            sample.per_target.append(self._setup_and_up(
                f"{tenant}.staging", tenant_config(tenant, self.platform_root), sample))
        sample.wall_s = time.perf_counter() - t0
        return sample

    def redeploy(self) -> Sample:
        sample = Sample()
        t0 = time.perf_counter()
        self._up("shared", sample)
        for tenant in self.tenants:
            sample.per_target.append(self._up(f"{tenant}.staging", sample))
        sample.wall_s = time.perf_counter() - t0
        return sample

    def drift(self) -> Sample:
        sample = Sample()
        t0 = time.perf_counter()
        for tenant in self.tenants:
            stack = f"{tenant}.staging"
            a = self._run(["refresh", "--preview-only", "--non-interactive", "--stack", stack], sample)
            b = self._run(["preview", "--non-interactive", "--stack", stack], sample)
            sample.per_target.append(a.wall_s + b.wall_s)
        sample.wall_s = time.perf_counter() - t0
        return sample


# --------------------------------------------------------------------------- floor


class Floor:
    """The engine's own minimum: an empty Python program, per stack, sequentially."""

    def __init__(self, root: Path, bin_dir: Path, samples: int):
        self.root, self.samples = root, samples
        self.work = root / "project"
        self.work.mkdir(parents=True)
        (self.work / "Pulumi.yaml").write_text("name: floor\nruntime: python\n")
        (self.work / "__main__.py").write_text("import pulumi  # noqa: F401\n")
        self.pulumi = str(bin_dir / "pulumi")
        self.env = engine_env(bin_dir, root / "floor-state", root / "home")
        self.stacks = [f"floor-{i}" for i in range(samples)]

    def _run(self, args: list[str], sample: Sample) -> float:
        m = procs.run_measured([self.pulumi, *args], env=self.env, cwd=self.work)
        sample.add(m)
        if m.returncode != 0:
            sample.failures += 1
            sample.notes.append(f"{' '.join(args[:3])}: exit {m.returncode}: {m.stderr.strip()[-300:]}")
        return m.wall_s

    def measure(self) -> dict[str, Sample]:
        out = {}
        up = ["up", "--yes", "--skip-preview", "--non-interactive", "--stack"]
        for op in OPERATIONS:
            sample = Sample()
            t0 = time.perf_counter()
            for stack in self.stacks:
                if op == "first-deploy":
                    sample.per_target.append(self._run(["stack", "init", stack, "--non-interactive"], sample)
                                             + self._run([*up, stack], sample))
                elif op == "redeploy":
                    sample.per_target.append(self._run([*up, stack], sample))
                else:
                    sample.per_target.append(
                        self._run(["refresh", "--preview-only", "--non-interactive", "--stack", stack], sample)
                        + self._run(["preview", "--non-interactive", "--stack", stack], sample))
            sample.wall_s = time.perf_counter() - t0
            out[op] = sample
        return out


def floor_for(sample: Sample, n: int) -> float:
    return statistics.median(sample.per_target) * n / CORES


# --------------------------------------------------------------------------- runner


def skip_unchanged_supported(env: dict[str, str]) -> bool:
    out = subprocess.run([RUNNER_BIN, "up", "--help"], capture_output=True, text=True,
                         env=env, cwd=PROJECT_DIR)
    return "--skip-unchanged" in out.stdout


class RunnerWorld:
    """One fresh backend, ledger, platform root and runner state dir."""

    def __init__(self, root: Path, bin_dir: Path, tenants: list[str]):
        self.root = root
        root.mkdir(parents=True)
        self.platform_root = root / "platform"
        self.registry = root / "tenants.yaml"
        write_registry(self.registry, tenants, self.platform_root)
        self.backend = root / "state"
        self.backend.mkdir()
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("PULUMI_", "RUNNER_", "GITHUB_", "CI_", "BUILDKITE_", "CIRCLE_"))}
        self.env.update({"RUNNER_STATE_DIR": str(root / "runner-state"),
                         "RUNNER_PULUMI_ROOT": str(bin_dir.parent),
                         "RUNNER_PLATFORM_ROOTS": str(root)})  # the temp platform root, outside the project

    def argv(self, command: str, concurrency: int, extra: list[str] = ()) -> list[str]:
        argv = [RUNNER_BIN, command, "--all-tenants", "--registry", str(self.registry),
                "--backend", self.backend.as_uri(), "--ledger", f"sqlite:///{self.root / 'ledger.db'}",
                "--concurrency", str(concurrency), "--json", "--log-format", "text"]
        if command == "up":
            argv += ["--yes", "--release", RELEASE]
        return argv + list(extra)

    def run(self, command: str, concurrency: int, extra: list[str] = ()) -> tuple[Sample, dict]:
        m = procs.run_measured(self.argv(command, concurrency, extra), env=self.env, cwd=PROJECT_DIR)
        sample = Sample(wall_s=m.wall_s, cpu_s=m.cpu_s, peak_rss_mb=m.peak_rss_mb, load1_max=m.load1)
        try:
            doc = json.loads(m.stdout)
        except json.JSONDecodeError:
            sample.failures = 1
            sample.notes.append(f"exit {m.returncode}, no JSON: {m.stderr.strip()[-500:]}")
            return sample, {}
        ok = {"up": {"succeeded", "skipped"}, "drift": {"in-sync"}}[command]
        for target in doc.get("targets", []):
            if target["stack"] == "shared":
                continue
            if target.get("started") and target.get("ended"):
                sample.per_target.append((dt.datetime.fromisoformat(target["ended"])
                                          - dt.datetime.fromisoformat(target["started"])).total_seconds())
            if target["status"] not in ok:
                sample.failures += 1
                sample.notes.append(f"{target['stack']}: {target['status']}: {target.get('error')}")
        return sample, doc


# --------------------------------------------------------------------------- breakdown (strace)


def breakdown(root: Path, bin_dir: Path, skip_flag: bool) -> dict[str, Any]:
    """One target, each operation under strace: every process the runner starts and the time in it."""
    tenant = "bench-trace-0"
    world = RunnerWorld(root, bin_dir, [tenant])
    ops = [("first-deploy", "up", []), ("redeploy", "up", []), ("drift", "drift", [])]
    if skip_flag:
        ops.append((SKIP_OP, "up", ["--skip-unchanged"]))
    out: dict[str, Any] = {}
    for name, command, extra in ops:
        trace_log = root / f"strace-{name}.log"
        m = procs.trace(world.argv(command, 1, extra), trace_log, env=world.env, cwd=PROJECT_DIR)
        try:
            doc = json.loads(m.stdout)
        except json.JSONDecodeError:
            out[name] = {"error": f"exit {m.returncode}: {m.stderr.strip()[-500:]}"}
            continue
        out[name] = analyse_trace(trace_log, doc, m)
    return out


def _stack_of(proc: procs.Proc) -> str | None:
    args = proc.args
    for i, arg in enumerate(args):
        if arg == "--stack" and i + 1 < len(args):
            return args[i + 1]
    return None


def analyse_trace(trace_log: Path, doc: dict, m: procs.Measured) -> dict[str, Any]:
    tree, renames = procs.process_tree(trace_log)
    children: dict[int, list[procs.Proc]] = {}
    for proc in tree.values():
        children.setdefault(proc.parent, []).append(proc)
    for kids in children.values():
        kids.sort(key=lambda p: p.exec_at or p.forked)

    def subtree(pid: int) -> list[procs.Proc]:
        found, queue = [], [pid]
        while queue:
            for kid in children.get(queue.pop(), []):
                found.append(kid)
                queue.append(kid.pid)
        return found

    root = min(tree.values(), key=lambda p: p.forked)
    workers = [p for p in tree.values() if p.kind.startswith("runner worker")]
    per_stack: dict[str, Any] = {}
    for worker in workers:
        calls = [p for p in children.get(worker.pid, []) if p.kind.startswith("pulumi")]
        stack = next((s for s in map(_stack_of, calls) if s), "?")
        target = next((t for t in doc.get("targets", []) if t["stack"] == stack), None)
        if target and target.get("started") and target.get("ended"):
            t_start = dt.datetime.fromisoformat(target["started"]).timestamp()
            t_end = dt.datetime.fromisoformat(target["ended"]).timestamp()
        else:
            t_start, t_end = worker.forked, worker.ended or worker.forked
        engine_s = sum(c.duration for c in calls)
        # Time from the worker's exec to its first engine call: interpreter start + imports + workspace setup.
        first_call = min((c.exec_at or c.forked for c in calls), default=worker.ended or worker.forked)
        last_end = max((c.ended or 0 for c in calls), default=first_call)
        entries = []
        for call in calls:
            inner = []
            for sub in subtree(call.pid):
                if sub.kind == "fork (no exec)":
                    continue
                inner.append({"kind": sub.kind, "start_offset_s": _r((sub.exec_at or sub.forked) - (call.exec_at or 0)),
                              "duration_s": _r(sub.duration)})
            writes = [r for r in renames if call.exec_at and call.exec_at <= r[0] <= (call.ended or r[0])
                      and "/.pulumi/" in r[2]]
            entries.append({
                "kind": call.kind, "command": _short(call.args), "start_offset_s": _r((call.exec_at or 0) - t_start),
                "duration_s": _r(call.duration), "children": inner,
                "state_writes": len(writes),
                "state_write_paths": sorted({_tail(w[2]) for w in writes}),
            })
        per_stack[stack] = {
            "target_wall_s": _r(t_end - t_start),
            "worker_s": _r(worker.duration),
            "worker_start_to_first_engine_call_s": _r(first_call - (worker.exec_at or worker.forked)),
            "worker_after_last_engine_call_s": _r((worker.ended or last_end) - last_end),
            "orchestrator_outside_worker_s": _r((t_end - t_start) - worker.duration),
            "engine_calls_s": _r(engine_s),
            "engine_calls": len(calls),
            "overhead_s": _r((t_end - t_start) - engine_s),
            "calls": entries,
        }
    run_level = [{"kind": p.kind, "command": _short(p.args), "duration_s": _r(p.duration)}
                 for p in children.get(root.pid, []) if not p.kind.startswith("runner worker") and p.kind != "fork (no exec)"]
    counts: dict[str, int] = {}
    for proc in tree.values():
        if proc.kind != "fork (no exec)":
            counts[proc.kind] = counts.get(proc.kind, 0) + 1
    return {"wall_s_under_strace": _r(m.wall_s), "processes": counts, "run_level": run_level,
            "targets": per_stack, "exit_code": doc.get("exit_code")}


def _short(args: list[str]) -> str:
    keep = []
    for arg in args:
        arg = os.path.basename(arg) if arg.startswith("/") and len(keep) == 0 else arg
        keep.append(arg if len(arg) < 60 else arg[:57] + "...")
    return " ".join(keep)


def _tail(path: str) -> str:
    return path.split("/.pulumi/", 1)[-1]


# --------------------------------------------------------------------------- report


def entry(op: str, n: int, c: int | None, mode: str, sample: Sample, naive: Sample | None,
          floor_s: float | None) -> dict[str, Any]:
    d = {"operation": op, "tenants": n, "concurrency": c, "mode": mode, **sample.to_dict()}
    if naive is not None and sample.wall_s:
        d["speedup_vs_naive"] = _r(naive.wall_s / sample.wall_s)
        d["ratio_to_naive"] = _r(sample.wall_s / naive.wall_s)
    if floor_s:
        d["floor_s"] = _r(floor_s)
        d["ratio_to_floor"] = _r(sample.wall_s / floor_s)
    if c:
        d["peak_rss_mb_per_concurrent_target"] = _r(sample.peak_rss_mb / c, 1)
    return d


def evaluate(entries: list[dict], breakdown_doc: dict | None, ns: list[int]) -> list[dict]:
    """The issue's targets, on the largest N measured (they are stated for N=50 on 2 cores)."""
    checks = []
    n = max(ns)
    runner = [e for e in entries if e["mode"] == "runner"]
    redeploy = [e for e in runner if e["operation"] == "redeploy" and e["tenants"] == n]
    if redeploy:
        best = min(redeploy, key=lambda e: e["wall_s"])
        checks.append({"target": f"redeploy N={n}: runner at best concurrency >= 2.5x faster than naive",
                       "value": best.get("speedup_vs_naive"), "pass": (best.get("speedup_vs_naive") or 0) >= 2.5,
                       "concurrency": best["concurrency"]})
        checks.append({"target": f"redeploy N={n}: runner wall <= 1.3x floor",
                       "value": best.get("ratio_to_floor"), "pass": (best.get("ratio_to_floor") or 99) <= 1.3,
                       "concurrency": best["concurrency"]})
    rss = [e for e in runner if e["tenants"] == n]
    if rss:
        worst = max(rss, key=lambda e: e["peak_rss_mb_per_concurrent_target"])
        checks.append({"target": "peak RSS <= 350 MB per concurrent target", "value": worst["peak_rss_mb_per_concurrent_target"],
                       "pass": worst["peak_rss_mb_per_concurrent_target"] <= 350,
                       "where": f"{worst['operation']} N={worst['tenants']} c={worst['concurrency']}"})
    if breakdown_doc and "redeploy" in breakdown_doc:
        targets = breakdown_doc["redeploy"].get("targets", {})
        overhead = [t["overhead_s"] for s, t in targets.items() if s != "shared"]
        if overhead:
            checks.append({"target": "redeploy: runner overhead per target (outside engine processes) <= 100 ms",
                           "value": overhead[0], "pass": overhead[0] <= 0.1})
    if len(ns) > 1:
        lo = min(ns)
        expected = n / lo
        for c in sorted({e["concurrency"] for e in runner}):
            a = next((e for e in redeploy_all(runner, lo, c)), None)
            b = next((e for e in redeploy_all(runner, n, c)), None)
            if a and b:
                growth = b["wall_s"] / a["wall_s"]
                checks.append({"target": f"redeploy c={c}: wall N={n} within {0.8 * expected:.1f}x-{1.2 * expected:.1f}x of N={lo}",
                               "value": _r(growth, 2), "pass": 0.8 * expected <= growth <= 1.2 * expected})
    skip = [e for e in runner if e["operation"] == SKIP_OP and e["tenants"] == n]
    if skip:
        best = min(skip, key=lambda e: e["wall_s"])
        checks.append({"target": f"--skip-unchanged redeploy N={n} <= 5% of naive",
                       "value": best.get("ratio_to_naive"), "pass": (best.get("ratio_to_naive") or 1) <= 0.05})
    else:
        checks.append({"target": "--skip-unchanged redeploy <= 5% of naive", "value": None, "pass": None,
                       "note": "runner up has no --skip-unchanged yet: not measured"})
    return checks


def redeploy_all(runner: list[dict], n: int, c: int):
    return [e for e in runner if e["operation"] == "redeploy" and e["tenants"] == n and e["concurrency"] == c]


def print_table(entries: list[dict], checks: list[dict], breakdown_doc: dict | None) -> None:
    head = (f"{'operation':<24} {'N':>3} {'mode':<10} {'wall s':>8} {'cpu s':>8} {'rss MB':>7} "
            f"{'med s':>6} {'p95 s':>6} {'x naive':>8} {'/floor':>7} {'fail':>4}")
    print(head)
    print("-" * len(head))
    for e in entries:
        mode = e["mode"] if e["mode"] != "runner" else f"runner c{e['concurrency']}"
        speed = f"{e['speedup_vs_naive']:.2f}" if e.get("speedup_vs_naive") is not None else ""
        floor = f"{e['ratio_to_floor']:.2f}" if e.get("ratio_to_floor") is not None else ""
        print(f"{e['operation']:<24} {e['tenants']:>3} {mode:<10} {e['wall_s']:>8.2f} {e['cpu_s']:>8.2f} "
              f"{e['peak_rss_mb']:>7.0f} {_f(e['per_target_median_s'])} {_f(e['per_target_p95_s'])} "
              f"{speed:>8} {floor:>7} {e['failures']:>4}")
    busy = [e for e in entries if (e.get("load1_max") or 0) > CORES]
    if busy:
        print(f"\nWARNING: {len(busy)} of {len(entries)} measurements ran while the 1-minute load average "
              f"exceeded {CORES} cores (max {max(e['load1_max'] for e in busy):.1f}): other work shared the machine.")
    print("\n(x naive = naive wall / runner wall; /floor = runner wall / floor; floor = empty-program "
          f"engine time per stack x N / {CORES} cores)")
    if breakdown_doc:
        print_breakdown(breakdown_doc)
    print("\nTargets (largest N):")
    for check in checks:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[check["pass"]]
        print(f"  {verdict}  {check['target']}: {check.get('value')}{'  ' + check['note'] if check.get('note') else ''}")


def _f(value: float | None) -> str:
    return f"{value:>6.2f}" if value is not None else f"{'':>6}"


def print_breakdown(doc: dict) -> None:
    print("\nWhere one target's time goes (runner, concurrency 1, under strace -f; times inflated by tracing):")
    for op, data in doc.items():
        if "error" in data:
            print(f"\n  {op}: {data['error']}")
            continue
        print(f"\n  {op}: {data['wall_s_under_strace']:.2f} s for the whole command; processes started: "
              + ", ".join(f"{k} x{v}" for k, v in sorted(data["processes"].items())))
        for p in data["run_level"]:
            print(f"    run-level  {p['duration_s']:>6.3f}s  {p['command']}")
        for stack, t in data["targets"].items():
            print(f"    [{stack}] target {t['target_wall_s']:.3f}s = engine calls {t['engine_calls_s']:.3f}s "
                  f"({t['engine_calls']} CLI processes) + overhead {t['overhead_s']:.3f}s "
                  f"(worker start->1st call {t['worker_start_to_first_engine_call_s']:.3f}s, "
                  f"worker after last call {t['worker_after_last_engine_call_s']:.3f}s, "
                  f"orchestrator outside worker {t['orchestrator_outside_worker_s']:.3f}s)")
            for call in t["calls"]:
                writes = f"  state writes: {call['state_writes']}" if call["state_writes"] else ""
                print(f"      +{call['start_offset_s']:>6.3f}s {call['duration_s']:>6.3f}s  {call['command'][:110]}{writes}")
                for child in call["children"]:
                    print(f"           +{child['start_offset_s']:>6.3f}s {child['duration_s']:>6.3f}s  {child['kind']}")


# --------------------------------------------------------------------------- main


def parse_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=parse_list, default=[10, 50], help="fleet sizes N (default 10,50)")
    parser.add_argument("--concurrency", type=parse_list, default=[1, 2, 4], help="runner concurrencies (default 1,2,4)")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/<date>-<host>.json)")
    parser.add_argument("--floor-samples", type=int, default=10, help="stacks sampled for the floor (median x N / cores)")
    parser.add_argument("--no-trace", action="store_true", help="skip the strace breakdown of one target")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive loop (no speedup figures)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)

    from runner.bootstrap import ensure_engine

    bin_dir = ensure_engine()
    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    log(f"work dir {tmp}; engine {bin_dir}; {CORES} cores")
    started = time.time()
    try:
        probe_env = RunnerWorld(tmp / "probe", bin_dir, ["bench-probe-0"]).env
        skip_flag = skip_unchanged_supported(probe_env)
        log(f"--skip-unchanged {'available' if skip_flag else 'not available: that scenario is not run'}")

        log(f"floor: empty program, {min(args.floor_samples, max(args.tenants))} stacks")
        floor = Floor(tmp / "floor", bin_dir, min(args.floor_samples, max(args.tenants))).measure()
        entries: list[dict] = []
        for n in args.tenants:
            naive: dict[str, Sample] = {}
            if not args.no_naive:
                log(f"naive loop, N={n}")
                world = Naive(tmp / f"naive-{n}", bin_dir, n)
                naive["first-deploy"] = world.first_deploy()
                naive["redeploy"] = world.redeploy()
                naive["drift"] = world.drift()
                naive[SKIP_OP] = naive["redeploy"]
            floors = {op: floor_for(floor[op], n) for op in OPERATIONS}
            floors[SKIP_OP] = floors["redeploy"]
            for op in OPERATIONS:
                entries.append({"operation": op, "tenants": n, "concurrency": None, "mode": "floor",
                                "wall_s": _r(floors[op]), "cpu_s": _r(statistics.median(floor[op].per_target) * n),
                                "peak_rss_mb": _r(floor[op].peak_rss_mb, 1), **stats(floor[op].per_target),
                                "failures": floor[op].failures, "load1_max": round(floor[op].load1_max, 2),
                                "floor_stacks_sampled": len(floor[op].per_target)})
                if op in naive:
                    entries.append(entry(op, n, None, "naive", naive[op], None, floors[op]))
            for c in args.concurrency:
                log(f"runner N={n} concurrency={c}")
                world = RunnerWorld(tmp / f"runner-{n}-c{c}", bin_dir, tenant_ids(n))
                plan = [("first-deploy", "up", []), ("redeploy", "up", []), ("drift", "drift", [])]
                if skip_flag:
                    plan.append((SKIP_OP, "up", ["--skip-unchanged"]))
                for op, command, extra in plan:
                    sample, _doc = world.run(command, c, extra)
                    log(f"  {op}: {sample.wall_s:.1f}s, {sample.failures} failure(s)")
                    for note in sample.notes[:3]:
                        log(f"    {note}")
                    entries.append(entry(op, n, c, "runner", sample, naive.get(op), floors[op]))
                shutil.rmtree(world.root / "platform", ignore_errors=True)
        breakdown_doc = None
        if not args.no_trace:
            log("breakdown: one target under strace")
            try:
                breakdown_doc = breakdown(tmp / "trace", bin_dir, skip_flag)
            except RuntimeError as exc:
                log(f"breakdown skipped: {exc}")
        entries.sort(key=lambda e: (OPERATIONS.index(e["operation"]) if e["operation"] in OPERATIONS else 9,
                                    e["tenants"], {"floor": 0, "naive": 1, "runner": 2}[e["mode"]], e["concurrency"] or 0))
        checks = evaluate(entries, breakdown_doc, args.tenants)
        doc = {
            "benchmark": "bench.fleet", "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "host": socket.gethostname(), "cores": CORES, "python": sys.version.split()[0],
            "engine": str(bin_dir), "argv": sys.argv[1:] if argv is None else argv,
            "tenants": args.tenants, "concurrency": args.concurrency, "skip_unchanged_available": skip_flag,
            "duration_s": _r(time.time() - started, 1),
            "method": {
                "naive": "sequential plain pulumi CLI: stack init + config set per key + up --yes --non-interactive "
                         "(first deploy); up (redeploy, shared stack included as the runner deploys it on every up); "
                         "refresh --preview-only + preview (drift)",
                "floor": "empty python program, same operations with --skip-preview, median per stack x N / cores",
                "cpu_s": "getrusage(RUSAGE_CHILDREN) delta: user+sys of every waited-for process of the tree",
                "peak_rss_mb": "max over 50 ms samples of the summed RSS of the process tree (/proc)",
                "per_target": "runner: targets[].ended - started from --json (shared stack excluded); "
                              "naive: sum of that target's CLI calls",
            },
            "entries": entries, "checks": checks, "breakdown": breakdown_doc,
        }
        out = args.out or PROJECT_DIR / "bench" / "results" / f"{dt.date.today().isoformat()}-{socket.gethostname()}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print_table(entries, checks, breakdown_doc)
        print(f"\nresults: {out}")
        return 0
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
