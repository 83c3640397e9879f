"""The runner against the plain `pulumi` CLI, on the same stacks, and against the engine's floor (#17).

    python -m bench.fleet --tenants 50 --repeats 3              # the full run (see README "Performance")
    python -m bench.fleet --tenants 10 --repeats 3 --label small
    python -m bench.fleet --table                               # README table from bench/results/*.json

One world per fleet size N, on the local platform, in a temp dir (``file://``
backend, SQLite ledger; nothing of the project's ``.runner`` is touched): the
runner deploys N tenants (plus the ``shared`` stack) once, then every mode
below redeploys the SAME stacks with no change, with the same backend and
each stack's own passphrase:

* ``plain-seq``: ``pulumi up --yes --skip-preview -s STACK`` per stack, one
  after the other, each with exactly the environment ``runner env --stack
  STACK`` gives a user (passphrase, backend, PULUMI_HOME, PATH, directory);
* ``plain-xargs``: ``printf '%s\\n' STACKS | xargs -P <cores> -n1 sh -c '.
  ENV/$1.sh && pulumi up --yes --skip-preview -s "$1"'``, the one-liner a
  user writes (the env file holds that stack's ``runner env`` lines);
* ``runner-c<K>``: ``runner up --all-tenants --concurrency K`` for K in 1,
  cores and ``auto`` (when ``runner up --help`` accepts it);
* ``runner-c<cores>-host``: the same at cores with ``RUNNER_INLINE_PROGRAM=0``
  (the program in a language host, as the plain CLI runs it): what the
  inline program pays, measured in the same run;
* ``runner-skip``: ``runner up --all-tenants --skip-unchanged`` at cores.

The shared stack counts on every side of the redeploy (the runner ups it
first on every run; the plain modes up it too, first in the list) and on
none of the drift check (``runner drift`` checks tenant stacks only), whose
plain modes run ``refresh --preview-only`` then ``preview`` per stack.

Each row runs ``--repeats`` times; the order of the modes rotates by one each
repeat, so a warm cache favours no side; rows report the median and the
min/max. The floor is measured: the CPU seconds of the engine's own
processes (CLI, language host, program, providers) of each plain ``up`` (the
exact rusage of its process tree), summed over the stacks and divided by the
cores. The runner's CPU is split into orchestrator / workers / engine by
sampling /proc (see bench/procs.py); its overhead per target is its total
CPU minus the plain CLI's for the same stacks, divided by the targets.

The latency profile deploys ``--latency-tenants`` new tenants with the local
platform's ``simulated_latency_ms`` (and ``simulated_throttle_rate`` when the
runner has ``--retries``) at the runner's concurrency (``auto``, else cores
and 2x cores) and compares the wall time with max(CPU floor, N /
concurrency x one stack's critical path), both measured with the plain CLI
on a probe stack.

Results: ``bench/results/<date>-<label>.json``; ``--table`` rewrites the
README's table between the ``bench-table`` markers from the newest result.
Asserts nothing. Never run two benchmarks at once: the figures are per machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import procs

PROJECT_DIR = Path(__file__).resolve().parent.parent
RESULTS = PROJECT_DIR / "bench" / "results"
README = PROJECT_DIR / "README.md"
PYTHON = sys.executable
RUNNER_BIN = str(Path(PYTHON).parent / "runner")
RELEASE = "bench"
CORES = os.cpu_count() or 1
TABLE_START, TABLE_END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def tenant_ids(n: int, prefix: str = "t") -> list[str]:
    return [f"{prefix}{n}-{i}" for i in range(n)]


# --------------------------------------------------------------------------- the runner's world


class World:
    """A registry of tenants, a backend, a ledger and a state dir; the runner deploys it."""

    def __init__(self, root: Path, bin_dir: Path, tenants: list[str], defaults: dict[str, Any] | None = None):
        self.root, self.tenants = root, tenants
        root.mkdir(parents=True)
        self.registry = root / "tenants.yaml"
        lines = ["defaults:", "  platform: local", '  app_version: "1.0.0"', f"  platform_root: {root / 'platform'}"]
        lines += [f"  {k}: {json.dumps(v)}" for k, v in (defaults or {}).items()]
        lines += ["environments:", "  - name: staging", "tenants:"]
        for tenant in tenants:
            lines += [f"  - id: {tenant}", f"    name: Tenant {tenant}", "    environments: [staging]"]
        self.registry.write_text("\n".join(lines) + "\n")
        self.backend = (root / "state").as_uri()
        (root / "state").mkdir()
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PULUMI_", "RUNNER_", "GITHUB_", "CI_", "BUILDKITE_", "CIRCLE_"))
        }
        self.env.update(
            {
                "RUNNER_STATE_DIR": str(root / "runner-state"),
                "RUNNER_PULUMI_ROOT": str(bin_dir.parent),
                "RUNNER_PLATFORM_ROOTS": str(root),
                "RUNNER_REGISTRY": str(self.registry),
                "RUNNER_BACKEND": self.backend,
                "RUNNER_LEDGER": f"sqlite:///{root / 'ledger.db'}",
            }
        )
        self.stacks = ["shared", *(f"{t}.staging" for t in tenants)]
        self.plain: dict[str, dict[str, str]] = {}
        self.directory = ""

    def runner(self, *args: str, env: dict[str, str] | None = None) -> procs.Measured:
        return procs.run_measured([RUNNER_BIN, *args], env={**self.env, **(env or {})}, cwd=PROJECT_DIR)

    @property
    def user_env(self) -> dict[str, str]:
        """The user's shell: the bench's environment without the runner's settings."""
        return {k: v for k, v in self.env.items() if not k.startswith("RUNNER_")}

    def prepare_plain(self, stacks: list[str] | None = None) -> None:
        """Each stack's environment exactly as `runner env --stack S` gives it to a
        user: a dict for the sequential loop, the same shell lines (what
        `eval "$(runner env ...)"` runs) in a file per stack for xargs."""
        envdir = self.root / "env"
        envdir.mkdir(exist_ok=True)
        for stack in stacks or self.stacks:
            out = subprocess.run(
                [RUNNER_BIN, "env", "--stack", stack, "--json"],
                env=self.env,
                cwd=PROJECT_DIR,
                capture_output=True,
                text=True,
                check=True,
            )
            doc = json.loads(out.stdout)
            env = {k: v for k, v in self.user_env.items() if k not in doc["unset"]}
            env.update(doc["env"])
            env["PATH"] = os.pathsep.join([*doc["path_prepend"], self.env.get("PATH", "/usr/bin:/bin")])
            self.plain[stack] = env
            self.directory = doc["directory"]
            lines = [f"export {k}={shlex.quote(v)}" for k, v in sorted(doc["env"].items())]
            lines.append("export PATH=" + ":".join(shlex.quote(p) for p in doc["path_prepend"]) + ':"$PATH"')
            lines += [f"unset {k}" for k in doc["unset"]]
            path = envdir / f"{stack}.sh"
            path.write_text("\n".join(lines) + "\n")
            path.chmod(0o600)

    def pulumi(self, stack: str, *args: str) -> procs.Measured:
        return procs.run_measured(["pulumi", *args, "-s", stack], env=self.plain[stack], cwd=self.directory)

    def xargs(self, stacks: list[str], command: str, parallel: int) -> procs.Measured:
        script = f'. {shlex.quote(str(self.root / "env"))}/"$1".sh && cd {shlex.quote(self.directory)} && {command}'
        line = (
            f"printf '%s\\n' {' '.join(shlex.quote(s) for s in stacks)} | "
            f"xargs -P {parallel} -n1 sh -c {shlex.quote(script)} sh"
        )
        return procs.run_measured(["sh", "-c", line], env=self.user_env)


