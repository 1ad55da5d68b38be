"""Small validators for JSON request bodies; each failure is an InvalidInput naming its field."""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Iterable, Mapping

import orjson

from shared.errors import InvalidInput

JSONObject = dict[str, object]
"""A JSON object whose keys nobody declared (a request body before validation, user metadata)."""


def parse_json(raw: bytes, field: str = "body", max_containers: int | None = None) -> object:
    """Strict JSON: 400 when empty, malformed, NaN or infinite, when an object repeats a key, or (before
    parsing) when it holds more than ``max_containers`` arrays and objects (default ``MAX_CONTAINERS``)."""
    if not raw.strip():
        raise InvalidInput(
            f"{'request body' if field == 'body' else field} is empty; a JSON object is required", field=field
        )
    bound = MAX_CONTAINERS if max_containers is None else max_containers
    containers = _containers(raw, bound)
    if containers > bound:
        raise InvalidInput(
            f"request body holds {containers:,} arrays and objects; at most {bound:,} are read "
            "(bulk work belongs in a batch job: POST /v1/batch with an upload)",
            field=field,
        )
    collecting = gc.isenabled()
    gc.disable()  # a fresh tree holds no garbage: collections during the parse tripled its cost
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:  # the message names the position, never the content
        reason = str(exc).split(":", 1)[0]
        raise InvalidInput(f"request body is not valid JSON ({reason})", field=field) from None
    finally:
        if collecting:
            gc.enable()
    try:
        repeated = isinstance(value, dict | list) and has_duplicate_keys(raw, value)
    except orjson.JSONEncodeError:  # the copy's encoder stops deeper than the parser does
        raise InvalidInput(
            f"request body nests arrays or objects deeper than {MAX_DEPTH} levels", field=field
        ) from None
    if repeated:
        raise InvalidInput("request body is not valid JSON here: an object has the same key twice", field=field)
    return value


# How deep orjson serialises (its parser accepts 1,024 levels): a body nested deeper is refused.
MAX_DEPTH = 254
# Arrays and objects one body may hold, counted before parsing: each costs the parser and the validation
# after it a Python object (a 9 MB body of empty lists became 3 million of them: 200 MB and seconds of a
# server's event loop; 300,000 cost 0.16 s). Room for MAX_INFER_ELEMENTS (262,144) rows of one value each;
# POST /v1/batch, whose inline items are bounded by BATCH_MAX_ITEMS, passes its own bound.
MAX_CONTAINERS = 300_000
# A JSON string literal; every ':' outside one separates a key from its value.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def has_duplicate_keys(raw: bytes, value: object) -> bool:
    """Did ``raw`` (valid JSON that parsed to ``value``) hold an object with a repeated key?

    The parser keeps the last of repeated keys, so the keys it kept are counted by serialising
    ``value`` again: every key is one ':' outside string literals, in ``raw`` and in the copy.
    Fewer in the copy means keys were dropped. Both counts are C-speed passes (no Python walk).
    A ':' inside a string is one in both too, unless ``raw`` spelled it ``\\u003a``, so only then are the
    strings set aside first (a regex pass: 2 s for a body of 2.5 million short strings).
    """
    if b":" not in raw:
        return False
    copy = orjson.dumps(value)
    if b"\\u003a" not in raw and b"\\u003A" not in raw:
        return raw.count(b":") != copy.count(b":")
    return _keys_in(raw) != _keys_in(copy)


def _containers(document: bytes, bound: int) -> int:
    """Arrays and objects in ``document``: its '[' and '{' outside string literals (C-speed passes; the
    strings are only set aside when the raw count is over ``bound``)."""
    found = document.count(b"[") + document.count(b"{")
    if found <= bound or b'"' not in document:
        return found
    bare = _STRING.sub(b"", document)
    return bare.count(b"[") + bare.count(b"{")


def _keys_in(document: bytes) -> int:
    return _STRING.sub(b"", document).count(b":") if b'"' in document else document.count(b":")


