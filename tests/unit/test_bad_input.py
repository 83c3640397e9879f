"""Reliability: hostile or malformed input is refused before anything runs.

Each case drives the real `runner` CLI in a child process and asserts:

* exit code 2 and a clear message (stderr starts with `error:`, no traceback);
* no engine process was started: RUNNER_PULUMI_ROOT points at a `pulumi`
  wrapper that records every invocation before exec'ing the real engine (the
  bootstrap's own `pulumi version` check counts as an engine start, since it
  only happens once a Fleet is built);
* no file or directory appeared anywhere under the test's temp root except
  the runner's own state dir (and there, no backend state and no logs), and
  nothing new at the top level of /tmp.

NUL cannot be passed on a command line (execve), so it is tested in the
registry only.

The child is forked from this process after the CLI's modules are imported
once (`run_forked`), not exec'd: the same `main` with its own argv,
environment, working directory, stdin (/dev/null), stdout and stderr, without
paying the CLI's imports (runner.ops pulls in SQLAlchemy) in each of the ~170
calls, which made this file most of the unit suite's time (#18).
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pytest

import runner.ops  # noqa: F401 - imported here once, so that no forked call pays for it
from runner.cli import main as runner_main

PROJECT_DIR = Path(__file__).resolve().parents[2]

HOSTILE_IDS = [
    "../x",
    "..",
    "--force",
    "-s",
    "a/b",
    "org/p/s",
    "a" * 300,
    "ünïcode",
    "Cust-1",
    "x",
    "a.b",
    "/etc/passwd",
    "~root",
    "$(touch pwned)",
    "a b",
    "cust-",
]

GOOD_REGISTRY = """\
defaults: {{platform: local, app_version: "1.0.0", platform_root: {platform}}}
environments: [{{name: staging}}, {{name: production, require_tenant: true}}]
tenants:
  - {{id: shop-1, name: Shop One, environments: [staging], tags: {{tier: gold}}}}
"""


@pytest.fixture
def cli(tmp_path, engine_bin):
    """Run the CLI with a recording engine wrapper; check the no-side-effects invariants after each call."""
    fake_root = tmp_path / "engine"
    (fake_root / "bin").mkdir(parents=True)
    record = tmp_path / "engine-calls.log"
    for companion in Path(engine_bin).iterdir():
        if companion.name != "pulumi":
            (fake_root / "bin" / companion.name).symlink_to(companion)
    wrapper = fake_root / "bin" / "pulumi"
    wrapper.write_text(f'#!/bin/bash\necho "$@" >> {record}\nexec {engine_bin}/pulumi "$@"\n')
    wrapper.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    state = work / ".runner"
    registry = work / "tenants.yaml"
    registry.write_text(GOOD_REGISTRY.format(platform=work / "platform"))

    class Cli:
        root = tmp_path
        registry_path = registry
        state_dir = state

        def run(self, *args: str, registry_text: str | None = None, extra_env: dict | None = None):
            if registry_text is not None:
                registry.write_text(registry_text)
            before_root = _tree(tmp_path)
            before_tmp = set(os.listdir("/tmp"))
            env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "PULUMI_", "GITHUB_"))}
            env.update(
                RUNNER_STATE_DIR=str(state),
                RUNNER_REGISTRY=str(registry),
                RUNNER_PULUMI_ROOT=str(fake_root),
                PATH=f"{fake_root / 'bin'}:{env.get('PATH', '')}",
                RUNNER_PLATFORM_ROOTS=str(work),
                **(extra_env or {}),
            )
            proc = run_forked(list(args), env=env, cwd=PROJECT_DIR, timeout=120)
            created = _tree(tmp_path) - before_root - {str(record)}
            problems = []
            if record.exists():
                problems.append(f"the engine was started: {record.read_text().strip()!r}")
                record.unlink()
            problems += [f"created outside the state dir: {p}" for p in sorted(created) if not p.startswith(str(state))]
            # the ledger db may be opened; no backend state, no logs, no work areas, no generated program
            problems += [
                f"created in the state dir: {p}"
                for p in sorted(created)
                if p.startswith(tuple(str(state / d) for d in ("state", "logs", "work", "program")))
            ]
            # other test workers create /tmp entries concurrently: only look for names we could have caused
            new_tmp = {
                n
                for n in set(os.listdir("/tmp")) - before_tmp
                if any(bad in n for bad in ("..", "force", "passwd", "pwned", "shop-1", "org"))
                and not n.startswith("org.chromium.")
            }  # the browser test in another worker
            problems += [f"created in /tmp: {n}" for n in sorted(new_tmp)]
            assert not problems, f"{args} (exit {proc.returncode}):\n" + "\n".join(problems)
            return proc

    return Cli()


def run_forked(args: list[str], *, env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """`runner ARGS` in a forked child: exit code, stdout and stderr as the console script gives them
    (an uncaught exception prints its traceback and exits 1, as the interpreter does)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                os.chdir(cwd)
                os.environ.clear()
                os.environ.update(env)
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
                sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8")
                sys.stderr = io.TextIOWrapper(
                    io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
                )
                sys.argv = ["runner", *args]
                runner_main.main(args=args, prog_name="runner")
                code = 0
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
            except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                raise subprocess.TimeoutExpired(["runner", *args], timeout)
            time.sleep(0.01)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(
            ["runner", *args], os.waitstatus_to_exitcode(status), out.read().decode(), err.read().decode()
        )


