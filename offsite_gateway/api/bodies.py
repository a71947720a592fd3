"""Request bodies: read within their size and time limits, parsed as strict JSON, checked against their schema.

Strict JSON: only what is JSON, and only what the gateway can store and send back.

Python's `json` accepts `NaN`, `Infinity` and numbers too large for a float (which become `inf`), none of which is
JSON: stored, they come back as bare `NaN`, and no client can read the answer. It raises `RecursionError` (not
`ValueError`) on deep nesting, and turns `"\\ud800"` into a string that cannot be encoded, so that SQLite (or the
next `json.dumps(ensure_ascii=False)`) fails on it later. `loads` refuses the first ones; `first_problem` finds
the others in what was parsed, without recursion.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import unicodedata
from typing import Any

import voluptuous as vol
from aiohttp import web

from ..config import MIB, S3_MAX_PARTS
from ..errors import ApiError
from ..messages import FORMATS, JSON, check_notify_url
from .keys import SETTINGS

MAX_BODY = 128 * 1024
MAX_COMPLETE_BODY = 2 * MIB  # complete lists up to 10,000 parts, about 70 bytes each
MAX_METADATA = 64 * 1024
MAX_PARTS_PER_SIGNING = 100
SHA256_RE = re.compile(r"[0-9a-f]{64}")
BACKUP_ID_RE = re.compile(r"[0-9a-f]{32}")  # uuid4().hex
ETAG_MAX = 256
PART_ENTRY_MAX = (
    64 + ETAG_MAX
)  # bytes a part of a complete body may take: {"part_number": 10000, "etag": "…"},

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


# --- reading and checking a body -----------------------------------------------------------------------


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise vol.Invalid("expected an integer")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise vol.Invalid("expected a string")
    return value


def _name(value: Any) -> str:
    """A backup's name: text without control characters (PostgreSQL's text cannot even hold a NUL)."""
    text = _text(value)
    if any(unicodedata.category(char) == "Cc" for char in text):
        raise vol.Invalid("control characters are not allowed")
    return text


def _sha256(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not SHA256_RE.fullmatch(value):
        raise vol.Invalid("expected 64 lower-case hexadecimal characters")
    return value


def _metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise vol.Invalid("expected a JSON object")
    if len(json.dumps(value, separators=(",", ":")).encode()) > MAX_METADATA:
        raise vol.Invalid(f"larger than {MAX_METADATA // 1024} KiB once encoded")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise vol.Invalid("expected a list")
    return value


INIT_SCHEMA = vol.Schema(
    {
        vol.Required("name"): vol.All(_name, vol.Length(min=1, max=200)),
        vol.Required("size"): vol.All(_integer, vol.Range(min=1)),
        vol.Optional("sha256"): _sha256,
        vol.Optional("metadata"): _metadata,
        vol.Optional("part_urls"): vol.All(_integer, vol.Range(min=0, max=MAX_PARTS_PER_SIGNING)),
    },
    extra=vol.REMOVE_EXTRA,
)


def _notify_url(value: Any) -> str:
    try:
        return check_notify_url(value)
    except ValueError as err:
        raise vol.Invalid(str(err)) from None


NOTIFY_SCHEMA = vol.Schema(
    {
        vol.Required("url"): _notify_url,
        vol.Optional("format", default=JSON): vol.All(
            _text, vol.In(FORMATS, msg=f"expected one of {FORMATS}")
        ),
    },
    extra=vol.REMOVE_EXTRA,
)
SIGN_SCHEMA = vol.Schema(
    {
        vol.Required("part_numbers"): vol.All(
            _list, vol.Length(min=1, max=MAX_PARTS_PER_SIGNING), [vol.All(_integer, vol.Range(min=1))]
        )
    },
    extra=vol.REMOVE_EXTRA,
)


def _field_path(path: list[Any]) -> str:
    text = ""
    for item in path:
        text += f"[{item}]" if isinstance(item, int) else (f".{item}" if text else str(item))
    return text or "body"


DRAIN_LIMIT = 16 * MIB


async def _drain(request: web.Request) -> None:
    """Read and drop the rest of an oversized body (up to a bound), so the connection ends cleanly."""
    drained = 0
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5):
            while drained < DRAIN_LIMIT and (chunk := await request.content.readany()):
                drained += len(chunk)


async def read_raw(request: web.Request, limit: int = MAX_BODY) -> bytes:
    """The request's body, at most `limit` bytes (413 beyond), within BODY_TIMEOUT seconds (408 beyond)."""
    too_large = ApiError(413, "body_too_large", f"the body is larger than {limit // 1024} KiB")
    if request.content_length is not None and request.content_length > limit:
        if request.content_length <= DRAIN_LIMIT:
            await _drain(request)
        raise too_large
    timeout = request.app[SETTINGS].body_timeout
    buffer = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_any():
                buffer += chunk
                if len(buffer) > limit:
                    break
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"the body did not arrive within {timeout} s") from None
    if len(buffer) > limit:
        await _drain(request)
        raise too_large
    return bytes(buffer)