def require_object(body: object, field: str = "body") -> JSONObject:
    if not isinstance(body, dict):
        raise InvalidInput(f"{field} must be a JSON object", field=field)
    return body


def reject_unknown(body: Mapping[str, object], allowed: Iterable[str], read_only: Iterable[str] = ()) -> None:
    allowed_set, read_only_set = set(allowed), set(read_only)
    for key in body:
        if key in read_only_set:
            raise InvalidInput(f"{key} is read-only and cannot be set", field=key)
        if key not in allowed_set:
            raise InvalidInput(f"unknown field {key!r}; allowed fields: {', '.join(sorted(allowed_set))}", field=key)


def string(
    value: object,
    field: str,
    *,
    max_len: int,
    pattern: re.Pattern[str] | None = None,
    hint: str = "",
    allow_empty: bool = False,
) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string", field=field)
    text(value, field)
    if not value and not allow_empty:
        raise InvalidInput(f"{field} must not be empty", field=field)
    if len(value) > max_len:
        raise InvalidInput(f"{field} is longer than {max_len} characters", field=field)
    if pattern is not None and not pattern.fullmatch(value):
        raise InvalidInput(f"{field} {value[:64]!r} is malformed{': ' + hint if hint else ''}", field=field)
    return value


_NOT_STORABLE = re.compile("[\x00\ud800-\udfff]")


def text(value: str, field: str) -> str:
    """``value`` if PostgreSQL can store it: Unicode scalar values only (no lone surrogate), no NUL."""
    bad = _NOT_STORABLE.search(value)
    if bad is not None:
        what = "a NUL character" if bad.group() == "\x00" else "a lone surrogate (invalid Unicode)"
        raise InvalidInput(f"{field} contains {what} at position {bad.start()}", field=field)
    return value


def choice(value: object, field: str, allowed: Iterable[str]) -> str:
    options = sorted(allowed)
    if not isinstance(value, str) or value not in options:
        raise InvalidInput(f"{field} must be one of: {', '.join(options)}", field=field)
    return value


_ASCII_INT = re.compile(r"-?[0-9]{1,18}")


def integer(raw: str | None, field: str, *, default: int, lo: int, hi: int) -> int:
    """A query-string integer within [lo, hi]: ASCII digits only (``int()`` would take "١٢" or " 12_0")."""
    if raw is None or raw == "":
        return default
    if not _ASCII_INT.fullmatch(raw):
        raise InvalidInput(f"{field} must be an integer (ASCII digits)", field=field)
    value = int(raw)
    if not lo <= value <= hi:
        raise InvalidInput(f"{field} must be between {lo} and {hi}", field=field)
    return value


def json_object(value: object, field: str, *, max_bytes: int, max_depth: int = 8) -> JSONObject:
    """A JSON object at most ``max_depth`` levels deep and ``max_bytes`` long, every string storable."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{field} must be a JSON object", field=field)
    _check_tree(value, field, max_depth)
    if len(json.dumps(value)) > max_bytes:
        raise InvalidInput(f"{field} is larger than {max_bytes} bytes", field=field)
    return value


_MAX_NUMBER = 2**63


def _check_tree(root: object, field: str, max_depth: int) -> None:
    """Depth and string checks without recursion (a hostile body can nest thousands of levels)."""
    stack: list[tuple[object, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            text(node, field)
            continue
        if isinstance(node, int | float) and not isinstance(node, bool) and abs(node) >= _MAX_NUMBER:
            # PostgreSQL's jsonb gives 1e20 back as 100000000000000000000, an integer no JSON encoder here
            # (orjson: 64 bits) can answer with: refuse it before it is stored.
            raise InvalidInput(
                f"{field} holds a number beyond ±2^63 (jsonb would return it as an integer that cannot be encoded)",
                field=field,
            )
        if not isinstance(node, dict | list):
            continue
        if depth > max_depth:
            raise InvalidInput(f"{field} is nested deeper than {max_depth} levels", field=field)
        if isinstance(node, dict):
            for key, item in node.items():
                text(key, field)
                stack.append((item, depth + 1))
        else:
            stack.extend((item, depth + 1) for item in node)