def report_of(m: procs.Measured) -> dict[str, Any]:
    try:
        return json.loads(m.stdout)
    except json.JSONDecodeError:
        return {}


def failures_of(m: procs.Measured, ok: set[str]) -> list[str]:
    doc = report_of(m)
    if not doc:
        return [f"exit {m.returncode}, no JSON: {m.stderr.strip()[-300:]}"]
    return [
        f"{t['stack']}: {t['status']}: {(t.get('error') or '')[:200]}"
        for t in doc.get("targets", [])
        if t["status"] not in ok
    ]


def help_text(command: str) -> str:
    return subprocess.run(
        [RUNNER_BIN, command, "--help"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}
    ).stdout


def option_block(text: str, option: str) -> str:
    """The help of one option (its line and the indented lines after it)."""
    found = re.search(rf"^\s+{re.escape(option)}\b.*(?:\n\s{{8,}}(?!-).*)*", text, re.M)
    return found.group(0) if found else ""


# --------------------------------------------------------------------------- one measured run


class Run:
    """One execution of a mode: wall, exact CPU of its tree, CPU split, peak RSS and concurrency."""

    def __init__(self, mode: str, targets: int):
        self.mode, self.targets = mode, targets
        self.wall_s = self.cpu_s = 0.0
        self.by_class = {"root": 0.0, "engine": 0.0, "other": 0.0, "unattributed": 0.0}
        self.peak_rss_mb = self.peak_pss_mb = 0.0
        self.peak_engines = 0
        self.per_stack_cpu: dict[str, float] = {}
        self.failures: list[str] = []
        self.load1 = 0.0
        self.extra: dict[str, Any] = {}

    def add(self, m: procs.Measured, stack: str | None = None) -> None:
        self.cpu_s += m.cpu_s
        for k, v in m.cpu_by_class.items():
            self.by_class[k] += v
        self.peak_rss_mb = max(self.peak_rss_mb, m.peak_rss_mb)
        self.peak_pss_mb = max(self.peak_pss_mb, m.peak_pss_mb)
        self.peak_engines = max(self.peak_engines, m.peak_engines)
        self.load1 = max(self.load1, m.load1)
        if stack is not None:
            self.per_stack_cpu[stack] = self.per_stack_cpu.get(stack, 0.0) + m.cpu_s
            if m.returncode != 0:
                self.failures.append(f"{stack}: exit {m.returncode}: {m.stderr.strip()[-200:]}")


