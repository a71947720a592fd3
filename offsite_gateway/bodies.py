"""Strict JSON for request bodies: only what is JSON, and only what the gateway can store and send back.

Python's `json` accepts `NaN`, `Infinity` and numbers too large for a float (which become `inf`), none of which is
JSON: stored, they come back as bare `NaN`, and no client can read the answer. It raises `RecursionError` (not
`ValueError`) on deep nesting, and turns `"\\ud800"` into a string that cannot be encoded, so that SQLite (or the
next `json.dumps(ensure_ascii=False)`) fails on it later. `loads` refuses the first ones; `first_problem` finds
the others in what was parsed, without recursion.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 32  # Home Assistant's backup description is 3 or 4 levels deep


class NotJson(ValueError):
    """The body is not (strict) JSON."""


def _constant(name: str) -> float:
    raise NotJson(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotJson(f"{text[:20]} is too large for a number")
    return value


def loads(raw: bytes) -> Any:
    """Parse `raw` as strict JSON; raise `NotJson` (whose message, if any, says what is wrong)."""
    try:
        return json.loads(raw, parse_constant=_constant, parse_float=_finite)
    except RecursionError:
        raise NotJson("nested too deep") from None
    except NotJson:
        raise
    except (ValueError, UnicodeDecodeError):
        raise NotJson from None


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def first_problem(value: Any, max_depth: int = MAX_DEPTH) -> tuple[list[str | int], str] | None:
    """(path, problem) of the first thing in a parsed JSON value that the gateway refuses: nesting deeper than
    `max_depth`, or a string or key holding a lone surrogate. None if there is none."""
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        item, path = stack.pop()
        if len(path) > max_depth:
            return path[:1], f"nested deeper than {max_depth} levels"
        if isinstance(item, str):
            if not _encodable(item):
                return path, "not valid Unicode (a lone surrogate)"
        elif isinstance(item, dict):
            for key, child in item.items():
                if not _encodable(key):
                    return path, "a key is not valid Unicode (a lone surrogate)"
                stack.append((child, [*path, key]))
        elif isinstance(item, list):
            stack.extend((child, [*path, index]) for index, child in enumerate(item))
    return None