def parse_json(raw: bytes) -> dict[str, Any]:
    """A body read with `read_raw` as a JSON object (strict JSON: see `bodies`)."""
    try:
        data = loads(raw)
    except NotJson as err:
        detail = f" ({err})" if str(err) else ""
        raise ApiError(400, "invalid_json", f"the body is not valid JSON{detail}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object")
    return data


def _invalid(problems: list[str]) -> ApiError:
    return ApiError(400, "invalid_request", "; ".join(problems[:5]))


async def read_body(request: web.Request, schema: vol.Schema, limit: int = MAX_BODY) -> dict[str, Any]:
    """The request's JSON body, size-limited and checked against `schema`."""
    data = parse_json(await read_raw(request, limit))
    problem = first_problem(data)
    if problem is not None:
        path, what = problem
        raise _invalid([f"{_field_path(path)}: {what}"])
    try:
        checked: dict[str, Any] = schema(data)
    except vol.MultipleInvalid as err:
        raise _invalid(
            sorted({f"{_field_path(error.path)}: {error.error_message}" for error in err.errors})
        ) from None
    return checked


COMPLETE_YIELD_EVERY = 500  # parts checked between two turns given back to the event loop


def complete_body_limit(part_count: int) -> int:
    """The largest complete body an upload of `part_count` parts can need (each with the longest ETag)."""
    return min(MAX_COMPLETE_BODY, 1024 + part_count * PART_ENTRY_MAX)


async def declared_parts(body: dict[str, Any]) -> tuple[dict[int, str], str | None]:
    """A complete body's parts (number → ETag) and SHA-256.

    Checked by hand rather than by a voluptuous schema (a tenth of the time for 10,000 parts), giving the event
    loop a turn every few hundred parts: a huge body delays other requests by a fraction of a millisecond at a
    time, never by its whole cost.
    """
    if "parts" not in body:
        raise _invalid(["parts: required key not provided"])
    parts = body["parts"]
    if not isinstance(parts, list):
        raise _invalid(["parts: expected a list"])
    if not 1 <= len(parts) <= S3_MAX_PARTS:
        raise _invalid([f"parts: expected 1 to {S3_MAX_PARTS} parts"])
    declared: dict[int, str] = {}
    for index, part in enumerate(parts):
        if index % COMPLETE_YIELD_EVERY == COMPLETE_YIELD_EVERY - 1:
            await asyncio.sleep(0)
        where = f"parts[{index}]"
        if not isinstance(part, dict):
            raise _invalid([f"{where}: expected a JSON object"])
        number, etag = part.get("part_number"), part.get("etag")
        if isinstance(number, bool) or not isinstance(number, int):
            raise _invalid([f"{where}.part_number: expected an integer"])
        if not 1 <= number <= S3_MAX_PARTS:
            raise _invalid([f"{where}.part_number: expected 1 to {S3_MAX_PARTS}"])
        if (
            not isinstance(etag, str)
            or not 1 <= len(etag) <= ETAG_MAX
            or not (etag.isascii() and etag.isprintable())
        ):
            raise _invalid([f"{where}.etag: expected 1 to {ETAG_MAX} printable ASCII characters"])
        if number in declared:
            raise _invalid([f"parts: part {number} is listed twice"])
        declared[number] = etag
    try:
        sha256 = _sha256(body.get("sha256"))
    except vol.Invalid as err:
        raise _invalid([f"sha256: {err.msg}"]) from None
    return declared, sha256