def plain_seq(world: World, stacks: list[str], commands: list[list[str]], mode: str) -> Run:
    run = Run(mode, len(stacks))
    t0 = time.perf_counter()
    for stack in stacks:
        for args in commands:
            run.add(world.pulumi(stack, *args), stack)
    run.wall_s = time.perf_counter() - t0
    return run


def plain_xargs(world: World, stacks: list[str], commands: list[list[str]], mode: str) -> Run:
    run = Run(mode, len(stacks))
    command = " && ".join(f'pulumi {" ".join(args)} -s "$1"' for args in commands)
    m = world.xargs(stacks, command, CORES)
    run.add(m)
    run.wall_s = m.wall_s
    if m.returncode != 0:
        run.failures.append(f"xargs exit {m.returncode}: {m.stderr.strip()[-300:]}")
    return run


def up_args(concurrency: str, *extra: str) -> list[str]:
    return ["up", "--all-tenants", "--yes", "--json", "--log-format", "text", "--release", RELEASE,
            "--concurrency", concurrency, *extra]  # fmt: skip


def runner_run(
    world: World, mode: str, targets: int, argv: list[str], ok: set[str], env: dict[str, str] | None = None
) -> Run:
    run = Run(mode, targets)
    m = world.runner(*argv, env=env)
    run.add(m)
    run.wall_s = m.wall_s
    run.failures = failures_of(m, ok)
    doc = report_of(m)
    run.extra["statuses"] = doc.get("counts", {})
    # Retries as the report counts them (keys of the retries work, #17): a
    # per-target `attempts` list or count.
    attempts = [t.get("attempts") for t in doc.get("targets", []) if t.get("attempts")]
    if attempts:
        run.extra["retries"] = sum(
            (len(a) if isinstance(a, list) else int(a)) - 1 for a in attempts if isinstance(a, (list, int))
        )
    return run


UP = ["up", "--yes", "--skip-preview"]
DRIFT = [["refresh", "--preview-only"], ["preview"]]


def modes_for(world: World, concurrencies: list[str], skip_flag: bool) -> list[tuple[str, str, Any]]:
    """(operation, mode, callable returning a Run) in a fixed base order."""
    tenants = world.stacks[1:]
    out: list[tuple[str, str, Any]] = [
        ("redeploy", "plain-seq", lambda: plain_seq(world, world.stacks, [UP], "plain-seq")),
        ("redeploy", "plain-xargs", lambda: plain_xargs(world, world.stacks, [UP], "plain-xargs")),
    ]
    for c in concurrencies:
        out.append(
            (
                "redeploy",
                f"runner-c{c}",
                lambda c=c: runner_run(world, f"runner-c{c}", len(world.stacks), up_args(c), {"succeeded", "skipped"}),
            )
        )
    # the inline-program lever measured: the same run with the program in a language host
    out.append(
        (
            "redeploy",
            f"runner-c{CORES}-host",
            lambda: runner_run(
                world,
                f"runner-c{CORES}-host",
                len(world.stacks),
                up_args(str(CORES)),
                {"succeeded", "skipped"},
                env={"RUNNER_INLINE_PROGRAM": "0"},
            ),
        )
    )
    if skip_flag:
        out.append(
            (
                "redeploy",
                "runner-skip",
                lambda: runner_run(
                    world,
                    "runner-skip",
                    len(world.stacks),
                    up_args(str(CORES), "--skip-unchanged"),
                    {"succeeded", "skipped"},
                ),
            )
        )
    out += [
        ("drift", "plain-seq", lambda: plain_seq(world, tenants, DRIFT, "plain-seq")),
        ("drift", "plain-xargs", lambda: plain_xargs(world, tenants, DRIFT, "plain-xargs")),
    ]
    for c in concurrencies:
        out.append(
            (
                "drift",
                f"runner-c{c}",
                lambda c=c: runner_run(
                    world,
                    f"runner-c{c}",
                    len(tenants),
                    ["drift", "--all-tenants", "--json", "--log-format", "text", "--concurrency", c],
                    {"in-sync"},
                ),
            )
        )
    return out


