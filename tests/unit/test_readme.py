"""README.md, statically: the two commands stay at the top, every shell block is either run by the
README test (tests/e2e/test_readme.py) or says why not, and every `kinfer` command line in it parses."""

from __future__ import annotations

import re
import shlex

import pytest

from shared.cli import build_parser
from tests.readme import bash_blocks

BLOCKS = bash_blocks()
# a kinfer command up to where the shell line goes on: a pipe, list, redirection, comment, or $(...)'s end
COMMAND = re.compile(r"(?<![\w/.-])kinfer\s+([^|;&)>#\n]*)")
# a $(...) without kinfer in it is one argument's value
SUBSTITUTION = re.compile(r"\$\((?![^()]*\bkinfer\b)[^()]*\)")


def test_the_two_commands_open_the_readme_and_only_the_second_is_skipped() -> None:
    assert [b.code for b in BLOCKS[:2]] == ["scripts/up", "scripts/test"]
    assert BLOCKS[0].skip is None and BLOCKS[1].skip


def test_skipped_blocks_say_why() -> None:
    assert all(b.skip is None or len(b.skip) > 10 for b in BLOCKS)
    assert sum(b.skip is None for b in BLOCKS) >= 10


def kinfer_lines() -> list[tuple[int, list[str]]]:
    found = []
    for block in BLOCKS:
        for offset, line in enumerate(block.code.replace("\\\n", " ").splitlines(), start=1):
            if not line.lstrip().startswith("#"):
                line = SUBSTITUTION.sub("VALUE", line)
                found += [(block.line + offset, shlex.split(m.group(1))) for m in COMMAND.finditer(line)]
    return found


@pytest.mark.parametrize("line, argv", kinfer_lines())
def test_every_kinfer_command_in_the_readme_parses(line: int, argv: list[str]) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        assert exc.code == 0, f"README.md line {line}: `kinfer {' '.join(argv)}` does not parse"


def test_the_quoted_list_of_model_query_parameters_is_the_real_one() -> None:
    # the README quotes the 400 of `?nmae=x`: the parameters it names are those the route takes
    from shared.web.schemas import MODEL_FILTERS
    from tests.readme import README

    text = " ".join(README.read_text(encoding="utf-8").split())
    quoted = re.search(r"\"unknown query parameter 'nmae'; allowed: ([^\"]+)\"", text)
    assert quoted, "the README quotes the answer to ?nmae=x"
    assert quoted.group(1).split(", ") == [p.name for p in MODEL_FILTERS]
