"""The README and docs/ run as written: every CI workflow in them has what a
real pipeline needs (backend, ledger, passphrase, the example registry's
secrets, full history where rollback is used, the engine cache), every
command line they give parses, and every example names the example
registry's tenants (issue #22, items 9 and 10)."""

from __future__ import annotations

import io
import re
import shlex
from pathlib import Path

import click
import pytest
from ruamel.yaml import YAML

from runner import cli
from runner.registry import load_registry

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
REGISTRY = load_registry(ROOT / "stacks" / "tenants.yaml")

#: Commands that start the engine: they need the backend, the passphrase, the
#: tenants' secrets and the engine itself. The others read the ledger only.
ENGINE_COMMANDS = {
    "up",
    "preview",
    "refresh",
    "destroy",
    "drift",
    "rollback",
    "sync",
    "recover",
    "outputs",
    "env",
    "pulumi",
}
LEDGER_COMMANDS = ENGINE_COMMANDS | {"report", "status", "history"}
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.M | re.S)
RUNNER_CALL = re.compile(r"(?:^|[\s;&|(`])(?:\S*/)?runner\s+(?P<rest>[^\n;&|`]*)")


def fenced_blocks(path: Path, lang: str | None = None) -> list[tuple[str, str, int]]:
    """(language, text, line number) of each fenced block."""
    text = path.read_text(encoding="utf-8")
    return [
        (m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
        for m in FENCE.finditer(text)
        if lang is None or m.group(1) == lang
    ]


def code_blocks(path: Path) -> list[tuple[str, int]]:
    """Every code block: fenced ones and indented (4 spaces) ones, with the line."""
    text = path.read_text(encoding="utf-8")
    blocks = [(body, line) for _, body, line in fenced_blocks(path)]
    outside = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    current: list[str] = []
    start = 0
    for number, line in enumerate([*outside.split("\n"), ""], start=1):
        if line.startswith("    ") or (current and not line.strip()):
            if not current:
                start = number
            current.append(line)
        else:
            if current:
                blocks.append(("\n".join(current), start))
            current = []
    return blocks


def yaml_documents() -> list[tuple[str, object]]:
    docs = []
    for path in DOCS:
        for _, body, line in fenced_blocks(path, "yaml"):
            docs.append((f"{path.relative_to(ROOT)}:{line}", YAML(typ="safe").load(io.StringIO(body))))
    return docs


def secret_variables() -> set[str]:
    return {ref.env for t in REGISTRY.tenants for ref in t.secrets.values() if ref.env}


def _flatten_env(value) -> dict[str, str]:
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, list):  # Kubernetes: [{name, value|valueFrom}]
        return {str(item["name"]): str(item.get("value", item.get("valueFrom"))) for item in value}
    return {}


class Job:
    """One CI job (or pod) that may run runner: its environment, its shell
    commands, its steps."""

    def __init__(self, where: str, env: dict[str, str], commands: list[str], steps: list[dict], kind: str):
        self.where, self.env, self.commands, self.steps, self.kind = where, env, commands, steps, kind

    @property
    def runner_calls(self) -> list[list[str]]:
        calls = []
        for command in self.commands:
            for match in RUNNER_CALL.finditer(command):
                words = _words(match.group("rest"))
                if words and not words[0].startswith("-"):
                    calls.append(words)
        return calls


def _words(text: str) -> list[str]:
    """Shell words with CI expressions and variables replaced by a plain value."""
    text = re.sub(r"\$\{\{.*?\}\}", "X", text)
    text = re.sub(r"\$\(\(.*?\)\)", "0", text)
    text = re.sub(r"\$\{?\w+\}?", "X", text)
    text = text.split("||")[0]
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def jobs() -> list[Job]:
    found = []
    for where, doc in yaml_documents():
        if not isinstance(doc, dict):
            continue
        if "jobs" in doc:  # GitHub Actions
            for name, job in doc["jobs"].items():
                env = {**_flatten_env(doc.get("env")), **_flatten_env(job.get("env"))}
                steps = job.get("steps", [])
                commands = []
                for step in steps:
                    if "run" in step:
                        env.update(_flatten_env(step.get("env")))
                        commands.append(" ".join(str(step["run"]).split()))
                found.append(Job(f"{where} job {name}", env, commands, steps, "github"))
        elif doc.get("kind") == "Job" and "apiVersion" in doc:  # Kubernetes
            for container in doc["spec"]["template"]["spec"]["containers"]:
                command = "runner " + " ".join(shlex.quote(str(a)) for a in container.get("args", []))
                found.append(
                    Job(
                        f"{where} container {container['name']}",
                        _flatten_env(container.get("env")),
                        [command],
                        [],
                        "kubernetes",
                    )
                )
        else:  # GitLab CI: top-level keys with a script
            default = doc.get("default", {}) or {}
            for name, job in doc.items():
                if not isinstance(job, dict) or "script" not in job:
                    continue
                env = {**_flatten_env(doc.get("variables")), **_flatten_env(job.get("variables"))}
                lines = [*default.get("before_script", []), *job.get("before_script", []), *job["script"]]
                commands = [" ".join(str(line).split()) for line in lines]
                # masked CI/CD variables come from the project's settings: the
                # job names them in a check that stops it when one is missing
                env.update({var: "(checked)" for c in commands for var in re.findall(r"\$\{(\w+):\?\}", c)})
                found.append(Job(f"{where} job {name}", env, commands, [{"gitlab": job, "default": default}], "gitlab"))
    return [job for job in found if job.runner_calls]


