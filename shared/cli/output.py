"""``-o json|yaml|table``: how a read command prints what the API answered.

``json`` and ``yaml`` print the API's answer as it is (for scripts: ``jq``, ``yq``);
``table`` is for people: a list as aligned columns, one object as aligned
``field  value`` lines; a column given a width shortens a longer value at a word
boundary (``...``), never inside a word. YAML is PyYAML's safe dump, keys in the
API's order.
"""

from __future__ import annotations

import argparse
import json
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


def bounded(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer from ``lo`` to ``hi`` (a usage error, exit 2, otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is not between {lo} and {hi}")
        return value

    parse.__name__ = "number"
    return parse


def column(header: str, key: str, width: int = 0) -> Column:
    """A column of ``row[key]``; with ``width``, values longer than that are shortened at a word boundary."""
    if not width:
        return header, lambda row: row.get(key)
    return header, lambda row: shorten(cell(row.get(key)), width)


def shorten(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, cut after a whole word and marked ``...``; a first word longer
    than ``width`` is kept whole (a column is better wide than a word cut)."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    cut = text[: max(width - 3, 1) + 1]
    head = cut[: cut.rfind(" ")] if " " in cut else text.split(" ", 1)[0]
    return head.rstrip(" ,;:") + "..."


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
def to_yaml(data: object) -> str:
    """Block-style YAML of JSON data (PyYAML's safe dump: strings quoted where YAML would misread them)."""
    import yaml

    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1 << 16)
    return str(text).removesuffix("\n...\n").rstrip("\n")
