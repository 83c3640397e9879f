"""Load a YAML document into plain Python data plus the line of every node.

Why not ``YAML(typ="rt")`` or ``YAML(typ="safe")`` directly: both build the
document through ruamel.yaml's pure-Python composer and constructor, which
takes seconds for a 10,000-tenant registry (measured in
``bench/registry_scale.py``: round-trip ~10 s, safe ~2-3 s). Parsing itself is
not the cost: ruamel.yaml's C parser (through the public ``YAML(typ="safe").parse``) produces the
event stream in a fraction of that. So ruamel.yaml still parses (and reports
syntax errors with their line), and this module only turns events into dicts
and lists, recording line numbers on the way, so that validation errors can be
reported as ``file:line`` without a second parse.

Scalars are resolved with the YAML 1.2 core schema (what ruamel.yaml uses by
default): null, booleans ``true``/``false`` (not ``yes``/``no``), integers,
floats; everything else is a string. Anchors, aliases and merge keys (``<<``)
work; other tags than the core ones are refused, as are complex keys and
several documents in one file.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml import events as ev
from ruamel.yaml.error import MarkedYAMLError, YAMLError

__all__ = ["YamlDoc", "YamlSyntaxError", "load_yaml"]

Loc = tuple[Any, ...]


class YamlSyntaxError(Exception):
    """Malformed YAML: ``line`` is 1-based, ``message`` is for humans."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass
class YamlDoc:
    """A loaded document: ``data`` and the 1-based lines of its nodes.

    ``positions`` maps ``id(container)`` to ``(line, lines)`` where ``lines``
    is a dict (mapping key -> line of the key) or a list (item -> line).
    """

    data: Any
    positions: dict[int, tuple[int, Any]] = field(default_factory=dict)
    line: int = 1

    def line_of(self, loc: Loc) -> int:
        """Line of the deepest node of ``loc`` that exists in the document."""
        node, line = self.data, self.line
        for part in loc:
            if part == "[key]":
                continue
            pos = self.positions.get(id(node))
            if pos is None:
                break
            lines = pos[1]
            if isinstance(node, dict):
                if part not in node:
                    break
                line, node = lines[part], node[part]
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                line, node = lines[part], node[part]
            else:
                break
        return line


# --- scalar resolution (YAML 1.2 core schema) --------------------------------

_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_BOOLS = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_MAYBE_TYPED = frozenset("0123456789-+.~nNtTfF")
_NUMERIC_START = frozenset("0123456789-+.")
_INT10 = re.compile(r"[-+]?[0-9]+")
_INT8 = re.compile(r"0o[0-7]+")
_INT16 = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_INF = re.compile(r"[-+]?\.(?:inf|Inf|INF)")
_NAN = re.compile(r"\.(?:nan|NaN|NAN)")

_CORE = "tag:yaml.org,2002:"


def _resolve_plain(value: str) -> Any:
    if not value:
        return None
    first = value[0]
    if first not in _MAYBE_TYPED:
        return value
    if first not in _NUMERIC_START:  # n, t, f, ~: null or a boolean, or text
        if value in _NULLS:
            return None
        return _BOOLS.get(value, value)
    if _INT10.fullmatch(value):
        return int(value)
    if _INT8.fullmatch(value):
        return int(value[2:], 8)
    if _INT16.fullmatch(value):
        return int(value[2:], 16)
    if _FLOAT.fullmatch(value):
        return float(value)
    if _INF.fullmatch(value):
        return -math.inf if value[0] == "-" else math.inf
    if _NAN.fullmatch(value):
        return math.nan
    return value


def _resolve_tagged(value: str, tag: str, line: int) -> Any:
    if tag in ("!", _CORE + "str"):
        return value
    kind = tag[len(_CORE) :] if tag.startswith(_CORE) else None
    expected = {"null": type(None), "bool": bool, "int": int, "float": (int, float)}.get(kind or "")
    if expected is None:
        raise YamlSyntaxError(line, f"unsupported YAML tag {tag!r}")
    resolved = _resolve_plain(value)
    if not isinstance(resolved, expected) or (kind == "int" and isinstance(resolved, bool)):
        raise YamlSyntaxError(line, f"{value!r} is not a valid !!{kind}")
    return float(resolved) if kind == "float" else resolved


# --- event stream ------------------------------------------------------------


def _event_source(text: str) -> Callable[[], Any]:
    """A function returning the next parser event (None after the end).
    ``YAML(typ="safe").parse`` is ruamel.yaml's public event stream; it uses
    the C parser when ruamel.yaml.clib is installed."""
    return functools.partial(next, iter(YAML(typ="safe").parse(text)), None)


_NOKEY = object()


class _Frame:
    __slots__ = ("obj", "lines", "key", "key_line", "merge", "merges")

    def __init__(self, obj: Any, lines: Any) -> None:
        self.obj = obj
        self.lines = lines
        self.key: Any = _NOKEY
        self.key_line = 0
        self.merge = False
        self.merges: list[tuple[Any, int]] = []