def _tree(root: Path) -> set[str]:
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.add(os.path.join(dirpath, name))
    return found


def assert_usage_error(proc, *must_contain: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), proc.stderr
    # every line is an `error:` line or a `file:line:` continuation of one (all registry problems at once)
    for line in lines:
        assert line.startswith("error:") or re.match(r"^\S+:\d+: ", line), f"stray stderr line: {line!r}"
    for text in must_contain:
        assert text in proc.stderr, (text, proc.stderr)
    assert proc.stdout.strip() == ""


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    "command,hostile",
    [("up", h) for h in HOSTILE_IDS]
    + [
        (c, h)
        for c in ("preview", "drift", "destroy", "rollback", "refresh", "recover")
        for h in ("../x", "--force", "a/b")
    ],
)
def test_hostile_tenant_on_the_command_line(cli, command, hostile):
    extra = ["--env", "staging", "--yes"] if command == "destroy" else (["--yes"] if command == "up" else [])
    proc = cli.run(command, "--tenant", hostile, *extra)
    assert_usage_error(proc, "invalid tenant id")
    assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 1


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_hostile_environment_on_the_command_line(cli, hostile):
    assert_usage_error(cli.run("up", "--all-tenants", "--env", hostile, "--yes"), "invalid environment name")


@pytest.mark.parametrize("hostile", ["../x", "--force", "a" * 300])
def test_hostile_environment_on_single_target_commands(cli, hostile):
    assert_usage_error(cli.run("history", "--tenant", "shop-1", "--env", hostile), "invalid environment name")
    assert_usage_error(cli.run("outputs", "--tenant", "shop-1", "--env", hostile), "invalid environment name")


@pytest.mark.parametrize("hostile", ["../x", "=", "tier", "=gold", "tier=", "--force", "-s"])
def test_hostile_tag_selector(cli, hostile):
    assert_usage_error(cli.run("up", "--all-tenants", "--tag", hostile, "--yes"), "invalid tag selector")


@pytest.mark.parametrize(
    "hostile", ["../x", "..", "3/2", "0/0", "-1/2", "a/b", "1", "1/2/3", "org/p/s", "ü/2", "9" * 400 + "/2"]
)
def test_hostile_shard(cli, hostile):
    assert_usage_error(cli.run("up", "--all-tenants", "--shard", hostile, "--yes"), "--shard")


@pytest.mark.parametrize("hostile", ["../x", "--force", "a/b"])
def test_hostile_tenant_on_single_target_commands(cli, hostile):
    assert_usage_error(cli.run("history", "--tenant", hostile, "--env", "staging"), "invalid tenant id")
    assert_usage_error(cli.run("outputs", "--tenant", hostile, "--env", "staging"), "invalid tenant id")


def test_unknown_tenant_and_environment_are_named(cli):
    assert_usage_error(cli.run("up", "--tenant", "shop-2", "--yes"), "unknown tenant 'shop-2'")
    assert_usage_error(cli.run("up", "--all-tenants", "--env", "stagin", "--yes"), "stagin")


