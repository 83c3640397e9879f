"""Filesystem helpers shared by the local platform's dynamic providers.

Everything here runs inside the dynamic-provider process (``python -m
pulumi.dynamic``), so it must stay importable, side-effect free at import
time and hold no state.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

MISSING = "<missing>"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hash_files(files: dict[str, str]) -> str:
    """Content hash of a {relative path: text} mapping, order independent."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(rel.encode("utf-8") + b"\0")
        digest.update(files[rel].encode("utf-8") + b"\0")
    return digest.hexdigest()


def hash_dir(path: Path, skip: tuple[str, ...] = ()) -> str:
    """Content hash of every regular file under ``path`` but ``skip`` (relative
    paths); MISSING if absent."""
    if not path.is_dir():
        return MISSING
    files: dict[str, str] = {}
    for child in sorted(path.rglob("*")):
        if child.is_file() and not child.is_symlink() and child.relative_to(path).as_posix() not in skip:
            files[child.relative_to(path).as_posix()] = child.read_bytes().decode("utf-8", errors="replace")
    return hash_files(files)


def confined(path: Path, root: Path) -> Path:
    """``path`` when it resolves strictly below ``root``; else ValueError. A
    config value that becomes part of a path (``app_version``) must never
    reach outside the resource's own directory, whatever the registry
    validation let through."""
    resolved = Path(os.path.realpath(path))
    if Path(os.path.realpath(root)) not in resolved.parents:
        raise ValueError(f"refusing to touch {path}: it resolves to {resolved}, outside {root}")
    return path


def release_dir_name(app_version: str) -> str:
    """``app_version`` when it is a safe single directory name; else ValueError."""
    if (
        not isinstance(app_version, str)
        or not app_version
        or len(app_version) > 128
        or app_version.startswith((".", "-"))
        or ".." in app_version
        or not all(c.isascii() and (c.isalnum() or c in "._+-") for c in app_version)
    ):
        raise ValueError(f"invalid app_version {app_version!r}: letters, digits, '.', '-', '_', '+' only")
    return app_version


def write_files(
    target: Path, files: dict[str, str], *, within: Path | None = None, private: dict[str, str] | None = None
) -> None:
    """Replace ``target`` with exactly ``files`` and ``private`` (written next to
    it, then renamed; ``private`` files created with mode 0600, never readable
    by others even for a moment); with ``within``, only when ``target``
    resolves below it."""
    if within is not None:
        confined(target, within)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    for rel, text in files.items():
        dest = staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text, encoding="utf-8")
    for rel, text in (private or {}).items():
        dest = staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as fh:
            fh.write(text)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)


def point_current(base: Path, release_rel: str) -> None:
    """Atomically (re)point ``base/current`` at ``release_rel`` (a relative path)."""
    link = base / "current"
    tmp = base / f".current.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(release_rel)
    os.replace(tmp, link)


def current_target(base: Path) -> str:
    link = base / "current"
    if not link.is_symlink():
        return MISSING
    return os.readlink(link)


def prune_empty_dirs(path: Path, stop: Path) -> None:
    """Remove ``path`` and its empty parents up to (excluding) ``stop``."""
    path = path.resolve() if path.exists() else path
    stop = stop.resolve() if stop.exists() else stop
    while path != stop and stop in path.parents:
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent
