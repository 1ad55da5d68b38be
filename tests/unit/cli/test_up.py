"""What ``kinfer up`` prints once the stack is up: the parts that run, and no other."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from shared.cli import stack as cli_stack
from shared.localstack import stack


@pytest.mark.parametrize("components,shown", [({"triton": {}}, False), ({"activator": {}, "triton": {}}, True)])
def test_up_prints_the_activator_url_only_when_the_activator_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], components: dict[str, Any], shown: bool
) -> None:
    monkeypatch.setattr(stack, "up", lambda settings, say, scale_to_zero: {"components": components})
    assert cli_stack.cmd_up(argparse.Namespace(scale_to_zero=shown)) == 0
    printed = capsys.readouterr().out
    assert ("http://localhost:8092/status" in printed) is shown
    assert "http://localhost:8080" in printed and "http://localhost:8082" in printed
