"""Small helpers for error messages: safe display of user input, close matches."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


def show(value: Any, limit: int = 60) -> str:
    """``repr`` of user input, shortened: control characters come out escaped,
    so hostile input cannot move the terminal cursor or forge a line."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + f"... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit + 2 else text[:limit] + "..."


def type_name(value: Any) -> str:
    """What a YAML author would call the type of ``value``."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        return f"a number ({value})"
    if isinstance(value, float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def quote_hint(value: Any) -> str:
    """``; quote it: "1.0"`` when a number or boolean was given for a string."""
    if isinstance(value, bool):
        return f'; quote it: "{"true" if value else "false"}"'
    if isinstance(value, (int, float)):
        return f'; quote it: "{value!r}"'
    return ""


def did_you_mean(word: Any, choices: Iterable[str], *, known_if_few: int = 0) -> str:
    """`` (did you mean 'x'?)`` with the closest match, or `` (known: a, b)`` when nothing is close and
    there are at most ``known_if_few`` choices, else ``""``."""
    choices = list(choices)
    if isinstance(word, str):
        matches = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
        if not matches:
            lowered = {c.lower(): c for c in choices}
            matches = [lowered[m] for m in difflib.get_close_matches(word.lower(), lowered, n=1, cutoff=0.6)]
        if matches:
            return f" (did you mean {matches[0]!r}?)"
    if choices and len(choices) <= known_if_few:
        return " (known: " + ", ".join(choices) + ")"
    return ""


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"
