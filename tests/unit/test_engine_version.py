"""The engine version is changed in one place (#19): pyproject.toml's `pulumi`
pin, which `make pulumi-version V=...` writes together with tools/go.mod and
go.sum; these tests fail when they disagree, and show that an engine built
for another version is never used."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

from runner import bootstrap

PROJECT_DIR = Path(__file__).resolve().parents[2]


def _pin() -> str:
    deps = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d.split("==", 1)[1] for d in deps if d.startswith("pulumi=="))


def test_the_sdk_pin_the_installed_sdk_and_the_go_modules_agree():
    gomod = (PROJECT_DIR / "tools" / "go.mod").read_text()
    required = dict(re.findall(r"^\s*github\.com/pulumi/pulumi/(sdk|pkg)/v3 v(\S+)", gomod, re.M))
    assert required == {"sdk": _pin(), "pkg": _pin()}
    assert version("pulumi") == bootstrap.PULUMI_VERSION == _pin()  # `make setup` after changing the pin
    gosum = (PROJECT_DIR / "tools" / "go.sum").read_text()
    for module in ("sdk", "pkg"):
        assert f"github.com/pulumi/pulumi/{module}/v3 v{_pin()} h1:" in gosum


def test_an_engine_of_another_version_is_never_used(tmp_path, monkeypatch):
    assert bootstrap.cache_dir().name == f"pulumi-{bootstrap.PULUMI_VERSION}"
    old = tmp_path / "bin"
    old.mkdir()
    (old / "pulumi").write_text("#!/bin/sh\necho v3.1.0\n")  # answers `pulumi version` only
    (old / "pulumi").chmod(0o755)
    for name in bootstrap.COMPANIONS:
        (old / name).write_text("")
    monkeypatch.setenv("RUNNER_PULUMI_ROOT", str(tmp_path))
    assert not bootstrap._usable(old)
    found = bootstrap.find_engine()
    assert found is None or found[1] != old


def test_the_engine_version_is_checked_once_per_binary(tmp_path, monkeypatch):
    """`pulumi version` costs ~0.2 CPU-s a command (#17): remembered per binary, checked again when it changes."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for name in bootstrap.COMPANIONS:
        (bin_dir / name).write_text("")

    def binary(version: str) -> None:
        (bin_dir / "pulumi").write_text(f"#!/bin/sh\necho x >> {calls}\necho v{version}\n")
        (bin_dir / "pulumi").chmod(0o755)

    binary(bootstrap.PULUMI_VERSION)
    assert bootstrap._usable(bin_dir) and bootstrap._usable(bin_dir)
    assert calls.read_text().count("x") == 1
    binary("3.1.0")  # replaced: another size
    assert not bootstrap._usable(bin_dir)
    assert calls.read_text().count("x") == 2