JOBS = jobs()
IDS = [job.where for job in JOBS]


def test_the_docs_hold_ci_workflows():
    kinds = {job.kind for job in JOBS}
    assert kinds == {"github", "gitlab", "kubernetes"}, IDS
    assert len(JOBS) >= 7, IDS


def _option_given(job: Job, option: str) -> bool:
    return all(option in call for call in job.runner_calls if call[0] in LEDGER_COMMANDS)


@pytest.mark.parametrize("job", JOBS, ids=IDS)
def test_every_ci_job_has_backend_ledger_passphrase_and_secrets(job):
    commands = {call[0] for call in job.runner_calls}
    assert "RUNNER_LEDGER" in job.env or _option_given(job, "--ledger"), (
        f"{job.where}: no ledger (RUNNER_LEDGER): every runner would write its own SQLite ledger"
    )
    if commands & ENGINE_COMMANDS:
        assert "RUNNER_BACKEND" in job.env or _option_given(job, "--backend"), (
            f"{job.where}: no backend (RUNNER_BACKEND): the state would be lost with the CI machine"
        )
        assert {"RUNNER_PASSPHRASE", "RUNNER_PASSPHRASE_FILE"} & set(job.env), (
            f"{job.where}: no master passphrase (RUNNER_PASSPHRASE): the stacks' secrets cannot be read"
        )
        missing = secret_variables() - set(job.env)
        assert not missing, f"{job.where}: the example registry's secrets are not provided: {sorted(missing)}"


@pytest.mark.parametrize("job", [j for j in JOBS if j.kind != "kubernetes"], ids=lambda j: j.where)
def test_ci_jobs_fetch_history_and_cache_the_engine(job):
    calls = job.runner_calls
    uses_rollback = any(call[0] == "rollback" or "rollback" in call for call in calls)
    engine = any(call[0] in ENGINE_COMMANDS for call in calls)
    if job.kind == "github":
        checkout = [s for s in job.steps if str(s.get("uses", "")).startswith("actions/checkout@")]
        assert checkout, f"{job.where}: no checkout"
        if uses_rollback:
            assert (checkout[0].get("with") or {}).get("fetch-depth") == 0, (
                f"{job.where}: rollback across commits needs the full history (fetch-depth: 0)"
            )
        if engine:
            go = [s for s in job.steps if str(s.get("uses", "")).startswith("actions/setup-go@")]
            assert go and (go[0].get("with") or {}).get("go-version-file") == "tools/go.mod", (
                f"{job.where}: no Go set-up (actions/setup-go with go-version-file: tools/go.mod)"
            )
            cache = [s for s in job.steps if str(s.get("uses", "")).startswith("actions/cache@")]
            assert cache, f"{job.where}: the engine build (~6 min) is not cached"
            spec = cache[0].get("with") or {}
            assert "~/.cache/runner" in str(spec.get("path")), f"{job.where}: the cache misses ~/.cache/runner"
            key = str(spec.get("key"))
            assert "pyproject.toml" in key and "tools/go.sum" in key, (
                f"{job.where}: the engine cache key must follow the pinned version (pyproject.toml, tools/go.sum)"
            )
            assert job.steps.index(cache[0]) < min(
                i for i, s in enumerate(job.steps) if "make" in str(s.get("run", ""))
            ), f"{job.where}: the cache must be restored before the engine is built"
    else:  # GitLab: the checkout is a clone; its depth and the cache are job keys
        spec = {**job.steps[0]["default"], **job.steps[0]["gitlab"]}
        variables = job.env
        if uses_rollback:
            assert str(variables.get("GIT_DEPTH")) == "0", (
                f"{job.where}: rollback across commits needs the full history (GIT_DEPTH: 0)"
            )
        if engine:
            cache = spec.get("cache") or {}
            assert variables.get("XDG_CACHE_HOME", "").startswith("$CI_PROJECT_DIR"), (
                f"{job.where}: GitLab caches only paths in the project: set XDG_CACHE_HOME under $CI_PROJECT_DIR"
            )
            assert any("runner" in str(p) for p in cache.get("paths", [])), (
                f"{job.where}: the engine build (~6 min) is not cached"
            )
            files = (cache.get("key") or {}).get("files", []) if isinstance(cache.get("key"), dict) else []
            assert {"pyproject.toml", "tools/go.sum"} <= set(files), (
                f"{job.where}: the engine cache key must follow the pinned version (pyproject.toml, tools/go.sum)"
            )
            assert "golang" in str(spec.get("image", "")), f"{job.where}: no Go toolchain (image)"


