"""#15.5, #15.6, #15.7: the master passphrase, file modes under .runner/, and
the engine's copy of Pulumi.yaml (no engine process is started here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runner import engine

PROJECT = Path(__file__).resolve().parents[2]


def test_generated_pulumi_yaml_keeps_keys_but_not_the_secret_flag(tmp_path):
    """Pulumi >= 3.202 refuses a `secret: true` key left at its default (pulumi/pulumi#21865):
    every stack without a db_password, `shared` included, would fail."""
    settings = engine.EngineSettings(
        bin_dir=tmp_path, project_dir=PROJECT, backend_url="file:///x", work_root=tmp_path / "work"
    )
    program = engine.prepare_program_dir(settings)
    generated = yaml.safe_load((program / "Pulumi.yaml").read_text())
    assert "db_password" in generated["config"]
    assert not any(isinstance(v, dict) and "secret" in v for v in generated["config"].values())
    assert yaml.safe_load((PROJECT / "Pulumi.yaml").read_text())["config"]["db_password"]["secret"] is True


# --- #15.5: the master passphrase ---------------------------------------------


def _first_call(state_dir: str, barrier, queue) -> None:
    barrier.wait()
    try:
        queue.put(("ok", engine.master_passphrase(Path(state_dir))))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def test_concurrent_first_calls_all_get_the_same_master(tmp_path, monkeypatch):
    """Two first runs at once used to race: one read an empty master, one crashed with FileExistsError."""
    import multiprocessing

    monkeypatch.delenv("RUNNER_PASSPHRASE", raising=False)
    monkeypatch.delenv("RUNNER_PASSPHRASE_FILE", raising=False)
    ctx = multiprocessing.get_context("fork")
    for round_ in range(20):
        state = tmp_path / f"state-{round_}" / ".runner"
        barrier, queue = ctx.Barrier(8), ctx.Queue()
        procs = [ctx.Process(target=_first_call, args=(str(state), barrier, queue)) for _ in range(8)]
        for proc in procs:
            proc.start()
        results = [queue.get(timeout=60) for _ in procs]
        for proc in procs:
            proc.join(timeout=60)
        assert all(kind == "ok" for kind, _ in results), results
        values = {value for _, value in results}
        assert len(values) == 1 and len(values.pop()) >= 32, results
        assert (state / "passphrase").stat().st_mode & 0o777 == 0o600
        assert [p.name for p in state.iterdir()] == ["passphrase"], "a temp file was left behind"


def test_the_master_is_stable_and_private(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNNER_PASSPHRASE", raising=False)
    monkeypatch.delenv("RUNNER_PASSPHRASE_FILE", raising=False)
    first = engine.master_passphrase(tmp_path / ".runner")
    assert first == engine.master_passphrase(tmp_path / ".runner")
    assert (tmp_path / ".runner").stat().st_mode & 0o777 == 0o700


def test_an_empty_passphrase_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNNER_PASSPHRASE", raising=False)
    monkeypatch.delenv("RUNNER_PASSPHRASE_FILE", raising=False)
    (tmp_path / "passphrase").write_text("\n")
    with pytest.raises(engine.PassphraseError, match="is empty"):
        engine.master_passphrase(tmp_path)
    assert (tmp_path / "passphrase").read_text() == "\n", "never silently replaced"


@pytest.mark.parametrize(
    "variable,value,message",
    [
        ("RUNNER_PASSPHRASE_FILE", "{tmp}/missing", "RUNNER_PASSPHRASE_FILE {tmp}/missing does not exist"),
        ("RUNNER_PASSPHRASE_FILE", "{tmp}/empty", "RUNNER_PASSPHRASE_FILE {tmp}/empty is empty"),
        ("RUNNER_PASSPHRASE_FILE", "", "RUNNER_PASSPHRASE_FILE is set but empty"),
        ("RUNNER_PASSPHRASE", "", "RUNNER_PASSPHRASE is set but empty"),
        ("RUNNER_PASSPHRASE", "  \n", "RUNNER_PASSPHRASE is set but empty"),
    ],
)
def test_a_configured_but_missing_or_empty_passphrase_is_an_error(tmp_path, monkeypatch, variable, value, message):
    """It used to generate a new master silently: no existing stack could be read any more."""
    monkeypatch.delenv("RUNNER_PASSPHRASE", raising=False)
    monkeypatch.delenv("RUNNER_PASSPHRASE_FILE", raising=False)
    (tmp_path / "empty").write_text("")
    monkeypatch.setenv(variable, value.format(tmp=tmp_path))
    state = tmp_path / ".runner"
    with pytest.raises(engine.PassphraseError) as info:
        engine.master_passphrase(state)
    assert str(info.value).startswith(message.format(tmp=tmp_path))
    assert "\n" not in str(info.value)
    assert not (state / "passphrase").exists() and not (tmp_path / "missing").exists()


def test_configured_passphrases_are_used(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNER_PASSPHRASE", "from-env")
    assert engine.master_passphrase(tmp_path) == "from-env"
    monkeypatch.delenv("RUNNER_PASSPHRASE")
    (tmp_path / "pp").write_text("from-file\n")
    monkeypatch.setenv("RUNNER_PASSPHRASE_FILE", str(tmp_path / "pp"))
    assert engine.master_passphrase(tmp_path / "state") == "from-file"


def test_an_existing_readable_master_is_made_private(tmp_path, monkeypatch):
    """#15.6: files under .runner/ holding keys are 0600 (an older runner may have left 0644)."""
    monkeypatch.delenv("RUNNER_PASSPHRASE", raising=False)
    monkeypatch.delenv("RUNNER_PASSPHRASE_FILE", raising=False)
    (tmp_path / "passphrase").write_text("old-master\n")
    (tmp_path / "passphrase").chmod(0o644)
    tmp_path.chmod(0o755)
    assert engine.master_passphrase(tmp_path) == "old-master"
    assert (tmp_path / "passphrase").stat().st_mode & 0o777 == 0o600
    assert tmp_path.stat().st_mode & 0o777 == 0o700
