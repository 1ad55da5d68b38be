"""The README's shell blocks, as the README tests see them.

Every fenced ``bash`` block of README.md is a runnable example, unless the line before it
is ``<!-- readme-test: skip (reason) -->`` (it needs a cluster, or takes minutes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    code: str
    skip: str | None  # the reason it is not run


def bash_blocks(text: str | None = None) -> list[Block]:
    lines = (README.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            start = i
            i += 1
            body = []
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            marker = SKIP.search(before)
            blocks.append(Block(start + 1, "\n".join(body), marker.group("reason") if marker else None))
        i += 1
    return blocks


def script(blocks: list[Block]) -> str:
    """One bash script running the runnable blocks in order, in one shell (variables carry over);
    curl fails on an HTTP error (showing the body), so an example that stops working fails the run."""
    parts = ["set -euo pipefail", 'curl() { command curl --fail-with-body "$@"; }']
    for block in blocks:
        if block.skip is None:
            parts += [f'echo "::readme block at README.md line {block.line}" >&2', block.code]
    return "\n".join(parts) + "\n"
