"""A JSONL input file of a batch job: its items, and which line of the file each item came from.

Blank lines are skipped, as the API skips them in an ``input_url`` object, so item ``i``
is the ``i``-th non-blank line; failures are reported with those line numbers.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class InputFile:
    """A JSONL file's items: where each item's line is (blank lines are skipped, as the API skips
    them), and, when read for inline submission, the parsed items or the first bad line."""

    path: Path
    blank_lines: list[int] = field(default_factory=list)
    items: list[Any] | None = None
    bad_line: int | None = None

    def line_of(self, index: int) -> int:
        """The 1-based line number of item ``index``."""
        line = index + 1
        for blank in self.blank_lines:
            if blank > line:
                break
            line += 1
        return line

    def index_of_line(self, line: int) -> int:
        return line - 1 - bisect.bisect_left(self.blank_lines, line)


def scan(path: Path, parse: bool) -> InputFile:
    """Read ``path`` once; with ``parse``, keep the items (stopping at the first line that is not JSON)."""
    found = InputFile(path, items=[] if parse else None)
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                found.blank_lines.append(number)
            elif found.items is not None:
                try:
                    found.items.append(json.loads(line))
                except ValueError:
                    found.items, found.bad_line = None, number
    return found
