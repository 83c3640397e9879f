"""Find or build the Pulumi engine whose version equals the pinned SDK.

Order (first match wins):

1. ``RUNNER_PULUMI_ROOT`` (a directory holding ``bin/pulumi``), then ``pulumi``
   on PATH, when its version equals the pinned ``pulumi`` SDK and the Python
   language host and dynamic-provider script sit next to it;
2. the cache outside the repository: ``$XDG_CACHE_HOME/runner/pulumi-<v>/bin``
   (default ``~/.cache/runner/...``);
3. a build from Go modules with this machine's Go toolchain and module proxy,
   from the module in ``tools/`` (go.mod and go.sum committed): the CLI
   (``github.com/pulumi/pulumi/pkg/v3/cmd/pulumi``) and our Python language
   host (``tools/langhost``), plus the two scripts the SDK ships in its Go
   module (``pulumi-language-python-exec``, ``pulumi-resource-pulumi-python``);
4. without Go, Pulumi's official installer (needs internet).

``python -m runner.bootstrap`` prints the bin directory on stdout and the path
taken on stderr. The build is serialized with a file lock so concurrent
callers (parallel test workers, shards) build once.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version as dist_version
from pathlib import Path

from runner.names import PROJECT_DIR

TOOLS_DIR = PROJECT_DIR / "tools"
PULUMI_VERSION = dist_version("pulumi")
COMPANIONS = ("pulumi-language-python", "pulumi-language-python-exec", "pulumi-resource-pulumi-python")
SDK_MODULE = "github.com/pulumi/pulumi/sdk/v3"
CLI_PACKAGE = "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"


class EngineUnavailable(RuntimeError):
    """The engine could not be found or built; the message says what was tried."""


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "runner" / f"pulumi-{PULUMI_VERSION}"


def _log(message: str) -> None:
    print(f"engine: {message}", file=sys.stderr)


def cli_version(pulumi: Path) -> str | None:
    try:
        out = subprocess.run(
            [str(pulumi), "version"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PULUMI_SKIP_UPDATE_CHECK": "true"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().removeprefix("v") or None


def _verified_version(pulumi: Path) -> str | None:
    """`pulumi version`, remembered per binary (its real path, size and
    modification time) in the user's cache: every runner command checks its
    engine, and each `pulumi version` costs ~0.2 CPU-s and ~0.4 s (#17). A
    binary replaced or rebuilt is checked again."""
    try:
        real = pulumi.resolve()
        stat = real.stat()
    except OSError:
        return None
    key = f"{real}\t{stat.st_size}\t{stat.st_mtime_ns}"
    memo = cache_dir().parent / "checked-engines"
    try:
        remembered = dict(line.rsplit("\t", 1) for line in memo.read_text().splitlines() if line.count("\t") == 3)
    except OSError:
        remembered = {}
    if key in remembered:
        return remembered[key]
    version = cli_version(pulumi)
    if version:
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            with memo.open("a") as out:
                out.write(f"{key}\t{version}\n")
        except OSError:  # a read-only cache: checked again next time
            pass
    return version


def _usable(bin_dir: Path) -> bool:
    pulumi = bin_dir / "pulumi"
    return (
        pulumi.is_file()
        and all((bin_dir / name).is_file() for name in COMPANIONS)
        and _verified_version(pulumi) == PULUMI_VERSION
    )


def _candidates() -> list[tuple[str, Path]]:
    found = []
    if root := os.environ.get("RUNNER_PULUMI_ROOT"):
        found.append(("RUNNER_PULUMI_ROOT", Path(root) / "bin"))
    if on_path := shutil.which("pulumi"):
        found.append(("PATH", Path(on_path).resolve().parent))
    found.append(("cache", cache_dir() / "bin"))
    return found


def find_engine() -> tuple[str, Path] | None:
    """Where a usable engine at the pinned version is, without building one
    (`runner doctor`): (how it was found, its bin directory), or None."""
    for how, bin_dir in _candidates():
        if _usable(bin_dir):
            return how, bin_dir
    return None


def _go_env() -> dict[str, str]:
    return {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly", "CGO_ENABLED": "0"}


def _go(*args: str, capture: bool = False) -> str:
    proc = subprocess.run(
        ["go", *args],
        cwd=TOOLS_DIR,
        env=_go_env(),
        text=True,
        stdout=subprocess.PIPE if capture else sys.stderr,
        stderr=sys.stderr,
    )
    if proc.returncode != 0:
        raise EngineUnavailable(f"`go {' '.join(args)}` failed in {TOOLS_DIR} (exit {proc.returncode})")
    return proc.stdout or ""


def build_from_go(dest: Path) -> None:
    """Build the CLI and language host into ``dest`` (a fresh directory)."""
    ldflags = f"-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v{PULUMI_VERSION}"
    required = _go("list", "-m", "-f", "{{.Version}}", SDK_MODULE, capture=True).strip()
    if required != f"v{PULUMI_VERSION}":
        raise EngineUnavailable(
            f"tools/go.mod requires {SDK_MODULE} {required}, but the pinned Python SDK is {PULUMI_VERSION}"
        )
    build = ["build", "-trimpath", "-tags", "osusergo,grpcnotrace", "-ldflags", ldflags]
    _log(f"building pulumi v{PULUMI_VERSION} from Go modules (first time only, several minutes)")
    _go(*build, "-o", str(dest / "pulumi"), CLI_PACKAGE)
    _go(*build, "-o", str(dest / "pulumi-language-python"), "./langhost")
    sdk_dir = Path(_go("list", "-m", "-f", "{{.Dir}}", SDK_MODULE, capture=True).strip())
    for script in ("cmd/pulumi-language-python-exec", "dist/pulumi-resource-pulumi-python"):
        target = dest / Path(script).name
        shutil.copyfile(sdk_dir / "python" / script, target)
        target.chmod(0o755)


def install_official(dest_root: Path) -> None:
    _log("no Go toolchain: using Pulumi's official installer (needs internet)")
    try:
        script = subprocess.run(["curl", "-fsSL", "https://get.pulumi.com"], capture_output=True, text=True)
        if script.returncode != 0:
            raise EngineUnavailable(
                f"no Go toolchain, and Pulumi's installer could not be downloaded (curl exit {script.returncode})"
            )
        installed = subprocess.run(
            ["sh", "-s", "--", "--version", PULUMI_VERSION, "--install-root", str(dest_root), "--no-edit-path"],
            input=script.stdout,
            text=True,
        )
    except OSError as exc:  # no curl or sh on PATH
        raise EngineUnavailable(
            f"no Go toolchain, and Pulumi's installer cannot run: {exc.strerror}: {exc.filename}"
        ) from None
    if installed.returncode != 0:
        raise EngineUnavailable(f"no Go toolchain, and Pulumi's installer failed (exit {installed.returncode})")


def ensure_engine() -> Path:
    """Return the bin directory of a usable engine, building it if needed."""
    for how, bin_dir in _candidates():
        if _usable(bin_dir):
            _log(f"using pulumi v{PULUMI_VERSION} from {how}: {bin_dir}")
            return bin_dir
    target = cache_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".pulumi-{PULUMI_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _usable(target / "bin"):  # another process built it while we waited
            return target / "bin"
        staging = Path(tempfile.mkdtemp(prefix="pulumi-build-", dir=target.parent))
        try:
            (staging / "bin").mkdir()
            if shutil.which("go"):
                build_from_go(staging / "bin")
            else:
                install_official(staging)
            if not _usable(staging / "bin"):
                raise EngineUnavailable(f"the engine in {staging / 'bin'} does not report v{PULUMI_VERSION}")
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    _log(f"built pulumi v{PULUMI_VERSION} into {target / 'bin'}")
    return target / "bin"


def main() -> int:
    try:
        print(ensure_engine())
    except EngineUnavailable as exc:
        print(f"engine: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