MAKE_TARGETS = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))


@pytest.mark.parametrize("job", JOBS, ids=IDS)
def test_ci_command_lines_parse(job):
    for command in job.commands:
        for match in re.finditer(r"\bmake\s+([\w\s-]+)", command):
            for target in match.group(1).split():
                assert target in MAKE_TARGETS, f"{job.where}: `make {target}` is not a Makefile target"
    for call in job.runner_calls:
        try:
            command, name, rest = cli.main, "runner", list(call)
            while isinstance(command, click.Group):
                assert rest, f"{job.where}: `runner {' '.join(call)}` names no command"
                name, rest = rest[0], rest[1:]
                command = command.get_command(click.Context(cli.main), name)
                assert command is not None, f"{job.where}: `runner {' '.join(call)}`: no command {name!r}"
            command.make_context(name, rest)
        except click.exceptions.UsageError as exc:
            pytest.fail(f"{job.where}: `runner {' '.join(call)}` does not parse: {exc}")


TENANTS = {t.id: set(t.environments) for t in REGISTRY.tenants}
ENVIRONMENTS = set(REGISTRY.environment_names)


def test_readme_examples_name_the_example_registrys_tenants():
    """A reader copies `runner ... --tenant X` from the README into a fresh
    clone: X must be a tenant of stacks/tenants.yaml, and every stack named
    `<tenant>.<environment>` one of its targets."""
    problems = []
    for body, line in code_blocks(README):
        for match in re.finditer(r"--tenant[ =]+([^\s\\]+)", body):
            value = match.group(1).strip("'\"")
            if value not in TENANTS and not re.fullmatch(r"[A-Z]+|T|X|\$\w+", value):
                problems.append(f"README.md:{line}: --tenant {value} is not in stacks/tenants.yaml")
        for match in re.finditer(r"(?<![\w.-])([a-z][a-z0-9-]*[a-z0-9])\.([a-z]+)\b(?![.-])", body):
            tenant, env = match.groups()
            if env in ENVIRONMENTS and env not in TENANTS.get(tenant, ()):
                problems.append(f"README.md:{line}: {tenant}.{env} is not a target of stacks/tenants.yaml")
        for match in re.finditer(r'"tenant": "([^"]+)"', body):
            if match.group(1) not in TENANTS:
                problems.append(f"README.md:{line}: tenant {match.group(1)} is not in stacks/tenants.yaml")
    assert not problems, "\n".join(problems)


def test_docs_point_only_inside_the_repository():
    """#22.10: the README pointed to a notes file that is not in the
    repository. Every relative link and every named .md file must exist."""
    problems = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"\]\(([^)\s]+)\)", text):
            target = match.group(1).split("#")[0]
            if target and not re.match(r"[a-z]+:", target) and not (path.parent / target).exists():
                problems.append(f"{path.relative_to(ROOT)}: link to {target}, which does not exist")
        for match in re.finditer(r"`([^`\s]+\.md)`", text):
            name = match.group(1)
            if not ((ROOT / name).exists() or (path.parent / name).exists()):
                problems.append(f"{path.relative_to(ROOT)}: names {name}, which is not in the repository")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- Feature -> test (#18)


def _feature_table() -> list[tuple[str, list[str]]]:
    """(feature, tests) of each row of the README's "Feature -> test" table."""
    section = README.read_text(encoding="utf-8").split("\n## Feature -> test\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 2 and cells[0] not in ("feature", "---"):
            rows.append((cells[0], re.findall(r"`([^`]+::[^`]+)`", cells[1])))
    return rows


def _commands(group: click.Group = cli.main, prefix: str = "") -> dict[str, click.Command]:
    found = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.update(_commands(command, f"{prefix}{name} "))
        else:
            found[f"{prefix}{name}"] = command
    return found


def test_the_feature_table_names_every_command_and_option():
    rows = _feature_table()
    assert len(rows) >= 30, rows
    features = " ".join(feature for feature, _ in rows)
    named_options = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", features))
    missing = []
    for name, command in sorted(_commands().items()):
        if f"`runner {name}" not in features:
            missing.append(f"runner {name}")
        for param in command.params:
            for opt in param.opts if isinstance(param, click.Option) else ():
                if opt.startswith("--") and opt != "--help" and opt not in named_options:
                    missing.append(f"runner {name} {opt}")
    assert not missing, "not in the README's Feature -> test table: " + ", ".join(sorted(set(missing)))


def test_every_test_the_feature_table_names_exists():
    problems = []
    for feature, tests in _feature_table():
        if not tests:
            problems.append(f"{feature}: no test named")
        for spec in tests:
            path, _, name = spec.partition("::")
            file = ROOT / path
            if not path.startswith("tests/e2e/") or not file.is_file():
                problems.append(f"{feature}: {path} is not an e2e test file")
            elif not re.search(rf"^def {re.escape(name)}\(", file.read_text(), re.M):
                problems.append(f"{feature}: no test {name} in {path}")
    assert not problems, "\n".join(problems)