def test_report_of_an_unknown_run_is_one_clean_error(cli):
    """BUG (runner/cli.py, report_cmd): `--run-id` is declared twice (its own
    @click.option and output_options), so click prints two UserWarnings on
    every `runner report` invocation; the stderr is not just `error:` lines."""
    assert_usage_error(cli.run("report", "--run-id", "../x"), "no run '../x'")


# --------------------------------------------------------------------------- registry


def _registry(tenants: str, defaults: str = "{platform: local}") -> str:
    return f"defaults: {defaults}\nenvironments: [{{name: staging}}]\ntenants:\n{tenants}"


BAD_REGISTRIES = {
    "malformed yaml": ("tenants: [\n  - id: x\n", "invalid YAML"),
    "tabs": ("tenants:\n\t- id: shop-1\n", "error:"),
    "empty": ("", "empty"),
    "a list at top level": ("- a\n- b\n", "error:"),
    "not utf-8": ("tenants: [{id: \xff\xfe}]\n", "error:"),
    "unknown top-level key": (
        _registry("  - {id: shop-1, name: S, environments: [staging]}\n") + "bogus: 1\n",
        "bogus",
    ),
    "unknown tenant key": (_registry("  - {id: shop-1, name: S, environments: [staging], bogus: 1}\n"), "bogus"),
    "unknown config key": (
        _registry("  - {id: shop-1, name: S, environments: [staging], config: {nope: 1}}\n"),
        "nope",
    ),
    "wrong type name": (_registry("  - {id: shop-1, name: 5, environments: [staging]}\n"), "name"),
    "wrong type environments": (_registry("  - {id: shop-1, name: S, environments: staging}\n"), "environments"),
    "wrong type enabled": (
        _registry("  - {id: shop-1, name: S, environments: [staging], enabled: 'yes'}\n"),
        "enabled",
    ),
    "number for string config": (
        _registry("  - {id: shop-1, name: S, environments: [staging], config: {app_version: 1.0}}\n"),
        "app_version",
    ),
    "plaintext secret": (
        _registry("  - {id: shop-1, name: S, environments: [staging], secrets: {db_password: hunter2-plain}}\n"),
        "never values",
    ),
    "unknown environment": (_registry("  - {id: shop-1, name: S, environments: [../prod]}\n"), "environment"),
    "duplicate tenant": (
        _registry(
            "  - {id: shop-1, name: S, environments: [staging]}\n  - {id: shop-1, name: T, environments: [staging]}\n"
        ),
        "shop-1",
    ),
    "hostile env var name": (
        _registry("  - {id: shop-1, name: S, environments: [staging], secrets: {db_password: {env: 'A;rm -rf'}}}\n"),
        "environment variable",
    ),
    "hostile platform_root type": (
        _registry("  - {id: shop-1, name: S, environments: [staging]}\n", "{platform: local, platform_root: [1]}"),
        "platform_root",
    ),
    # #15.3: values that become paths
    "path escape app_version": (
        _registry(
            "  - {id: shop-1, name: S, environments: [staging], config: {app_version: '../../../../customer-2'}}\n"
        ),
        "tenants.yaml:4: tenants[0].config.app_version: invalid app_version '../../../../customer-2'",
    ),
    "path escape platform_root": (
        _registry("  - {id: shop-1, name: S, environments: [staging]}\n", "{platform: local, platform_root: /etc}"),
        "tenants.yaml:1: defaults.platform_root: platform_root '/etc' resolves to /etc",
    ),
    "path escape migrations_dir": (
        _registry("  - {id: shop-1, name: S, environments: [staging], config: {migrations_dir: ../../..}}\n"),
        "tenants[0].config.migrations_dir: migrations_dir '../../..' resolves to",
    ),
    "path escape file secret": (
        _registry(
            "  - {id: shop-1, name: S, environments: [staging], secrets: {db_password: {file: .runner/passphrase}}}\n"
        ),
        "tenants[0].secrets.db_password.file: file '.runner/passphrase' is inside the runner's state directory",
    ),
}
for _i, _hostile in enumerate(["../x", "--force", "a/b", "a" * 300, "ünï", "a\\0b", "a\\nb"]):
    BAD_REGISTRIES[f"hostile tenant id #{_i}"] = (
        _registry(f'  - {{id: "{_hostile}", name: S, environments: [staging]}}\n'),
        "invalid tenant id",
    )
    BAD_REGISTRIES[f"hostile environment name #{_i}"] = (
        f'defaults: {{platform: local}}\nenvironments: [{{name: "{_hostile}"}}]\n'
        f'tenants:\n  - {{id: shop-1, name: S, environments: ["{_hostile}"]}}\n',
        "invalid environment name",
    )