def summarize(runs: list[Run]) -> dict[str, Any]:
    def spread(values: list[float], digits: int = 3) -> dict[str, Any]:
        return {
            "median": _r(statistics.median(values), digits),
            "min": _r(min(values), digits),
            "max": _r(max(values), digits),
        }

    first = runs[0]
    row: dict[str, Any] = {
        "mode": first.mode,
        "targets": first.targets,
        "repeats": len(runs),
        "wall_s": spread([r.wall_s for r in runs]),
        "cpu_s": spread([r.cpu_s for r in runs]),
        "cpu_by_class_s": {k: _r(statistics.median([r.by_class[k] for r in runs])) for k in first.by_class},
        "peak_rss_mb": _r(max(r.peak_rss_mb for r in runs), 1),
        "peak_pss_mb": _r(max(r.peak_pss_mb for r in runs), 1),
        "peak_concurrent_targets": max(r.peak_engines for r in runs),
        "failures": sum(len(r.failures) for r in runs),
        "load1_max": round(max(r.load1 for r in runs), 2),
    }
    if row["peak_concurrent_targets"]:
        row["peak_rss_mb_per_concurrent_target"] = _r(row["peak_rss_mb"] / row["peak_concurrent_targets"], 1)
        row["peak_pss_mb_per_concurrent_target"] = _r(row["peak_pss_mb"] / row["peak_concurrent_targets"], 1)
    notes = [f for r in runs for f in r.failures][:5]
    if notes:
        row["failure_notes"] = notes
    for key in ("retries",):
        values = [r.extra[key] for r in runs if key in r.extra]
        if values:
            row[key] = values
    return row


def measure_fleet(
    tmp: Path, bin_dir: Path, n: int, repeats: int, concurrencies: list[str], skip_flag: bool
) -> dict[str, Any]:
    world = World(tmp / f"fleet-{n}", bin_dir, tenant_ids(n))
    log(f"N={n}: first deploy by the runner (concurrency {CORES})")
    first = runner_run(
        world,
        f"runner-c{CORES}",
        len(world.stacks),
        [
            "up",
            "--all-tenants",
            "--yes",
            "--json",
            "--log-format",
            "text",
            "--release",
            RELEASE,
            "--concurrency",
            str(CORES),
        ],
        {"succeeded"},
    )
    if first.failures:
        raise SystemExit(f"first deploy failed: {first.failures[:3]}")
    world.prepare_plain()
    modes = modes_for(world, concurrencies, skip_flag)
    runs: dict[tuple[str, str], list[Run]] = {}
    for repeat in range(repeats):
        k = repeat % len(modes)
        for op, mode, fn in modes[k:] + modes[:k]:
            run = fn()
            runs.setdefault((op, mode), []).append(run)
            log(
                f"N={n} repeat {repeat + 1}/{repeats} {op:<8} {mode:<12} {run.wall_s:6.1f}s wall "
                f"{run.cpu_s:6.1f} CPU-s{'  FAILURES: ' + run.failures[0] if run.failures else ''}"
            )
    rows = [{"operation": "first-deploy", "tenants": n, **summarize([first])}]
    for (op, _mode), group in runs.items():
        rows.append({"operation": op, "tenants": n, **summarize(group)})
    # The floor: the engine's own CPU per stack (median over repeats of each
    # stack's plain CLI commands), summed, over the cores.
    floors = {}
    for op in ("redeploy", "drift"):
        seq = runs[(op, "plain-seq")]
        stacks = seq[0].per_stack_cpu
        engine_cpu = sum(statistics.median([r.per_stack_cpu[s] for r in seq]) for s in stacks)
        floors[op] = {
            "engine_cpu_s": _r(engine_cpu),
            "wall_s": _r(engine_cpu / CORES),
            "stacks": len(stacks),
            "engine_cpu_per_stack_s": _r(
                statistics.median([statistics.median([r.per_stack_cpu[s] for r in seq]) for s in stacks])
            ),
        }
    for row in rows:
        floor = floors.get(row["operation"])
        if floor and row["mode"].startswith("runner-c"):
            row["overhead_cpu_per_target_ms"] = _r(
                (row["cpu_s"]["median"] - floor["engine_cpu_s"]) / row["targets"] * 1000, 1
            )
            row["orchestrator_cpu_share"] = _r(row["cpu_by_class_s"]["root"] / row["cpu_s"]["median"])
        if floor:
            row["ratio_to_floor"] = _r(row["wall_s"]["median"] / floor["wall_s"], 2)
    shutil.rmtree(world.root / "platform", ignore_errors=True)
    return {"tenants": n, "floor": floors, "rows": rows}


