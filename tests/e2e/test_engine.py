"""The foundation: the real engine through our one seam, on a throwaway project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest

from runner import engine
from runner.bootstrap import PULUMI_VERSION, cli_version

pytestmark = pytest.mark.e2e

PROGRAM = textwrap.dedent(
    """
    import os
    import pulumi
    from pulumi.dynamic import CreateResult, Resource, ResourceProvider

    class FileProvider(ResourceProvider):
        def create(self, props):
            if props["text"].startswith("raise:"):  # a platform API failing (tests below)
                raise Exception(props["text"].removeprefix("raise:"))
            with open(props["path"], "w") as handle:
                handle.write(props["text"])
            return CreateResult(id_=props["path"], outs=props)

        def delete(self, id, props):
            os.remove(id)

    class File(Resource):
        def __init__(self, name, path, text):
            super().__init__(FileProvider(), name, {"path": path, "text": text})

    config = pulumi.Config()
    f = File("greeting", config.require("path"), config.require("text"))
    pulumi.export("path", f.id)
    pulumi.export("token", config.require_secret("token"))
    """
)


@pytest.fixture
def project(tmp_path, engine_bin, monkeypatch):
    (tmp_path / "prog").mkdir()
    (tmp_path / "state").mkdir()
    (tmp_path / "prog" / "__main__.py").write_text(PROGRAM)
    (tmp_path / "prog" / "Pulumi.yaml").write_text("name: runner\nruntime: python\n")
    settings = engine.EngineSettings(
        bin_dir=engine_bin,
        project_dir=tmp_path / "prog",
        backend_url=engine.backend_url_for(None, tmp_path),
        work_root=tmp_path / "state" / "work",
    )
    engine.prepare_program_dir(settings)
    env = engine.worker_environment(settings, "dev", "test-passphrase")
    monkeypatch.setattr(os, "environ", env)
    return settings


def test_bootstrapped_cli_reports_the_pinned_version(engine_bin):
    assert cli_version(engine_bin / "pulumi") == PULUMI_VERSION


def test_up_preview_destroy_through_the_seam(project, tmp_path):
    target = tmp_path / "greeting.txt"
    config = {"path": str(target), "text": "hello"}
    secret = "s3cr3t-sentinel-value"
    up = engine.run_operation(project, stack="dev", operation="up", config=config, secret_values={"token": secret})
    assert target.read_text() == "hello"
    assert up.changes.get("create") == 2  # the stack and the file
    assert up.outputs == {"path": str(target), "token": engine.SECRET_MASK}
    assert secret not in engine.stack_config_path(project, "dev").read_text()

    again = engine.run_operation(
        project, stack="dev", operation="preview", config=config, secret_values={"token": secret}
    )
    assert set(again.changes) == {"same"}

    engine.run_operation(project, stack="dev", operation="destroy")
    assert not target.exists()


def test_missing_stack_is_a_typed_error(project):
    with pytest.raises(engine.StackNotFound):
        engine.run_operation(project, stack="nope", operation="refresh")


def test_program_failure_is_attributed(project, tmp_path):
    config = {"path": str(tmp_path / "missing-dir" / "x.txt"), "text": "x"}
    with pytest.raises(engine.OperationFailed) as info:
        engine.run_operation(project, stack="dev", operation="up", config=config, secret_values={"token": "t"})
    assert "No such file or directory" in info.value.message
    assert info.value.urn and info.value.urn.endswith("::greeting")
    assert info.value.kind == "failed"  # permanent: never retried


def test_throttling_from_a_dynamic_provider_is_transient(project, tmp_path):
    """The local platform's simulated throttling (bench, #17) arrives through the
    engine as a provider diagnostic: classified transient, so the plan retries it."""
    config = {"path": str(tmp_path / "x.txt"), "text": "raise:ThrottlingException: Rate exceeded (simulated)"}
    with pytest.raises(engine.TransientError) as info:
        engine.run_operation(project, stack="dev", operation="up", config=config, secret_values={"token": "t"})
    assert info.value.kind == "transient"
    assert "ThrottlingException: Rate exceeded (simulated)" in info.value.message
    assert info.value.urn.endswith("::greeting")


@pytest.fixture
def counted(project, tmp_path):
    """The project's settings with a `pulumi` that logs each invocation's arguments
    and then runs the real CLI (the plugins beside it are the real ones)."""
    bin_dir, calls = tmp_path / "counted-bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for plugin in project.bin_dir.iterdir():
        if plugin.name != "pulumi":
            (bin_dir / plugin.name).symlink_to(plugin)
    wrapper = bin_dir / "pulumi"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {project.bin_dir / "pulumi"} "$@"\n')
    wrapper.chmod(0o755)

    def invocations() -> list[str]:
        lines = calls.read_text().splitlines() if calls.exists() else []
        calls.unlink(missing_ok=True)
        return lines

    return replace(project, bin_dir=bin_dir), invocations


def test_each_operation_on_a_deployed_stack_runs_one_cli_process(counted, tmp_path):
    """No `pulumi version`, `stack select`, `stack output` or `stack history` per
    target: the outputs and the summary arrive in the engine's events (#16)."""
    settings, invocations = counted
    config = {"path": str(tmp_path / "greeting.txt"), "text": "hello"}
    secrets = {"token": "t0ken"}
    engine.run_operation(settings, stack="dev", operation="up", config=config, secret_values=secrets)
    # the first deploy creates the stack (one process: select --create), sets its secret, and ups
    calls = [[w for w in c.split() if w != "--non-interactive"][:3] for c in invocations()]
    assert calls == [["stack", "select", "--create"], ["config", "set", "--secret"], ["up", "--yes", "--skip-preview"]]
    for operation in ("up", "preview", "refresh", "destroy"):
        result = engine.run_operation(settings, stack="dev", operation=operation, config=config, secret_values=secrets)
        calls = invocations()
        assert [c.split()[1] for c in calls] == [operation], calls
    assert result.changes.get("delete") == 2


