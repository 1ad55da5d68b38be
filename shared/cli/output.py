"""``-o json|yaml|table``: how a read command prints what the API answered.

``json`` and ``yaml`` print the API's answer as it is (for scripts: ``jq``, ``yq``);
``table`` is for people: a list as aligned columns, one object as aligned
``field  value`` lines. The YAML writer covers what JSON can hold (no dependency).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

FORMATS = ("table", "json", "yaml")
Row = Mapping[str, object]  # one object of an API answer (JSON)
Column = tuple[str, Callable[[Row], object]]


def add_output_arg(parser: argparse.ArgumentParser, default: str = "table", formats: Sequence[str] = FORMATS) -> None:
    parser.add_argument(
        "-o",
        "--output",
        default=default,
        choices=formats,
        metavar="FORMAT",
        help=f"output format: {', '.join(formats)} (default {default})",
    )


def column(header: str, key: str) -> Column:
    return header, lambda row: row.get(key)


def time_column(header: str, key: str) -> Column:
    return header, lambda row: when(row.get(key))


def when(value: object) -> str:
    """An ISO timestamp as ``YYYY-MM-DD HH:MM:SSZ`` (UTC), ``-`` for none."""
    if not value:
        return "-"
    from datetime import UTC, datetime

    return datetime.fromisoformat(str(value)).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def emit(
    args: argparse.Namespace,
    data: Any,
    *,
    columns: Sequence[Column] | None = None,
    rows: str | None = None,
    fields: Sequence[str] | None = None,
) -> None:
    """Print ``data`` as ``args.output``: the table of ``data[rows]`` (or of ``data`` when it is a list) with
    ``columns``, or the ``fields`` of one object."""
    print(render(args.output, data, columns=columns, rows=rows, fields=fields))


def render(
    fmt: str,
    data: Any,
    *,
    columns: Sequence[Column] | None = None,
    rows: str | None = None,
    fields: Sequence[str] | None = None,
) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False)
    if fmt == "yaml":
        return to_yaml(data)
    if columns is not None:
        items = data[rows] if rows else data
        return table(items, columns)
    return describe(data, fields)


def table(items: Sequence[Row], columns: Sequence[Column]) -> str:
    """Aligned columns under upper-case headers; ``-`` for an empty cell."""
    grid = [[header for header, _ in columns]]
    grid += [[cell(get(item)) for _, get in columns] for item in items]
    widths = [max(len(row[i]) for row in grid) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in grid)


def describe(obj: Row, fields: Sequence[str] | None = None) -> str:
    """One object as ``field:  value`` lines (nested values as compact JSON)."""
    keys = [k for k in (fields or list(obj)) if k in obj]
    width = max((len(k) for k in keys), default=0) + 1
    return "\n".join(f"{k + ':':<{width}}  {cell(obj[k])}".rstrip() for k in keys)


def cell(value: object) -> str:
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


# -- YAML -----------------------------------------------------------------------------
_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./@+-]*(:[A-Za-z0-9_./@+-]+)*")
_RESERVED = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def to_yaml(data: object) -> str:
    """Block-style YAML 1.2 of JSON data; strings are quoted unless plainly unambiguous."""
    return "\n".join(_yaml_lines(data, 0)) if isinstance(data, dict | list) and data else _scalar(data)


def _yaml_lines(data: Any, indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    entries = data.items() if isinstance(data, dict) else ((None, v) for v in data)
    for key, value in entries:
        head = f"{pad}{_scalar(key)}:" if isinstance(data, dict) else f"{pad}-"
        if isinstance(value, dict | list) and value:
            if isinstance(data, list) and isinstance(value, dict):  # "- key: value" on the dash's line
                inner = _yaml_lines(value, indent + 2)
                lines.append(f"{head} {inner[0].lstrip()}")
                lines += inner[1:]
            else:
                lines.append(head)
                lines += _yaml_lines(value, indent + 2)
        else:
            lines.append(f"{head} {_scalar(value)}")
    return lines


def _scalar(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in _RESERVED:
        return text
    return json.dumps(text, ensure_ascii=False)