# --------------------------------------------------------------------------- latency profile


def measure_latency(
    tmp: Path, bin_dir: Path, n: int, latency_ms: int, concurrencies: list[str], throttle: float | None
) -> dict[str, Any]:
    out: dict[str, Any] = {"tenants": n, "latency_ms": latency_ms, "throttle_rate": throttle or 0.0, "rows": []}
    defaults: dict[str, Any] = {"simulated_latency_ms": latency_ms}
    if throttle:
        defaults["simulated_throttle_rate"] = str(throttle)
    for c in concurrencies:
        world = World(tmp / f"latency-{n}-c{c}", bin_dir, ["probe-0", *tenant_ids(n, "l")], defaults)
        # One stack's critical path and first-deploy CPU, with the plain CLI on a
        # probe stack: the runner deploys it (and shared), the CLI destroys and redeploys it.
        probe = world.runner(
            "up",
            "--tenant",
            "probe-0",
            "--yes",
            "--json",
            "--release",
            RELEASE,
            *(["--retries", "5"] if throttle else []),
        )
        if probe.returncode != 0:
            raise SystemExit(f"latency probe deploy failed: {failures_of(probe, {'succeeded'})[:2]}")
        stack = "probe-0.staging"
        world.prepare_plain([stack])
        world.pulumi(stack, "destroy", "--yes", "--skip-preview")
        plain = world.pulumi(stack, *UP)
        if plain.returncode != 0:
            log(f"plain first deploy of the probe failed (throttled?): {plain.stderr.strip()[-200:]}")
        critical_s, cpu_per_stack = plain.wall_s, plain.cpu_s
        log(f"latency N={n} c={c}: first deploy")
        argv = [
            "up",
            "--all-tenants",
            "--exclude-tenant",
            "probe-0",
            "--yes",
            "--json",
            "--log-format",
            "text",
            "--release",
            RELEASE,
            "--concurrency",
            c,
            *(["--retries", "5"] if throttle else []),
        ]
        run = runner_run(world, f"runner-c{c}", n, argv, {"succeeded"})
        row = {"operation": "first-deploy-latency", "tenants": n, **summarize([run])}
        used = run.peak_engines if c == "auto" else int(c)
        cpu_floor = cpu_per_stack * n / CORES
        io_bound = n / max(used, 1) * critical_s
        row.update(
            {
                "concurrency_used": used,
                "critical_path_s": _r(critical_s),
                "engine_cpu_per_stack_s": _r(cpu_per_stack),
                "cpu_floor_s": _r(cpu_floor),
                "io_bound_s": _r(io_bound),
                "bound_s": _r(max(cpu_floor, io_bound)),
                "ratio_to_bound": _r(run.wall_s / max(cpu_floor, io_bound)),
            }
        )
        log(f"  {run.wall_s:.1f}s wall, bound {max(cpu_floor, io_bound):.1f}s, {len(run.failures)} failure(s)")
        out["rows"].append(row)
        shutil.rmtree(world.root / "platform", ignore_errors=True)
    return out


# --------------------------------------------------------------------------- targets and the README table


def _row(rows: list[dict], op: str, mode: str) -> dict | None:
    return next((r for r in rows if r["operation"] == op and r["mode"] == mode), None)


def _memory(row: dict) -> str:
    pss, rss = row.get("peak_pss_mb_per_concurrent_target"), row.get("peak_rss_mb_per_concurrent_target")
    return f"{pss:.0f} ({rss:.0f})" if pss and rss else f"({rss:.0f})" if rss else ""


