"""Load a registry from YAML or a database and report every problem at once,
each as ``FILE:LINE: key.path: message`` (``TABLE row ID: key.path: message``
for a database registry)."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from runner.names import PROJECT_DIR

from ._text import did_you_mean, quote_hint, show, type_name
from .errors import RegistryError
from .models import Registry
from .paths import PathPolicy
from .schema import ConfigKey, load_config_schema
from .yamldoc import YamlDoc, YamlSyntaxError, load_yaml

__all__ = ["load_registry", "format_errors", "read_yaml_file", "is_database_url"]

Loc = tuple[Any, ...]
#: loc -> (sort key, "FILE:LINE" or "TABLE row ID", the part of loc to print as key path)
Locator = Callable[[Loc], tuple[tuple[Any, ...], str, Loc]]

_TOP_KEYS = "defaults, environments, tenants"


def is_database_url(source: object) -> bool:
    return isinstance(source, str) and "://" in source and source.split("://", 1)[0].replace("+", "").isalnum()


def load_registry(
    source: str | Path,
    *,
    project_dir: str | Path | None = None,
    schema: Mapping[str, ConfigKey] | None = None,
) -> Registry:
    """Load and validate a registry.

    ``source`` is a YAML file path or a database URL
    (``sqlite:///path.db?table=tenants``,
    ``postgresql://user@host:port/db?table=tenants&base=base.yaml``).
    Config keys are checked against ``schema``, by default the ``config:``
    block of ``project_dir/Pulumi.yaml`` (default: this project's).
    Raises :class:`RegistryError` listing every problem.
    """
    if schema is None:
        schema = load_config_schema(project_dir or PROJECT_DIR)
    if is_database_url(source):
        from .database import load_database_registry

        return load_database_registry(str(source), schema)
    display = str(source)
    path = Path(source)
    doc = read_yaml_file(path, display)
    if doc.data is None:
        raise RegistryError([f"{display}:1: the registry is empty (expected the keys {_TOP_KEYS})"])
    if not isinstance(doc.data, dict):
        raise RegistryError(
            [
                f"{display}:{doc.line}: the registry must be a mapping with the keys {_TOP_KEYS}, "
                f"got {type_name(doc.data)}"
            ]
        )
    base_dir = path.resolve().parent
    registry = validate_document(
        doc.data, schema, yaml_locator(display, doc), base_dir=base_dir, paths=PathPolicy.from_env(project_dir)
    )
    return registry.with_origin(display, base_dir)


def read_yaml_file(path: Path, display: str) -> YamlDoc:
    """Read and parse a YAML file; every failure is a one-line RegistryError."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RegistryError([f"{display}: file not found"]) from None
    except IsADirectoryError:
        raise RegistryError([f"{display}: is a directory, not a YAML file"]) from None
    except PermissionError:
        raise RegistryError([f"{display}: cannot read the file: permission denied"]) from None
    except OSError as exc:
        raise RegistryError([f"{display}: cannot read the file: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise RegistryError([f"{display}:{line}: the file is not valid UTF-8"]) from None
    try:
        return load_yaml(text)
    except YamlSyntaxError as exc:
        raise RegistryError([f"{display}:{exc.line}: {exc.message}"]) from None


def validate_document(
    data: dict[str, Any],
    schema: Mapping[str, ConfigKey],
    locate: Locator,
    *,
    skip: Callable[[Loc], bool] | None = None,
    extra: list[tuple[Loc, str]] = (),
    base_dir: Path | None = None,
    paths: PathPolicy | None = None,
) -> Registry:
    """Validate ``data``; on failure raise RegistryError with every problem,
    plus ``extra`` problems found before validation (e.g. invalid JSON in a
    database column); ``skip`` drops errors that follow from those."""
    try:
        registry = Registry.model_validate(
            data, context={"schema": dict(schema), "base_dir": base_dir, "paths": paths or PathPolicy.from_env()}
        )
    except ValidationError as exc:
        errors = [e for e in exc.errors() if not (skip and skip(e["loc"]))]
        raise RegistryError(format_errors(errors, locate, extra)) from None
    if extra:
        raise RegistryError(format_errors([], locate, extra))
    return registry


def yaml_locator(display: str, doc: YamlDoc) -> Locator:
    def locate(loc: Loc) -> tuple[tuple[Any, ...], str, Loc]:
        line = doc.line_of(loc)
        return (line,), f"{display}:{line}", loc

    return locate


# --- turning pydantic errors into messages --------------------------------


def format_errors(errors: list[Any], locate: Locator, extra: list[tuple[Loc, str]] = ()) -> list[str]:
    """``LOCATION: key.path: message`` lines, sorted by position, deduplicated."""
    lines: list[tuple[tuple[Any, ...], str, int, str]] = []
    items: list[tuple[Loc, str]] = [describe_error(e, locate) for e in errors]
    items.extend(extra)
    for order, (loc, message) in enumerate(items):
        key, prefix, path_loc = locate(loc)
        path = format_path(path_loc)
        text = f"{prefix}: {path}: {message}" if path else f"{prefix}: {message}"
        lines.append((key, path, order, text))
    seen: set[str] = set()
    out = []
    for *_, text in sorted(lines):
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def format_path(loc: Loc) -> str:
    """``tenants[2].environments[0]``; odd keys are quoted."""
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part and all(c.isalnum() or c in "_-" for c in part) and part.isascii():
            out += f".{part}" if out else part
        else:
            out += f"[{show(part)}]"
    return out


def describe_error(error: Mapping[str, Any], locate: Locator) -> tuple[Loc, str]:
    """(loc to report at, message) for one pydantic error."""
    kind = error["type"]
    loc = tuple(error["loc"])
    value = error.get("input")
    context = error.get("ctx") or {}
    message = context.get("message") or error.get("msg", "invalid")
    if kind == "registry":
        first = context.get("first")
        if first is not None:
            _, where, _ = locate(tuple(first))
            message += f" (first defined at {_where(where)})"
        return loc, message
    if kind == "missing":
        return loc[:-1], f"missing required key {show(loc[-1])}"
    if kind == "extra_forbidden":
        fields = _fields_at(loc[:-1])
        return loc, f"unknown key {show(loc[-1])}{did_you_mean(loc[-1], fields, known_if_few=8)}"
    if kind == "string_type":
        return loc, f"expected a string, got {type_name(value)}{quote_hint(value)}"
    if kind == "bool_type":
        hint = ""
        if isinstance(value, str) and value.lower() in ("yes", "no", "on", "off", "y", "n"):
            hint = " (YAML 1.2: write true or false)"
        return loc, f"expected true or false, got {type_name(value)}{hint}"
    if kind in ("int_type", "int_parsing"):
        return loc, f"expected an integer, got {type_name(value)}"
    if kind in ("dict_type", "model_type", "model_attributes_type", "mapping_type"):
        hint = ""
        if len(loc) == 2 and loc[0] == "environments" and isinstance(value, str):
            hint = f" (write {{name: {value}}})"
        return loc, f"expected a mapping, got {type_name(value)}{hint}"
    if kind in ("list_type", "tuple_type", "iterable_type"):
        return loc, f"expected a list, got {type_name(value)}"
    if kind == "string_too_short":
        return loc, "must not be empty"
    return loc, message


def _where(prefix: str) -> str:
    """ "line 8" from "file:8", "row x" from "tenants row x"."""
    head, sep, tail = prefix.rpartition(":")
    if sep and tail.isdigit():
        return f"line {tail}"
    return prefix.split(" ", 1)[1] if " row " in prefix else prefix


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            tp = models[0] if models else args[0]
        else:
            return tp


def _fields_at(loc: Loc) -> list[str]:
    """Field names of the model found at ``loc`` (for close-match hints)."""
    tp: Any = Registry
    for part in loc:
        tp = _unwrap(tp)
        origin = typing.get_origin(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str):
            field = tp.model_fields.get(part)
            if field is None:
                return []
            tp = field.annotation
        elif origin in (tuple, list):
            tp = typing.get_args(tp)[0]
        elif origin is dict:
            tp = typing.get_args(tp)[1]
        else:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []
