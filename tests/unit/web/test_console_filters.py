"""The console's filter choices are the API's own: framework, model status and job status options in the page
match the registry's and the batch store's values (a value the API refuses would be a 400 in the view)."""

from __future__ import annotations

import re
from pathlib import Path

from shared.domain import JobStatus, ModelStatus
from shared.registry.rules import FRAMEWORKS

PAGE = (Path(__file__).resolve().parents[3] / "functions" / "console" / "static" / "index.html").read_text()


def options(select_id: str) -> set[str]:
    block = re.search(rf'<select id="{select_id}"[^>]*>(.*?)</select>', PAGE, re.S)
    assert block, select_id
    values = re.findall(r'<option value="([^"]*)"', block.group(1))
    assert values[0] == "", f"{select_id}: the first option is 'any' (no filter)"
    return set(values[1:])


def test_the_filters_offer_exactly_the_values_the_api_accepts() -> None:
    assert options("models-framework") == set(FRAMEWORKS)
    assert options("models-status") == {s.value for s in ModelStatus}
    assert options("batch-status") == {s.value for s in JobStatus}