def _best_runner(rows: list[dict], op: str) -> dict | None:
    runner = [
        r for r in rows if r["operation"] == op and r["mode"].startswith("runner-c") and not r["mode"].endswith("-host")
    ]
    return min(runner, key=lambda r: r["wall_s"]["median"]) if runner else None


def evaluate(doc: dict) -> list[dict]:
    """The targets of issue #17, each met / missed / not measured, with the measured value."""
    checks: list[dict] = []

    def check(target: str, value: Any, met: bool | None, detail: str = "") -> None:
        checks.append({"target": target, "value": value, "met": met, "detail": detail})

    fleets = doc.get("fleets", [])
    if fleets:
        fleet = max(fleets, key=lambda f: f["tenants"])
        rows, n = fleet["rows"], fleet["tenants"]
        best, xargs, seq = (
            _best_runner(rows, "redeploy"),
            _row(rows, "redeploy", "plain-xargs"),
            _row(rows, "redeploy", "plain-seq"),
        )
        if best and xargs and seq:
            a = xargs["wall_s"]["median"] / best["wall_s"]["median"]
            b = seq["wall_s"]["median"] / best["wall_s"]["median"]
            check(
                f"no-change redeploy N={n}: runner >= 1.5x faster than xargs -P{CORES}",
                f"{a:.2f}x",
                a >= 1.5,
                best["mode"],
            )
            check(
                f"no-change redeploy N={n}: runner >= 3x faster than the sequential loop",
                f"{b:.2f}x",
                b >= 3,
                best["mode"],
            )
            check(
                "runner CPU beyond the plain CLI's per target <= 50 ms",
                f"{best['overhead_cpu_per_target_ms']:.0f} ms",
                best["overhead_cpu_per_target_ms"] <= 50,
                best["mode"],
            )
            check(
                "orchestrator process CPU <= 5% of the run's total",
                f"{best['orchestrator_cpu_share'] * 100:.1f}%",
                best["orchestrator_cpu_share"] <= 0.05,
                best["mode"],
            )
        # PSS: a forked worker shares its warm parent's pages, which summed RSS counts once per process
        key = "peak_pss_mb_per_concurrent_target"
        if not any(r.get(key) for r in rows):  # results of a bench that sampled RSS only
            key = "peak_rss_mb_per_concurrent_target"
        runner_rows = [
            r for r in rows if r["mode"].startswith("runner") and not r["mode"].endswith("-host") and r.get(key)
        ]
        if runner_rows:
            worst = max(runner_rows, key=lambda r: r[key])
            v = worst[key]
            check(
                f"peak {'PSS' if 'pss' in key else 'RSS'} <= 200 MB per concurrent target",
                f"{v:.0f} MB",
                v <= 200,
                f"{worst['operation']} {worst['mode']}",
            )
        skip = _row(rows, "redeploy", "runner-skip")
        if skip and xargs:
            v = skip["wall_s"]["median"] / xargs["wall_s"]["median"]
            check("--skip-unchanged no-change redeploy <= 3% of the xargs time", f"{v * 100:.1f}%", v <= 0.03)
        else:
            check("--skip-unchanged no-change redeploy <= 3% of the xargs time", None, None, "not measured")
        if len(fleets) > 1:
            lo = min(fleets, key=lambda f: f["tenants"])
            a, b = (
                _best_runner(lo["rows"], "redeploy"),
                _row(rows, "redeploy", (_best_runner(lo["rows"], "redeploy") or {}).get("mode")),
            )
            if a and b:
                g = b["wall_s"]["median"] / a["wall_s"]["median"]
                ratio = n / lo["tenants"]
                check(
                    f"N={n} / N={lo['tenants']} stays linear ({0.8 * ratio:.0f}x-{1.2 * ratio:.0f}x)",
                    f"{g:.2f}x",
                    0.8 * ratio <= g <= 1.2 * ratio,
                    a["mode"],
                )
    latency = doc.get("latency")
    if latency and latency.get("rows"):
        best = min(latency["rows"], key=lambda r: r["ratio_to_bound"])
        check(
            f"latency profile N={latency['tenants']} first deploy: wall <= 1.3x max(CPU floor, N/c x critical path)",
            f"{best['ratio_to_bound']:.2f}x",
            best["ratio_to_bound"] <= 1.3,
            f"{best['mode']}, concurrency used {best['concurrency_used']}",
        )
        if latency.get("throttle_rate"):
            fails = sum(r["failures"] for r in latency["rows"])
            check(
                f"{latency['throttle_rate'] * 100:.0f}% throttling injected: 0 failed targets, retries counted",
                f"{fails} failed",
                fails == 0,
                f"retries {[r.get('retries') for r in latency['rows']]}",
            )
        else:
            check(
                "5% throttling injected: 0 failed targets, retries counted",
                None,
                None,
                "not measured: the runner has no --retries",
            )
    return checks


