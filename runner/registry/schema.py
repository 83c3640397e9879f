"""The config keys the Pulumi program declares (``config:`` in Pulumi.yaml).

The registry is validated against this declaration so the two cannot
disagree: a key the program does not declare is an error in the registry.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from runner.names import PROJECT_DIR

from ._text import did_you_mean, quote_hint, show, type_name
from .errors import RegistryError
from .yamldoc import YamlSyntaxError, load_yaml

__all__ = [
    "ALLOWED_VALUES",
    "ConfigKey",
    "RESERVED_KEYS",
    "check_config_value",
    "default_schema",
    "load_config_schema",
]

#: The project root (where Pulumi.yaml sits), next to the ``runner`` package.

#: Config keys the runner sets on every stack; the registry cannot set them.
RESERVED_KEYS = frozenset({"release", "tenant_name", "shared_planned"})

#: Keys whose value is one of a fixed set. Pulumi.yaml has no enum type, so
#: this lives here.
ALLOWED_VALUES: dict[str, tuple[str, ...]] = {"platform": ("local", "aws")}

ConfigType = Literal["string", "integer", "boolean", "array"]
_TYPES: tuple[str, ...] = ("string", "integer", "boolean", "array")


class ConfigKey(BaseModel):
    """One declared config key. ``has_default=False`` means required."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    type: ConfigType
    default: Any = None
    has_default: bool = False
    description: str = ""
    secret: bool = False
    items: ConfigType | None = None

    @property
    def required(self) -> bool:
        return not self.has_default


def _matches(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    return isinstance(value, list)


_ARTICLE = {"string": "a string", "integer": "an integer", "boolean": "true or false", "array": "a list"}


def check_config_value(key: ConfigKey, value: Any) -> str | None:
    """Why ``value`` is not valid for ``key``, or None when it is."""
    if not _matches(key.type, value):
        hint = quote_hint(value) if key.type == "string" else ""
        return f"{key.name} expects {_ARTICLE[key.type]}, got {type_name(value)}{hint}"
    if key.type == "array" and key.items:
        for index, item in enumerate(value):
            if not _matches(key.items, item):
                return f"{key.name}[{index}] expects {_ARTICLE[key.items]}, got {type_name(item)}"
    allowed = ALLOWED_VALUES.get(key.name)
    if allowed and value not in allowed:
        choices = " or ".join(repr(a) for a in allowed)
        return f"{key.name} must be {choices}, got {show(value)}{did_you_mean(value, allowed)}"
    return None


def _infer_type(value: Any) -> str | None:
    for kind in _TYPES:
        if _matches(kind, value):
            return kind
    return None


def load_config_schema(project_dir: str | Path) -> dict[str, ConfigKey]:
    """Read the ``config:`` block of ``project_dir/Pulumi.yaml``.

    Entries are ``key: {type, default, description, secret, items}`` or the
    short form ``key: value`` (a default). Keys of other namespaces
    (``aws:region``) configure providers, not the program, and are skipped;
    ``<project>:key`` is the same as ``key``.
    """
    project_dir = Path(project_dir)
    for name in ("Pulumi.yaml", "Pulumi.yml"):
        path = project_dir / name
        if path.is_file():
            break
    else:
        raise RegistryError([f"{project_dir / 'Pulumi.yaml'}: no Pulumi project file found"])
    stat = path.stat()
    return dict(_load_schema(str(path), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _load_schema(path: str, _mtime: int, _size: int) -> tuple[tuple[str, ConfigKey], ...]:
    try:
        doc = load_yaml(Path(path).read_text(encoding="utf-8"))
    except YamlSyntaxError as exc:
        raise RegistryError([f"{path}:{exc.line}: {exc.message}"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError([f"{path}: cannot read: {exc}"]) from None
    data = doc.data if isinstance(doc.data, dict) else {}
    project = data.get("name")
    block = data.get("config") or {}
    errors: list[str] = []
    keys: dict[str, ConfigKey] = {}
    if not isinstance(block, dict):
        raise RegistryError([f"{path}:{doc.line_of(('config',))}: config: expected a mapping"])
    for raw_name, spec in block.items():
        line = doc.line_of(("config", raw_name))
        name = str(raw_name)
        if ":" in name:
            namespace, _, short = name.partition(":")
            if namespace != project:
                continue
            name = short
        if not isinstance(spec, dict):
            spec = {"default": spec}
        kind = spec.get("type")
        has_default = "default" in spec
        if kind is None and has_default:
            kind = _infer_type(spec["default"])
        if kind not in _TYPES:
            errors.append(f"{path}:{line}: config.{name}.type: expected one of {', '.join(_TYPES)}, got {show(kind)}")
            continue
        items = spec.get("items")
        if isinstance(items, dict):
            items = items.get("type")
        key = ConfigKey(
            name=name,
            type=kind,
            default=spec.get("default"),
            has_default=has_default,
            description=str(spec.get("description") or ""),
            secret=bool(spec.get("secret", False)),
            items=items if items in _TYPES else None,
        )
        if has_default and spec["default"] is not None and check_config_value(key, spec["default"]):
            errors.append(f"{path}:{line}: config.{name}.default: {check_config_value(key, spec['default'])}")
            continue
        keys[name] = key
    if errors:
        raise RegistryError(errors)
    return tuple(keys.items())


def default_schema() -> dict[str, ConfigKey]:
    """The schema of this project's own Pulumi program."""
    return load_config_schema(PROJECT_DIR)


def unknown_key_message(key: Any, schema: dict[str, ConfigKey]) -> str:
    known = sorted(k for k in schema if k not in RESERVED_KEYS)
    return f"unknown config key {show(key)}{did_you_mean(key, known, known_if_few=12)}"
