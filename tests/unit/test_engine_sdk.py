"""Pins the Automation API behaviour runner.engine.sdk() relies on, against a
fake `pulumi` that logs its arguments: an SDK bump that changes it fails here
in seconds, not in an e2e run (#16)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runner import engine
from runner.bootstrap import PULUMI_VERSION


@pytest.fixture
def fake_cli(tmp_path) -> tuple[Path, Path]:
    """A bin dir whose `pulumi` logs each call and answers `{}` / `[]`."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    script = bin_dir / "pulumi"
    script.write_text(
        textwrap.dedent(f"""\
        #!/bin/sh
        echo "$*" >> {calls}
        case "$*" in *history*) echo '[]' ;; *) echo '{{}}' ;; esac
        """)
    )
    script.chmod(0o755)
    return bin_dir, calls


def _calls(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _stack(tmp_path, bin_dir, collector, **workspace):
    settings = engine.EngineSettings(
        bin_dir=bin_dir, project_dir=tmp_path, backend_url="file:///nowhere", work_root=tmp_path / "state" / "work"
    )
    settings.program_dir.mkdir(parents=True)
    ws = engine._workspace(settings, "dev", **workspace)
    return engine.sdk().Stack("dev", ws, collector)


def test_the_command_runs_no_version_process_and_runs_its_own_binary(fake_cli, tmp_path):
    bin_dir, calls = fake_cli
    command = engine.sdk().Command(bin_dir)
    assert _calls(calls) == []  # the public constructor would have run `pulumi version`
    assert str(command.version) == PULUMI_VERSION
    command.run(["stack", "ls"], str(tmp_path), {})
    assert _calls(calls) == ["--non-interactive stack ls"]


def test_a_known_stack_is_not_selected_and_an_unknown_one_is(fake_cli, tmp_path):
    bin_dir, calls = fake_cli
    _stack(tmp_path, bin_dir, engine._Collector(None), check_exists=False)
    assert _calls(calls) == []
    _stack(tmp_path / "other", bin_dir, engine._Collector(None), check_exists=True)
    assert _calls(calls) == ["--non-interactive stack select --stack dev"]


@pytest.mark.parametrize("operation", ["up", "refresh", "destroy"])
def test_an_operation_runs_one_process_when_its_events_carry_the_outputs(fake_cli, tmp_path, operation):
    """Stack.up/refresh/destroy read the outputs and the summary through
    self.outputs() and self.info(): overridden, so no `stack output`/`stack history`."""
    bin_dir, calls = fake_cli
    collector = engine._Collector(None)
    collector.stack_outputs, collector.changes = {"path": "/x", "token": engine.SECRET_MASK}, {"same": 2}
    stack = _stack(tmp_path, bin_dir, collector, check_exists=False)
    result = getattr(stack, operation)(color="never")
    assert [c.split()[1] for c in _calls(calls)] == [operation]
    assert result.summary.resource_changes == {"same": 2}
    if operation == "up":
        assert result.outputs["path"].value == "/x" and result.outputs["token"].secret


def test_stack_init_modes_are_the_ones_the_factories_use(fake_cli, tmp_path):
    """Stack.Mode is the SDK's private StackInitMode: create runs `stack init`."""
    bin_dir, calls = fake_cli
    settings = engine.EngineSettings(
        bin_dir=bin_dir, project_dir=tmp_path, backend_url="file:///nowhere", work_root=tmp_path / "state" / "work"
    )
    settings.program_dir.mkdir(parents=True)
    ws = engine._workspace(settings, "dev")
    Stack = engine.sdk().Stack
    assert {m.name for m in Stack.Mode} >= {"CREATE", "SELECT", "CREATE_OR_SELECT"}
    Stack("dev", ws, engine._Collector(None), Stack.Mode.CREATE)
    assert [c.split()[1:3] for c in _calls(calls)] == [["stack", "init"]]