def table(doc: dict, source: str) -> str:
    lines = [
        f"Measured {doc['date'][:10]} on {doc['cores']} cores ({doc['machine_note']}), "
        f"`{doc['command']}` ({doc['duration_s'] / 60:.0f} min; results in `{source}`). "
        "Wall and CPU are medians of the repeats, [min-max] in brackets.",
        "",
    ]
    for fleet in doc.get("fleets", []):
        n = fleet["tenants"]
        lines += [
            f"**N={n}** tenants (+ shared on redeploy); floor = the plain CLI's engine CPU / {doc['cores']} "
            f"cores: redeploy {fleet['floor']['redeploy']['wall_s']:.1f} s, drift {fleet['floor']['drift']['wall_s']:.1f} s.",
            "",
            "| operation | mode | wall s | CPU s | CPU ms per target: orchestrator / workers (or xargs, sh) / "
            "engine / unattributed | beyond plain CLI ms per target | peak PSS (RSS) MB per concurrent target | "
            "wall / floor | failures |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in fleet["rows"]:
            w, c, k = r["wall_s"], r["cpu_s"], r["cpu_by_class_s"]
            per = {key: value / r["targets"] * 1000 for key, value in k.items()}
            split = f"{per['root']:.0f} / {per['other']:.0f} / {per['engine']:.0f} / {per['unattributed']:.0f}"
            overhead = r.get("overhead_cpu_per_target_ms") if r["mode"].startswith("runner-c") else None
            ratio = r.get("ratio_to_floor")
            lines.append(
                f"| {r['operation']} | {r['mode']} | {w['median']:.1f} [{w['min']:.1f}-{w['max']:.1f}] | "
                f"{c['median']:.1f} | {split} | {'' if overhead is None else f'{overhead:.0f}'} | "
                f"{_memory(r)} | "
                f"{'' if ratio is None else f'{ratio:.2f}'} | {r['failures']} |"
            )
        lines.append("")
    latency = doc.get("latency")
    if latency and latency.get("rows"):
        lines += [
            f"**Latency profile**: first deploy of N={latency['tenants']} with `simulated_latency_ms: "
            f"{latency['latency_ms']}`, `simulated_throttle_rate: {latency['throttle_rate']}`.",
            "",
            "| mode | concurrency used | wall s | CPU floor s | N/c x critical path s | wall / bound | failures |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in latency["rows"]:
            lines.append(
                f"| {r['mode']} | {r['concurrency_used']} | {r['wall_s']['median']:.1f} | {r['cpu_floor_s']:.1f} | "
                f"{r['io_bound_s']:.1f} | {r['ratio_to_bound']:.2f} | {r['failures']} |"
            )
        lines.append("")
    lines += ["Targets of issue #17:", "", "| target | measured | |", "| --- | --- | --- |"]
    for ch in doc["checks"]:
        verdict = {True: "met", False: "**missed**", None: "not measured"}[ch["met"]]
        detail = f" ({ch['detail']})" if ch.get("detail") else ""
        lines.append(f"| {ch['target']} | {ch['value'] if ch['value'] is not None else '-'}{detail} | {verdict} |")
    for note in doc.get("notes", []):
        lines += ["", note]
    return "\n".join(lines)


def regenerate_readme() -> int:
    files = sorted(RESULTS.glob("*.json"))
    docs = [(p, json.loads(p.read_text())) for p in files]
    docs = [(p, d) for p, d in docs if d.get("benchmark") == "bench.fleet" and d.get("version") == 2]
    if not docs:
        print(f"no bench.fleet results in {RESULTS}", file=sys.stderr)
        return 2
    path, doc = max(docs, key=lambda pd: pd[1]["date"])
    text = README.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        print(f"{README}: no {TABLE_START} ... {TABLE_END} markers", file=sys.stderr)
        return 2
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    doc["checks"] = evaluate(doc)  # the targets as this version of the bench reads them
    body = table(doc, str(path.relative_to(PROJECT_DIR)))
    README.write_text(f"{head}{TABLE_START}\n{body}\n{TABLE_END}{tail}")
    print(f"README.md: table from {path.relative_to(PROJECT_DIR)}")
    return 0


# --------------------------------------------------------------------------- main


def parse_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=parse_list, default=[50], help="fleet sizes N (default 50; e.g. 10,50)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row (default 3; median and min/max)")
    parser.add_argument(
        "--concurrency",
        default=None,
        help=f"runner concurrencies (default 1,{CORES},auto; auto only when the runner accepts it)",
    )
    parser.add_argument("--latency-tenants", type=int, default=100, help="latency profile N (default 100; 0: skip)")
    parser.add_argument("--latency-ms", type=int, default=500, help="simulated_latency_ms of the profile (default 500)")
    parser.add_argument(
        "--throttle-rate",
        type=float,
        default=0.05,
        help="simulated_throttle_rate of the profile when the runner has --retries (default 0.05)",
    )
    parser.add_argument("--label", default=socket.gethostname(), help="results file bench/results/<date>-<label>.json")
    parser.add_argument("--machine-note", default="", help="how quiet the machine was (goes into the table)")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/<date>-<label>.json)")
    parser.add_argument("--table", action="store_true", help="only regenerate the README table from bench/results")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.table:
        return regenerate_readme()

    from runner.bootstrap import ensure_engine

    bin_dir = ensure_engine()
    up_help = help_text("up")
    auto = "auto" in option_block(up_help, "--concurrency")
    skip_flag = "--skip-unchanged" in up_help
    retries = "--retries" in up_help
    concurrencies = args.concurrency.split(",") if args.concurrency else ["1", str(CORES), *(["auto"] if auto else [])]
    notes = []
    if "auto" in concurrencies and not auto:
        concurrencies.remove("auto")
    if not auto:
        notes.append("`runner up --concurrency auto` is not accepted by this runner: its rows are not measured.")
    if not retries:
        notes.append(
            "`runner up --retries` does not exist in this runner: the latency profile runs without injected throttling."
        )
    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    log(
        f"work dir {tmp}; engine {bin_dir}; {CORES} cores; concurrency {concurrencies}; "
        f"--skip-unchanged {skip_flag}; --retries {retries}"
    )
    started = time.time()
    try:
        fleets = [measure_fleet(tmp, bin_dir, n, args.repeats, concurrencies, skip_flag) for n in args.tenants]
        latency = None
        if args.latency_tenants:
            lat_c = ["auto"] if auto else [str(CORES), str(2 * CORES)]
            latency = measure_latency(
                tmp, bin_dir, args.latency_tenants, args.latency_ms, lat_c, args.throttle_rate if retries else None
            )
        load = os.getloadavg()
        doc = {
            "benchmark": "bench.fleet",
            "version": 2,
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            "cores": CORES,
            "python": sys.version.split()[0],
            "engine": str(bin_dir),
            "command": "python -m bench.fleet " + shlex.join(sys.argv[1:] if argv is None else argv),
            "machine_note": args.machine_note
            or (f"load average {load[0]:.1f} at the end" if load[0] > CORES * 0.5 else "quiet"),
            "duration_s": _r(time.time() - started, 1),
            "concurrency": concurrencies,
            "features": {"concurrency_auto": auto, "skip_unchanged": skip_flag, "retries": retries},
            "method": {
                "shared_stack": "redeploy: counted on every side (the runner ups it first; the plain modes up it "
                "too, first in the list); drift: on none (runner drift checks tenant stacks only)",
                "plain_env": "each stack's environment from `runner env --stack S` (passphrase, backend, "
                "PULUMI_HOME, PATH) in the directory it names; xargs sources the shell lines per stack",
                "cpu_s": "exact: getrusage(RUSAGE_CHILDREN) delta of the whole process tree",
                "cpu_by_class_s": "sampled every 50 ms from /proc: root = the command itself (the runner's "
                "orchestrator), other = workers (or xargs/sh), engine = pulumi CLIs and all "
                "below them; unattributed = exact total - sampled",
                "floor": "sum over stacks of the median engine CPU of each stack's plain CLI commands, / cores",
                "overhead_cpu_per_target_ms": "(runner CPU - floor engine CPU) / targets",
                "peak_rss_mb_per_concurrent_target": "peak summed RSS of the tree / most pulumi CLIs alive at once",
                "peak_pss_mb_per_concurrent_target": "the same with PSS (shared pages divided among their sharers)",
                "order": "modes rotate by one per repeat",
            },
            "fleets": fleets,
            "latency": latency,
            "notes": notes,
        }
        doc["checks"] = evaluate(doc)
        out = args.out or RESULTS / f"{dt.date.today().isoformat()}-{args.label}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(table(doc, str(out)))
        print(f"\nresults: {out}")
        return 0
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