@pytest.mark.parametrize("case", sorted(BAD_REGISTRIES))
def test_bad_registry_is_refused_before_anything_runs(cli, case):
    text, expected = BAD_REGISTRIES[case]
    if case == "not utf-8":
        cli.registry_path.write_bytes(text.encode("latin-1"))
        text = None
    commands = [("up", "--all-tenants", "--yes")]
    if not case.startswith("hostile"):
        commands.insert(0, ("tenants", "validate"))
    for args in commands:
        proc = cli.run(*args, registry_text=text)
        assert_usage_error(proc, expected)
        if case == "plaintext secret":
            assert "hunter2-plain" not in proc.stderr, "a plaintext secret was echoed back"


def test_all_registry_problems_reported_at_once_with_file_and_line(cli):
    text = _registry(
        "  - {id: '../x', name: S, environments: [staging]}\n"
        "  - {id: shop-2, name: 5, environments: [staging], bogus: 1}\n"
    )
    proc = cli.run("tenants", "validate", registry_text=text)
    assert_usage_error(proc, "tenants.yaml:4:", "tenants.yaml:5:", "bogus", "'../x'")


def test_missing_secret_variable_is_a_usage_error_naming_the_reference(cli):
    """BUG (runner/ops.py, fleet_run): the Fleet is built (engine bootstrap runs
    `pulumi version`, the backend dir state/ and the generated program/ are
    created) before `fleet.jobs_for` resolves the secrets, so this usage error
    (exit 2, "nothing was run") comes after an engine process was started."""
    text = _registry("  - {id: shop-1, name: S, environments: [staging], secrets: {db_password: {env: NOPE_PW_VAR}}}\n")
    proc = cli.run("up", "--all-tenants", "--yes", registry_text=text)
    assert_usage_error(proc, "NOPE_PW_VAR")


@pytest.mark.parametrize(
    "option,hostile",
    [
        ("--release", "../../../../customer-2"),
        ("--release", "a/b"),
        ("--release", ".."),
        ("--run-id", "../.."),
        ("--run-id", "../../x"),
        ("--run-id", "a/b"),
        ("--run-id", "<!channel>"),
    ],
)
def test_hostile_labels_on_the_command_line(cli, option, hostile):
    """#15.3 / #15.11: --release and --run-id become directory names (releases/, logs/<run id>)."""
    assert_usage_error(cli.run("up", "--all-tenants", option, hostile, "--yes"), f"error: {option}: invalid")


def test_hostile_run_id_from_the_environment(cli):
    assert_usage_error(
        cli.run("up", "--all-tenants", "--yes", extra_env={"RUNNER_RUN_ID": "../../escape"}),
        "invalid run id '../../escape'",
    )


@pytest.mark.parametrize(
    "variable,value,message",
    [
        (
            "RUNNER_PASSPHRASE_FILE",
            "{root}/missing/passphrase",
            "error: RUNNER_PASSPHRASE_FILE {root}/missing/passphrase does not exist",
        ),
        ("RUNNER_PASSPHRASE", "", "error: RUNNER_PASSPHRASE is set but empty"),
    ],
)
def test_unusable_master_passphrase_is_a_usage_error_not_a_new_master(cli, variable, value, message):
    """#15.5: it used to generate a new master silently (no existing stack readable any more)."""
    proc = cli.run("up", "--all-tenants", "--yes", extra_env={variable: value.format(root=cli.root)})
    assert_usage_error(proc, message.format(root=cli.root))
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (cli.state_dir / "passphrase").exists() and not (cli.root / "missing").exists()
