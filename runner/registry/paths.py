"""Registry values that become paths or file names stay under their roots.

* Labels (``app_version``, release labels, run ids) become one directory or
  file name: they match :data:`LABEL_PATTERN` (no ``/``, no ``..``).
* ``platform_root`` and ``migrations_dir`` resolve (symlinks followed)
  inside the project, or under a root the operator allows explicitly with
  ``RUNNER_PLATFORM_ROOTS`` (absolute paths, separated by ``os.pathsep``).
  The registry cannot widen its own confinement: the roots come from the
  operator's environment, never from the registry.
* ``{file: PATH}`` secrets resolve under the secrets directory
  (``RUNNER_SECRETS_DIR``, default: the registry's directory) and never
  under the runner's state directory (``.runner/``, ``RUNNER_STATE_DIR``),
  which holds the master passphrase.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.names import PROJECT_DIR

from ._text import show

__all__ = [
    "LABEL_KEYS",
    "LABEL_PATTERN",
    "LABEL_RULE",
    "PATH_KEYS",
    "PathPolicy",
    "ROOTS_ENV",
    "SECRETS_DIR_ENV",
    "is_label",
    "label_problem",
]

#: Labels: letters, digits, '.', '-', '_', '+'; starts with a letter or digit;
#: at most 128 characters; never contains "..".
LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"
_LABEL_RE = re.compile(LABEL_PATTERN[1:-1])
LABEL_RULE = "1-128 characters: letters, digits, '.', '-', '_' and '+', starting with a letter or digit, no '..'"

#: Config keys whose value becomes a directory name (see components/local).
LABEL_KEYS = frozenset({"app_version"})
#: Config keys whose value is a directory the program reads or writes.
PATH_KEYS = frozenset({"platform_root", "migrations_dir"})

ROOTS_ENV = "RUNNER_PLATFORM_ROOTS"
SECRETS_DIR_ENV = "RUNNER_SECRETS_DIR"
STATE_DIR_ENV = "RUNNER_STATE_DIR"


def is_label(value: object) -> bool:
    return isinstance(value, str) and _LABEL_RE.fullmatch(value) is not None and ".." not in value


def label_problem(value: object, what: str) -> str | None:
    """Why ``value`` is not a valid label, or None."""
    if is_label(value):
        return None
    return f"invalid {what} {show(value)}: use {LABEL_RULE}"


def _resolve(path: str | Path, base: Path) -> Path:
    p = Path(path).expanduser()
    return Path(os.path.realpath(p if p.is_absolute() else base / p))


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


@dataclass(frozen=True)
class PathPolicy:
    """Where registry paths may point; read from the environment at load time."""

    project_dir: Path
    roots: tuple[Path, ...] = ()
    secrets_dir: Path | None = None  # None: the registry's directory
    state_dirs: tuple[Path, ...] = ()
    roots_problem: str | None = None

    @classmethod
    def from_env(cls, project_dir: str | Path | None = None, environ: Any = None) -> PathPolicy:
        environ = os.environ if environ is None else environ
        project = Path(os.path.realpath(project_dir or PROJECT_DIR))
        roots, problem = [], None
        for item in (environ.get(ROOTS_ENV) or "").split(os.pathsep):
            if not item.strip():
                continue
            if not Path(item).expanduser().is_absolute():
                problem = f"{ROOTS_ENV}: {show(item)} is not an absolute path"
                continue
            roots.append(_resolve(item, project))
        secrets = environ.get(SECRETS_DIR_ENV)
        states = [project / ".runner"]
        if environ.get(STATE_DIR_ENV):
            states.append(_resolve(environ[STATE_DIR_ENV], Path.cwd()))
        return cls(project, tuple(roots), _resolve(secrets, Path.cwd()) if secrets else None, tuple(states), problem)

    def path_problem(self, key: str, value: Any) -> str | None:
        """Why the config path ``value`` of ``key`` is refused, or None."""
        if not isinstance(value, str) or value == "":
            return None  # the type check reports a non-string; empty means the default
        if "\x00" in value:
            return f"{key} must not contain NUL"
        if self.roots_problem:
            return self.roots_problem
        resolved = _resolve(value, self.project_dir)
        if any(_under(resolved, root) for root in (self.project_dir, *self.roots)):
            return None
        return (
            f"{key} {show(value)} resolves to {resolved}, outside the project {self.project_dir}; "
            f"allow another root with {ROOTS_ENV}"
        )

    def secret_file(self, file: str, base_dir: Path) -> tuple[Path, str | None]:
        """(the resolved path of a ``{file: PATH}`` secret, why it is refused or None)."""
        base = Path(os.path.realpath(base_dir))
        resolved = _resolve(file, base)
        allowed = self.secrets_dir or base
        for state in self.state_dirs:
            if _under(resolved, state):
                return resolved, f"file {show(file)} is inside the runner's state directory {state}"
        if not _under(resolved, allowed):
            how = f"set {SECRETS_DIR_ENV}" if self.secrets_dir is None else f"{SECRETS_DIR_ENV} is {allowed}"
            return resolved, f"file {show(file)} resolves outside the secrets directory {allowed} ({how})"
        return resolved, None