DRIVER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from runner import engine

    settings = engine.EngineSettings(
        bin_dir=Path(sys.argv[1]), project_dir=Path(sys.argv[2]), backend_url=sys.argv[3], work_root=Path(sys.argv[4])
    )
    inline = sys.argv[5] != "host"
    namespace = {}
    program = lambda: exec(Path(sys.argv[2], "__main__.py").read_text(), namespace)  # noqa: E731
    provider = engine.DynamicProvider(settings.program_dir) if inline else None
    if provider is not None:
        os.environ.update(provider.env)
    try:
        result = engine.run_operation(
            settings, stack=sys.argv[5], operation="up", config=json.loads(sys.argv[6]), secret_values={"token": "t"},
            program=program if inline else None,
        )
    except engine.EngineError as exc:
        print(json.dumps({"error": exc.message}))
    else:
        print(json.dumps({"outputs": result.outputs, "changes": result.changes}))
    finally:
        if provider is not None:
            provider.close()
    """
)


def test_an_inline_program_and_an_attached_provider_start_no_plugin(counted, tmp_path):
    """#17: run like a worker does (the program inline, the dynamic provider served by a
    child forked from the worker), the engine starts neither the language host nor the
    dynamic provider's plugin; the result, and a provider's failure, are the same."""
    settings, invocations = counted
    launches = tmp_path / "launches.log"
    for plugin in ("pulumi-language-python", "pulumi-resource-pulumi-python"):
        wrapper = settings.bin_dir / plugin  # first on the engine's PATH: found before the one beside `pulumi`
        real = wrapper.resolve()
        wrapper.unlink()
        wrapper.write_text(f'#!/bin/sh\necho {plugin} >> {launches}\nexec {real} "$@"\n')
        wrapper.chmod(0o755)

    def drive(stack: str, text: str) -> dict:  # stack "host": the engine starts the plugins itself
        config = json.dumps({"path": str(tmp_path / f"{stack}.txt"), "text": text})
        argv = [str(settings.bin_dir), str(settings.project_dir), settings.backend_url, str(settings.work_root)]
        proc = subprocess.run(
            [sys.executable, "-c", DRIVER, *argv, stack, config], capture_output=True, text=True, env=dict(os.environ)
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.splitlines()[-1])

    launched = lambda: launches.read_text().split() if launches.exists() else []  # noqa: E731
    plain = drive("host", "hello")
    assert sorted(set(launched())) == ["pulumi-language-python", "pulumi-resource-pulumi-python"]
    launches.unlink()
    inline = drive("inline", "hello")  # stacks "host" and "inline", each with its own file
    assert launched() == []
    assert (tmp_path / "host.txt").read_text() == (tmp_path / "inline.txt").read_text() == "hello"
    assert plain["outputs"]["path"] == str(tmp_path / "host.txt")
    assert inline["outputs"]["path"] == str(tmp_path / "inline.txt")
    failed = drive("inline-failing", "raise:ThrottlingException: Rate exceeded (simulated)")
    assert "ThrottlingException: Rate exceeded (simulated)" in failed["error"]
    assert launched() == []
    invocations()


def test_an_operation_applies_the_config_its_runner_wrote(counted, tmp_path):
    """Two runners on one stack share its config file: one's write can land after the
    other wrote its own and before that one's engine read it (seen in the two-runner race
    test). Here the `pulumi` wrapper writes "another runner's" value just before `up`
    starts: the engine still applies this operation's config (its private copy)."""
    settings, invocations = counted
    stack_file = engine.stack_config_path(settings, "dev")
    wrapper = settings.bin_dir / "pulumi"
    real = wrapper.read_text().split("exec ", 1)[1]
    wrapper.write_text(f'#!/bin/sh\ncase "$*" in *" up "*) sed -i "s/ours/theirs/" {stack_file};; esac\nexec {real}')
    target = tmp_path / "greeting.txt"
    engine.run_operation(
        settings,
        stack="dev",
        operation="up",
        config={"path": str(target), "text": "ours"},
        secret_values={"token": "t"},
    )
    assert "theirs" in stack_file.read_text()  # the other runner's write did land in the shared file
    assert target.read_text() == "ours"
    invocations()