def _attach(stack: list[_Frame], value: Any, line: int, is_container: bool, plain: bool = False) -> None:
    top = stack[-1]
    obj = top.obj
    if type(obj) is list:
        obj.append(value)
        top.lines.append(line)
        return
    if top.key is _NOKEY:
        if is_container:
            raise YamlSyntaxError(line, "mapping keys must be plain values, not lists or mappings")
        top.key, top.key_line, top.merge = value, line, plain and value == "<<"
        return
    key = top.key
    top.key = _NOKEY
    if top.merge:
        top.merges.append((value, top.key_line))
        return
    if key in obj:
        raise YamlSyntaxError(top.key_line, f"duplicate key {key!r} (first at line {top.lines[key]})")
    obj[key] = value
    top.lines[key] = top.key_line


def _apply_merges(frame: _Frame) -> None:
    obj, lines = frame.obj, frame.lines
    for value, line in frame.merges:
        sources = value if isinstance(value, list) else [value]
        for source in sources:
            if not isinstance(source, dict):
                raise YamlSyntaxError(line, "a merge key (<<) needs a mapping or a list of mappings")
            for key, item in source.items():
                if key not in obj:
                    obj[key] = item
                    lines[key] = line


def load_yaml(text: str) -> YamlDoc:
    """Parse one YAML document; raise :class:`YamlSyntaxError` when malformed."""
    positions: dict[int, tuple[int, Any]] = {}
    anchors: dict[str, Any] = {}
    open_ids: set[int] = set()
    stack: list[_Frame] = []
    root: Any = None
    root_line = 1
    documents = 0
    ScalarEvent, AliasEvent = ev.ScalarEvent, ev.AliasEvent
    MappingStart, SequenceStart = ev.MappingStartEvent, ev.SequenceStartEvent
    MappingEnd, SequenceEnd = ev.MappingEndEvent, ev.SequenceEndEvent
    try:
        next_event = _event_source(text)
        StreamEnd = ev.StreamEndEvent
        while True:
            event = next_event()
            kind = type(event)
            if kind is StreamEnd or event is None:
                break
            if kind is ScalarEvent:  # the hot path: keep it inline
                line = event.start_mark.line + 1
                value = event.value
                tag = event.tag
                plain = tag is None and event.implicit[0]
                if plain:
                    if not value or value[0] in _MAYBE_TYPED:
                        value = _resolve_plain(value)
                elif tag is not None:
                    value = _resolve_tagged(value, tag, line)
                if event.anchor is not None:
                    anchors[event.anchor] = value
                if not stack:
                    root, root_line = value, line
                    continue
                top = stack[-1]
                obj = top.obj
                if type(obj) is list:
                    obj.append(value)
                    top.lines.append(line)
                elif top.key is _NOKEY and value != "<<":
                    top.key = value
                    top.key_line = line
                    top.merge = False
                elif top.key is not _NOKEY and not top.merge and top.key not in obj:
                    obj[top.key] = value
                    top.lines[top.key] = top.key_line
                    top.key = _NOKEY
                else:
                    _attach(stack, value, line, False, plain)
            elif kind is MappingStart or kind is SequenceStart:
                line = event.start_mark.line + 1
                tag = event.tag
                if tag is not None and tag not in (_CORE + "map", _CORE + "seq", "!"):
                    raise YamlSyntaxError(line, f"unsupported YAML tag {tag!r}")
                new: Any = {} if kind is MappingStart else []
                lines: Any = {} if kind is MappingStart else []
                positions[id(new)] = (line, lines)
                if event.anchor is not None:
                    anchors[event.anchor] = new
                if stack:
                    _attach(stack, new, line, True)
                else:
                    root, root_line = new, line
                open_ids.add(id(new))
                stack.append(_Frame(new, lines))
            elif kind is MappingEnd or kind is SequenceEnd:
                frame = stack.pop()
                if frame.merges:
                    _apply_merges(frame)
                open_ids.discard(id(frame.obj))
            elif kind is AliasEvent:
                line = event.start_mark.line + 1
                if event.anchor not in anchors:
                    raise YamlSyntaxError(line, f"undefined alias *{event.anchor}")
                value = anchors[event.anchor]
                if id(value) in open_ids:
                    raise YamlSyntaxError(line, f"alias *{event.anchor} refers to itself")
                if stack:
                    _attach(stack, value, line, isinstance(value, (dict, list)))
                else:
                    root, root_line = value, line
            elif kind is ev.DocumentStartEvent:
                documents += 1
                if documents > 1:
                    raise YamlSyntaxError(event.start_mark.line + 1, "expected one YAML document, found several")
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "malformed YAML"
        if exc.context and exc.problem:
            problem = f"{problem} ({exc.context})"
        raise YamlSyntaxError(line, f"invalid YAML: {problem}") from None
    except YAMLError as exc:  # ReaderError: forbidden characters
        position = getattr(exc, "position", 0) or 0
        line = text.count("\n", 0, position) + 1
        reason = getattr(exc, "reason", None) or str(exc).splitlines()[0]
        raise YamlSyntaxError(line, f"invalid YAML: {reason}") from None
    return YamlDoc(root, positions, root_line)
